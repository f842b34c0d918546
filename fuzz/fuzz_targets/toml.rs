//! The extended (TOML) format: an accepted config is sane, and one with
//! only what convert's renderer writes (no TLS, no PROXY, default pipe
//! budget, IPv6 prefix and pass_env) round-trips through it.
#![no_main]

use libfuzzer_sys::fuzz_target;
use wininetd::config::{Format, Globals};
use wininetd::fuzzing;

mod common;

fuzz_target!(|data: &[u8]| {
    if let Ok(config) = fuzzing::parse(data, Format::Toml) {
        common::check_sane(&config);
        let d = Globals::default();
        let g = &config.globals;
        let renderable = config
            .services
            .iter()
            .all(|s| s.tls.is_none() && s.proxy.is_none())
            && g.pipe_budget == d.pipe_budget
            && g.ipv6_source_prefix == d.ipv6_source_prefix
            && g.pass_env == d.pass_env;
        if renderable {
            common::check_round_trip(&config);
        }
    }
});
