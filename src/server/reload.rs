//! The reload transaction: a new config is bound first and applied only
//! once nothing can fail, so a rejected reload changes nothing.

use std::collections::HashMap;
use std::sync::Arc;

use tokio::sync::watch;
use tracing::{error, info, warn};

use super::tcp::accept_tcp;
use super::udp::serve_udp;
use super::{Active, EXIT_BIND, EXIT_USERS, Key, Listening, Server, seconds};
use crate::admission::Gate;
use crate::config::{self, Config, Handoff, RunAs, Secret};
use crate::listener::{self, Bound};
use crate::os;

impl Server {
    /// SIGHUP / PARAMCHANGE: a config with any error is rejected whole and
    /// the running one stays; otherwise it is applied without closing any
    /// listener whose (protocol, address, port) is unchanged.
    pub(super) async fn reload(&mut self) {
        info!("reloading {}", self.opts.cfgfile.display());
        match config::load(&self.opts.cfgfile) {
            Err(errors) => {
                for e in &errors.0 {
                    error!("{e}");
                }
                error!(
                    "reload rejected: {} error(s) in {}; still serving the previous config",
                    errors.0.len(),
                    self.opts.cfgfile.display()
                );
            }
            Ok(config) => match self.apply(config).await {
                Ok(()) => info!("reloaded: serving {} service(s)", self.gates.len()),
                Err((_, message)) => {
                    error!("{message}");
                    error!("reload rejected; still serving the previous config");
                }
            },
        }
    }

    /// Makes `config` the served one. On error nothing has changed.
    pub(super) async fn apply(&mut self, config: Config) -> Result<(), (u32, String)> {
        let users = config.services.iter().filter_map(|s| match &s.user {
            RunAs::User { name, .. } => Some(name.as_str()),
            RunAs::Daemon => None,
        });
        os::check_users(users).map_err(|m| (EXIT_USERS, m))?;
        warn_ignored_passwords(&config);

        // What should listen, and with which settings.
        let mut gates = HashMap::new();
        let mut wanted: HashMap<Key, Arc<Active>> = HashMap::new();
        // Kept services' new rules, applied only once nothing can fail.
        let mut rule_updates = Vec::new();
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
            let active = Arc::new(Active {
                handoff: svc
                    .handoff
                    .or(self.opts.handoff)
                    .unwrap_or_else(Handoff::platform_default),
                timeout: seconds(svc.timeout.or(self.opts.timeout).or(config.globals.timeout)),
                linger: seconds(self.opts.linger_timeout.or(config.globals.linger_timeout)),
                gate,
                svc,
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
        self.gates = gates;
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
