//! The codec and the listener's classification on arbitrary datagrams:
//! never panic, and whatever parses re-encodes to the same packet.
#![no_main]

use kumo_tftp::{classify, Packet};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = classify(data);
    if let Ok(p) = Packet::parse(data) {
        let again = Packet::parse(&p.encode()).expect("an encoded packet parses");
        assert_eq!(again, p);
    }
});
