//! Tag definitions are operator input evaluated by the region: compiling
//! and evaluating any string must never panic.
#![no_main]
use kumo_model::tags::{Facts, TagDefinition};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(s) = std::str::from_utf8(data) else { return };
    if s.len() > 512 {
        return;
    }
    if let Ok(def) = TagDefinition::compile(s) {
        let _ = def.matches_facts(&Facts { cpu_count: 4, memory_mib: 1024, ..Default::default() });
    }
});
