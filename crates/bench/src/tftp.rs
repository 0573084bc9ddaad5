//! `kumo-bench tftp`: one file downloaded from kumo's TFTP shell and from
//! tftpd-hpa over the same veth link, with each client's option set:
//! tftp-hpa (no options: 512-byte blocks, lock-step), curl (blksize) and
//! atftp (blksize and windowsize, which tftpd-hpa does not implement and
//! so ignores).

use std::net::Ipv4Addr;
use std::path::Path;
use std::time::Duration;

use anyhow::{ensure, Context, Result};
use tokio::process::Command;

use crate::lab::{self, Daemon, Lab};

#[derive(clap::Args, Debug)]
pub struct Args {
    /// Size of the served file in MiB.
    #[arg(long, default_value_t = 64)]
    mib: u64,
    /// Downloads per (server, option set); the best is reported.
    #[arg(long, default_value_t = 2)]
    runs: u32,
    /// Servers to measure, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "kumo,tftpd-hpa")]
    servers: Vec<Peer>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Peer {
    Kumo,
    TftpdHpa,
}

impl Peer {
    fn name(self) -> &'static str {
        match self {
            Peer::Kumo => "kumo",
            Peer::TftpdHpa => "tftpd-hpa",
        }
    }
}

/// A client and the options it asks for.
#[derive(Clone, Copy)]
struct OptionSet {
    label: &'static str,
    client: Client,
    options: &'static [&'static str],
}

#[derive(Clone, Copy)]
enum Client {
    TftpHpa,
    Curl,
    Atftp,
}

const OPTION_SETS: &[OptionSet] = &[
    OptionSet {
        label: "default 512 B (tftp-hpa)",
        client: Client::TftpHpa,
        options: &[],
    },
    OptionSet {
        label: "blksize 1468 (curl)",
        client: Client::Curl,
        options: &["1468"],
    },
    OptionSet {
        label: "blksize 1468 window 16 (atftp)",
        client: Client::Atftp,
        options: &["blksize 1468", "windowsize 16"],
    },
    OptionSet {
        label: "blksize 1468 window 64 (atftp)",
        client: Client::Atftp,
        options: &["blksize 1468", "windowsize 64"],
    },
];

const FILE: &str = "bench.img";

pub async fn run(a: Args) -> Result<()> {
    let lab = Lab::create("t", Ipv4Addr::new(10, 79, 0, 0))?;
    let dir = lab::world_readable_tempdir()?;
    let root = dir.path().join("root");
    std::fs::create_dir(&root)?;
    make_file(&root.join(FILE), a.mib)?;
    let out_dir = dir.path().join("out");
    std::fs::create_dir(&out_dir)?;
    println!(
        "TFTP: {} MiB file from {}:69 to {} over veth (MTU 1500), best of {} downloads per cell; \
         the file is in the page cache for every server",
        a.mib, lab.server_ip, lab.client_ns, a.runs
    );
    let mut table: Vec<(&'static str, Vec<f64>)> = Vec::new();
    for &peer in &a.servers {
        let mut daemon = start(peer, &lab, dir.path(), &root)?;
        lab.wait_udp(&mut daemon, 69).await?;
        let mut speeds = Vec::new();
        for set in OPTION_SETS {
            let mut best = 0.0f64;
            for _ in 0..a.runs {
                let t = download(&lab, set, &out_dir, a.mib)
                    .await
                    .with_context(|| format!("{} with {}", peer.name(), set.label))?;
                best = best.max(a.mib as f64 / t.as_secs_f64());
            }
            println!("  {} {}: {best:.1} MiB/s", peer.name(), set.label);
            speeds.push(best);
        }
        daemon.stop().await?;
        table.push((peer.name(), speeds));
    }
    print_table(&table);
    Ok(())
}

fn start(peer: Peer, lab: &Lab, dir: &Path, root: &Path) -> Result<Daemon> {
    let listen = format!("{}:69", lab.server_ip);
    match peer {
        Peer::Kumo => {
            let mut cmd = lab.server_cmd(lab::this_exe()?);
            cmd.arg("serve-tftp")
                .args(["--listen", &listen])
                .arg("--root")
                .arg(root);
            Daemon::spawn("kumo tftp", cmd, &dir.join("kumo-tftp.log"))
        }
        Peer::TftpdHpa => {
            let mut cmd = lab.server_cmd("in.tftpd");
            // -L: foreground; -s: serve the root as /; it drops to `nobody`.
            cmd.args(["-L", "-s", "-a", &listen]).arg(root);
            Daemon::spawn("in.tftpd", cmd, &dir.join("tftpd-hpa.log"))
        }
    }
}

fn make_file(path: &Path, mib: u64) -> Result<()> {
    use std::io::Write;
    let mut f = std::io::BufWriter::new(std::fs::File::create(path)?);
    // Not all zeros, so nothing along the way can shortcut it.
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut block = vec![0u8; 1 << 20];
    for _ in 0..mib {
        for chunk in block.chunks_mut(8) {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            chunk.copy_from_slice(&x.to_le_bytes());
        }
        f.write_all(&block)?;
    }
    f.flush()?;
    Ok(())
}

/// Downloads the file once from the client namespace; the wall time of the
/// client process, the whole transfer included.
async fn download(lab: &Lab, set: &OptionSet, out_dir: &Path, mib: u64) -> Result<Duration> {
    let local = out_dir.join("got");
    let _ = std::fs::remove_file(&local);
    let server = lab.server_ip.to_string();
    let mut cmd: Command;
    match set.client {
        Client::TftpHpa => {
            cmd = lab.client_cmd("tftp");
            cmd.args(["-m", "octet", &server, "-c", "get", FILE])
                .arg(&local);
        }
        Client::Curl => {
            cmd = lab.client_cmd("curl");
            cmd.args(["--silent", "--show-error", "--tftp-blksize", set.options[0]])
                .arg("-o")
                .arg(&local)
                .arg(format!("tftp://{server}/{FILE}"));
        }
        Client::Atftp => {
            cmd = lab.client_cmd("atftp");
            for o in set.options {
                cmd.args(["--option", o]);
            }
            cmd.args(["-g", "-r", FILE, "-l"]).arg(&local).arg(&server);
        }
    }
    let (_, took) = lab::output(cmd, "the tftp client").await?;
    let got = std::fs::metadata(&local).map(|m| m.len()).unwrap_or(0);
    ensure!(
        got == mib << 20,
        "downloaded {got} bytes, expected {}",
        mib << 20
    );
    std::fs::remove_file(&local)?;
    Ok(took)
}

fn print_table(table: &[(&'static str, Vec<f64>)]) {
    println!();
    println!(
        "TFTP download throughput in MiB/s (file size / client wall time), by client option set"
    );
    let mut header = format!("{:<10}", "server");
    for set in OPTION_SETS {
        header.push_str(&format!(" | {:>30}", set.label));
    }
    println!("{header}");
    println!("{}", "-".repeat(header.len()));
    for (name, speeds) in table {
        let mut line = format!("{name:<10}");
        for s in speeds {
            line.push_str(&format!(" | {s:>30.1}"));
        }
        println!("{line}");
    }
    if let Some((_, hpa)) = table.iter().find(|(n, _)| *n == "tftpd-hpa") {
        if let Some((_, kumo)) = table.iter().find(|(n, _)| *n == "kumo") {
            let mut line = format!("{:<10}", "kumo/hpa");
            for (k, h) in kumo.iter().zip(hpa) {
                line.push_str(&format!(" | {:>29.2}x", k / h));
            }
            println!("{line}");
        }
    }
    println!(
        "tftpd-hpa 5.2 implements blksize and tsize but not windowsize (RFC 7440), so atftp's \
         windowed requests run lock-step against it; kumo grants windowsize up to 64."
    );
    println!(
        "Peers: tftpd-hpa {}, clients: {}, {}, {}",
        dpkg_version("tftpd-hpa"),
        format_args!("tftp-hpa {}", dpkg_version("tftp-hpa")),
        format_args!("atftp {}", dpkg_version("atftp")),
        lab::version("curl", &["--version"])
            .split_whitespace()
            .take(2)
            .collect::<Vec<_>>()
            .join(" ")
    );
}

fn dpkg_version(package: &str) -> String {
    std::process::Command::new("dpkg-query")
        .args(["-W", "-f=${Version}", package])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_else(|| "(version unknown)".into())
}
