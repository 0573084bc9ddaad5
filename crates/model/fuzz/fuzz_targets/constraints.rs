//! Constraint strings: never panic; accepted ones round-trip through Display.
#![no_main]
use kumo_model::constraints::Constraints;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(s) = std::str::from_utf8(data) else { return };
    if let Ok(c) = Constraints::parse(s) {
        let again = Constraints::parse(&c.to_string()).expect("printed constraints parse");
        assert_eq!(again.to_string(), c.to_string());
    }
});
