//! Being a Windows service: the SCM (start, stop, PARAMCHANGE), `--install`,
//! `--remove`, `--reload`, and the console host of `--debug`.

use std::ffi::OsString;
use std::io;
use std::process::ExitCode;
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use clap::Parser;
use tokio::signal::windows::{CtrlBreak, CtrlC, CtrlClose, ctrl_break, ctrl_c, ctrl_close};
use tokio::sync::mpsc;
use windows_service::service::{
    ServiceAccess, ServiceAction, ServiceActionType, ServiceControl, ServiceControlAccept,
    ServiceDependency, ServiceErrorControl, ServiceExitCode, ServiceFailureActions,
    ServiceFailureResetPeriod, ServiceInfo, ServiceStartType, ServiceState, ServiceStatus,
    ServiceType,
};
use windows_service::service_control_handler::{self, ServiceControlHandlerResult};
use windows_service::service_dispatcher;
use windows_service::service_manager::{ServiceManager, ServiceManagerAccess};

use super::eventlog;
use crate::cli::Cli;
use crate::os::{Control, HostStatus, ServiceHost};
use crate::server;

pub const SERVICE_NAME: &str = "wininetd";
const DISPLAY_NAME: &str = "wininetd super-server";
const DESCRIPTION: &str = "Runs a program for each connection to a configured port \
     (inetd for Windows; config: wininetd.conf).";

/// `--debug` in a console: Ctrl-C (or closing the console) stops,
/// Ctrl-Break reloads.
pub struct Host {
    c: CtrlC,
    brk: CtrlBreak,
    close: CtrlClose,
}

impl Host {
    pub fn new() -> io::Result<Host> {
        Ok(Host {
            c: ctrl_c()?,
            brk: ctrl_break()?,
            close: ctrl_close()?,
        })
    }
}

impl ServiceHost for Host {
    async fn next(&mut self) -> Control {
        tokio::select! {
            _ = self.c.recv() => Control::Stop,
            _ = self.close.recv() => Control::Stop,
            _ = self.brk.recv() => Control::Reload,
        }
    }

    fn status(&mut self, _status: HostStatus) {}
}

/// The SCM as a [`ServiceHost`]: controls arrive from the control handler
/// (an SCM thread) through a channel; states go back through SetServiceStatus.
struct ScmHost {
    status: service_control_handler::ServiceStatusHandle,
    controls: mpsc::UnboundedReceiver<Control>,
}

impl ScmHost {
    fn report(&self, state: ServiceState, exit: ServiceExitCode, wait: Duration) {
        let accepted = if state == ServiceState::Running {
            ServiceControlAccept::STOP
                | ServiceControlAccept::SHUTDOWN
                | ServiceControlAccept::PARAM_CHANGE
        } else {
            ServiceControlAccept::empty()
        };
        let status = ServiceStatus {
            service_type: ServiceType::OWN_PROCESS,
            current_state: state,
            controls_accepted: accepted,
            exit_code: exit,
            checkpoint: 0,
            wait_hint: wait,
            process_id: None,
        };
        if let Err(e) = self.status.set_service_status(status) {
            tracing::warn!("cannot report {state:?} to the service manager: {e}");
        }
    }
}

impl ServiceHost for ScmHost {
    async fn next(&mut self) -> Control {
        self.controls.recv().await.unwrap_or(Control::Stop)
    }

    fn status(&mut self, status: HostStatus) {
        let ok = ServiceExitCode::Win32(0);
        match status {
            HostStatus::Ready => self.report(ServiceState::Running, ok, Duration::ZERO),
            // A reload is quick and the listeners stay open: still RUNNING.
            HostStatus::Reloading => {}
            HostStatus::Stopping => {
                self.report(ServiceState::StopPending, ok, Duration::from_secs(5))
            }
        }
    }
}

windows_service::define_windows_service!(ffi_service_main, service_main);

/// The process exit code once the service has stopped.
static EXIT: Mutex<u8> = Mutex::new(0);
/// The options the SCM started us with (the service's launch arguments).
static LAUNCH: OnceLock<Vec<OsString>> = OnceLock::new();

/// `--service`: hands this thread to the SCM dispatcher, which calls
/// [`service_main`] on another thread and returns once the service stopped.
pub fn run_as_service(_cli: &Cli) -> ExitCode {
    let _ = LAUNCH.set(std::env::args_os().collect());
    match service_dispatcher::start(SERVICE_NAME, ffi_service_main) {
        Ok(()) => ExitCode::from(*EXIT.lock().unwrap_or_else(|p| p.into_inner())),
        Err(e) => {
            eprintln!(
                "wininetd: {} (--service is for the service manager; use --debug in a console)",
                scm_error("cannot connect to the service manager", &e)
            );
            ExitCode::from(server::EXIT_RUNTIME as u8)
        }
    }
}

/// The launch arguments with the start parameters (`sc start wininetd
/// --timeout 30`) after them, so the start parameters win.
fn merged_cli(launch: &[OsString], start_params: &[OsString]) -> Result<Cli, clap::Error> {
    Cli::try_parse_from(launch.iter().chain(start_params.iter().skip(1)))
}

fn service_main(args: Vec<OsString>) {
    crate::logging::init(crate::logging::Sink::Daemon);
    let code = run_service(&args);
    crate::logging::flush(std::time::Duration::from_secs(2));
    *EXIT.lock().unwrap_or_else(|p| p.into_inner()) = code as u8;
}

/// Registers the control handler, reports START_PENDING, serves, and
/// reports STOPPED (with a service-specific code if startup failed).
fn run_service(args: &[OsString]) -> u32 {
    let (tx, rx) = mpsc::unbounded_channel();
    let handler = move |control| match control {
        ServiceControl::Stop | ServiceControl::Shutdown => {
            let _ = tx.send(Control::Stop);
            ServiceControlHandlerResult::NoError
        }
        ServiceControl::ParamChange => {
            let _ = tx.send(Control::Reload);
            ServiceControlHandlerResult::NoError
        }
        ServiceControl::Interrogate => ServiceControlHandlerResult::NoError,
        _ => ServiceControlHandlerResult::NotImplemented,
    };
    let status = match service_control_handler::register(SERVICE_NAME, handler) {
        Ok(s) => s,
        Err(e) => {
            tracing::error!("cannot register with the service manager: {e}");
            return server::EXIT_RUNTIME;
        }
    };
    let mut host = ScmHost {
        status,
        controls: rx,
    };
    host.report(
        ServiceState::StartPending,
        ServiceExitCode::Win32(0),
        Duration::from_secs(10),
    );
    let launch = LAUNCH.get().cloned().unwrap_or_default();
    let result = match merged_cli(&launch, args) {
        Ok(cli) => serve(&cli, &mut host),
        Err(e) => Err(server::StartError {
            code: server::EXIT_CONFIG,
            message: format!("bad start parameters: {}", e.kind()),
        }),
    };
    match result {
        Ok(()) => {
            host.report(
                ServiceState::Stopped,
                ServiceExitCode::Win32(0),
                Duration::ZERO,
            );
            0
        }
        Err(e) => {
            for line in e.message.lines() {
                tracing::error!("{line}");
            }
            tracing::error!("wininetd did not start (exit code {})", e.code);
            host.report(
                ServiceState::Stopped,
                ServiceExitCode::ServiceSpecific(e.code),
                Duration::ZERO,
            );
            e.code
        }
    }
}

fn serve(cli: &Cli, host: &mut ScmHost) -> Result<(), server::StartError> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| server::StartError {
            code: server::EXIT_RUNTIME,
            message: format!("cannot start the runtime: {e}"),
        })?;
    let result = runtime.block_on(server::serve(server::Options::from(cli), host));
    // Programs still running (and their relays) are not ours to wait for.
    runtime.shutdown_background();
    result
}

/// A windows-service error as the user should read it: the usual causes
/// by name, the Windows error code always.
fn scm_error(what: &str, e: &windows_service::Error) -> String {
    let code = match e {
        windows_service::Error::Winapi(io) => io.raw_os_error(),
        _ => None,
    };
    let why = match code {
        Some(5) => "access denied: run it from an elevated (Administrator) prompt".to_string(),
        Some(1073) => {
            "the service wininetd is already installed (run `wininetd --remove` first)".into()
        }
        Some(1060) => "the service wininetd is not installed".into(),
        Some(1072) => "the service wininetd is marked for deletion; close the Services console (or reboot) and retry".into(),
        Some(1062) => "the service wininetd is not running".into(),
        Some(1063) => "this process was not started by the service manager (Windows error 1063)".into(),
        Some(c) => format!("Windows error {c}"),
        None => e.to_string(),
    };
    format!("{what}: {why}")
}

fn manager(access: ServiceManagerAccess) -> Result<ServiceManager, String> {
    ServiceManager::local_computer(None::<&str>, access)
        .map_err(|e| scm_error("cannot open the service manager", &e))
}

/// `--install`: an automatic, own-process LocalSystem service that starts
/// after Tcpip and Afd, runs `wininetd.exe --service ARGS`, and is
/// restarted if it crashes; plus the Event Log source.
pub fn install(args: &[String]) -> Result<String, String> {
    let exe =
        std::env::current_exe().map_err(|e| format!("cannot find the wininetd executable: {e}"))?;
    let scm = manager(ServiceManagerAccess::CONNECT | ServiceManagerAccess::CREATE_SERVICE)?;
    let mut launch_arguments = vec![OsString::from("--service")];
    launch_arguments.extend(args.iter().map(OsString::from));
    let info = ServiceInfo {
        name: SERVICE_NAME.into(),
        display_name: DISPLAY_NAME.into(),
        service_type: ServiceType::OWN_PROCESS,
        start_type: ServiceStartType::AutoStart,
        error_control: ServiceErrorControl::Normal,
        executable_path: exe.clone(),
        launch_arguments,
        dependencies: vec![
            ServiceDependency::Service("Tcpip".into()),
            ServiceDependency::Service("Afd".into()),
        ],
        account_name: None,
        account_password: None,
    };
    let service = scm
        .create_service(&info, ServiceAccess::CHANGE_CONFIG | ServiceAccess::START)
        .map_err(|e| scm_error("cannot create the service", &e))?;
    let mut notes = Vec::new();
    if let Err(e) = service.set_description(DESCRIPTION) {
        notes.push(scm_error("could not set the description", &e));
    }
    // Restart after a crash (5 s, 5 s, then 60 s; the count resets daily).
    // A startup error (bad config, busy port) stops with an exit code
    // instead and is not retried: it would fail the same way.
    let restart = |secs| ServiceAction {
        action_type: ServiceActionType::Restart,
        delay: Duration::from_secs(secs),
    };
    let actions = ServiceFailureActions {
        reset_period: ServiceFailureResetPeriod::After(Duration::from_secs(86_400)),
        reboot_msg: None,
        command: None,
        actions: Some(vec![restart(5), restart(5), restart(60)]),
    };
    if let Err(e) = service.update_failure_actions(actions) {
        notes.push(scm_error("could not set the recovery actions", &e));
    }
    eventlog::register_source(&exe)?;
    let mut msg = format!(
        "installed the service {SERVICE_NAME} ({} {}); start it with `sc start {SERVICE_NAME}`",
        exe.display(),
        std::iter::once("--service")
            .chain(args.iter().map(String::as_str))
            .collect::<Vec<_>>()
            .join(" ")
    );
    for n in notes {
        msg.push_str("\nwarning: ");
        msg.push_str(&n);
    }
    Ok(msg)
}

/// `--remove`: stops the service if it runs (waiting up to 30 s), deletes
/// it and deregisters the Event Log source.
pub fn remove() -> Result<String, String> {
    let scm = manager(ServiceManagerAccess::CONNECT)?;
    let service = scm
        .open_service(
            SERVICE_NAME,
            ServiceAccess::QUERY_STATUS | ServiceAccess::STOP | ServiceAccess::DELETE,
        )
        .map_err(|e| scm_error("cannot remove the service", &e))?;
    let state = service
        .query_status()
        .map_err(|e| scm_error("cannot query the service", &e))?
        .current_state;
    if state != ServiceState::Stopped {
        if state != ServiceState::StopPending {
            service
                .stop()
                .map_err(|e| scm_error("cannot stop the service", &e))?;
        }
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            match service.query_status() {
                Ok(s) if s.current_state == ServiceState::Stopped => break,
                Ok(_) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(200))
                }
                Ok(_) => return Err("the service did not stop within 30 s; not removed".into()),
                Err(e) => return Err(scm_error("cannot query the service", &e)),
            }
        }
    }
    service
        .delete()
        .map_err(|e| scm_error("cannot delete the service", &e))?;
    drop(service);
    eventlog::deregister_source()?;
    Ok(format!("removed the service {SERVICE_NAME}"))
}

/// `--reload`: sends SERVICE_CONTROL_PARAMCHANGE, which the service treats
/// as SIGHUP.
pub fn reload() -> Result<String, String> {
    use windows_sys::Win32::System::Services::{
        ControlService, SERVICE_CONTROL_PARAMCHANGE, SERVICE_STATUS,
    };
    let scm = manager(ServiceManagerAccess::CONNECT)?;
    let service = scm
        .open_service(SERVICE_NAME, ServiceAccess::PAUSE_CONTINUE)
        .map_err(|e| scm_error("cannot reach the service", &e))?;
    // SAFETY: zeroed SERVICE_STATUS is a valid out value.
    let mut status: SERVICE_STATUS = unsafe { std::mem::zeroed() };
    // SAFETY: an open service handle with PAUSE_CONTINUE access (what
    // PARAMCHANGE needs) and a valid out pointer.
    let ok = unsafe {
        ControlService(
            service.raw_handle(),
            SERVICE_CONTROL_PARAMCHANGE,
            &mut status,
        )
    };
    if ok == 0 {
        let e = windows_service::Error::Winapi(io::Error::last_os_error());
        return Err(scm_error("cannot ask the service to reload", &e));
    }
    Ok("asked wininetd to reload its config".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn os(v: &[&str]) -> Vec<OsString> {
        v.iter().map(OsString::from).collect()
    }

    #[test]
    fn start_parameters_override_the_launch_arguments() {
        let launch = os(&[
            "wininetd.exe",
            "--service",
            "--cfgfile",
            "C:\\a.conf",
            "--timeout",
            "5",
        ]);
        let cli = merged_cli(&launch, &os(&["wininetd", "--timeout", "30"])).unwrap();
        assert_eq!(cli.timeout, Some(30));
        assert_eq!(cli.cfgfile, std::path::PathBuf::from("C:\\a.conf"));
        assert!(cli.service);
        let cli = merged_cli(&launch, &os(&["wininetd"])).unwrap();
        assert_eq!(cli.timeout, Some(5));
    }

    #[test]
    fn bad_start_parameters_are_an_error() {
        let launch = os(&["wininetd.exe", "--service"]);
        assert!(merged_cli(&launch, &os(&["wininetd", "--timeout", "soon"])).is_err());
    }

    #[test]
    fn scm_errors_say_what_to_do() {
        let e = |c| windows_service::Error::Winapi(io::Error::from_raw_os_error(c));
        assert!(scm_error("x", &e(5)).contains("elevated"));
        assert!(scm_error("x", &e(1073)).contains("already installed"));
        assert!(scm_error("x", &e(1060)).contains("not installed"));
        assert!(scm_error("x", &e(1234)).contains("1234"));
    }
}
