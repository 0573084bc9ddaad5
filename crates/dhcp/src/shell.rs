//! The I/O shell around [`Server`]: socket, lease journal, real clock.

use std::fs::{File, OpenOptions};
use std::future::Future;
use std::io::Write;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use socket2::{Domain, Protocol, Socket, Type};
use tokio::net::UdpSocket;
use tokio::sync::mpsc;

use crate::{
    compact, encode_record, replay, Action, Counters, Error, Lease, LogLevel, RecvMeta, Server,
    ServerConfig,
};

/// Reads the journal at `path` (missing means empty), rewrites it compacted
/// (atomically: temp file, fsync, rename, fsync directory) and returns its
/// leases.
pub fn load_journal(path: &Path) -> Result<Vec<Lease>, Error> {
    let err = |source| Error::Journal {
        path: path.to_path_buf(),
        source,
    };
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
        Err(e) => return Err(err(e)),
    };
    let leases = replay(&text)?;
    let tmp = path.with_extension("compacting");
    {
        let mut f = File::create(&tmp).map_err(err)?;
        f.write_all(compact(&leases).as_bytes()).map_err(err)?;
        f.sync_all().map_err(err)?;
    }
    std::fs::rename(&tmp, path).map_err(err)?;
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        File::open(dir).and_then(|d| d.sync_all()).map_err(err)?;
    }
    Ok(leases)
}

/// Serves DHCP on `interface` until `shutdown` completes.
///
/// Binds 0.0.0.0:67 to the interface (SO_BINDTODEVICE, so several
/// interfaces can each run one server), restores leases from
/// `lease_journal`, appends every lease change to it and fsyncs before the
/// reply that depends on it, expires leases once a second, and applies
/// configurations arriving on `reload` (an invalid one is logged and
/// ignored).
pub async fn run(
    config: ServerConfig,
    lease_journal: &Path,
    interface: &str,
    shutdown: impl Future<Output = ()>,
    reload: mpsc::Receiver<ServerConfig>,
) -> Result<(), Error> {
    let (counters, _) = tokio::sync::watch::channel(Counters::default());
    run_observed(config, lease_journal, interface, shutdown, reload, counters).await
}

/// [`run`], also publishing the server's counters on `counters` once a
/// second (for metrics: malformed, rate-limited and pool-exhausted drops
/// among them).
pub async fn run_observed(
    config: ServerConfig,
    lease_journal: &Path,
    interface: &str,
    shutdown: impl Future<Output = ()>,
    mut reload: mpsc::Receiver<ServerConfig>,
    counters: tokio::sync::watch::Sender<Counters>,
) -> Result<(), Error> {
    let leases = load_journal(lease_journal)?;
    let mut server = Server::new(config, leases)?;
    let journal_err = |source| Error::Journal {
        path: lease_journal.to_path_buf(),
        source,
    };
    let journal = OpenOptions::new()
        .create(true)
        .append(true)
        .open(lease_journal)
        .map_err(journal_err)?;
    let sock = Arc::new(bind(interface).map_err(|source| Error::Socket {
        interface: interface.to_string(),
        source,
    })?);
    // Lease commits run beside the receive loop: while one batch's fsync is
    // under way, the next packets are handled.
    let (commits, pending) = mpsc::channel(COMMIT_QUEUE);
    let committer = tokio::spawn(committer(
        pending,
        journal,
        sock.clone(),
        lease_journal.to_path_buf(),
    ));
    tracing::info!(interface, journal = %lease_journal.display(), leases = server.leases().len(), "dhcp server listening on port 67");
    let mut local_addr = local_addr(interface, server.config());
    let mut buf = vec![0u8; 4096];
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tokio::pin!(shutdown);
    loop {
        let actions = tokio::select! {
            _ = &mut shutdown => break,
            r = sock.recv_from(&mut buf) => {
                let mut actions = Vec::new();
                let mut received = Some(r);
                let mut batch = 0;
                // Group commit: every packet already queued is handled now,
                // so one fsync covers all their leases.
                while let Some(r) = received.take() {
                    match r {
                        Ok((n, SocketAddr::V4(src))) => actions.extend(server.handle(
                            &buf[..n],
                            RecvMeta { src, local_addr },
                            SystemTime::now(),
                        )),
                        Ok((_, SocketAddr::V6(_))) => {}
                        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                        Err(e) => tracing::warn!(interface, error = %e, "dhcp receive failed"),
                    }
                    batch += 1;
                    if batch < MAX_BATCH {
                        received = Some(sock.try_recv_from(&mut buf));
                    }
                }
                actions
            }
            _ = tick.tick() => {
                local_addr = local_addr_or(interface, server.config(), local_addr);
                counters.send_replace(server.counters().clone());
                server.expire(SystemTime::now())
            }
            Some(cfg) = reload.recv() => match server.reconfigure(cfg) {
                Ok(actions) => {
                    local_addr = local_addr_or(interface, server.config(), local_addr);
                    tracing::info!(interface, "dhcp configuration reloaded");
                    actions
                }
                Err(e) => {
                    tracing::warn!(interface, error = %e, "dhcp reload refused, keeping the old configuration");
                    continue;
                }
            },
        };
        let (now, commit) = plan(actions);
        for (to, payload) in now {
            send(&sock, to, &payload).await;
        }
        if !commit.is_empty() && commits.send(commit).await.is_err() {
            tracing::error!(interface, "lease committer stopped");
            break;
        }
    }
    // Whatever was handled is committed (and answered) before returning.
    drop(commits);
    let _ = committer.await;
    tracing::info!(interface, "dhcp server stopped");
    Ok(())
}

/// Packets handled before one journal commit: enough to amortise an fsync
/// under load, few enough that the first reply of a batch is not held long.
const MAX_BATCH: usize = 256;
/// Commits waiting for the committer before the receive loop waits too.
const COMMIT_QUEUE: usize = 1024;

/// A batch's lease records and the replies that must wait for them.
#[derive(Debug, Default, PartialEq, Eq)]
struct Commit {
    /// Journal lines, each ending in a newline.
    records: String,
    replies: Vec<(SocketAddrV4, Vec<u8>)>,
}

impl Commit {
    fn is_empty(&self) -> bool {
        self.records.is_empty() && self.replies.is_empty()
    }
}

/// Splits one batch of actions (from one or more packets): replies before
/// the batch's first `Persist` depend on no lease change and may go at
/// once; every later reply waits for the batch's records to be durable.
/// Logs are emitted here.
fn plan(actions: Vec<Action>) -> (Vec<(SocketAddrV4, Vec<u8>)>, Commit) {
    let mut now = Vec::new();
    let mut commit = Commit::default();
    for action in actions {
        match action {
            Action::Persist(change) => {
                commit.records.push_str(&encode_record(&change));
                commit.records.push('\n');
            }
            Action::Send { to, payload, .. } if commit.records.is_empty() => {
                now.push((to, payload))
            }
            Action::Send { to, payload, .. } => commit.replies.push((to, payload)),
            Action::Log { level, message } => match level {
                LogLevel::Debug => tracing::debug!("{message}"),
                LogLevel::Info => tracing::info!("{message}"),
                LogLevel::Warn => tracing::warn!("{message}"),
            },
        }
    }
    (now, commit)
}

/// Group commit: takes every commit queued so far, appends all their
/// records with one write, makes them durable with one fsync (on the
/// blocking pool, so the receive loop runs meanwhile), then sends their
/// replies, in order. Sending later than the core asked is always safe;
/// sending before the lease is durable is not, so if the journal fails the
/// group's replies are withheld (an ACK now could be double-assigned after
/// a crash) and the next group tries again.
async fn committer(
    mut pending: mpsc::Receiver<Commit>,
    mut journal: File,
    sock: Arc<UdpSocket>,
    path: PathBuf,
) {
    while let Some(first) = pending.recv().await {
        let mut group = vec![first];
        while let Ok(more) = pending.try_recv() {
            group.push(more);
        }
        let Some((file, durable)) = commit_group(&group, journal, &path).await else {
            tracing::error!(journal = %path.display(), "lease journal writer cancelled; replies withheld");
            return;
        };
        journal = file;
        for (to, payload) in group.iter().flat_map(|c| &c.replies) {
            if durable {
                send(&sock, *to, payload).await;
            } else {
                tracing::error!(%to, "reply withheld: lease not durable");
            }
        }
    }
}

/// Appends and fsyncs the group's records; whether they are durable.
async fn commit_group(group: &[Commit], journal: File, path: &Path) -> Option<(File, bool)> {
    let records: String = group.iter().map(|c| c.records.as_str()).collect();
    if records.is_empty() {
        return Some((journal, true));
    }
    let path = path.to_path_buf();
    let write = move || {
        let mut journal = journal;
        let r = journal
            .write_all(records.as_bytes())
            .map_err(|e| ("lease journal append failed", e))
            .and_then(|()| {
                journal
                    .sync_data()
                    .map_err(|e| ("lease journal fsync failed", e))
            });
        if let Err((what, e)) = &r {
            tracing::error!(journal = %path.display(), error = %e, "{what}");
        }
        (journal, r.is_ok())
    };
    // None only when the runtime is shutting down.
    tokio::task::spawn_blocking(write).await.ok()
}

async fn send(sock: &UdpSocket, to: SocketAddrV4, payload: &[u8]) {
    if let Err(e) = sock.send_to(payload, SocketAddr::V4(to)).await {
        tracing::warn!(%to, error = %e, "dhcp send failed");
    }
}

fn bind(interface: &str) -> std::io::Result<UdpSocket> {
    let s = Socket::new(Domain::IPV4, Type::DGRAM, Some(Protocol::UDP))?;
    s.set_reuse_address(true)?;
    s.set_broadcast(true)?;
    s.bind_device(Some(interface.as_bytes()))?;
    s.bind(&SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 67).into())?;
    s.set_nonblocking(true)?;
    UdpSocket::from_std(s.into())
}

fn local_addr_or(
    interface: &str,
    config: &ServerConfig,
    old: Option<Ipv4Addr>,
) -> Option<Ipv4Addr> {
    local_addr(interface, config).or(old)
}

/// The interface's address inside a configured subnet, else its first one.
fn local_addr(interface: &str, config: &ServerConfig) -> Option<Ipv4Addr> {
    let addrs = interface_addrs(interface);
    addrs
        .iter()
        .copied()
        .find(|a| config.subnets.iter().any(|s| s.contains(*a)))
        .or_else(|| addrs.first().copied())
}

/// The IPv4 addresses of `interface`, in the order the kernel lists them.
pub fn interface_addrs(interface: &str) -> Vec<Ipv4Addr> {
    let mut out = Vec::new();
    let mut head: *mut libc::ifaddrs = std::ptr::null_mut();
    // SAFETY: getifaddrs fills `head` with a list we free below; every node
    // is read only while the list is alive, name and addr checked for null.
    unsafe {
        if libc::getifaddrs(&mut head) != 0 {
            return out;
        }
        let mut cur = head;
        while !cur.is_null() {
            let ifa = &*cur;
            cur = ifa.ifa_next;
            if ifa.ifa_addr.is_null() || ifa.ifa_name.is_null() {
                continue;
            }
            if i32::from((*ifa.ifa_addr).sa_family) != libc::AF_INET {
                continue;
            }
            if std::ffi::CStr::from_ptr(ifa.ifa_name).to_bytes() != interface.as_bytes() {
                continue;
            }
            let sin = &*(ifa.ifa_addr as *const libc::sockaddr_in);
            out.push(Ipv4Addr::from(u32::from_be(sin.sin_addr.s_addr)));
        }
        libc::freeifaddrs(head);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{LeaseChange, MacAddr};

    fn bind(n: u8) -> Action {
        Action::Persist(LeaseChange::Bind(Lease {
            mac: MacAddr([0x52, 0x54, 0, 0, 0, n]),
            ip: Ipv4Addr::new(10, 0, 0, n),
            expires_unix_ms: 1_000_000,
            hostname: None,
        }))
    }

    fn send(to: SocketAddr, payload: &str) -> Action {
        let SocketAddr::V4(to) = to else {
            unreachable!()
        };
        Action::Send {
            to,
            broadcast: false,
            payload: payload.as_bytes().to_vec(),
        }
    }

    /// The datagrams that arrive within a moment.
    fn received(rx: &std::net::UdpSocket) -> Vec<String> {
        rx.set_read_timeout(Some(Duration::from_millis(300)))
            .unwrap();
        let mut out = Vec::new();
        let mut buf = [0u8; 64];
        while let Ok(n) = rx.recv(&mut buf) {
            out.push(String::from_utf8_lossy(&buf[..n]).into_owned());
        }
        out
    }

    /// Two packets' worth of actions, as one batch holds them.
    fn batch(to: SocketAddr) -> Vec<Action> {
        vec![
            send(to, "nak-first"),
            bind(1),
            send(to, "ack-1"),
            bind(2),
            send(to, "ack-2"),
        ]
    }

    #[test]
    fn replies_after_a_lease_change_wait_for_the_commit() {
        let to: SocketAddr = "127.0.0.1:68".parse().unwrap();
        let (now, commit) = plan(batch(to));
        let texts = |v: &[(SocketAddrV4, Vec<u8>)]| {
            v.iter()
                .map(|(_, p)| String::from_utf8_lossy(p).into_owned())
                .collect::<Vec<_>>()
        };
        assert_eq!(texts(&now), ["nak-first"]);
        assert_eq!(texts(&commit.replies), ["ack-1", "ack-2"]);
        assert_eq!(commit.records.lines().count(), 2);
        // A batch without lease changes commits nothing.
        let (now, commit) = plan(vec![send(to, "offer")]);
        assert_eq!(texts(&now), ["offer"]);
        assert!(commit.is_empty());
    }

    /// Runs the committer over `commits` queued at once (one group).
    async fn commit_all(commits: Vec<Commit>, journal: File, path: &Path, sock: Arc<UdpSocket>) {
        let (tx, rx) = mpsc::channel(16);
        for c in commits {
            tx.send(c).await.unwrap();
        }
        drop(tx);
        committer(rx, journal, sock, path.to_path_buf()).await;
    }

    #[tokio::test]
    async fn group_commit_writes_every_lease_then_sends_every_reply() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("leases.journal");
        let journal = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .unwrap();
        let rx = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let to = rx.local_addr().unwrap();
        let sock = Arc::new(UdpSocket::bind("127.0.0.1:0").await.unwrap());
        let (_, first) = plan(batch(to));
        let (_, second) = plan(vec![bind(3), send(to, "ack-3")]);
        commit_all(vec![first, second], journal, &path, sock).await;
        assert_eq!(received(&rx), ["ack-1", "ack-2", "ack-3"]);
        let leases = replay(&std::fs::read_to_string(&path).unwrap()).unwrap();
        let ips: Vec<_> = leases.iter().map(|l| l.ip.octets()[3]).collect();
        assert_eq!(ips, [1, 2, 3]);
    }

    #[tokio::test]
    async fn group_commit_withholds_replies_whose_lease_is_not_durable() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("leases.journal");
        std::fs::write(&path, "").unwrap();
        // Read-only: the append fails, as on a full or failing disk.
        let journal = File::open(&path).unwrap();
        let rx = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let sock = Arc::new(UdpSocket::bind("127.0.0.1:0").await.unwrap());
        let (_, commit) = plan(batch(rx.local_addr().unwrap()));
        commit_all(vec![commit], journal, &path, sock).await;
        assert!(received(&rx).is_empty());
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "");
    }
}
