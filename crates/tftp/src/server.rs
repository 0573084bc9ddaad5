//! The tokio shell: sockets, files and timers around the pure core.

use std::collections::{HashMap, VecDeque};
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use tokio::io::{AsyncRead, AsyncReadExt, BufReader};
use tokio::net::UdpSocket;
use tokio::sync::mpsc;

use crate::options::Limits;
use crate::packet::{encode_error, error_code};
use crate::request::{classify, Incoming, ReadRequest};
use crate::resolver::FileResolver;
use crate::transfer::{Action, Outcome, Transfer};
use crate::TftpError;

macro_rules! counters {
    ($($(#[$m:meta])* $name:ident,)*) => {
        /// Live counters, shared with the server's tasks.
        #[derive(Debug, Default)]
        pub struct Counters { $($name: AtomicU64,)* }

        /// A copy of the counters at one moment.
        #[derive(Clone, Debug, Default, PartialEq, Eq)]
        pub struct CounterSnapshot { $($(#[$m])* pub $name: u64,)* }

        impl Counters {
            pub fn snapshot(&self) -> CounterSnapshot {
                CounterSnapshot { $($name: self.$name.load(Ordering::Relaxed),)* }
            }
        }
    };
}

counters! {
    /// Read requests accepted (a transfer was started or refused by the resolver).
    requests,
    /// RRQs from a client TID that already has a transfer (its retransmitted RRQ).
    duplicate_requests,
    /// Transfers in progress now (a gauge, not a total).
    transfers_active,
    transfers_completed,
    /// Transfers the client ended right after the OACK with error 0 or 8
    /// (UEFI's tsize probe).
    transfers_declined,
    /// Transfers that timed out, were aborted by the client or failed reading.
    transfers_failed,
    /// Refused: write requests.
    write_refused,
    /// Refused: unsupported mode.
    mode_refused,
    /// Refused: path traversal, symlinks out of the root, non-files.
    access_violations,
    not_found,
    /// Datagrams that did not parse; dropped.
    malformed,
    /// Well-formed datagrams of the wrong kind for where they arrived; dropped.
    unexpected,
    /// Datagrams on a transfer socket from another TID (answered with error 5).
    unknown_tid,
    /// DATA/OACK packets sent again.
    retransmits,
    /// File bytes acknowledged by clients in completed transfers.
    bytes_sent,
}

impl Counters {
    fn inc(c: &AtomicU64) {
        c.fetch_add(1, Ordering::Relaxed);
    }

    fn count_drop(&self, e: &TftpError) {
        match e {
            TftpError::Malformed(_) => Self::inc(&self.malformed),
            _ => Self::inc(&self.unexpected),
        }
    }

    fn count_refusal(&self, e: &TftpError) {
        match e {
            TftpError::WriteRefused { .. } => Self::inc(&self.write_refused),
            TftpError::UnsupportedMode { .. } => Self::inc(&self.mode_refused),
            TftpError::NotFound { .. } => Self::inc(&self.not_found),
            TftpError::AccessViolation { .. } => Self::inc(&self.access_violations),
            e if e.code() == error_code::ACCESS_VIOLATION => Self::inc(&self.access_violations),
            _ => Self::inc(&self.transfers_failed),
        }
    }
}

/// A read-only TFTP server bound to one UDP address.
pub struct Server {
    socket: UdpSocket,
    local: SocketAddr,
    shared: Arc<Shared>,
}

struct Shared {
    resolver: Arc<dyn FileResolver>,
    limits: Limits,
    counters: Arc<Counters>,
    /// Client TIDs with a task serving them, and how to hand that task a
    /// further request from the same TID.
    active: Mutex<HashMap<SocketAddr, mpsc::Sender<ReadRequest>>>,
}

impl Server {
    /// Binds the well-known socket (port 69 in production; tests use 0).
    pub async fn bind(
        addr: SocketAddr,
        resolver: Arc<dyn FileResolver>,
        limits: Limits,
    ) -> Result<Server, TftpError> {
        let socket = UdpSocket::bind(addr)
            .await
            .map_err(|source| TftpError::Socket { addr, source })?;
        let local = socket
            .local_addr()
            .map_err(|source| TftpError::Socket { addr, source })?;
        Ok(Server {
            socket,
            local,
            shared: Arc::new(Shared {
                resolver,
                limits,
                counters: Arc::default(),
                active: Mutex::default(),
            }),
        })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.local
    }

    pub fn counters(&self) -> Arc<Counters> {
        self.shared.counters.clone()
    }

    /// Serves until the future is dropped or the socket fails. Each client
    /// TID is served by its own task on a new ephemeral socket (the server's
    /// TID for that transfer); transfers under way when this future is
    /// dropped run to their end. The ephemeral sockets bind the listening
    /// address's IP, so a server bound to `0.0.0.0` answers from the address
    /// the kernel routes by, which is right unless the host is multi-homed
    /// on one subnet.
    pub async fn run(self) -> Result<(), TftpError> {
        let mut buf = vec![0u8; 65536];
        loop {
            let (n, peer) = match self.socket.recv_from(&mut buf).await {
                Ok(r) => r,
                // ICMP errors from earlier sends surface here on some
                // systems; they concern one peer, not the server.
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => continue,
                Err(source) => {
                    return Err(TftpError::Socket {
                        addr: self.local,
                        source,
                    })
                }
            };
            let counters = &self.shared.counters;
            match classify(&buf[..n]) {
                Incoming::Drop(e) => {
                    counters.count_drop(&e);
                    tracing::debug!(%peer, error = %e, "dropped datagram");
                }
                Incoming::Refuse(e) => {
                    counters.count_refusal(&e);
                    tracing::info!(%peer, error = %e, "refused request");
                    let local_ip = self.local.ip();
                    tokio::spawn(async move {
                        if let Ok(s) = UdpSocket::bind((local_ip, 0)).await {
                            let _ = s.send_to(&e.to_packet(), peer).await;
                        }
                    });
                }
                Incoming::Read(req) => {
                    let mut active = self.shared.active.lock().unwrap();
                    if let Some(tx) = active.get(&peer) {
                        // The peer's task decides: its client's retransmitted
                        // RRQ, or a new request after the transfer ended.
                        if tx.try_send(req).is_err() {
                            Counters::inc(&counters.duplicate_requests);
                        }
                        continue;
                    }
                    let (tx, rx) = mpsc::channel(4);
                    active.insert(peer, tx);
                    drop(active);
                    let shared = self.shared.clone();
                    let local_ip = self.local.ip();
                    tokio::spawn(serve_peer(shared, local_ip, peer, req, rx));
                }
            }
        }
    }
}

/// Removes the peer from the active map if its task panics or is dropped.
struct ActiveGuard {
    shared: Arc<Shared>,
    peer: SocketAddr,
    armed: bool,
}

impl Drop for ActiveGuard {
    fn drop(&mut self) {
        if self.armed {
            self.shared.active.lock().unwrap().remove(&self.peer);
        }
    }
}

/// Serves one client TID: its request, and any later request from the same
/// TID that arrives once a transfer has ended (UEFI asks again after its
/// tsize probe, tftp-hpa reuses its port for several gets).
async fn serve_peer(
    shared: Arc<Shared>,
    local_ip: IpAddr,
    peer: SocketAddr,
    req: ReadRequest,
    mut rx: mpsc::Receiver<ReadRequest>,
) {
    let mut guard = ActiveGuard {
        shared: shared.clone(),
        peer,
        armed: true,
    };
    let mut next = Some(req);
    while let Some(req) = next.take() {
        Counters::inc(&shared.counters.requests);
        let (result, pending) = serve_transfer(&shared, local_ip, peer, &req, &mut rx).await;
        next = pending;
        if next.is_none() {
            // Leave the map under its lock, so a request the listener queued
            // before that is still served, and later ones start a new task.
            let mut active = shared.active.lock().unwrap();
            next = rx.try_recv().ok();
            if next.is_none() {
                active.remove(&peer);
                guard.armed = false;
            }
        }
        record(&shared.counters, peer, &req, result);
    }
}

enum Ended {
    Outcome(Outcome),
    Refused(TftpError),
}

fn record(counters: &Counters, peer: SocketAddr, req: &ReadRequest, ended: Ended) {
    match ended {
        Ended::Refused(e) => {
            counters.count_refusal(&e);
            tracing::info!(%peer, error = %e, "refused request");
        }
        Ended::Outcome(Outcome::Complete { bytes }) => {
            Counters::inc(&counters.transfers_completed);
            counters.bytes_sent.fetch_add(bytes, Ordering::Relaxed);
            tracing::info!(%peer, path = %req.raw_path, bytes, "transfer complete");
        }
        Ended::Outcome(Outcome::Declined { code, message }) => {
            Counters::inc(&counters.transfers_declined);
            tracing::debug!(%peer, path = %req.raw_path, code, %message, "client ended the transfer after the option acknowledgement");
        }
        Ended::Outcome(Outcome::Failed(e)) => {
            Counters::inc(&counters.transfers_failed);
            tracing::warn!(%peer, error = %e, "transfer failed");
        }
    }
}

/// Runs one transfer to its end. Also returns a request from the same peer
/// that arrived when this transfer had already ended.
async fn serve_transfer(
    shared: &Shared,
    local_ip: IpAddr,
    peer: SocketAddr,
    req: &ReadRequest,
    rx: &mut mpsc::Receiver<ReadRequest>,
) -> (Ended, Option<ReadRequest>) {
    let counters = &shared.counters;
    let bind = SocketAddr::new(local_ip, 0);
    let socket = match UdpSocket::bind(bind).await {
        Ok(s) => s,
        Err(source) => {
            let e = TftpError::Socket { addr: bind, source };
            return (Ended::Outcome(Outcome::Failed(e)), None);
        }
    };
    let file = match shared.resolver.open(&req.path, peer).await {
        Ok(f) => f,
        Err(e) => {
            let _ = socket.send_to(&e.to_packet(), peer).await;
            return (Ended::Refused(e), None);
        }
    };
    counters.transfers_active.fetch_add(1, Ordering::Relaxed);
    let _active = DecOnDrop(&counters.transfers_active);
    let mut reader = BufReader::with_capacity(128 * 1024, file.reader);
    let (mut transfer, actions) = Transfer::start(req, file.len, &shared.limits, Instant::now());
    tracing::debug!(
        %peer,
        path = %req.raw_path,
        size = file.len,
        blksize = transfer.blksize(),
        windowsize = transfer.windowsize(),
        "transfer started"
    );
    let mut queue: VecDeque<Action> = actions.into();
    let mut buf = vec![0u8; 2048];
    let mut retransmitted = 0;
    let mut pending = None;
    let outcome = 'transfer: loop {
        while let Some(action) = queue.pop_front() {
            match action {
                // A failed send is like a lost packet: the timer recovers.
                Action::Send(p) => {
                    let _ = socket.send_to(&p, peer).await;
                }
                Action::Read { len, .. } => match read_block(&mut reader, len).await {
                    Ok(data) => queue.extend(transfer.on_block(Instant::now(), data)),
                    Err(source) => {
                        let e = TftpError::Io {
                            path: req.raw_path.clone(),
                            source,
                        };
                        let _ = socket.send_to(&e.to_packet(), peer).await;
                        break 'transfer Outcome::Failed(e);
                    }
                },
                Action::Finish(outcome) => break 'transfer outcome,
            }
        }
        let deadline = transfer.deadline();
        let sleep = async {
            match deadline {
                Some(d) => tokio::time::sleep_until(d.into()).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            r = socket.recv_from(&mut buf) => {
                if let Ok((n, from)) = r {
                    on_datagram(counters, &socket, &mut transfer, peer, from, &buf[..n], &mut queue).await;
                }
            }
            Some(again) = rx.recv() => {
                // Packets the client sent before this RRQ (its last ACK, or
                // the ERROR ending a tsize probe) decide what it is.
                while let Ok((n, from)) = socket.try_recv_from(&mut buf) {
                    on_datagram(counters, &socket, &mut transfer, peer, from, &buf[..n], &mut queue).await;
                }
                if transfer.is_finished() {
                    pending = Some(again);
                } else {
                    Counters::inc(&counters.duplicate_requests);
                }
            }
            () = sleep => queue.extend(transfer.on_timeout(Instant::now())),
        }
        let now_retransmitted = transfer.retransmitted();
        counters
            .retransmits
            .fetch_add(now_retransmitted - retransmitted, Ordering::Relaxed);
        retransmitted = now_retransmitted;
    };
    counters
        .retransmits
        .fetch_add(transfer.retransmitted() - retransmitted, Ordering::Relaxed);
    (Ended::Outcome(outcome), pending)
}

async fn on_datagram(
    counters: &Counters,
    socket: &UdpSocket,
    transfer: &mut Transfer,
    peer: SocketAddr,
    from: SocketAddr,
    bytes: &[u8],
    queue: &mut VecDeque<Action>,
) {
    if from != peer {
        Counters::inc(&counters.unknown_tid);
        let error = encode_error(error_code::UNKNOWN_TID, "unknown transfer id");
        let _ = socket.send_to(&error, from).await;
        return;
    }
    match transfer.on_packet(Instant::now(), bytes) {
        Ok(actions) => queue.extend(actions),
        Err(e) => {
            counters.count_drop(&e);
            tracing::debug!(%peer, error = %e, "dropped datagram");
        }
    }
}

struct DecOnDrop<'a>(&'a AtomicU64);

impl Drop for DecOnDrop<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Reads up to `len` bytes; fewer only at the end of the reader.
async fn read_block<R: AsyncRead + Unpin>(reader: &mut R, len: usize) -> std::io::Result<Vec<u8>> {
    let mut data = vec![0u8; len];
    let mut filled = 0;
    while filled < len {
        let n = reader.read(&mut data[filled..]).await?;
        if n == 0 {
            break;
        }
        filled += n;
    }
    data.truncate(filled);
    Ok(data)
}
