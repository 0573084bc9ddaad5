//! A transfer state machine driven by arbitrary datagrams and timer ticks.
//! Input: the RRQ (first datagram), a file size, then events. Checks that
//! the machine never panics, never asks for two reads at once or past the
//! end of the file, and never sends a DATA packet larger than blksize + 4.
#![no_main]

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use kumo_tftp::{classify, Action, Incoming, Limits, Transfer};
use libfuzzer_sys::fuzz_target;

/// Splits `data` into length-prefixed chunks (one length byte each).
fn chunks(mut data: &[u8]) -> Vec<&[u8]> {
    let mut out = Vec::new();
    while let Some((&len, rest)) = data.split_first() {
        let len = (len as usize).min(rest.len());
        out.push(&rest[..len]);
        data = &rest[len..];
    }
    out
}

fuzz_target!(|data: &[u8]| {
    if data.len() < 3 {
        return;
    }
    let size = u64::from(u16::from_be_bytes([data[0], data[1]])) * 3;
    let parts = chunks(&data[2..]);
    let Some((first, events)) = parts.split_first() else {
        return;
    };
    let Incoming::Read(req) = classify(first) else {
        return;
    };
    let limits = Limits {
        max_windowsize: 16,
        ..Limits::default()
    };
    let mut now = Instant::now();
    let (mut t, actions) = Transfer::start(&req, size, &limits, now);
    let max_packet = usize::from(t.blksize()) + 4;
    let mut queue: VecDeque<Action> = actions.into();
    let mut end = 0u64;
    for event in events.iter().map(Some).chain([None]) {
        while let Some(a) = queue.pop_front() {
            match a {
                Action::Send(p) => {
                    // DATA never exceeds the negotiated block size.
                    assert!(p[..2] != [0, 3] || p.len() <= max_packet);
                }
                Action::Read { offset, len, .. } => {
                    assert!(queue.is_empty(), "read is the last action");
                    assert!(offset + len as u64 <= size, "read past the end");
                    end = end.max(offset + len as u64);
                    queue.extend(t.on_block(now, vec![0; len]));
                }
                Action::Finish(_) => assert!(t.is_finished()),
            }
        }
        match event {
            Some([]) | None => {
                now += Duration::from_secs(2);
                queue.extend(t.on_timeout(now));
            }
            Some(bytes) => {
                if let Ok(actions) = t.on_packet(now, bytes) {
                    queue.extend(actions);
                }
            }
        }
    }
    assert!(end <= size);
});
