//! The JSON bodies machines and users send: decoding never panics.
#![no_main]
use kumo_model::api::{ActionOptions, AddMachine, StatusReport, UpdateMachine};
use kumo_model::Inventory;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = serde_json::from_slice::<AddMachine>(data);
    let _ = serde_json::from_slice::<UpdateMachine>(data);
    let _ = serde_json::from_slice::<ActionOptions>(data);
    let _ = serde_json::from_slice::<StatusReport>(data);
    let _ = serde_json::from_slice::<Inventory>(data);
});
