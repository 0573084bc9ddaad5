//! MAC, hostname, name and system-id parsers: never panic, and whatever
//! they accept prints back to something they accept again unchanged.
#![no_main]
use kumo_model::{Hostname, MacAddress, Name, SystemId};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(s) = std::str::from_utf8(data) else { return };
    if let Ok(m) = s.parse::<MacAddress>() {
        assert_eq!(m.to_string().parse::<MacAddress>().unwrap(), m);
    }
    if let Ok(h) = s.parse::<Hostname>() {
        assert_eq!(h.as_str().parse::<Hostname>().unwrap(), h);
    }
    if let Ok(n) = Name::parse("name", s) {
        assert_eq!(Name::parse("name", n.as_str()).unwrap(), n);
    }
    let _ = s.parse::<SystemId>();
});
