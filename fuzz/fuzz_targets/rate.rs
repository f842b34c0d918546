//! The `rate` syntax: an accepted rate is positive and finite, and the
//! spelling convert writes for it parses back to the same rate.
#![no_main]

use libfuzzer_sys::fuzz_target;
use wininetd::fuzzing::{self, Rate};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(rate) = Rate::parse(text) else {
        return;
    };
    assert!(
        rate.per_second.is_finite() && rate.per_second > 0.0,
        "{text:?} is {rate:?}"
    );
    let written = fuzzing::rate_text(rate.per_second);
    match Rate::parse(&written) {
        Ok(back) => assert_eq!(back, rate, "{text:?} written as {written:?}"),
        Err(e) => panic!("{text:?} written as {written:?}, which does not parse: {e}"),
    }
});
