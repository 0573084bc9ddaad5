//! `Bundle::parse` on arbitrary text must return, never panic; a bundle it
//! accepts must render to text that parses back to the same bundle.
//! Run: `RUSTC_BOOTSTRAP=1 cargo fuzz run bundle` in crates/charm.
#![no_main]

use kumo_charm::Bundle;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(b) = Bundle::parse("fuzz.yaml", text) {
        let again = Bundle::parse("again.yaml", &b.render()).expect("rendered bundle parses");
        assert_eq!(again, b);
    }
});
