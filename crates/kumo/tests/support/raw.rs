//! Raw lower bounds for the metal suite's deploy breakdown: the steps a
//! deployment is made of, done on this host by plain tools without kumo,
//! so the breakdown shows what kumo itself adds.
//!
//! A raw machine is a QEMU with the lab machines' flags (TCG, one CPU,
//! their memory, a virtio disk and NIC) on QEMU's own user-mode network,
//! whose built-in DHCP hands iPXE the URL of a plain HTTP file server in
//! this process. iPXE loads kumo's ephemeral kernel and initramfs from it
//! (the agent exits at once: its command line names no region) and, on
//! the console shell, `wget | zstd -dc | dd` writes the deployed image
//! and a seed is written as the agent would. Then it resets, iPXE gets a
//! `sanboot` script like kumo's local-disk one, and GRUB starts the
//! written kernel.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// What the raw steps took: per raw machine, and the image write once
/// more natively on the host.
#[derive(Clone, Debug)]
pub struct RawRun {
    pub machines: Vec<RawBounds>,
    /// Seconds of `curl | zstd -dc | dd` on the host.
    pub host_write: f64,
}

/// What one raw machine measured.
#[derive(Clone, Debug)]
pub struct RawBounds {
    /// QEMU started → iPXE asks for its script: QEMU, firmware and iPXE,
    /// less the DHCP exchange. QEMU's DHCP server makes iPXE wait ~3 s
    /// for ProxyDHCP offers (its offer lacks "PXEClient"; kumo's has it),
    /// so the exchange is left out, as if it took no time at all.
    pub to_ipxe: Duration,
    /// That request → the initramfs starts the agent: iPXE loads the
    /// kernel and initramfs over HTTP, the kernel boots, init loads
    /// modules and gets a lease.
    pub to_agent: Duration,
    /// `wget -O- | zstd -dc | dd conv=sparse,fsync` of the image onto
    /// the disk, by the VM's clock.
    pub image_write: Duration,
    /// Re-read the partition table, mount the root, write the four seed
    /// files, unmount.
    pub seed: Duration,
    /// After a reset, iPXE asks for its script again and gets kumo's
    /// local-disk one (`sanboot`) → the written kernel starts: BIOS disk
    /// boot, GRUB loading the kernel and initramfs. (systemd-analyze on
    /// the deployed machine counts from the kernel's start.)
    pub to_kernel: Duration,
}

/// How the raw machines are made, and what they boot and write.
pub struct RawSetup<'a> {
    /// Where disks, console logs and pid files go (`raw-N.*`).
    pub dir: &'a Path,
    /// `vmlinuz` and `initrd.img` of the ephemeral environment.
    pub ephemeral: &'a Path,
    /// The deployed image, zstd-compressed.
    pub image: &'a Path,
    pub memory_mib: u64,
    pub disk_bytes: u64,
}

impl RawSetup<'_> {
    /// Runs `n` raw machines at once, as the suite deploys its machines
    /// at once, so both see the same contention for the host's cores;
    /// then the image write on the host.
    pub fn measure(&self, n: usize) -> RawRun {
        RawRun {
            machines: self.machines(n),
            host_write: self.host_write(),
        }
    }

    fn machines(&self, n: usize) -> Vec<RawBounds> {
        let tools = self.tools_tar();
        std::thread::scope(|s| {
            let runs: Vec<_> = (1..=n)
                .map(|i| {
                    let tools = &tools;
                    s.spawn(move || self.one(i, tools))
                })
                .collect();
            runs.into_iter().map(|r| r.join().unwrap()).collect()
        })
    }

    /// The same pipeline on the host, natively: the HTTP server in this
    /// process → `curl | zstd -dc | dd` onto a file. Seconds.
    fn host_write(&self) -> f64 {
        let server = FileServer::start(HashMap::from([(
            "/image".to_owned(),
            Body::File(self.image.to_owned()),
        )]));
        let out = self.dir.join("raw-host.img");
        let pipeline = format!(
            "set -o pipefail; curl -sf http://{}/image | zstd -dc | \
             dd of={} bs=1M iflag=fullblock conv=sparse,fsync status=none",
            server.addr,
            out.display()
        );
        let start = Instant::now();
        let status = Command::new("bash")
            .args(["-c", &pipeline])
            .status()
            .unwrap();
        let took = start.elapsed().as_secs_f64();
        assert!(status.success(), "{pipeline}: {status}");
        let _ = std::fs::remove_file(&out);
        took
    }

    /// zstd and GNU dd (busybox's has no conv=sparse) with the libraries
    /// they need beyond the initramfs's, as a tarball for the raw machines.
    fn tools_tar(&self) -> PathBuf {
        let mut tar = Command::new("tar");
        let out = self.dir.join("raw-tools.tar");
        tar.arg("-chf").arg(&out).args(["-C", "/"]);
        let mut files = Vec::new();
        for tool in ["zstd", "dd"] {
            let found = Command::new("sh")
                .args(["-c", &format!("command -v {tool}")])
                .output()
                .unwrap();
            let bin = String::from_utf8(found.stdout).unwrap().trim().to_owned();
            assert!(bin.starts_with('/'), "{tool} not found");
            let rel = bin.trim_start_matches('/').to_owned();
            tar.arg("--transform")
                .arg(format!("s,^{rel}$,opt/raw/{tool},"));
            let ldd = Command::new("ldd").arg(&bin).output().unwrap();
            for l in String::from_utf8_lossy(&ldd.stdout).lines() {
                // "libz.so.1 => /lib/x86_64-linux-gnu/libz.so.1 (0x…)"
                if let Some(lib) = l.split("=> ").nth(1).and_then(|r| r.split(' ').next()) {
                    files.push(lib.trim_start_matches('/').to_owned());
                }
            }
            files.push(rel);
        }
        let done = tar.args(&files).output().unwrap();
        assert!(done.status.success(), "tar {files:?}: {done:?}");
        out
    }

    fn one(&self, i: usize, tools: &Path) -> RawBounds {
        let routes = HashMap::from([
            (
                "/vmlinuz".to_owned(),
                Body::File(self.ephemeral.join("vmlinuz")),
            ),
            (
                "/initrd.img".to_owned(),
                Body::File(self.ephemeral.join("initrd.img")),
            ),
            ("/tools.tar".to_owned(), Body::File(tools.to_owned())),
            ("/image".to_owned(), Body::File(self.image.to_owned())),
        ]);
        let server = FileServer::start(routes);
        // QEMU's user-mode network reaches the host's loopback as 10.0.2.2.
        let base = format!("http://10.0.2.2:{}", server.addr.port());
        server.add(
            "/boot.ipxe",
            format!(
                "#!ipxe\n\
                 kernel {base}/vmlinuz initrd=initrd.img console=tty0 console=ttyS0,115200n8\n\
                 initrd {base}/initrd.img\n\
                 boot\n"
            ),
        );
        server.add("/raw.sh", raw_script(&base));

        let p = |ext: &str| self.dir.join(format!("raw-{i}.{ext}"));
        let disk = p("qcow2");
        let out = Command::new("qemu-img")
            .args(["create", "-q", "-f", "qcow2"])
            .arg(&disk)
            .arg(self.disk_bytes.to_string())
            .output()
            .unwrap();
        assert!(out.status.success(), "{out:?}");
        let sock = p("sock");
        let _ = std::fs::remove_file(&sock);
        let log = std::fs::File::create(p("qemu.log")).unwrap();
        // A `.pid` in the lab directory: the lab kills it on a panic.
        let pidfile = self.dir.join(format!("raw-qemu-{i}.pid"));
        let started = Instant::now();
        let child = Command::new("qemu-system-x86_64")
            .args(["-machine", "accel=tcg", "-smp", "1", "-m"])
            .arg(self.memory_mib.to_string())
            .args(["-boot", "n", "-display", "none", "-monitor", "none"])
            .arg("-chardev")
            .arg(format!(
                "socket,id=con,path={},server=on,wait=off",
                sock.display()
            ))
            .args(["-serial", "chardev:con", "-pidfile"])
            .arg(&pidfile)
            .arg("-drive")
            .arg(format!(
                "file={},if=none,id=d0,format=qcow2",
                disk.display()
            ))
            .args(["-device", "virtio-blk-pci,drive=d0"])
            .arg("-netdev")
            .arg(format!("user,id=n0,bootfile={base}/boot.ipxe"))
            .arg("-object")
            .arg(format!(
                "filter-dump,id=f0,netdev=n0,file={}",
                p("pcap").display()
            ))
            .arg("-device")
            .arg(format!(
                "virtio-net-pci,netdev=n0,mac=52:54:00:21:71:{i:02x}"
            ))
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("run qemu-system-x86_64");
        let qemu = KillOnDrop(child, pidfile);
        let console = Console::attach(&sock, &p("console.log"));
        let fail = |what: &str| -> ! {
            panic!(
                "raw machine {i}: {what}\n--- its console:\n{}",
                console.tail(40)
            )
        };

        let ipxe = server
            .wait_for("/boot.ipxe", Duration::from_secs(120))
            .unwrap_or_else(|| fail("iPXE never asked for its script"));
        let (_, agent) = console
            .wait_for("kumo: running the agent", 0, Duration::from_secs(180))
            .unwrap_or_else(|| fail("the initramfs never started the agent"));
        let (exited, _) = console
            .wait_for("the agent exited", 0, Duration::from_secs(60))
            .unwrap_or_else(|| fail("the agent did not exit"));
        console
            .wait_for("# ", exited, Duration::from_secs(60))
            .unwrap_or_else(|| fail("no shell prompt"));
        console.send(&format!(
            "wget -qO /tmp/raw.sh {base}/raw.sh && sh /tmp/raw.sh\n"
        ));
        let (at, _) = console
            .wait_for("raw-result ", exited, Duration::from_secs(900))
            .unwrap_or_else(|| fail("the raw image write did not finish"));
        console
            .wait_for("\n", at, Duration::from_secs(10))
            .unwrap_or_else(|| fail("the result line did not end"));
        let text = console.text();
        let line = text[at..].lines().next().unwrap_or_default().to_owned();
        // "raw-result <rc> <before write> <after write> <after seed>"
        let f: Vec<&str> = line.split_whitespace().collect();
        let up = |k: usize| -> f64 { f.get(k).and_then(|s| s.parse().ok()).unwrap_or(f64::NAN) };
        if f.get(1) != Some(&"0") || up(4).is_nan() {
            fail(&format!("the raw write failed: {line:?}"));
        }

        // The disk boot: reset, and iPXE's second script is a sanboot.
        server.add(
            "/boot.ipxe",
            "#!ipxe\nsanboot --no-describe --drive 0x80\n".to_owned(),
        );
        let from = console.text().len();
        console.send("reboot -f\n");
        let sanboot = server
            .wait_for_nth("/boot.ipxe", 2, Duration::from_secs(120))
            .unwrap_or_else(|| fail("iPXE did not ask for a script after the reset"));
        let (linux, _) = console
            .wait_for("Linux version", from, Duration::from_secs(120))
            .unwrap_or_else(|| fail("the written kernel did not start"));
        // Enough of its messages to date its start by.
        std::thread::sleep(Duration::from_secs(3));
        let kernel = console
            .kernel_start(linux)
            .unwrap_or_else(|| fail("no timestamped kernel messages"));
        drop(qemu);
        let pcap = std::fs::read(p("pcap")).unwrap();
        let dhcp = dhcp_exchange(&pcap)
            .unwrap_or_else(|| panic!("raw machine {i}: no DHCP exchange in its packet dump"));
        RawBounds {
            to_ipxe: (ipxe - started).saturating_sub(dhcp),
            to_agent: agent - ipxe,
            image_write: Duration::from_secs_f64(up(3) - up(2)),
            seed: Duration::from_secs_f64(up(4) - up(3)),
            to_kernel: kernel.saturating_duration_since(sanboot),
        }
    }
}

/// What the raw machine runs on its console shell. Times are the VM's
/// uptime, so the serial line's latency is not in them.
fn raw_script(base: &str) -> String {
    format!(
        "set -o pipefail\n\
         up() {{ cut -d' ' -f1 /proc/uptime; }}\n\
         wget -qO- {base}/tools.tar | tar -xf - -C / || {{ echo 'raw-result tools'; exit 1; }}\n\
         a=$(up)\n\
         wget -qO- {base}/image | /opt/raw/zstd -dc | \
         /opt/raw/dd of=/dev/vda bs=1M iflag=fullblock conv=sparse,fsync status=none \
         || {{ echo 'raw-result write'; exit 1; }}\n\
         b=$(up)\n\
         blockdev --rereadpt /dev/vda\n\
         while [ ! -e /dev/vda1 ]; do sleep 0.05; done\n\
         s=/mnt/var/lib/cloud/seed/nocloud\n\
         mkdir -p /mnt && mount -t ext4 /dev/vda1 /mnt && mkdir -p $s && \
         for f in meta-data user-data vendor-data network-config; do echo '{{}}' > $s/$f; done && \
         umount /mnt || {{ echo 'raw-result seed'; exit 1; }}\n\
         c=$(up)\n\
         echo \"raw-result 0 $a $b $c\"\n"
    )
}

/// How long iPXE's DHCP took in a pcap file QEMU's `filter-dump` wrote:
/// from the first packet to port 67 to the last from port 67 before any
/// TCP (the script's download). Its clock is the VM's, which runs at
/// the host's pace.
fn dhcp_exchange(pcap: &[u8]) -> Option<Duration> {
    let u32_at = |b: &[u8], i: usize| -> Option<u32> {
        Some(u32::from_le_bytes(b.get(i..i + 4)?.try_into().ok()?))
    };
    let (mut first, mut last) = (None, None);
    let mut at = 24; // the file header
    while let (Some(sec), Some(usec), Some(len)) =
        (u32_at(pcap, at), u32_at(pcap, at + 4), u32_at(pcap, at + 8))
    {
        let frame = pcap.get(at + 16..at + 16 + len as usize)?;
        at += 16 + len as usize;
        let when = Duration::from_secs(sec.into()) + Duration::from_micros(usec.into());
        // IPv4 in Ethernet: the protocol, then the UDP ports after the header.
        if frame.get(12..14) != Some(&[8, 0]) {
            continue;
        }
        let ihl = usize::from(frame.get(14)? & 0xf) * 4;
        let port = |i: usize| -> Option<u16> {
            Some(u16::from_be_bytes(
                frame.get(14 + ihl + i..14 + ihl + i + 2)?.try_into().ok()?,
            ))
        };
        match frame.get(23)? {
            6 => break,
            17 if port(2)? == 67 => {
                first.get_or_insert(when);
            }
            17 if port(0)? == 67 => last = Some(when),
            _ => {}
        }
    }
    last?.checked_sub(first?)
}

/// A QEMU and its pid file, both gone on drop (the file too, so the
/// lab's clean-up never signals a process that reused the pid).
struct KillOnDrop(Child, PathBuf);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
        let _ = std::fs::remove_file(&self.1);
    }
}

enum Body {
    File(PathBuf),
    Text(String),
}

type Routes = Arc<Mutex<HashMap<String, Body>>>;
type Hits = Arc<Mutex<Vec<(String, Instant)>>>;

/// A plain HTTP/1.0 file server on the loopback that notes when each
/// path was first asked for. One thread per connection.
struct FileServer {
    addr: SocketAddr,
    routes: Routes,
    hits: Hits,
    stop: Arc<AtomicBool>,
}

impl FileServer {
    fn start(routes: HashMap<String, Body>) -> FileServer {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let server = FileServer {
            addr: listener.local_addr().unwrap(),
            routes: Arc::new(Mutex::new(routes)),
            hits: Arc::default(),
            stop: Arc::default(),
        };
        let (routes, hits, stop) = (
            server.routes.clone(),
            server.hits.clone(),
            server.stop.clone(),
        );
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                if stop.load(Ordering::SeqCst) {
                    break;
                }
                let Ok(conn) = conn else { continue };
                let (routes, hits) = (routes.clone(), hits.clone());
                std::thread::spawn(move || {
                    let _ = serve(conn, &routes, &hits);
                });
            }
        });
        server
    }

    fn add(&self, path: &str, text: String) {
        self.routes
            .lock()
            .unwrap()
            .insert(path.to_owned(), Body::Text(text));
    }

    /// When `path` was first asked for, waiting up to `limit`.
    fn wait_for(&self, path: &str, limit: Duration) -> Option<Instant> {
        self.wait_for_nth(path, 1, limit)
    }

    /// When `path` was asked for the `n`th time.
    fn wait_for_nth(&self, path: &str, n: usize, limit: Duration) -> Option<Instant> {
        let start = Instant::now();
        while start.elapsed() < limit {
            let hits = self.hits.lock().unwrap();
            if let Some((_, at)) = hits.iter().filter(|(p, _)| p == path).nth(n - 1) {
                return Some(*at);
            }
            drop(hits);
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }
}

impl Drop for FileServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wakes the accept loop so it sees the flag.
        let _ = TcpStream::connect(self.addr);
    }
}

fn serve(conn: TcpStream, routes: &Routes, hits: &Hits) -> std::io::Result<()> {
    let mut reader = BufReader::new(conn.try_clone()?);
    let mut request = String::new();
    reader.read_line(&mut request)?;
    let at = Instant::now();
    loop {
        let mut header = String::new();
        if reader.read_line(&mut header)? == 0 || header.trim().is_empty() {
            break;
        }
    }
    let path = request.split_whitespace().nth(1).unwrap_or("").to_owned();
    hits.lock().unwrap().push((path.clone(), at));
    let mut conn = conn;
    let head = |len: u64| format!("HTTP/1.0 200 OK\r\nContent-Length: {len}\r\n\r\n");
    let body = match routes.lock().unwrap().get(&path) {
        Some(Body::Text(t)) => Ok(t.clone()),
        Some(Body::File(f)) => Err(f.clone()),
        None => {
            return conn.write_all(b"HTTP/1.0 404 Not Found\r\nContent-Length: 0\r\n\r\n");
        }
    };
    match body {
        Ok(text) => {
            conn.write_all(head(text.len() as u64).as_bytes())?;
            conn.write_all(text.as_bytes())
        }
        Err(file) => {
            let mut f = std::fs::File::open(file)?;
            conn.write_all(head(f.metadata()?.len()).as_bytes())?;
            std::io::copy(&mut f, &mut conn).map(drop)
        }
    }
}

/// A QEMU serial console on a Unix socket: everything it prints, with
/// when each piece arrived, copied to a log file.
struct Console {
    writer: Mutex<UnixStream>,
    seen: Arc<Mutex<Seen>>,
}

#[derive(Default)]
struct Seen {
    text: String,
    /// (end offset in `text`, when that piece arrived)
    arrivals: Vec<(usize, Instant)>,
}

impl Console {
    fn attach(sock: &Path, log: &Path) -> Console {
        let start = Instant::now();
        let stream = loop {
            match UnixStream::connect(sock) {
                Ok(s) => break s,
                Err(e) if start.elapsed() > Duration::from_secs(30) => {
                    panic!("console {}: {e}", sock.display())
                }
                Err(_) => std::thread::sleep(Duration::from_millis(20)),
            }
        };
        let seen = Arc::new(Mutex::new(Seen::default()));
        let (mut reader, mut log) = (
            stream.try_clone().unwrap(),
            std::fs::File::create(log).unwrap(),
        );
        let shared = seen.clone();
        std::thread::spawn(move || {
            let mut buf = [0u8; 8192];
            while let Ok(n @ 1..) = reader.read(&mut buf) {
                let at = Instant::now();
                let _ = log.write_all(&buf[..n]);
                let mut s = shared.lock().unwrap();
                s.text.push_str(&String::from_utf8_lossy(&buf[..n]));
                let end = s.text.len();
                s.arrivals.push((end, at));
            }
        });
        Console {
            writer: Mutex::new(stream),
            seen,
        }
    }

    fn text(&self) -> String {
        self.seen.lock().unwrap().text.clone()
    }

    fn tail(&self, lines: usize) -> String {
        let text = self.text();
        let all: Vec<&str> = text.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }

    /// Where `needle` first appears at or after byte `from`, and when
    /// the piece that completed it arrived.
    fn wait_for(&self, needle: &str, from: usize, limit: Duration) -> Option<(usize, Instant)> {
        let start = Instant::now();
        while start.elapsed() < limit {
            let s = self.seen.lock().unwrap();
            if let Some(i) = s.text.get(from..).and_then(|t| t.find(needle)) {
                let (at, end) = (from + i, from + i + needle.len());
                let when = s.arrivals.iter().find(|(e, _)| *e >= end).map(|(_, t)| *t);
                return when.map(|t| (at, t));
            }
            drop(s);
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }

    /// When the kernel whose messages start at byte `from` started: each
    /// `[  seconds]` line arrived no sooner than that many seconds after
    /// it, and a serial console prints at once, so the earliest arrival
    /// less its timestamp.
    fn kernel_start(&self, from: usize) -> Option<Instant> {
        let s = self.seen.lock().unwrap();
        let mut at = from;
        let mut start: Option<Instant> = None;
        for line in s.text[from..].split_inclusive('\n') {
            at += line.len();
            let stamp = line
                .trim_start_matches(|c: char| !c.is_ascii_graphic())
                .strip_prefix('[')
                .and_then(|l| l.split_once(']'))
                .and_then(|(t, _)| t.trim().parse::<f64>().ok());
            let arrived = s.arrivals.iter().find(|(e, _)| *e >= at).map(|(_, t)| *t);
            let began = stamp
                .zip(arrived)
                .and_then(|(t, a)| a.checked_sub(Duration::from_secs_f64(t)));
            if let Some(b) = began {
                start = Some(start.map_or(b, |s| s.min(b)));
            }
        }
        start
    }

    fn send(&self, line: &str) {
        self.writer
            .lock()
            .unwrap()
            .write_all(line.as_bytes())
            .unwrap();
    }
}
