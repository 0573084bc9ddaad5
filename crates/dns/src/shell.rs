//! The shell around [`Server`]: UDP threads, the TCP listener and the
//! forwarding client.
//!
//! UDP is answered by plain threads in blocking loops, a batch at a time:
//! `recvmmsg` takes every query queued (up to [`BATCH`]), each is answered
//! (mostly from the thread's [`AnswerCache`], into a reused buffer) and
//! `sendmmsg` sends the replies. Per query, the kernel's UDP path costs far
//! more than the answer, so what pays is fewer system calls and fewer
//! thread wake-ups per query, not faster Rust. The threads share one
//! socket; the first always receives, the others are called in only when
//! it receives a full batch (a backlog) and go back to sleep once the
//! socket is drained. TCP, forwarding and shutdown stay on tokio.

use std::future::Future;
use std::io;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV6};
use std::os::fd::{AsRawFd, RawFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::thread::{JoinHandle, Thread};
use std::time::Duration;

use socket2::{Domain, Protocol, Socket, Type};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::sync::{mpsc, OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinSet;
use tokio::time::{timeout, timeout_at, Instant};

use crate::core::MAX_UDP_PAYLOAD;
use crate::{
    AnswerCache, Error, Forward, Handled, Outcome, Server, Transport, XdpAnswers, XdpConfig,
};

/// Limits and timeouts of the shell.
#[derive(Clone, Debug)]
pub struct ShellConfig {
    /// How long each upstream gets to answer a forwarded query.
    pub forward_timeout: Duration,
    /// A TCP client silent this long is disconnected.
    pub tcp_idle_timeout: Duration,
    pub max_tcp_connections: usize,
    /// Forwarded queries awaiting an upstream; beyond it, SERVFAIL at once.
    pub max_pending_forwards: usize,
    /// Threads answering UDP. One always receives; the others join in
    /// while it has a backlog, so queries are answered on several cores
    /// under load and an idle server wakes one thread per batch.
    pub udp_workers: usize,
    /// Replies each UDP thread remembers ([`Server::handle_udp_cached`]);
    /// 0 answers every query afresh.
    pub udp_cache_entries: usize,
    /// Answer repeated IPv4 queries in XDP on this interface
    /// ([`XdpAnswers`]). If the program cannot be attached, the listener
    /// says why and serves from its socket alone.
    pub xdp: Option<XdpConfig>,
}

impl Default for ShellConfig {
    fn default() -> Self {
        ShellConfig {
            forward_timeout: Duration::from_secs(2),
            tcp_idle_timeout: Duration::from_secs(10),
            max_tcp_connections: 256,
            max_pending_forwards: 1024,
            udp_workers: std::thread::available_parallelism().map_or(1, usize::from),
            udp_cache_entries: 16384,
            xdp: None,
        }
    }
}

/// Queries taken by one `recvmmsg`, replies sent by one `sendmmsg`.
const BATCH: usize = 32;

/// The UDP receive buffer asked for (the kernel caps it at
/// `net.core.rmem_max`). The usual 208 KiB default holds ~200 queued
/// queries; a burst beyond that while a thread is busy would be lost.
const UDP_RECEIVE_BUFFER: usize = 4 << 20;

/// A UDP socket and a TCP listener on the same address.
pub struct Listener {
    udp: Socket,
    tcp: TcpListener,
}

fn udp_socket(addr: SocketAddr) -> io::Result<Socket> {
    let s = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))?;
    s.bind(&addr.into())?;
    if let Err(e) = s.set_recv_buffer_size(UDP_RECEIVE_BUFFER) {
        tracing::debug!(error = %e, "dns udp receive buffer");
    }
    Ok(s)
}

impl Listener {
    /// Binds UDP and TCP to `addr`. With port 0 both get the same free port.
    pub async fn bind(addr: SocketAddr) -> Result<Self, Error> {
        let err = |source| Error::Socket { addr, source };
        let mut attempts = 0;
        loop {
            let udp = udp_socket(addr).map_err(err)?;
            let port = local_addr(&udp).map_err(err)?.port();
            match TcpListener::bind(SocketAddr::new(addr.ip(), port)).await {
                Ok(tcp) => return Ok(Listener { udp, tcp }),
                // The UDP port's TCP twin is taken: try another free port.
                Err(e) if addr.port() == 0 && attempts < 20 => {
                    attempts += 1;
                    tracing::debug!(port, error = %e, "tcp port taken, retrying");
                }
                Err(e) => return Err(err(e)),
            }
        }
    }

    pub fn local_addr(&self) -> SocketAddr {
        local_addr(&self.udp).expect("a bound socket has an address")
    }

    /// Serves until `shutdown` completes. The UDP threads stop when it
    /// returns or is dropped.
    pub async fn serve(
        self,
        server: Arc<Server>,
        config: ShellConfig,
        shutdown: impl Future<Output = ()>,
    ) -> Result<(), Error> {
        let addr = self.local_addr();
        let connections = Arc::new(Semaphore::new(config.max_tcp_connections));
        let (jobs_tx, mut jobs) = mpsc::unbounded_channel();
        let xdp = config
            .xdp
            .as_ref()
            .and_then(|x| attach_xdp(x, addr, &server));
        let mut udp = UdpThreads::start(self.udp, &server, &config, xdp.clone(), jobs_tx)
            .map_err(|source| Error::Socket { addr, source })?;
        let mut tasks = JoinSet::new();
        tokio::pin!(shutdown);
        tracing::info!(%addr, "dns serving");
        loop {
            tokio::select! {
                () = &mut shutdown => break,
                r = self.tcp.accept() => {
                    let (stream, peer) = match r {
                        Ok(x) => x,
                        Err(e) => {
                            tracing::warn!(error = %e, "dns tcp accept");
                            continue;
                        }
                    };
                    let Ok(permit) = connections.clone().try_acquire_owned() else {
                        tracing::debug!(%peer, "dns tcp connection limit reached");
                        continue;
                    };
                    let (server, config) = (server.clone(), config.clone());
                    tasks.spawn(async move {
                        if let Err(e) = serve_tcp(stream, &server, &config).await {
                            tracing::debug!(%peer, error = %e, "dns tcp connection");
                        }
                        drop(permit);
                    });
                }
                // A UDP thread's query for an upstream.
                Some(job) = jobs.recv() => {
                    let (server, t) = (server.clone(), config.forward_timeout);
                    tasks.spawn(async move {
                        let ForwardJob { forward: f, peer, socket, permit } = job;
                        let reply = forward(&server, &f, t).await;
                        // The socket blocks for the UDP threads; this send must not.
                        let sent = socket.send_to_with_flags(&reply, &peer.into(), libc::MSG_DONTWAIT);
                        if let Err(e) = sent {
                            tracing::debug!(%peer, error = %e, "dns udp send");
                        }
                        drop(permit);
                    });
                }
                Some(_) = tasks.join_next(), if !tasks.is_empty() => {}
            }
        }
        let threads = udp.stop();
        // The program is detached when the last clone goes: this one and
        // the UDP threads' (they exit at once, joined below).
        drop(xdp);
        tasks.shutdown().await;
        // They were woken and exit at once.
        let _ = tokio::task::spawn_blocking(move || {
            for t in threads {
                let _ = t.join();
            }
        })
        .await;
        Ok(())
    }
}

/// Binds `addr` and serves until `shutdown` completes.
pub async fn run(
    addr: SocketAddr,
    server: Arc<Server>,
    config: ShellConfig,
    shutdown: impl Future<Output = ()>,
) -> Result<(), Error> {
    Listener::bind(addr)
        .await?
        .serve(server, config, shutdown)
        .await
}

/// The XDP answer path for `addr`, or `None` (said in the log) when it
/// cannot be had: the listener then answers everything from its socket.
fn attach_xdp(cfg: &XdpConfig, addr: SocketAddr, server: &Server) -> Option<Arc<XdpAnswers>> {
    let SocketAddr::V4(v4) = addr else {
        tracing::warn!(%addr, interface = %cfg.interface, "dns xdp answers IPv4 only; serving from the socket");
        return None;
    };
    match XdpAnswers::attach(cfg, v4, server) {
        Ok(x) => {
            tracing::info!(%addr, interface = %cfg.interface, mode = ?x.mode(), "dns xdp answer path attached");
            Some(x)
        }
        Err(e) => {
            tracing::warn!(%addr, error = %e, "serving from the socket only");
            None
        }
    }
}

fn local_addr(s: &Socket) -> io::Result<SocketAddr> {
    s.local_addr()?
        .as_socket()
        .ok_or_else(|| io::Error::other("not an inet socket"))
}

/// A forwarded query, handed by a UDP thread to the runtime.
struct ForwardJob {
    forward: Forward,
    peer: SocketAddr,
    socket: Arc<Socket>,
    permit: OwnedSemaphorePermit,
}

/// What the UDP threads of one listener share.
struct Crew {
    socket: Arc<Socket>,
    stop: AtomicBool,
    /// Threads 1.. and whether each is receiving; set once all are spawned.
    helpers: OnceLock<Vec<(Thread, AtomicBool)>>,
}

impl Crew {
    /// Wakes a sleeping helper, if there is one.
    fn call_helper(&self) {
        for (thread, busy) in self.helpers.get().into_iter().flatten() {
            if busy
                .compare_exchange(false, true, Ordering::AcqRel, Ordering::Relaxed)
                .is_ok()
            {
                thread.unpark();
                return;
            }
        }
    }
}

/// The UDP threads of one [`Listener::serve`]; stopped when dropped.
struct UdpThreads {
    crew: Arc<Crew>,
    threads: Vec<JoinHandle<()>>,
}

impl UdpThreads {
    fn start(
        socket: Socket,
        server: &Arc<Server>,
        config: &ShellConfig,
        xdp: Option<Arc<XdpAnswers>>,
        jobs: mpsc::UnboundedSender<ForwardJob>,
    ) -> io::Result<UdpThreads> {
        let crew = Arc::new(Crew {
            socket: Arc::new(socket),
            stop: AtomicBool::new(false),
            helpers: OnceLock::new(),
        });
        let forwards = Arc::new(Semaphore::new(config.max_pending_forwards));
        let mut udp = UdpThreads {
            crew: crew.clone(),
            threads: Vec::new(),
        };
        for i in 0..config.udp_workers.max(1) {
            let worker = UdpWorker {
                crew: crew.clone(),
                helper: i.checked_sub(1),
                server: server.clone(),
                cache: AnswerCache::new(config.udp_cache_entries),
                forwards: forwards.clone(),
                jobs: jobs.clone(),
                xdp: xdp.clone(),
            };
            let thread = std::thread::Builder::new()
                .name(format!("dns-udp-{i}"))
                .spawn(move || worker.run())?;
            udp.threads.push(thread);
        }
        let helpers = udp.threads[1..]
            .iter()
            .map(|t| (t.thread().clone(), AtomicBool::new(false)))
            .collect();
        let _ = crew.helpers.set(helpers);
        // Helpers that looked before the list was set are parked: recheck.
        for t in &udp.threads[1..] {
            t.thread().unpark();
        }
        Ok(udp)
    }

    /// Tells the threads to stop and wakes them; returns them to join.
    fn stop(&mut self) -> Vec<JoinHandle<()>> {
        self.crew.stop.store(true, Ordering::Release);
        // On Linux, shutting down even an unconnected UDP socket (which
        // reports ENOTCONN) wakes a receive blocked on it.
        let _ = self.crew.socket.shutdown(std::net::Shutdown::Read);
        for t in &self.threads {
            t.thread().unpark();
        }
        std::mem::take(&mut self.threads)
    }
}

impl Drop for UdpThreads {
    fn drop(&mut self) {
        self.stop();
    }
}

struct UdpWorker {
    crew: Arc<Crew>,
    /// `None` for the thread that always receives, else its helper index.
    helper: Option<usize>,
    server: Arc<Server>,
    cache: AnswerCache,
    forwards: Arc<Semaphore>,
    jobs: mpsc::UnboundedSender<ForwardJob>,
    xdp: Option<Arc<XdpAnswers>>,
}

impl UdpWorker {
    /// Receives a batch, answers it, sends the replies, until stopped.
    fn run(mut self) {
        let mut batch = Batch::new();
        let fd = self.crew.socket.as_raw_fd();
        loop {
            if !self.wait_for_work() {
                return;
            }
            // The first thread blocks until a query comes; helpers only take
            // what is queued.
            let flags = match self.helper {
                None => libc::MSG_WAITFORONE,
                Some(_) => libc::MSG_DONTWAIT,
            };
            let received = batch.recv(fd, flags);
            if self.crew.stop.load(Ordering::Acquire) {
                return;
            }
            let n = match received {
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    self.rest();
                    continue;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    tracing::warn!(error = %e, "dns udp receive");
                    continue;
                }
            };
            if n == BATCH {
                // More are likely queued than one thread keeps up with.
                self.crew.call_helper();
            }
            for i in 0..n {
                let (query, reply, peer) = batch.slot(i);
                // Read before answering: see `Server::generation`.
                let generation = self.server.generation();
                let send = match self.server.handle_udp_into(&mut self.cache, query, reply) {
                    Handled::Reply => {
                        // With XDP attached, a query here was missed there
                        // (or could not be answered there, which the map
                        // skips by size): next time, XDP answers it.
                        if let Some(x) = &self.xdp {
                            x.remember(generation, query, reply);
                        }
                        true
                    }
                    Handled::Drop => false,
                    Handled::Forward(f) => self.forward(f, &peer, reply),
                };
                batch.replied[i] = send;
            }
            batch.send(fd, n);
        }
    }

    /// A helper sleeps until called in; `false` once stopping.
    fn wait_for_work(&self) -> bool {
        if let Some(i) = self.helper {
            loop {
                if self.crew.stop.load(Ordering::Acquire) {
                    return false;
                }
                let busy = self.crew.helpers.get().map(|h| &h[i].1);
                if busy.is_some_and(|b| b.load(Ordering::Acquire)) {
                    break;
                }
                std::thread::park();
            }
        }
        !self.crew.stop.load(Ordering::Acquire)
    }

    /// A helper found the socket drained: back to sleep.
    fn rest(&self) {
        if let (Some(i), Some(h)) = (self.helper, self.crew.helpers.get()) {
            h[i].1.store(false, Ordering::Release);
        }
    }

    /// Hands `f` to the runtime; `true` when instead a SERVFAIL is in `reply`
    /// (too many forwards pending).
    fn forward(&self, f: Forward, peer: &Peer<'_>, reply: &mut Vec<u8>) -> bool {
        let Some(peer) = peer.addr() else {
            return false;
        };
        let Ok(permit) = self.forwards.clone().try_acquire_owned() else {
            *reply = self.server.forward_failed(&f);
            return true;
        };
        let job = ForwardJob {
            forward: f,
            peer,
            socket: self.crew.socket.clone(),
            permit,
        };
        // Fails only while the listener is stopping.
        let _ = self.jobs.send(job);
        false
    }
}

/// Buffers and headers for `recvmmsg`/`sendmmsg`, reused for every batch.
/// Boxed: the receive headers point into it.
struct Batch {
    /// [`BATCH`] receive buffers of [`MAX_UDP_PAYLOAD`] bytes.
    queries: Vec<u8>,
    lens: [usize; BATCH],
    peers: [libc::sockaddr_storage; BATCH],
    peer_lens: [libc::socklen_t; BATCH],
    replies: Vec<Vec<u8>>,
    replied: [bool; BATCH],
    recv_iovecs: [libc::iovec; BATCH],
    recv_headers: [libc::mmsghdr; BATCH],
    /// Receive headers the kernel wrote to last time.
    received: usize,
    send_iovecs: [libc::iovec; BATCH],
    send_headers: [libc::mmsghdr; BATCH],
}

/// A query's sender, as the kernel gave it.
struct Peer<'a>(&'a libc::sockaddr_storage, libc::socklen_t);

impl Batch {
    fn new() -> Box<Self> {
        // SAFETY (each `zeroed`): all-zero is a valid sockaddr_storage,
        // iovec and mmsghdr: null pointers, zero lengths.
        let mut b = Box::new(Batch {
            queries: vec![0; BATCH * MAX_UDP_PAYLOAD],
            lens: [0; BATCH],
            peers: unsafe { std::mem::zeroed() },
            peer_lens: [0; BATCH],
            replies: (0..BATCH).map(|_| Vec::with_capacity(512)).collect(),
            replied: [false; BATCH],
            recv_iovecs: unsafe { std::mem::zeroed() },
            recv_headers: unsafe { std::mem::zeroed() },
            received: BATCH,
            send_iovecs: unsafe { std::mem::zeroed() },
            send_headers: unsafe { std::mem::zeroed() },
        });
        for i in 0..BATCH {
            b.recv_iovecs[i] = libc::iovec {
                iov_base: b.queries[i * MAX_UDP_PAYLOAD..].as_mut_ptr().cast(),
                iov_len: MAX_UDP_PAYLOAD,
            };
            let h = &mut b.recv_headers[i].msg_hdr;
            h.msg_name = (&raw mut b.peers[i]).cast();
            h.msg_iov = &raw mut b.recv_iovecs[i];
            h.msg_iovlen = 1;
        }
        b
    }

    /// Query `i`, its reply buffer and its sender.
    fn slot(&mut self, i: usize) -> (&[u8], &mut Vec<u8>, Peer<'_>) {
        let q = &self.queries[i * MAX_UDP_PAYLOAD..][..self.lens[i]];
        let peer = Peer(&self.peers[i], self.peer_lens[i]);
        (q, &mut self.replies[i], peer)
    }

    /// Takes up to [`BATCH`] queued datagrams; with `MSG_WAITFORONE`,
    /// blocks until there is one.
    fn recv(&mut self, fd: RawFd, flags: libc::c_int) -> io::Result<usize> {
        for h in &mut self.recv_headers[..self.received] {
            h.msg_hdr.msg_namelen = size_of::<libc::sockaddr_storage>() as libc::socklen_t;
        }
        self.received = 0;
        // SAFETY: the headers point at this (boxed, so unmoved) batch's
        // address slots and buffers, with their sizes.
        let n = unsafe {
            libc::recvmmsg(
                fd,
                self.recv_headers.as_mut_ptr(),
                BATCH as libc::c_uint,
                flags,
                std::ptr::null_mut(),
            )
        };
        let n = usize::try_from(n).map_err(|_| io::Error::last_os_error())?;
        self.received = n;
        for i in 0..n {
            // A datagram longer than the buffer is cut to it (MSG_TRUNC),
            // as `recv_from` does.
            self.lens[i] = (self.recv_headers[i].msg_len as usize).min(MAX_UDP_PAYLOAD);
            self.peer_lens[i] = self.recv_headers[i].msg_hdr.msg_namelen;
        }
        Ok(n)
    }

    /// Sends the replies of those of the first `n` slots marked `replied`.
    fn send(&mut self, fd: RawFd, n: usize) {
        let mut m = 0;
        for i in 0..n {
            if !self.replied[i] {
                continue;
            }
            self.send_iovecs[m] = libc::iovec {
                iov_base: self.replies[i].as_mut_ptr().cast(),
                iov_len: self.replies[i].len(),
            };
            let h = &mut self.send_headers[m].msg_hdr;
            h.msg_name = (&raw mut self.peers[i]).cast();
            h.msg_namelen = self.peer_lens[i];
            h.msg_iov = &raw mut self.send_iovecs[m];
            h.msg_iovlen = 1;
            m += 1;
        }
        let mut sent = 0;
        while sent < m {
            // SAFETY: headers sent..m point at live replies and addresses.
            let r = unsafe {
                libc::sendmmsg(
                    fd,
                    self.send_headers[sent..].as_mut_ptr(),
                    (m - sent) as libc::c_uint,
                    0,
                )
            };
            match usize::try_from(r) {
                Ok(k) => sent += k,
                Err(_) => {
                    let e = io::Error::last_os_error();
                    if e.kind() != io::ErrorKind::Interrupted {
                        // This reply cannot go (its peer is unreachable, say):
                        // skip it, send the rest.
                        tracing::debug!(error = %e, "dns udp send");
                        sent += 1;
                    }
                }
            }
        }
    }
}

impl Peer<'_> {
    fn addr(&self) -> Option<SocketAddr> {
        let (s, len) = (self.0, self.1 as usize);
        match i32::from(s.ss_family) {
            libc::AF_INET if len >= size_of::<libc::sockaddr_in>() => {
                // SAFETY: the family says sockaddr_in, the length that it fits.
                let a = unsafe { &*std::ptr::from_ref(s).cast::<libc::sockaddr_in>() };
                Some(SocketAddr::new(
                    Ipv4Addr::from(u32::from_be(a.sin_addr.s_addr)).into(),
                    u16::from_be(a.sin_port),
                ))
            }
            libc::AF_INET6 if len >= size_of::<libc::sockaddr_in6>() => {
                // SAFETY: as above, for sockaddr_in6.
                let a = unsafe { &*std::ptr::from_ref(s).cast::<libc::sockaddr_in6>() };
                Some(SocketAddr::V6(SocketAddrV6::new(
                    Ipv6Addr::from(a.sin6_addr.s6_addr),
                    u16::from_be(a.sin6_port),
                    a.sin6_flowinfo,
                    a.sin6_scope_id,
                )))
            }
            _ => None,
        }
    }
}

/// One TCP connection: length-prefixed queries, answered in order.
async fn serve_tcp(mut stream: TcpStream, server: &Server, config: &ShellConfig) -> io::Result<()> {
    loop {
        let mut len = [0u8; 2];
        match timeout(config.tcp_idle_timeout, stream.read_exact(&mut len)).await {
            Ok(Ok(_)) => {}
            // Closed or idle: done.
            Ok(Err(_)) | Err(_) => return Ok(()),
        }
        let mut query = vec![0u8; usize::from(u16::from_be_bytes(len))];
        timeout(config.tcp_idle_timeout, stream.read_exact(&mut query))
            .await
            .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "partial query"))??;
        let reply = match server.handle(&query, Transport::Tcp) {
            Outcome::Reply(r) => r,
            Outcome::Drop => return Ok(()),
            Outcome::Forward(f) => forward(server, &f, config.forward_timeout).await,
        };
        write_framed(&mut stream, &reply).await?;
    }
}

async fn write_framed(stream: &mut TcpStream, msg: &[u8]) -> io::Result<()> {
    let len = u16::try_from(msg.len())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidData, "message over 65535 bytes"))?;
    let mut framed = Vec::with_capacity(msg.len() + 2);
    framed.extend_from_slice(&len.to_be_bytes());
    framed.extend_from_slice(msg);
    stream.write_all(&framed).await
}

/// Asks each upstream in turn, over the client's transport; SERVFAIL if
/// none answers within its timeout.
async fn forward(server: &Server, f: &Forward, per_upstream: Duration) -> Vec<u8> {
    for &upstream in f.upstreams() {
        let id: u16 = rand::random();
        let deadline = Instant::now() + per_upstream;
        let result = match f.transport() {
            Transport::Udp => forward_udp(f, upstream, id, deadline).await,
            Transport::Tcp => forward_tcp(f, upstream, id, deadline).await,
        };
        match result {
            Ok(reply) => return reply,
            Err(e) => tracing::debug!(%upstream, error = %e, "dns forward"),
        }
    }
    server.forward_failed(f)
}

fn timed_out() -> io::Error {
    io::Error::new(io::ErrorKind::TimedOut, "upstream did not answer in time")
}

async fn forward_udp(
    f: &Forward,
    upstream: SocketAddr,
    id: u16,
    deadline: Instant,
) -> io::Result<Vec<u8>> {
    let local: SocketAddr = if upstream.is_ipv4() {
        (Ipv4Addr::UNSPECIFIED, 0).into()
    } else {
        (Ipv6Addr::UNSPECIFIED, 0).into()
    };
    // A connected socket on a fresh random port only hears the upstream.
    let sock = UdpSocket::bind(local).await?;
    sock.connect(upstream).await?;
    sock.send(&f.query(id)).await?;
    let mut buf = vec![0u8; 65535];
    loop {
        let n = timeout_at(deadline, sock.recv(&mut buf))
            .await
            .map_err(|_| timed_out())??;
        if let Some(reply) = f.relay(&buf[..n], id) {
            return Ok(reply);
        }
    }
}

async fn forward_tcp(
    f: &Forward,
    upstream: SocketAddr,
    id: u16,
    deadline: Instant,
) -> io::Result<Vec<u8>> {
    let exchange = async {
        let mut stream = TcpStream::connect(upstream).await?;
        write_framed(&mut stream, &f.query(id)).await?;
        loop {
            let mut len = [0u8; 2];
            stream.read_exact(&mut len).await?;
            let mut reply = vec![0u8; usize::from(u16::from_be_bytes(len))];
            stream.read_exact(&mut reply).await?;
            if let Some(r) = f.relay(&reply, id) {
                return Ok(r);
            }
        }
    };
    timeout_at(deadline, exchange)
        .await
        .map_err(|_| timed_out())?
}
