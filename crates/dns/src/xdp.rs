//! The XDP answer path: `xdp/answer.bpf.c`, attached to the interface a
//! listener serves on, answers repeated IPv4 UDP queries in the driver
//! with the replies the UDP threads put in its `answers` map.
//!
//! The kernel program only matches bytes: a query's bytes after its id are
//! the key, the server's own reply (after the id) is the value, exactly
//! as [`crate::AnswerCache`] keys them, so an XDP answer is byte for byte
//! the one the socket path would send. Each reply carries the zones'
//! [`Server::generation`]; [`Server::reload`] moves the program's
//! generation on at once (through [`Offload::reloaded`]), so no stale
//! answer is sent after a reload returns. Misses, stale entries, IPv6,
//! IP options, fragments and oversized messages go to the socket.
//!
//! Why XDP: per query, receiving and sending through a UDP socket costs
//! several times what answering does (about 4.5 µs against well under
//! 1 µs here), and batching with `recvmmsg`/`sendmmsg` only shares out the
//! system calls. Knot DNS ships the same idea as its XDP mode.
//!
//! Why the object is committed: it needs clang's BPF target, which
//! building kumo should not; `scripts/build-xdp.sh` rebuilds it and a
//! test checks the committed bytes are what the source builds to.

use std::net::SocketAddrV4;
use std::sync::{Arc, Mutex};

use aya::maps::{Array, HashMap, MapData, PerCpuArray};
use aya::programs::{Xdp, XdpMode as AyaMode};
use aya::{Ebpf, Pod};

use crate::core::{Counters, Offload};
use crate::{Error, Server};

/// The program, built from `xdp/answer.bpf.c` by `scripts/build-xdp.sh`.
pub const OBJECT: &[u8] = include_bytes!("../xdp/answer.bpf.o");

// Must match answer.bpf.c.
const KEY_MAX: usize = 124;
const REPLY_MAX: usize = 504;
const PROGRAM: &str = "kumo_dns_answer";

#[repr(C)]
#[derive(Clone, Copy)]
struct Key {
    len: u16,
    pad: u16,
    bytes: [u8; KEY_MAX],
}

#[repr(C)]
#[derive(Clone, Copy)]
struct Answer {
    generation: u32,
    len: u16,
    nxdomain: u16,
    bytes: [u8; REPLY_MAX],
}

#[repr(C)]
#[derive(Clone, Copy, Default)]
struct Config {
    addr: u32,
    port: u16,
    pad: u16,
    generation: u32,
}

// SAFETY: plain `repr(C)` integers and byte arrays with no padding
// between fields; every bit pattern is valid.
unsafe impl Pod for Key {}
// SAFETY: as for Key.
unsafe impl Pod for Answer {}
// SAFETY: as for Key.
unsafe impl Pod for Config {}

/// The program's per-CPU counters, in answer.bpf.c's `enum stat` order.
const ANSWERED: u32 = 0;
const NXDOMAIN: u32 = 1;
const MISSED: u32 = 2;
const FAILED: u32 = 3;

/// How the program is attached.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum XdpMode {
    /// Native, falling back to generic where the driver refuses it; on a
    /// veth, generic (see `Native`).
    #[default]
    Auto,
    /// In the driver; refused by drivers without XDP support. On a veth,
    /// replies sent in XDP reach the peer only if the peer runs an XDP
    /// program too (it needs NAPI); otherwise they are lost.
    Native,
    /// In the kernel's generic path (after the packet buffer is made):
    /// works on every interface, saves less.
    Generic,
}

impl std::str::FromStr for XdpMode {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "auto" => Ok(XdpMode::Auto),
            "native" => Ok(XdpMode::Native),
            "generic" => Ok(XdpMode::Generic),
            other => Err(format!(
                "unknown xdp mode {other:?} (expected auto, native or generic)"
            )),
        }
    }
}

/// Where and how a listener attaches the XDP answer path.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct XdpConfig {
    /// The interface the listener's address is on.
    pub interface: String,
    pub mode: XdpMode,
}

/// What the program did, since it was attached.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct XdpCounters {
    /// Queries answered in XDP (`nxdomain` among them).
    pub answered: u64,
    pub nxdomain: u64,
    /// Queries to the listener not in the map (or stale): passed on.
    pub missed: u64,
    /// Answers the packet could not be reshaped for: passed on or dropped.
    pub failed: u64,
}

/// The attached program and its maps; detached when dropped.
pub struct XdpAnswers {
    interface: String,
    /// Native or Generic: how it was attached.
    mode: XdpMode,
    maps: Mutex<Maps>,
}

struct Maps {
    answers: HashMap<MapData, Key, Answer>,
    config: Array<MapData, Config>,
    stats: PerCpuArray<MapData, u64>,
    current: Config,
    /// Owns the program and its link: dropping it detaches.
    ebpf: Ebpf,
}

/// What the program did with a frame ([`XdpAnswers::run_on`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum XdpVerdict {
    Aborted,
    Drop,
    /// On to the kernel's stack (the socket).
    Pass,
    /// Sent back out, rewritten into the reply.
    Tx,
    Redirect,
}

impl XdpAnswers {
    /// Loads the program, attaches it to `cfg.interface` for queries to
    /// `addr`, and registers it with `server` for reloads and counters.
    pub fn attach(
        cfg: &XdpConfig,
        addr: SocketAddrV4,
        server: &Server,
    ) -> Result<Arc<XdpAnswers>, Error> {
        let fail = |reason: String| Error::Xdp {
            interface: cfg.interface.clone(),
            reason,
        };
        if cfg.interface.contains('\0') {
            return Err(fail("the interface name has a NUL byte".into()));
        }
        let mut xdp = XdpAnswers::load(&cfg.interface, addr, server.generation())?;
        let driver = driver(&cfg.interface);
        let modes: &[AyaMode] = match cfg.mode {
            XdpMode::Auto if driver.as_deref() == Some("veth") => &[AyaMode::Skb],
            XdpMode::Auto => &[AyaMode::Driver, AyaMode::Skb],
            XdpMode::Native => &[AyaMode::Driver],
            XdpMode::Generic => &[AyaMode::Skb],
        };
        let maps = xdp.maps.get_mut().unwrap_or_else(|e| e.into_inner());
        let program: &mut Xdp = maps
            .ebpf
            .program_mut(PROGRAM)
            .ok_or_else(|| fail(format!("the object has no program {PROGRAM}")))?
            .try_into()
            .map_err(|e| fail(format!("{e}")))?;
        let mut attached = None;
        let mut refusals = Vec::new();
        for &mode in modes {
            match program.attach(&cfg.interface, mode) {
                Ok(_) => {
                    attached = Some(mode);
                    break;
                }
                Err(e) => refusals.push(format!("{mode:?}: {e}")),
            }
        }
        let Some(mode) = attached else {
            return Err(fail(format!("attaching: {}", refusals.join("; "))));
        };
        tracing::debug!(interface = %cfg.interface, ?driver, ?mode, "dns xdp attached");
        xdp.mode = if mode == AyaMode::Skb {
            XdpMode::Generic
        } else {
            XdpMode::Native
        };
        let xdp = Arc::new(xdp);
        let offload: Arc<dyn Offload> = xdp.clone();
        server.add_offload(Arc::downgrade(&offload));
        // A reload while the program was being verified and attached (it
        // takes a few hundred ms) told no hook: take its generation now.
        // Registered first, read second, so no reload falls in between.
        xdp.reloaded(server.generation());
        Ok(xdp)
    }

    /// The program loaded into the kernel (verified) with its maps, for
    /// queries to `addr`, not attached anywhere: [`XdpAnswers::attach`]'s
    /// first half, and what [`XdpAnswers::run_on`] runs.
    pub fn load(label: &str, addr: SocketAddrV4, generation: u64) -> Result<XdpAnswers, Error> {
        let fail = |reason: String| Error::Xdp {
            interface: label.to_owned(),
            reason,
        };
        let mut ebpf = Ebpf::load(OBJECT).map_err(|e| fail(format!("loading: {e}")))?;
        let mut take = |name: &str| {
            ebpf.take_map(name)
                .ok_or_else(|| fail(format!("the program has no {name} map")))
        };
        let answers = HashMap::try_from(take("answers")?).map_err(|e| fail(e.to_string()))?;
        let mut config = Array::try_from(take("config")?).map_err(|e| fail(e.to_string()))?;
        let stats = PerCpuArray::try_from(take("stats")?).map_err(|e| fail(e.to_string()))?;
        let current = Config {
            addr: u32::from(*addr.ip()).to_be(),
            port: addr.port().to_be(),
            pad: 0,
            generation: generation as u32,
        };
        config
            .set(0, current, 0)
            .map_err(|e| fail(format!("config map: {e}")))?;
        let program: &mut Xdp = ebpf
            .program_mut(PROGRAM)
            .ok_or_else(|| fail(format!("the object has no program {PROGRAM}")))?
            .try_into()
            .map_err(|e| fail(format!("{e}")))?;
        program
            .load()
            .map_err(|e| fail(format!("loading the program: {e}")))?;
        Ok(XdpAnswers {
            interface: label.to_owned(),
            mode: XdpMode::Auto,
            maps: Mutex::new(Maps {
                answers,
                config,
                stats,
                current,
                ebpf,
            }),
        })
    }

    /// Runs the program once on `frame` (an Ethernet frame) in the kernel
    /// (`BPF_PROG_TEST_RUN`), as if it had come in: its verdict and the
    /// frame as it would leave. For tests and fuzzing of the program.
    pub fn run_on(&self, frame: &[u8]) -> std::io::Result<(XdpVerdict, Vec<u8>)> {
        use std::os::fd::{AsFd, AsRawFd};
        let maps = self.maps.lock().unwrap_or_else(|e| e.into_inner());
        let program = maps
            .ebpf
            .program(PROGRAM)
            .ok_or_else(|| std::io::Error::other("no program"))?;
        let fd = program
            .fd()
            .map_err(std::io::Error::other)?
            .as_fd()
            .as_raw_fd();
        let mut out = vec![0u8; 4096];
        // union bpf_attr, its `test` member (BPF_PROG_TEST_RUN).
        #[repr(C)]
        #[derive(Default)]
        struct TestRun {
            prog_fd: u32,
            retval: u32,
            data_size_in: u32,
            data_size_out: u32,
            data_in: u64,
            data_out: u64,
            repeat: u32,
            duration: u32,
            ctx_size_in: u32,
            ctx_size_out: u32,
            ctx_in: u64,
            ctx_out: u64,
            flags: u32,
            cpu: u32,
            batch_size: u32,
            pad: u32,
        }
        const BPF_PROG_TEST_RUN: libc::c_long = 10;
        let mut attr = TestRun {
            prog_fd: fd as u32,
            data_size_in: frame.len() as u32,
            data_size_out: out.len() as u32,
            data_in: frame.as_ptr() as u64,
            data_out: out.as_mut_ptr() as u64,
            repeat: 1,
            ..TestRun::default()
        };
        // SAFETY: bpf(2) with a zero-padded attr whose pointers are live
        // for the call and whose sizes are theirs.
        let rc = unsafe {
            libc::syscall(
                libc::SYS_bpf,
                BPF_PROG_TEST_RUN,
                &raw mut attr,
                size_of::<TestRun>(),
            )
        };
        if rc < 0 {
            return Err(std::io::Error::last_os_error());
        }
        out.truncate(attr.data_size_out as usize);
        let verdict = match attr.retval {
            0 => XdpVerdict::Aborted,
            1 => XdpVerdict::Drop,
            2 => XdpVerdict::Pass,
            3 => XdpVerdict::Tx,
            _ => XdpVerdict::Redirect,
        };
        Ok((verdict, out))
    }

    pub fn interface(&self) -> &str {
        &self.interface
    }

    /// [`XdpMode::Native`] or [`XdpMode::Generic`], as attached.
    pub fn mode(&self) -> XdpMode {
        self.mode
    }

    /// Puts a reply the server sent (under zones of `generation`) in the
    /// map, if it fits; answers of an older generation are never sent.
    pub fn remember(&self, generation: u64, query: &[u8], reply: &[u8]) {
        if query.len() < 12 || reply.len() < 12 {
            return;
        }
        let (q, r) = (&query[2..], &reply[2..]);
        if q.len() > KEY_MAX || r.len() > REPLY_MAX {
            return;
        }
        let mut key = Key {
            len: q.len() as u16,
            pad: 0,
            bytes: [0; KEY_MAX],
        };
        key.bytes[..q.len()].copy_from_slice(q);
        let mut answer = Answer {
            generation: generation as u32,
            len: r.len() as u16,
            nxdomain: u16::from(reply[3] & 0x0f == 3),
            bytes: [0; REPLY_MAX],
        };
        answer.bytes[..r.len()].copy_from_slice(r);
        let mut maps = self.maps.lock().unwrap_or_else(|e| e.into_inner());
        if let Err(e) = maps.answers.insert(key, answer, 0) {
            tracing::debug!(interface = %self.interface, error = %e, "dns xdp answer map");
        }
    }

    pub fn counters(&self) -> XdpCounters {
        let maps = self.maps.lock().unwrap_or_else(|e| e.into_inner());
        let sum = |i: u32| {
            maps.stats
                .get(&i, 0)
                .map(|per_cpu| per_cpu.iter().sum())
                .unwrap_or(0)
        };
        XdpCounters {
            answered: sum(ANSWERED),
            nxdomain: sum(NXDOMAIN),
            missed: sum(MISSED),
            failed: sum(FAILED),
        }
    }
}

/// The interface's driver as `ethtool -i` names it (`veth`, `virtio_net`,
/// …), or `None` if the kernel does not say.
fn driver(interface: &str) -> Option<String> {
    // struct ethtool_drvinfo: cmd, then driver[32] and more fields.
    #[repr(C)]
    struct DrvInfo {
        cmd: u32,
        driver: [u8; 32],
        rest: [u8; 160],
    }
    const ETHTOOL_GDRVINFO: u32 = 3;
    let name = interface.as_bytes();
    if name.len() >= libc::IFNAMSIZ {
        return None;
    }
    let mut info = DrvInfo {
        cmd: ETHTOOL_GDRVINFO,
        driver: [0; 32],
        rest: [0; 160],
    };
    // SAFETY: all-zero is a valid ifreq.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    for (d, s) in req.ifr_name.iter_mut().zip(name) {
        *d = *s as libc::c_char;
    }
    req.ifr_ifru.ifru_data = (&raw mut info).cast();
    // SAFETY: a datagram socket only for the ioctl, closed below.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return None;
    }
    // SAFETY: SIOCETHTOOL with an ifreq whose data points at a drvinfo
    // that outlives the call.
    let rc = unsafe { libc::ioctl(fd, libc::SIOCETHTOOL, &raw mut req) };
    // SAFETY: fd is ours.
    unsafe { libc::close(fd) };
    if rc != 0 {
        return None;
    }
    let end = info.driver.iter().position(|&b| b == 0).unwrap_or(32);
    Some(String::from_utf8_lossy(&info.driver[..end]).into_owned())
}

impl Offload for XdpAnswers {
    fn reloaded(&self, generation: u64) {
        let mut maps = self.maps.lock().unwrap_or_else(|e| e.into_inner());
        // Only forwards: attach's catch-up call may arrive after a newer
        // reload's own call.
        let generation = generation as u32;
        if generation < maps.current.generation {
            return;
        }
        maps.current.generation = generation;
        let current = maps.current;
        if let Err(e) = maps.config.set(0, current, 0) {
            // Stale answers would be sent: port 0 matches no query.
            tracing::error!(interface = %self.interface, error = %e, "dns xdp generation");
            let none = Config::default();
            let _ = maps.config.set(0, none, 0);
        }
    }

    fn counters(&self) -> Counters {
        let c = XdpAnswers::counters(self);
        Counters {
            queries: c.answered,
            answered: c.answered,
            nxdomain: c.nxdomain,
            offloaded: c.answered,
            offload_missed: c.missed,
            ..Counters::default()
        }
    }
}
