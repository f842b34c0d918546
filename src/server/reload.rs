//! The reload transaction: a new config is bound first and applied only
//! once nothing can fail, so a rejected reload changes nothing.

use std::collections::HashMap;
use std::sync::Arc;

use tokio::sync::watch;
use tracing::{error, info, warn};

use super::tcp::accept_tcp;
use super::udp::serve_udp;
use super::{
    Active, EXIT_BIND, EXIT_CONFIG, EXIT_USERS, Key, Listening, Served, Server, prespawn, seconds,
};
use crate::admission::{Gate, fair_floor};
use crate::config::{self, Config, Handoff, Program, Protocol, RunAs, Secret, Service};
use crate::listener::{self, Bound};
use crate::os;

impl Server {
    /// SIGHUP / PARAMCHANGE: a config with any error is rejected whole and
    /// the running one stays; otherwise it is applied without closing any
    /// listener whose (protocol, address, port) is unchanged. Says whether
    /// the new config is served.
    pub(super) async fn reload(&mut self) -> bool {
        info!("reloading {}", self.opts.cfgfile.display());
        match config::load_as(&self.opts.cfgfile, self.opts.format) {
            Err(errors) => {
                for e in &errors.0 {
                    error!("{e}");
                }
                error!(
                    "reload rejected: {} error(s) in {}; still serving the previous config",
                    errors.0.len(),
                    self.opts.cfgfile.display()
                );
                false
            }
            Ok(config) => match self.apply(config).await {
                Ok(()) => {
                    info!("reloaded: serving {} service(s)", self.gates.len());
                    true
                }
                Err((_, message)) => {
                    error!("{message}");
                    error!("reload rejected; still serving the previous config");
                    false
                }
            },
        }
    }

    /// Makes `config` the served one. On error nothing has changed.
    pub(super) async fn apply(&mut self, config: Config) -> Result<(), (u32, String)> {
        os::check_internal_users(&config).map_err(|e| (EXIT_CONFIG, e.to_string()))?;
        let users = config
            .services
            .iter()
            .filter_map(|s| match (&s.user, &s.program) {
                (RunAs::User { name, .. }, Program::Command(_)) => Some(name.as_str()),
                _ => None,
            });
        os::check_users(users).map_err(|m| (EXIT_USERS, m))?;
        for w in config.warnings.iter().chain(&os::unknown_accounts(&config)) {
            warn!("{w}");
        }
        warn_ignored_passwords(&config);

        // Every certificate and key is read now, before anything changes:
        // a bad one rejects the whole config.
        let mut terminators = HashMap::new();
        let mut tls_errors = Vec::new();
        for svc in &config.services {
            if let Some(settings) = &svc.tls {
                match crate::tls::build(settings) {
                    Ok(t) => {
                        terminators.insert(svc.name.clone(), Arc::new(t));
                    }
                    Err(errors) => tls_errors.extend(errors),
                }
            }
        }
        if !tls_errors.is_empty() {
            let lines: Vec<String> = tls_errors.iter().map(|e| e.to_string()).collect();
            return Err((EXIT_CONFIG, lines.join("\n")));
        }

        // What should listen, and with which settings.
        let mut udp_ports: Vec<u16> = config
            .services
            .iter()
            .filter(|s| s.protocol == Protocol::Udp)
            .map(|s| s.port)
            .collect();
        udp_ports.sort_unstable();
        udp_ports.dedup();
        let udp_ports: Arc<[u16]> = udp_ports.into();
        let mut udp_guards = HashMap::new();
        let mut gates = HashMap::new();
        let mut served = Vec::with_capacity(config.services.len());
        let mut wanted: HashMap<Key, Arc<Active>> = HashMap::new();
        // Kept services' new rules, applied only once nothing can fail.
        let mut rule_updates = Vec::new();
        // Each gate and the most live programs its service can hold.
        let mut holds = Vec::new();
        let mut templates = Vec::new();
        for svc in config.services {
            let gate = match self.gates.get(&svc.name) {
                Some(g) => {
                    rule_updates.push((Arc::clone(g), svc.access.clone(), svc.limits.clone()));
                    Arc::clone(g)
                }
                None => Gate::new(
                    &svc.name,
                    Arc::clone(&self.ctx.global),
                    svc.access.clone(),
                    svc.limits.clone(),
                ),
            };
            gates.insert(svc.name.clone(), Arc::clone(&gate));
            let udp_guard = self.udp_guards.get(&svc.name).cloned().unwrap_or_default();
            udp_guards.insert(svc.name.clone(), Arc::clone(&udp_guard));
            holds.push((Arc::clone(&gate), most_live(&svc)));
            served.push(Served {
                gate: Arc::clone(&gate),
                protocol: svc.protocol,
                addrs: svc.addrs().collect(),
                limit: svc.limits.max_instances,
                udp_guard: matches!(
                    (svc.protocol, &svc.program),
                    (Protocol::Udp, Program::Internal(_))
                )
                .then(|| Arc::clone(&udp_guard)),
            });
            let exec = match &svc.program {
                Program::Command(_) => {
                    let pass_env = svc.pass_env.as_ref().unwrap_or(&config.globals.pass_env);
                    let t = os::ExecTemplate::new(&svc, pass_env)
                        .map_err(|m| (EXIT_CONFIG, format!("{}: {m}", svc.origin)))?;
                    templates.push(t.clone());
                    Some(t)
                }
                Program::Internal(_) => None,
            };
            let tls = terminators.remove(&svc.name);
            let active = Arc::new(Active {
                exec,
                // TLS is relayed: the program cannot hold the session.
                handoff: if tls.is_some() {
                    Handoff::Pipe
                } else {
                    svc.handoff
                        .or(self.opts.handoff)
                        .unwrap_or_else(Handoff::platform_default)
                },
                timeout: seconds(svc.timeout.or(self.opts.timeout).or(config.globals.timeout)),
                linger: seconds(self.opts.linger_timeout.or(config.globals.linger_timeout)),
                waiting: prespawn::Waiting::new(
                    svc.limits
                        .max_instances
                        .unwrap_or(config.globals.max_connections),
                ),
                gate,
                svc,
                udp_guard,
                udp_ports: Arc::clone(&udp_ports),
                tls,
            });
            let svc = &active.svc;
            let named = self.inherited.named(&svc.name, svc.protocol, svc.port);
            let addrs: Vec<_> = if named.is_empty() {
                svc.addrs().collect()
            } else {
                named
            };
            for addr in addrs {
                wanted.insert((svc.protocol, addr), Arc::clone(&active));
            }
        }
        // At startup every socket the service manager passed must be used:
        // one that is not means its unit and our config disagree.
        if self.gates.is_empty() {
            let unused = self
                .inherited
                .unused(|protocol, addr| wanted.contains_key(&(protocol, addr)));
            if !unused.is_empty() {
                return Err((
                    EXIT_BIND,
                    format!(
                        "the service manager passed sockets that match no service (by protocol \
                         and address, or by a service name): {}",
                        unused.join(", ")
                    ),
                ));
            }
        }

        // The accounts (NSS may be remote), looked up off this thread; a
        // user not found yet is retried later, its connections refused.
        let resolved = super::off_loop(move || {
            templates
                .iter()
                .filter_map(os::ExecTemplate::resolve)
                .collect::<Vec<_>>()
        })
        .await;
        for warning in resolved.unwrap_or_default() {
            warn!("{warning}");
        }

        // Bind what is new before touching what runs, so a failure changes
        // nothing. A port held by a listener this config drops is retried
        // once that listener is closed.
        let mut bound = Vec::new();
        let mut deferred = Vec::new();
        for (key, active) in &wanted {
            if self.listeners.contains_key(key) {
                continue;
            }
            match self.open(*key) {
                Ok(b) => bound.push((*key, b)),
                Err(e)
                    if e.kind() == std::io::ErrorKind::AddrInUse
                        && self.listeners.keys().any(|k| {
                            k.0 == key.0 && k.1.port() == key.1.port() && !wanted.contains_key(k)
                        }) =>
                {
                    deferred.push(*key)
                }
                Err(e) => return Err((EXIT_BIND, bind_error(key, active, &e))),
            }
        }

        // Commit: stop listeners no longer wanted, retry the deferred ones.
        let removed: Vec<Key> = self
            .listeners
            .keys()
            .filter(|k| !wanted.contains_key(k))
            .copied()
            .collect();
        let mut dropped = Vec::new();
        for key in removed {
            if let Some(Listening { active, mut task }) = self.listeners.remove(&key) {
                task.abort();
                // The socket closes when the task is gone: wait for that,
                // so the port is free for a listener of this config.
                let _ = (&mut task).await;
                dropped.push((key, active));
            }
        }
        for key in deferred {
            match self.open(key) {
                Ok(b) => bound.push((key, b)),
                Err(e) => {
                    // Roll back: the old listeners come back, the new go.
                    let message = bind_error(&key, &wanted[&key], &e);
                    drop(bound);
                    for (k, sender) in dropped {
                        let active = sender.borrow().clone();
                        if let Ok(b) = self.open(k) {
                            self.start_listener(k, b, active);
                        } else {
                            error!("could not restore the listener on {} {}", k.0, k.1);
                        }
                    }
                    return Err((EXIT_BIND, message));
                }
            }
        }
        // Past the last failure: from here on the new config is served, and
        // its lines (the first "listening on" included) are in its format.
        crate::logging::set_format(config.globals.log_format);
        for (gate, access, limits) in rule_updates {
            gate.update(access, limits);
        }
        for (key, listening) in &self.listeners {
            if let Some(active) = wanted.get(key) {
                listening.active.send_replace(Arc::clone(active));
            }
        }
        for (key, b) in bound {
            let active = Arc::clone(&wanted[&key]);
            self.start_listener(key, b, active);
        }
        self.ctx.global.set_max(config.globals.max_connections);
        self.ctx.pipe_budget.set_limit(config.globals.pipe_budget);
        self.ctx
            .global
            .set_ipv6_prefix(config.globals.ipv6_source_prefix);
        let holders = holds.iter().filter(|(_, most)| *most > 0).count();
        let floor = fair_floor(config.globals.max_connections, holders);
        for (gate, most) in &holds {
            gate.set_floor(floor.min(*most));
        }
        for (name, gate) in &self.gates {
            if !gates.contains_key(name) {
                gate.set_floor(0);
            }
        }
        self.ctx.waiting.set_max(config.globals.max_connections);
        self.gates = gates;
        self.udp_guards = udp_guards;
        // A removed service's series go with it.
        *self.ctx.served.lock().unwrap_or_else(|p| p.into_inner()) = served.into();
        Ok(())
    }

    /// The service manager's socket for `key` if it passed one, else our own.
    fn open(&self, key: Key) -> std::io::Result<Bound> {
        self.inherited
            .take(key.0, key.1)
            .unwrap_or_else(|| listener::bind(key.0, key.1))
    }

    fn start_listener(&mut self, key: Key, bound: Bound, active: Arc<Active>) {
        let (tx, rx) = watch::channel(active);
        let ctx = Arc::clone(&self.ctx);
        let task = match bound {
            Bound::Tcp(l) => tokio::spawn(accept_tcp(l, rx, ctx)),
            Bound::Udp(s) => tokio::spawn(serve_udp(s, rx, ctx)),
        };
        if self.inherited.contains(key.0, key.1) {
            info!(
                "listening on {} {} (a socket from the service manager)",
                key.0, key.1
            );
        } else {
            info!("listening on {} {}", key.0, key.1);
        }
        self.listeners.insert(key, Listening { active: tx, task });
    }
}

/// The most live programs a service can hold at once, which caps its
/// share of `max_connections`: a UDP internal service holds none, a `wait`
/// service one per listener.
fn most_live(svc: &Service) -> u32 {
    match (svc.protocol, &svc.program) {
        (Protocol::Udp, Program::Internal(_)) => 0,
        (Protocol::Udp, Program::Command(_)) => u32::try_from(svc.bind.len()).unwrap_or(u32::MAX),
        (Protocol::Tcp, _) => svc.limits.max_instances.unwrap_or(u32::MAX),
    }
}

fn bind_error(key: &Key, active: &Active, e: &std::io::Error) -> String {
    format!(
        "cannot listen on {} {} (service {}, {}): {e}",
        key.0, key.1, active.svc.name, active.svc.origin
    )
}

/// Unix has no use for a password in the config; say so once per load,
/// naming the services but never the password.
fn warn_ignored_passwords(config: &Config) {
    if cfg!(windows) {
        return;
    }
    let names: Vec<&str> = config
        .services
        .iter()
        .filter(|s| {
            matches!(
                &s.user,
                RunAs::User {
                    secret: Some(Secret::Inline(_)),
                    ..
                }
            )
        })
        .map(|s| s.name.as_str())
        .collect();
    if !names.is_empty() {
        warn!(
            "passwords are ignored on Unix (services {}); programs run as the named user without one",
            names.join(", ")
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::admission::Refusal;
    use crate::server::Options;
    use std::collections::BTreeSet;
    use std::net::{IpAddr, SocketAddr, TcpListener};
    use std::path::Path;
    use std::time::Duration;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    fn parsed(text: &str) -> Config {
        config::parse(Path::new("t.toml"), text.as_bytes()).unwrap()
    }

    fn server(first: &Config) -> Server {
        let opts = Options {
            cfgfile: "t.toml".into(),
            timeout: None,
            linger_timeout: None,
            handoff: None,
            kill_on_stop: false,
            format: None,
        };
        Server::new(opts, first, crate::listener::Inherited::default())
    }

    fn keys(s: &Server) -> BTreeSet<String> {
        s.listeners
            .keys()
            .map(|(p, a)| format!("{p} {a}"))
            .collect()
    }

    fn ports(n: usize) -> Vec<u16> {
        let held: Vec<TcpListener> = (0..n)
            .map(|_| TcpListener::bind("127.0.0.1:0").unwrap())
            .collect();
        held.iter()
            .map(|l| l.local_addr().unwrap().port())
            .collect()
    }

    fn echo(name: &str, bind: &str, port: u16, extra: &str) -> String {
        format!(
            "[[service]]\nname = \"{name}\"\nport = {port}\nbind = [\"{bind}\"]\ninternal = \"echo\"\n{extra}\n"
        )
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    /// Whether the port is free again, i.e. nothing of ours holds it.
    fn free(addr: &str, port: u16) -> bool {
        TcpListener::bind((addr, port)).is_ok()
    }

    async fn echoes(port: u16) -> bool {
        let Ok(mut s) = tokio::net::TcpStream::connect(("127.0.0.1", port)).await else {
            return false;
        };
        let mut got = [0u8; 5];
        s.write_all(b"hello").await.is_ok()
            && tokio::time::timeout(Duration::from_secs(5), s.read_exact(&mut got))
                .await
                .is_ok_and(|r| r.is_ok())
            && &got == b"hello"
    }

    #[tokio::test(flavor = "current_thread")]
    async fn a_reload_whose_new_port_is_taken_changes_nothing_and_binds_nothing() {
        let p = ports(7);
        let (kept, gone, taken, fresh) = (p[0], p[1], p[2], &p[3..]);
        let old = format!(
            "{}{}",
            echo(
                "kept",
                "127.0.0.1",
                kept,
                "deny = [\"127.0.0.5\"]\nmax_instances = 1"
            ),
            echo("gone", "127.0.0.1", gone, "")
        );
        let mut s = server(&parsed(&old));
        s.apply(parsed(&old)).await.unwrap();
        let (listening, kept_gate) = (keys(&s), Arc::clone(&s.gates["kept"]));
        let outsider = TcpListener::bind(("127.0.0.1", taken)).unwrap();

        // New rules for `kept`, `gone` dropped, a tight global budget, new
        // services on free ports and one on the outsider's port.
        let mut new = format!(
            "max_connections = 2\n{}{}",
            echo("kept", "127.0.0.1", kept, "max_instances = 5"),
            echo("taken", "127.0.0.1", taken, "")
        );
        for (i, port) in fresh.iter().enumerate() {
            new.push_str(&echo(&format!("fresh{i}"), "127.0.0.1", *port, ""));
        }
        let (code, message) = s.apply(parsed(&new)).await.unwrap_err();
        assert_eq!(code, EXIT_BIND);
        assert!(
            message.contains(&format!("127.0.0.1:{taken}")) && message.contains("service taken"),
            "{message}"
        );

        // Every old listener, still running the old config.
        assert_eq!(keys(&s), listening);
        for (key, l) in &s.listeners {
            assert!(!l.task.is_finished(), "{key:?}");
        }
        let active = s.listeners[&(Protocol::Tcp, SocketAddr::from(([127, 0, 0, 1], kept)))]
            .active
            .borrow()
            .clone();
        assert_eq!(active.svc.limits.max_instances, Some(1));
        assert!(echoes(gone).await, "the dropped service still serves");
        // The same services and gates, with their old rules and budget.
        let names: BTreeSet<&str> = s.gates.keys().map(String::as_str).collect();
        assert_eq!(names, BTreeSet::from(["gone", "kept"]));
        assert!(Arc::ptr_eq(&s.gates["kept"], &kept_gate));
        assert_eq!(
            kept_gate.admit(ip("127.0.0.5")).err(),
            Some(Refusal::Denied)
        );
        let lease = kept_gate.admit(ip("127.0.0.1")).unwrap();
        assert_eq!(
            kept_gate.admit(ip("127.0.0.1")).err(),
            Some(Refusal::MaxInstances)
        );
        drop(lease);
        let gone_gate = Arc::clone(&s.gates["gone"]);
        let leases: Vec<_> = (0..3).map(|_| gone_gate.admit(ip("127.0.0.1"))).collect();
        assert!(
            leases.iter().all(Result::is_ok),
            "max_connections = 2 applied"
        );
        drop(leases);
        assert_eq!(s.ctx.served.lock().unwrap().len(), 2);
        // What it bound for the new config is closed again.
        for port in fresh {
            assert!(free("127.0.0.1", *port), "port {port} still held");
        }
        drop(outsider);
    }

    #[tokio::test(flavor = "current_thread")]
    async fn a_reload_failing_after_old_listeners_closed_restores_them() {
        let p = ports(3);
        let (moving, fresh) = (p[0], &p[1..]);
        let old = echo("moving", "127.0.0.1", moving, "");
        let mut s = server(&parsed(&old));
        s.apply(parsed(&old)).await.unwrap();
        let (listening, gate) = (keys(&s), Arc::clone(&s.gates["moving"]));
        assert!(echoes(moving).await);
        // 0.0.0.0 collides with our own 127.0.0.1 listener, which the new
        // config drops: the bind is retried after it is closed, and then
        // fails for good on the outsider's 127.0.0.2.
        let outsider = TcpListener::bind(("127.0.0.2", moving)).unwrap();
        // (Served to loopback only, even once it listens on 0.0.0.0.)
        let mut new = echo(
            "moving",
            "0.0.0.0",
            moving,
            "allow = [\"127.0.0.0/8\"]\ndeny = [\"127.0.0.1\"]",
        );
        for (i, port) in fresh.iter().enumerate() {
            new.push_str(&echo(&format!("fresh{i}"), "127.0.0.1", *port, ""));
        }
        let (code, message) = s.apply(parsed(&new)).await.unwrap_err();
        assert_eq!(code, EXIT_BIND);
        assert!(message.contains(&format!("0.0.0.0:{moving}")), "{message}");

        // The old listener is back, with its old service and rules.
        assert_eq!(keys(&s), listening);
        let key = (Protocol::Tcp, SocketAddr::from(([127, 0, 0, 1], moving)));
        let active = s.listeners[&key].active.borrow().clone();
        assert_eq!(active.svc.bind, [ip("127.0.0.1")]);
        assert!(
            echoes(moving).await,
            "the restored listener serves 127.0.0.1"
        );
        assert!(Arc::ptr_eq(&s.gates["moving"], &gate));
        assert_eq!(s.gates.len(), 1);
        // The new ones it bound before the failure are closed.
        for port in fresh {
            assert!(free("127.0.0.1", *port), "port {port} still held");
        }
        // And the next good reload goes through.
        drop(outsider);
        s.apply(parsed(&new)).await.unwrap();
        let key = (Protocol::Tcp, SocketAddr::from(([0, 0, 0, 0], moving)));
        assert!(s.listeners.contains_key(&key));
        assert_eq!(s.gates.len(), 3);
    }

    #[test]
    fn a_services_floor_is_capped_by_what_it_can_hold() {
        let text = r#"
[[service]]
name = "plain"
port = 7000
command = ["/bin/cat"]

[[service]]
name = "capped"
port = 7001
command = ["/bin/cat"]
max_instances = 3

[[service]]
name = "wait"
port = 7002
protocol = "udp"
wait = true
bind = ["127.0.0.1", "::1"]
command = ["/bin/cat"]

[[service]]
name = "udp-echo"
port = 7003
protocol = "udp"
internal = "echo"

[[service]]
name = "tcp-echo"
port = 7004
internal = "echo"
"#;
        let config = config::parse(Path::new("t.toml"), text.as_bytes()).unwrap();
        let most: Vec<(&str, u32)> = config
            .services
            .iter()
            .map(|s| (s.name.as_str(), most_live(s)))
            .collect();
        assert_eq!(
            most,
            [
                ("plain", u32::MAX),
                ("capped", 3),
                ("wait", 2),
                ("udp-echo", 0),
                ("tcp-echo", u32::MAX),
            ]
        );
    }
}
