//! The I/O shell around [`Server`]: socket, lease journal, real clock.

use std::fs::{File, OpenOptions};
use std::future::Future;
use std::io::Write;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::path::Path;
use std::time::{Duration, SystemTime};

use socket2::{Domain, Protocol, Socket, Type};
use tokio::net::UdpSocket;
use tokio::sync::mpsc;

use crate::{
    compact, encode_record, replay, Action, Error, Lease, LogLevel, RecvMeta, Server, ServerConfig,
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
    mut reload: mpsc::Receiver<ServerConfig>,
) -> Result<(), Error> {
    let leases = load_journal(lease_journal)?;
    let mut server = Server::new(config, leases)?;
    let journal_err = |source| Error::Journal {
        path: lease_journal.to_path_buf(),
        source,
    };
    let mut journal = OpenOptions::new()
        .create(true)
        .append(true)
        .open(lease_journal)
        .map_err(journal_err)?;
    let sock = bind(interface).map_err(|source| Error::Socket {
        interface: interface.to_string(),
        source,
    })?;
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
        perform(actions, &sock, &mut journal, lease_journal).await;
    }
    tracing::info!(interface, "dhcp server stopped");
    Ok(())
}

/// Packets handled before one journal commit: enough to amortise an fsync
/// under load, few enough that the first reply of a batch is not held long.
const MAX_BATCH: usize = 256;

/// Performs one batch of actions (from one or more packets) as one commit:
/// every `Persist` is appended with a single write and made durable with a
/// single fsync, and only then are the replies sent. Sending later than the
/// core asked is always safe; sending before the lease is durable is not.
/// If the journal fails, replies that followed a `Persist` are withheld
/// (an ACK now could be double-assigned after a crash); replies before the
/// first `Persist` depend on nothing in this batch and are sent.
async fn perform(actions: Vec<Action>, sock: &UdpSocket, journal: &mut File, path: &Path) {
    let mut records = String::new();
    let mut sends = Vec::new();
    for action in actions {
        match action {
            Action::Persist(change) => {
                records.push_str(&encode_record(&change));
                records.push('\n');
            }
            Action::Send { to, payload, .. } => sends.push((to, payload, !records.is_empty())),
            Action::Log { level, message } => match level {
                LogLevel::Debug => tracing::debug!("{message}"),
                LogLevel::Info => tracing::info!("{message}"),
                LogLevel::Warn => tracing::warn!("{message}"),
            },
        }
    }
    let mut durable = true;
    if !records.is_empty() {
        if let Err(e) = journal.write_all(records.as_bytes()) {
            tracing::error!(journal = %path.display(), error = %e, "lease journal append failed");
            durable = false;
        } else if let Err(e) = journal.sync_data() {
            tracing::error!(journal = %path.display(), error = %e, "lease journal fsync failed");
            durable = false;
        }
    }
    for (to, payload, needs_durable) in sends {
        if needs_durable && !durable {
            tracing::error!(%to, "reply withheld: lease not durable");
            continue;
        }
        if let Err(e) = sock.send_to(&payload, SocketAddr::V4(to)).await {
            tracing::warn!(%to, error = %e, "dhcp send failed");
        }
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

fn interface_addrs(interface: &str) -> Vec<Ipv4Addr> {
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

    /// Two packets' worth of actions, as one group commit handles them.
    fn batch(to: SocketAddr) -> Vec<Action> {
        vec![
            send(to, "nak-first"),
            bind(1),
            send(to, "ack-1"),
            bind(2),
            send(to, "ack-2"),
        ]
    }

    #[tokio::test]
    async fn group_commit_writes_every_lease_then_sends_every_reply() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("leases.journal");
        let mut journal = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .unwrap();
        let rx = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let sock = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        perform(batch(rx.local_addr().unwrap()), &sock, &mut journal, &path).await;
        assert_eq!(received(&rx), ["nak-first", "ack-1", "ack-2"]);
        let leases = replay(&std::fs::read_to_string(&path).unwrap()).unwrap();
        let ips: Vec<_> = leases.iter().map(|l| l.ip).collect();
        assert_eq!(ips, [Ipv4Addr::new(10, 0, 0, 1), Ipv4Addr::new(10, 0, 0, 2)]);
    }

    #[tokio::test]
    async fn group_commit_withholds_replies_whose_lease_is_not_durable() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("leases.journal");
        std::fs::write(&path, "").unwrap();
        // Read-only: the append fails, as on a full or failing disk.
        let mut journal = File::open(&path).unwrap();
        let rx = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let sock = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        perform(batch(rx.local_addr().unwrap()), &sock, &mut journal, &path).await;
        // The reply before the batch's first lease depends on none of them.
        assert_eq!(received(&rx), ["nak-first"]);
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "");
    }
}
