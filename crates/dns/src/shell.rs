//! The tokio shell around [`Server`]: UDP and TCP listeners and the
//! forwarding client.

use std::future::Future;
use std::io;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio::time::{timeout, timeout_at, Instant};

use crate::core::MAX_UDP_PAYLOAD;
use crate::{AnswerCache, Error, Forward, Outcome, Server, Transport};

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
    /// Tasks receiving on the UDP socket, so queries are answered on
    /// several cores.
    pub udp_workers: usize,
    /// Replies each UDP task remembers ([`Server::handle_udp_cached`]);
    /// 0 answers every query afresh.
    pub udp_cache_entries: usize,
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
        }
    }
}

/// A UDP socket and a TCP listener on the same address.
pub struct Listener {
    udp: UdpSocket,
    tcp: TcpListener,
}

impl Listener {
    /// Binds UDP and TCP to `addr`. With port 0 both get the same free port.
    pub async fn bind(addr: SocketAddr) -> Result<Self, Error> {
        let err = |source| Error::Socket { addr, source };
        let mut attempts = 0;
        loop {
            let udp = UdpSocket::bind(addr).await.map_err(err)?;
            let port = udp.local_addr().map_err(err)?.port();
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
        self.udp
            .local_addr()
            .expect("a bound socket has an address")
    }

    /// Serves until `shutdown` completes.
    pub async fn serve(
        self,
        server: Arc<Server>,
        config: ShellConfig,
        shutdown: impl Future<Output = ()>,
    ) -> Result<(), Error> {
        let addr = self.local_addr();
        let udp = Arc::new(self.udp);
        let forwards = Arc::new(Semaphore::new(config.max_pending_forwards));
        let connections = Arc::new(Semaphore::new(config.max_tcp_connections));
        let mut tasks = JoinSet::new();
        for _ in 0..config.udp_workers.max(1) {
            tasks.spawn(serve_udp(
                udp.clone(),
                server.clone(),
                forwards.clone(),
                config.clone(),
            ));
        }
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
                Some(_) = tasks.join_next(), if !tasks.is_empty() => {}
            }
        }
        tasks.shutdown().await;
        Ok(())
    }
}

/// One UDP task: receives queries, answers them (through its own reply
/// cache) and spawns forwards, until aborted; its forwards end with it.
async fn serve_udp(
    udp: Arc<UdpSocket>,
    server: Arc<Server>,
    forwards: Arc<Semaphore>,
    config: ShellConfig,
) {
    let mut cache = AnswerCache::new(config.udp_cache_entries);
    let mut pending = JoinSet::new();
    let mut buf = vec![0u8; MAX_UDP_PAYLOAD];
    loop {
        tokio::select! {
            r = udp.recv_from(&mut buf) => {
                let (n, peer) = match r {
                    Ok(x) => x,
                    Err(e) => {
                        tracing::warn!(error = %e, "dns udp receive");
                        continue;
                    }
                };
                match server.handle_udp_cached(&mut cache, &buf[..n]) {
                    Outcome::Reply(reply) => send_udp(&udp, &reply, peer).await,
                    Outcome::Drop => {}
                    Outcome::Forward(f) => {
                        let Ok(permit) = forwards.clone().try_acquire_owned() else {
                            send_udp(&udp, &server.forward_failed(&f), peer).await;
                            continue;
                        };
                        let (udp, server, t) = (udp.clone(), server.clone(), config.forward_timeout);
                        pending.spawn(async move {
                            let reply = forward(&server, &f, t).await;
                            send_udp(&udp, &reply, peer).await;
                            drop(permit);
                        });
                    }
                }
            }
            Some(_) = pending.join_next(), if !pending.is_empty() => {}
        }
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

async fn send_udp(udp: &UdpSocket, reply: &[u8], peer: SocketAddr) {
    if let Err(e) = udp.send_to(reply, peer).await {
        tracing::debug!(%peer, error = %e, "dns udp send");
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
