//! `Metadata::parse` and `ConfigSchema::parse` on arbitrary text must
//! return, never panic.
//! Run: `RUSTC_BOOTSTRAP=1 cargo fuzz run metadata` in crates/charm.
#![no_main]

use kumo_charm::{ConfigSchema, Metadata};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let _ = Metadata::parse("metadata.yaml", text);
    let _ = ConfigSchema::parse("config.yaml", text);
});
