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
            r = sock.recv_from(&mut buf) => match r {
                Ok((n, SocketAddr::V4(src))) => server.handle(&buf[..n], RecvMeta { src, local_addr }, SystemTime::now()),
                Ok((_, SocketAddr::V6(_))) => continue,
                Err(e) => {
                    tracing::warn!(interface, error = %e, "dhcp receive failed");
                    continue;
                }
            },
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

async fn perform(actions: Vec<Action>, sock: &UdpSocket, journal: &mut File, path: &Path) {
    let mut unsynced = false;
    let mut journal_failed = false;
    for action in actions {
        match action {
            Action::Persist(change) => {
                let line = encode_record(&change) + "\n";
                if let Err(e) = journal.write_all(line.as_bytes()) {
                    tracing::error!(journal = %path.display(), error = %e, "lease journal append failed");
                    journal_failed = true;
                }
                unsynced = true;
            }
            Action::Send { to, payload, .. } => {
                if unsynced {
                    unsynced = false;
                    if let Err(e) = journal.sync_data() {
                        tracing::error!(journal = %path.display(), error = %e, "lease journal fsync failed");
                        journal_failed = true;
                    }
                }
                if journal_failed {
                    // The lease is not durable: an ACK now could be double-assigned after a crash.
                    tracing::error!(%to, "reply withheld: lease not durable");
                    continue;
                }
                if let Err(e) = sock.send_to(&payload, SocketAddr::V4(to)).await {
                    tracing::warn!(%to, error = %e, "dhcp send failed");
                }
            }
            Action::Log { level, message } => match level {
                LogLevel::Debug => tracing::debug!("{message}"),
                LogLevel::Info => tracing::info!("{message}"),
                LogLevel::Warn => tracing::warn!("{message}"),
            },
        }
    }
    if unsynced {
        if let Err(e) = journal.sync_data() {
            tracing::error!(journal = %path.display(), error = %e, "lease journal fsync failed");
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
