//! The classic WinInetd format: an accepted config is sane and round-trips.
#![no_main]

use libfuzzer_sys::fuzz_target;
use wininetd::config::Format;
use wininetd::fuzzing;

mod common;

fuzz_target!(|data: &[u8]| {
    if let Ok(config) = fuzzing::parse(data, Format::Classic) {
        common::check_sane(&config);
        common::check_round_trip(&config);
    }
});
