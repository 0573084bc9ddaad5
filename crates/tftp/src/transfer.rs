//! One read transfer as a state machine without I/O.
//!
//! The shell feeds it datagrams from the client's TID ([`Transfer::on_packet`]),
//! the file blocks it asked for ([`Transfer::on_block`]) and expired timers
//! ([`Transfer::on_timeout`]), always passing `now`; it answers with
//! [`Action`]s. Blocks are numbered from 1 as `u64` inside; on the wire the
//! number is taken modulo 65536, so block 65536 is sent as 0 (the rollover
//! tftp-hpa, iPXE and UEFI expect).

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use crate::options::{negotiate, Limits, Negotiated};
use crate::packet::{encode_data, error_code, Packet};
use crate::request::ReadRequest;
use crate::TftpError;

/// What the shell must do next, in order.
#[derive(Debug)]
pub enum Action {
    /// Send this datagram to the client.
    Send(Vec<u8>),
    /// Read `len` bytes at `offset` (the file's next block, `block`) and pass
    /// them to [`Transfer::on_block`]. Always the last action of a batch, and
    /// never more than one outstanding.
    Read { block: u64, offset: u64, len: usize },
    /// The transfer is over; drop it.
    Finish(Outcome),
}

/// How a transfer ended.
#[derive(Debug)]
pub enum Outcome {
    /// Every block was acknowledged.
    Complete {
        bytes: u64,
    },
    /// The client answered the OACK with an ERROR of code 0 or 8: UEFI
    /// firmware does this after a `tsize` probe, before asking again for the
    /// real download. Not a failure.
    Declined {
        code: u16,
        message: String,
    },
    Failed(TftpError),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    /// OACK sent, waiting for ACK 0.
    Negotiating,
    Sending,
    Finished,
}

#[derive(Debug)]
pub struct Transfer {
    path: String,
    blksize: u64,
    windowsize: u64,
    timeout: Duration,
    max_retries: u32,
    size: u64,
    /// The final block, shorter than `blksize` (possibly empty).
    last_block: u64,
    phase: Phase,
    /// Highest block the client acknowledged; 0 before any.
    acked: u64,
    /// Encoded DATA packets for blocks `acked+1 ..= acked+window.len()`,
    /// all sent and not yet acknowledged.
    window: VecDeque<Vec<u8>>,
    pending_read: Option<u64>,
    oack: Option<Vec<u8>>,
    retries: u32,
    deadline: Option<Instant>,
    retransmitted: u64,
}

impl Transfer {
    /// Starts a transfer of a file of `size` bytes for `req`.
    pub fn start(
        req: &ReadRequest,
        size: u64,
        limits: &Limits,
        now: Instant,
    ) -> (Transfer, Vec<Action>) {
        let n: Negotiated = negotiate(&req.options, size, limits);
        let blksize = u64::from(n.blksize);
        let mut t = Transfer {
            path: req.raw_path.clone(),
            blksize,
            windowsize: u64::from(n.windowsize),
            timeout: n.timeout,
            max_retries: limits.max_retries,
            size,
            last_block: size / blksize + 1,
            phase: Phase::Sending,
            acked: 0,
            window: VecDeque::new(),
            pending_read: None,
            oack: None,
            retries: 0,
            deadline: None,
            retransmitted: 0,
        };
        let mut actions = Vec::new();
        if n.oack.is_empty() {
            t.fill(&mut actions);
        } else {
            let oack = Packet::Oack { options: n.oack }.encode();
            actions.push(Action::Send(oack.clone()));
            t.oack = Some(oack);
            t.phase = Phase::Negotiating;
            t.deadline = Some(now + t.timeout);
        }
        (t, actions)
    }

    /// When the shell should call [`Transfer::on_timeout`]; `None` while
    /// waiting for a read or once finished.
    pub fn deadline(&self) -> Option<Instant> {
        if self.phase == Phase::Finished || self.pending_read.is_some() {
            return None;
        }
        self.deadline
    }

    pub fn is_finished(&self) -> bool {
        self.phase == Phase::Finished
    }

    pub fn blksize(&self) -> u16 {
        self.blksize as u16
    }

    pub fn windowsize(&self) -> u16 {
        self.windowsize as u16
    }

    /// Packets sent again because of timeouts or a partial window ACK.
    pub fn retransmitted(&self) -> u64 {
        self.retransmitted
    }

    /// A datagram from the client's TID. `Err` means it was dropped (the
    /// error says why; the shell counts it) and the transfer is unchanged.
    pub fn on_packet(&mut self, now: Instant, bytes: &[u8]) -> Result<Vec<Action>, TftpError> {
        let packet = Packet::parse(bytes)?;
        if self.phase == Phase::Finished {
            return Err(TftpError::Unexpected(packet.kind()));
        }
        let mut actions = Vec::new();
        match packet {
            Packet::Ack { block } => self.on_ack(now, block, &mut actions),
            Packet::Error { code, message } => {
                let negotiating = self.phase == Phase::Negotiating;
                self.phase = Phase::Finished;
                let outcome = if negotiating
                    && (code == error_code::NOT_DEFINED || code == error_code::OPTION_REFUSED)
                {
                    Outcome::Declined { code, message }
                } else {
                    Outcome::Failed(TftpError::PeerError {
                        path: self.path.clone(),
                        code,
                        message,
                    })
                };
                actions.push(Action::Finish(outcome));
            }
            other => return Err(TftpError::Unexpected(other.kind())),
        }
        Ok(actions)
    }

    fn on_ack(&mut self, now: Instant, wire: u16, actions: &mut Vec<Action>) {
        if self.phase == Phase::Negotiating {
            if wire != 0 {
                return;
            }
            self.phase = Phase::Sending;
            self.oack = None;
            self.retries = 0;
            self.deadline = None;
            self.fill(actions);
            return;
        }
        // The one block in (acked, acked + 65535] with this wire number; the
        // window never exceeds 65535 blocks, so it is unambiguous.
        let ahead = u64::from(wire.wrapping_sub(self.acked as u16));
        let sent = self.window.len() as u64;
        if ahead == 0 || ahead > sent {
            // A duplicate of an earlier ACK, or one for a block not sent.
            // Never answered with data: that is the Sorcerer's Apprentice
            // bug. The timer alone retransmits.
            return;
        }
        self.acked += ahead;
        self.window.drain(..ahead as usize);
        self.retries = 0;
        if self.acked == self.last_block {
            self.phase = Phase::Finished;
            self.window.clear();
            actions.push(Action::Finish(Outcome::Complete { bytes: self.size }));
            return;
        }
        if !self.window.is_empty() {
            // A partial ACK: the client lost a block of the window. Start
            // the next window right after the acknowledged block (RFC 7440).
            for p in &self.window {
                actions.push(Action::Send(p.clone()));
            }
            self.retransmitted += self.window.len() as u64;
            self.deadline = Some(now + self.timeout);
        } else {
            self.deadline = None;
        }
        self.fill(actions);
    }

    /// The bytes of the block last asked for with [`Action::Read`].
    pub fn on_block(&mut self, now: Instant, data: Vec<u8>) -> Vec<Action> {
        let mut actions = Vec::new();
        let Some(block) = self.pending_read.take() else {
            return actions;
        };
        if self.phase != Phase::Sending {
            return actions;
        }
        if data.len() as u64 != self.block_len(block) {
            self.phase = Phase::Finished;
            let error = TftpError::ShortRead {
                path: self.path.clone(),
                block,
            };
            actions.push(Action::Send(error.to_packet()));
            actions.push(Action::Finish(Outcome::Failed(error)));
            return actions;
        }
        let packet = encode_data(block as u16, &data);
        actions.push(Action::Send(packet.clone()));
        self.window.push_back(packet);
        self.deadline = Some(now + self.timeout);
        self.fill(&mut actions);
        actions
    }

    /// The timer set by [`Transfer::deadline`] expired (or the shell woke up
    /// early: then nothing happens).
    pub fn on_timeout(&mut self, now: Instant) -> Vec<Action> {
        let mut actions = Vec::new();
        match self.deadline() {
            Some(d) if now >= d => {}
            _ => return actions,
        }
        if self.retries >= self.max_retries {
            self.phase = Phase::Finished;
            actions.push(Action::Finish(Outcome::Failed(TftpError::TimedOut {
                path: self.path.clone(),
                retries: self.retries,
            })));
            return actions;
        }
        self.retries += 1;
        // Resend what the client has not acknowledged: the OACK, or the
        // whole outstanding window.
        if let Some(oack) = &self.oack {
            actions.push(Action::Send(oack.clone()));
            self.retransmitted += 1;
        } else {
            for p in &self.window {
                actions.push(Action::Send(p.clone()));
            }
            self.retransmitted += self.window.len() as u64;
        }
        self.deadline = Some(now + self.timeout);
        actions
    }

    fn block_len(&self, block: u64) -> u64 {
        let offset = (block - 1) * self.blksize;
        self.blksize.min(self.size - offset)
    }

    /// Asks for the next block while the window has room.
    fn fill(&mut self, actions: &mut Vec<Action>) {
        if self.pending_read.is_some() || self.phase != Phase::Sending {
            return;
        }
        let next = self.acked + self.window.len() as u64 + 1;
        if next > self.last_block || self.window.len() as u64 >= self.windowsize {
            return;
        }
        self.pending_read = Some(next);
        actions.push(Action::Read {
            block: next,
            offset: (next - 1) * self.blksize,
            len: self.block_len(next) as usize,
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::packet::RawRequest;
    use crate::request::{classify, Incoming};
    use proptest::prelude::*;

    fn request(options: &[(&str, &str)]) -> ReadRequest {
        let bytes = Packet::Rrq(RawRequest {
            filename: "boot/file".into(),
            mode: "octet".into(),
            options: options
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        })
        .encode();
        match classify(&bytes) {
            Incoming::Read(r) => r,
            other => panic!("{other:?}"),
        }
    }

    fn ack(block: u16) -> Vec<u8> {
        Packet::Ack { block }.encode()
    }

    /// Drives a transfer as a well-behaved shell would: answers reads from
    /// `file` and collects the datagrams sent.
    struct Harness {
        t: Transfer,
        file: Vec<u8>,
        now: Instant,
        sent: Vec<Vec<u8>>,
        outcome: Option<Outcome>,
        reads: u64,
    }

    impl Harness {
        fn new(options: &[(&str, &str)], file: Vec<u8>) -> Harness {
            Self::with_limits(options, file, &Limits::default())
        }

        fn with_limits(options: &[(&str, &str)], file: Vec<u8>, limits: &Limits) -> Harness {
            let now = Instant::now();
            let (t, actions) = Transfer::start(&request(options), file.len() as u64, limits, now);
            let mut h = Harness {
                t,
                file,
                now,
                sent: vec![],
                outcome: None,
                reads: 0,
            };
            h.run(actions);
            h
        }

        fn run(&mut self, actions: Vec<Action>) {
            let mut queue: VecDeque<Action> = actions.into();
            while let Some(a) = queue.pop_front() {
                match a {
                    Action::Send(p) => self.sent.push(p),
                    Action::Read { offset, len, .. } => {
                        assert!(queue.is_empty(), "read is the last action");
                        self.reads += 1;
                        let data = self.file[offset as usize..offset as usize + len].to_vec();
                        queue.extend(self.t.on_block(self.now, data));
                    }
                    Action::Finish(o) => {
                        assert!(self.outcome.is_none());
                        self.outcome = Some(o);
                    }
                }
            }
        }

        fn packet(&mut self, bytes: &[u8]) {
            let actions = self.t.on_packet(self.now, bytes).expect("packet accepted");
            self.run(actions);
        }

        fn advance(&mut self, by: Duration) {
            self.now += by;
            let actions = self.t.on_timeout(self.now);
            self.run(actions);
        }

        fn take_sent(&mut self) -> Vec<Packet> {
            self.sent
                .drain(..)
                .map(|p| Packet::parse(&p).unwrap())
                .collect()
        }

        fn data_blocks(&mut self) -> Vec<u16> {
            self.take_sent()
                .into_iter()
                .map(|p| match p {
                    Packet::Data { block, .. } => block,
                    other => panic!("expected data, got {other:?}"),
                })
                .collect()
        }
    }

    fn data(block: u16, bytes: &[u8]) -> Packet {
        Packet::Data {
            block,
            data: bytes.to_vec(),
        }
    }

    #[test]
    fn plain_lockstep_transfer() {
        let file: Vec<u8> = (0..1000u32).map(|i| i as u8).collect();
        let mut h = Harness::new(&[], file.clone());
        assert_eq!(h.take_sent(), vec![data(1, &file[..512])]);
        h.packet(&ack(1));
        assert_eq!(h.take_sent(), vec![data(2, &file[512..])]);
        assert!(h.outcome.is_none());
        h.packet(&ack(2));
        assert!(matches!(h.outcome, Some(Outcome::Complete { bytes: 1000 })));
        assert!(h.t.is_finished());
        assert_eq!(h.t.deadline(), None);
    }

    #[test]
    fn exact_multiple_ends_with_an_empty_block() {
        let mut h = Harness::new(&[], vec![7; 1024]);
        h.take_sent();
        h.packet(&ack(1));
        h.take_sent();
        h.packet(&ack(2));
        assert_eq!(h.take_sent(), vec![data(3, &[])]);
        h.packet(&ack(3));
        assert!(matches!(h.outcome, Some(Outcome::Complete { bytes: 1024 })));
    }

    #[test]
    fn empty_file() {
        let mut h = Harness::new(&[("tsize", "0")], vec![]);
        assert_eq!(
            h.take_sent(),
            vec![Packet::Oack {
                options: vec![("tsize".into(), "0".into())]
            }]
        );
        h.packet(&ack(0));
        assert_eq!(h.take_sent(), vec![data(1, &[])]);
        h.packet(&ack(1));
        assert!(matches!(h.outcome, Some(Outcome::Complete { bytes: 0 })));
    }

    #[test]
    fn oack_negotiation_then_data_with_blksize() {
        let file = vec![1u8; 3000];
        let mut h = Harness::new(&[("blksize", "1468"), ("tsize", "0")], file);
        assert_eq!(
            h.take_sent(),
            vec![Packet::Oack {
                options: vec![
                    ("blksize".into(), "1468".into()),
                    ("tsize".into(), "3000".into())
                ]
            }]
        );
        assert_eq!(h.reads, 0, "no file read before the OACK is acknowledged");
        // An ACK for anything but 0 during negotiation is ignored.
        h.packet(&ack(1));
        assert!(h.take_sent().is_empty());
        h.packet(&ack(0));
        assert_eq!(h.take_sent(), vec![data(1, &[1; 1468])]);
        h.packet(&ack(1));
        h.take_sent();
        h.packet(&ack(2));
        assert_eq!(h.take_sent(), vec![data(3, &[1; 64])]);
        h.packet(&ack(3));
        assert!(matches!(h.outcome, Some(Outcome::Complete { bytes: 3000 })));
    }

    #[test]
    fn windowed_transfer_sends_whole_windows() {
        let file = vec![2u8; 8 * 10 + 3];
        let mut h = Harness::new(&[("blksize", "8"), ("windowsize", "4")], file);
        h.take_sent();
        h.packet(&ack(0));
        assert_eq!(h.data_blocks(), vec![1, 2, 3, 4]);
        assert!(h.t.deadline().is_some());
        // Acks inside the window for blocks not yet sent are ignored.
        h.packet(&ack(9));
        assert!(h.take_sent().is_empty());
        h.packet(&ack(4));
        assert_eq!(h.data_blocks(), vec![5, 6, 7, 8]);
        // Partial ACK: block 7 was lost; restart at 7 and fill the window.
        h.packet(&ack(6));
        assert_eq!(h.data_blocks(), vec![7, 8, 9, 10]);
        assert_eq!(h.t.retransmitted(), 2);
        // The same partial ACK arriving twice changes nothing.
        h.packet(&ack(6));
        assert!(h.take_sent().is_empty());
        h.packet(&ack(10));
        assert_eq!(h.data_blocks(), vec![11]);
        h.packet(&ack(11));
        assert!(matches!(h.outcome, Some(Outcome::Complete { bytes: 83 })));
    }

    #[test]
    fn duplicate_acks_never_trigger_data() {
        let mut h = Harness::new(&[], vec![0; 2000]);
        assert_eq!(h.data_blocks(), vec![1]);
        h.packet(&ack(1));
        assert_eq!(h.data_blocks(), vec![2]);
        // The delayed duplicate ACK 1 (the Sorcerer's Apprentice trigger).
        h.packet(&ack(1));
        h.packet(&ack(1));
        assert!(h.take_sent().is_empty());
        h.packet(&ack(2));
        assert_eq!(h.data_blocks(), vec![3]);
    }

    #[test]
    fn retransmits_on_timeout_then_gives_up() {
        let limits = Limits {
            max_retries: 3,
            ..Limits::default()
        };
        let mut h = Harness::with_limits(&[], vec![5; 600], &limits);
        assert_eq!(h.data_blocks(), vec![1]);
        let timeout = Duration::from_secs(1);
        // Waking before the deadline does nothing.
        h.advance(timeout / 2);
        assert!(h.take_sent().is_empty());
        h.advance(timeout / 2);
        assert_eq!(h.data_blocks(), vec![1]);
        // Progress resets the retry budget.
        h.packet(&ack(1));
        assert_eq!(h.data_blocks(), vec![2]);
        for _ in 0..3 {
            h.advance(timeout);
            assert_eq!(h.data_blocks(), vec![2]);
        }
        assert!(h.outcome.is_none());
        h.advance(timeout);
        assert!(h.take_sent().is_empty());
        match &h.outcome {
            Some(Outcome::Failed(e @ TftpError::TimedOut { retries: 3, .. })) => {
                assert_eq!(
                    e.to_string(),
                    "transfer of \"boot/file\" timed out after 3 retransmissions"
                )
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(h.t.retransmitted(), 4);
    }

    #[test]
    fn oack_is_retransmitted_with_the_negotiated_timeout() {
        let mut h = Harness::new(&[("timeout", "3"), ("tsize", "0")], vec![1; 10]);
        h.take_sent();
        h.advance(Duration::from_secs(2));
        assert!(h.take_sent().is_empty());
        h.advance(Duration::from_secs(1));
        assert!(matches!(h.take_sent()[..], [Packet::Oack { .. }]));
    }

    #[test]
    fn window_is_resent_whole_on_timeout() {
        let mut h = Harness::new(&[("windowsize", "3")], vec![0; 512 * 5]);
        h.take_sent();
        h.packet(&ack(0));
        assert_eq!(h.data_blocks(), vec![1, 2, 3]);
        h.advance(Duration::from_secs(1));
        assert_eq!(h.data_blocks(), vec![1, 2, 3]);
    }

    #[test]
    fn block_numbers_roll_over_to_zero() {
        // blksize 8: 65536 blocks is 512 KiB; two more blocks past the wrap.
        let blocks = 65537u64;
        let file: Vec<u8> = (0..blocks * 8 + 5).map(|i| (i / 8) as u8).collect();
        let mut h = Harness::new(&[("blksize", "8")], file.clone());
        h.take_sent();
        h.packet(&ack(0));
        let mut expected_block: u64 = 1;
        loop {
            let sent = h.take_sent();
            assert_eq!(sent.len(), 1);
            let Packet::Data { block, data } = &sent[0] else {
                panic!("{sent:?}")
            };
            assert_eq!(*block, expected_block as u16);
            let off = ((expected_block - 1) * 8) as usize;
            assert_eq!(&data[..], &file[off..(off + 8).min(file.len())]);
            h.packet(&ack(*block));
            if h.outcome.is_some() {
                break;
            }
            expected_block += 1;
        }
        assert_eq!(expected_block, blocks + 1);
        assert_eq!(expected_block as u16, 2, "wrapped through 0 and 1");
        assert!(matches!(h.outcome, Some(Outcome::Complete { .. })));
    }

    #[test]
    fn rollover_with_windows_straddling_the_wrap() {
        let file = vec![9u8; 8 * 65540];
        let mut h = Harness::new(&[("blksize", "8"), ("windowsize", "7")], file);
        h.take_sent();
        h.packet(&ack(0));
        loop {
            let blocks = h.data_blocks();
            let last = *blocks.last().unwrap();
            h.packet(&ack(last));
            if h.outcome.is_some() {
                break;
            }
        }
        assert!(matches!(h.outcome, Some(Outcome::Complete { bytes }) if bytes == 8 * 65540));
    }

    #[test]
    fn uefi_tsize_probe_abort_is_quiet() {
        for code in [0u16, 8] {
            let mut h = Harness::new(&[("tsize", "0"), ("blksize", "1468")], vec![0; 4096]);
            h.take_sent();
            h.packet(
                &Packet::Error {
                    code,
                    message: "User aborted the transfer".into(),
                }
                .encode(),
            );
            assert!(
                matches!(h.outcome, Some(Outcome::Declined { code: c, .. }) if c == code),
                "{:?}",
                h.outcome
            );
            assert!(h.take_sent().is_empty(), "errors are not answered");
            assert_eq!(h.reads, 0);
        }
    }

    #[test]
    fn errors_after_data_are_failures() {
        let mut h = Harness::new(&[("tsize", "0")], vec![0; 4096]);
        h.take_sent();
        h.packet(&ack(0));
        h.take_sent();
        h.packet(
            &Packet::Error {
                code: 8,
                message: "late".into(),
            }
            .encode(),
        );
        assert!(matches!(
            h.outcome,
            Some(Outcome::Failed(TftpError::PeerError { code: 8, .. }))
        ));
        // Other codes right after the OACK are failures too.
        let mut h = Harness::new(&[("tsize", "0")], vec![0; 4096]);
        h.packet(
            &Packet::Error {
                code: 2,
                message: "x".into(),
            }
            .encode(),
        );
        assert!(matches!(h.outcome, Some(Outcome::Failed(_))));
    }

    #[test]
    fn short_reads_fail_the_transfer_with_an_error_packet() {
        let now = Instant::now();
        let (mut t, actions) = Transfer::start(&request(&[]), 1000, &Limits::default(), now);
        assert!(matches!(
            actions[..],
            [Action::Read {
                block: 1,
                offset: 0,
                len: 512
            }]
        ));
        let actions = t.on_block(now, vec![0; 100]);
        assert!(
            matches!(&actions[..], [Action::Send(p), Action::Finish(Outcome::Failed(TftpError::ShortRead { block: 1, .. }))] if p[..4] == [0, 5, 0, 0])
        );
    }

    #[test]
    fn malformed_and_unexpected_packets_are_dropped() {
        let mut h = Harness::new(&[], vec![0; 600]);
        h.take_sent();
        assert!(matches!(
            h.t.on_packet(h.now, b"\x00"),
            Err(TftpError::Malformed(_))
        ));
        assert!(matches!(
            h.t.on_packet(
                h.now,
                &Packet::Data {
                    block: 1,
                    data: vec![]
                }
                .encode()
            ),
            Err(TftpError::Unexpected("data"))
        ));
        h.packet(&ack(1));
        assert_eq!(h.data_blocks(), vec![2]);
    }

    proptest! {
        /// Arbitrary datagrams and timer ticks never panic, never ask for a
        /// second read while one is outstanding, and never read past the end.
        #[test]
        fn never_panics_on_arbitrary_input(
            size in 0u64..5000,
            options in prop::collection::vec(
                (prop::sample::select(vec!["blksize", "windowsize", "tsize", "timeout", "x"]),
                 prop_oneof![Just("0".to_string()), Just("8".to_string()), "[0-9]{1,6}"]),
                0..4),
            events in prop::collection::vec(
                prop_oneof![
                    any::<u16>().prop_map(|b| Packet::Ack { block: b % 8 }.encode()),
                    prop::collection::vec(any::<u8>(), 0..8),
                    (any::<u16>(), "[a-z]{0,4}").prop_map(|(code, message)| Packet::Error { code: code % 10, message }.encode()),
                    Just(vec![]), // a timer tick
                ],
                0..64),
        ) {
            let opts: Vec<(&str, &str)> = options.iter().map(|(k, v)| (*k, v.as_str())).collect();
            let file = vec![0u8; size as usize];
            let mut h = Harness::new(&opts, file);
            for e in events {
                if h.outcome.is_some() {
                    break;
                }
                if e.is_empty() {
                    h.advance(Duration::from_secs(2));
                } else if let Ok(actions) = h.t.on_packet(h.now, &e) {
                    h.run(actions);
                }
            }
        }
    }
}
