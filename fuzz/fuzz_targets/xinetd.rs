//! xinetd configs (`wininetd convert`): an accepted config is sane, and
//! convert's output parses back to the services the xinetd parser read.
#![no_main]

use libfuzzer_sys::fuzz_target;
use wininetd::config::{Format, Service};
use wininetd::fuzzing;

mod common;

fuzz_target!(|data: &[u8]| {
    let Ok(model) = fuzzing::parse_xinetd(data) else {
        return;
    };
    common::check_sane(&model);
    let converted = match fuzzing::convert_xinetd(data) {
        Ok(c) => c,
        Err(e) if model.services.is_empty() => panic!("no service, yet convert failed: {e}"),
        Err(e) => panic!("the xinetd parser accepted what convert refuses: {e}"),
    };
    if model.services.is_empty() {
        return;
    }
    let back = match fuzzing::parse(converted.toml.as_bytes(), Format::Toml) {
        Ok(b) => b,
        Err(e) => panic!("convert's output does not parse: {e}\n{}", converted.toml),
    };
    assert_eq!(
        model.services.len(),
        back.services.len(),
        "{}",
        converted.toml
    );
    for (x, y) in model.services.iter().zip(&back.services) {
        // A TOML table lists its keys sorted; a program's environment has
        // no order that matters.
        let mut x = x.clone();
        x.env.sort();
        let mut y = Service {
            origin: x.origin.clone(),
            ..y.clone()
        };
        y.env.sort();
        assert_eq!(x, y, "service does not round-trip:\n{}", converted.toml);
    }
});
