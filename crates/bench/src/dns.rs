//! `kumo-bench dns`: dnsperf against kumo's DNS shell, BIND 9 and dnsmasq,
//! one after another on the same veth link, all serving the same names:
//! one `ZoneSet` (built as the region builds it, with `add_hosts`) is given
//! to kumo as JSON, written out as zone files for BIND and as a hosts file
//! for dnsmasq.

use std::ffi::OsStr;
use std::fmt::Write as _;
use std::net::Ipv4Addr;
use std::path::Path;

use anyhow::{bail, Context, Result};
use kumo_dns::{Record, RecordData, Soa, ZoneDefaults, ZoneSet};

use crate::lab::{self, Daemon, Lab};

#[derive(clap::Args, Debug)]
pub struct Args {
    /// Hosts in the zone (an A and a PTR record each).
    #[arg(long, default_value_t = 1000)]
    hosts: u32,
    /// Seconds of load per server.
    #[arg(long, default_value_t = 10)]
    secs: u32,
    /// dnsperf's outstanding queries (-q); enough to keep every server
    /// busy. At 300, BIND and dnsmasq start losing queries to their
    /// default socket buffers, which would count against them.
    #[arg(long, default_value_t = 200)]
    outstanding: u32,
    /// dnsperf client sockets (-c) per dnsperf thread.
    #[arg(long, default_value_t = 4)]
    sockets: u32,
    /// Rounds: every server is measured once per round, rounds interleaved;
    /// the best round per server is reported (other load on the machine
    /// only ever slows a server).
    #[arg(long, default_value_t = 3)]
    rounds: u32,
    /// dnsperf threads (-T), each a sender and a receiver; comma-separated
    /// to try several. Each server is reported at the count that gave it
    /// the most: dnsperf shares the 2 cores with the server, so the best
    /// count depends on how much CPU the server leaves it (BIND did best
    /// with 2, kumo's XDP path with 3).
    #[arg(long, value_delimiter = ',', default_values_t = [1, 2, 3])]
    threads: Vec<u32>,
    /// Also measure kumo with one UDP thread and no reply cache.
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    baseline: bool,
    /// Run the servers and dnsperf under SCHED_RR at this priority
    /// (`chrt -r`), so other load on the machine does not decide the
    /// figures: every process measured preempts the machine's ordinary
    /// ones, alike for each server. Off by default: the figures are then
    /// those of ordinary scheduling.
    #[arg(long)]
    rt_priority: Option<u8>,
    /// How kumo attaches its XDP answer path (auto, native or generic).
    /// Auto is generic on a veth: native XDP there sends replies only to
    /// a peer that runs XDP itself, which the client side here does not.
    #[arg(long, default_value = "auto")]
    xdp_mode: String,
    /// Servers to measure, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "kumo,bind,dnsmasq")]
    servers: Vec<Peer>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Peer {
    Kumo,
    /// kumo with the XDP answer path off: its sockets alone.
    #[value(skip)]
    KumoSockets,
    /// kumo with one UDP thread and no reply cache.
    #[value(skip)]
    KumoBaseline,
    Bind,
    Dnsmasq,
}

const DOMAIN: &str = "bench.kumo.test";
const NS: &str = "ns.bench.kumo.test.";

struct Row {
    name: &'static str,
    /// dnsperf's -T.
    threads: u32,
    qps: f64,
    /// The slowest round's rate.
    worst: f64,
    sent: f64,
    completed: f64,
    lost: f64,
    avg_ms: f64,
    max_ms: f64,
    /// Busy CPU of the whole machine (dnsperf and kernel included) per
    /// answered query, in µs.
    cpu_us: f64,
    note: &'static str,
}

/// Busy and steal jiffies of all CPUs, from /proc/stat.
fn cpu_jiffies() -> (u64, u64) {
    let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let f: Vec<u64> = stat
        .lines()
        .next()
        .unwrap_or("")
        .split_whitespace()
        .skip(1)
        .filter_map(|x| x.parse().ok())
        .collect();
    let at = |i: usize| f.get(i).copied().unwrap_or(0);
    // user nice system idle iowait irq softirq steal
    (at(0) + at(1) + at(2) + at(5) + at(6), at(7))
}

pub async fn run(a: Args) -> Result<()> {
    let lab = Lab::create("n", Ipv4Addr::new(10, 78, 0, 0))?;
    let dir = lab::world_readable_tempdir()?;
    let hosts = hosts(a.hosts, lab.server_ip);
    let zones = zone_set(&hosts)?;
    let queries = dir.path().join("queries.txt");
    let nqueries = write_queries(&queries, &hosts)?;
    println!(
        "DNS: dnsperf -c {}×T -T {:?} -q {} -l {} from {} to {}:53; {} hosts (A + PTR) in {} zones; \
         {nqueries} queries in the file: every A, every PTR and 10% names that do not exist (NXDOMAIN){}",
        a.sockets,
        a.threads,
        a.outstanding,
        a.secs,
        lab.client_ns,
        lab.server_ip,
        hosts.len(),
        zones.zones.len(),
        match a.rt_priority {
            Some(p) => format!("; servers and dnsperf under SCHED_RR priority {p}"),
            None => String::new(),
        }
    );
    let mut rows = Vec::new();
    let mut peers = a.servers.clone();
    if a.baseline && peers.contains(&Peer::Kumo) {
        let at = peers.iter().position(|p| *p == Peer::Kumo).unwrap_or(0);
        peers.insert(at + 1, Peer::KumoSockets);
        peers.insert(at + 2, Peer::KumoBaseline);
    }
    for round in 1..=a.rounds {
        for &threads in &a.threads {
            for &peer in &peers {
                let mut row = bench_one(
                    &a,
                    threads,
                    &lab,
                    dir.path(),
                    &zones,
                    &hosts,
                    &queries,
                    peer,
                )
                .await
                .with_context(|| format!("dns benchmark of {peer:?}"))?;
                println!(
                    "  round {round} -T {threads} {}: {:.0} queries/s, {:.0} lost",
                    row.name, row.qps, row.lost
                );
                match rows
                    .iter_mut()
                    .find(|r: &&mut Row| r.name == row.name && r.threads == threads)
                {
                    Some(best) => {
                        row.worst = best.worst.min(row.qps);
                        if row.qps > best.qps {
                            *best = row;
                        } else {
                            best.worst = row.worst;
                        }
                    }
                    None => rows.push(row),
                }
            }
        }
    }
    // Each server at its best thread count.
    let mut best: Vec<Row> = Vec::new();
    for r in rows {
        match best.iter_mut().find(|b| b.name == r.name) {
            Some(b) if r.qps > b.qps => *b = r,
            Some(_) => {}
            None => best.push(r),
        }
    }
    print_table(&a, &best);
    Ok(())
}

/// (fqdn, address) pairs: `ns` and host-0001… in 10.80.0.0/16.
fn hosts(n: u32, ns_ip: Ipv4Addr) -> Vec<(String, Ipv4Addr)> {
    let mut out = vec![(NS.trim_end_matches('.').to_owned(), ns_ip)];
    for i in 1..=n {
        let ip = Ipv4Addr::new(10, 80, (i / 250) as u8, (i % 250 + 1) as u8);
        out.push((format!("host-{i:04}.{DOMAIN}"), ip));
    }
    out
}

fn zone_set(hosts: &[(String, Ipv4Addr)]) -> Result<ZoneSet> {
    let defaults = ZoneDefaults {
        ttl: 300,
        soa: Soa {
            mname: NS.into(),
            rname: format!("hostmaster.{DOMAIN}."),
            serial: 1,
            refresh: 3600,
            retry: 600,
            expire: 86400,
            minimum: 60,
        },
    };
    let mut set = ZoneSet::default();
    set.add_hosts(hosts.iter().map(|(n, ip)| (n.as_str(), *ip)), &defaults)?;
    // BIND refuses a zone without NS; kumo serves the same record.
    for z in &mut set.zones {
        z.records.push(Record {
            name: "@".into(),
            ttl: None,
            data: RecordData::Ns(NS.into()),
        });
    }
    // Validates exactly as the server will.
    kumo_dns::Server::new(&set).context("the benchmark zone set")?;
    Ok(set)
}

fn write_queries(path: &Path, hosts: &[(String, Ipv4Addr)]) -> Result<usize> {
    let mut out = String::new();
    let mut n = 0;
    for (i, (name, ip)) in hosts.iter().enumerate() {
        let [a, b, c, d] = ip.octets();
        writeln!(out, "{name} A")?;
        writeln!(out, "{d}.{c}.{b}.{a}.in-addr.arpa PTR")?;
        n += 2;
        if i % 5 == 0 {
            writeln!(out, "missing-{i}.{DOMAIN} A")?;
            n += 1;
        }
    }
    std::fs::write(path, out)?;
    Ok(n)
}

fn absolute(name: &str) -> String {
    format!("{}.", name.trim_end_matches('.'))
}

/// One zone in RFC 1035 master file format, from the same data kumo serves.
fn zone_file(z: &kumo_dns::Zone) -> Result<String> {
    let s = &z.soa;
    let mut out = format!(
        "$ORIGIN {}\n$TTL {}\n@ IN SOA {} {} {} {} {} {} {}\n",
        absolute(&z.name),
        z.ttl,
        absolute(&s.mname),
        absolute(&s.rname),
        s.serial,
        s.refresh,
        s.retry,
        s.expire,
        s.minimum
    );
    for r in &z.records {
        let ttl = r.ttl.map(|t| format!(" {t}")).unwrap_or_default();
        let data = match &r.data {
            RecordData::A(ip) => format!("A {ip}"),
            RecordData::Aaaa(ip) => format!("AAAA {ip}"),
            RecordData::Ptr(n) => format!("PTR {}", absolute(n)),
            RecordData::Ns(n) => format!("NS {}", absolute(n)),
            RecordData::Cname(n) => format!("CNAME {}", absolute(n)),
            other => bail!("zone file for {other}: not needed by this benchmark"),
        };
        writeln!(out, "{}{ttl} IN {data}", r.name)?;
    }
    Ok(out)
}

/// BIND as an operator would run it for speed: authoritative only, no
/// query log (the default), a worker thread per core (the default), and
/// `reuseport no`. With reuseport (the default) each thread has its own
/// socket and the kernel hashes client flows onto them, so a handful of
/// client sockets (dnsperf's) can leave a thread idle; measured here, off
/// was as fast or faster in every dnsperf setting tried (with 4 client
/// sockets, 6% faster under `--rt-priority`, up to twice as fast while
/// other load shared the machine).
fn named_conf(dir: &Path, lab: &Lab, zones: &ZoneSet) -> Result<String> {
    let d = dir.display();
    let mut conf = format!(
        "options {{\n  directory \"{d}\";\n  pid-file \"{d}/named.pid\";\n  session-keyfile \"{d}/session.key\";\n  \
         managed-keys-directory \"{d}\";\n  listen-on port 53 {{ {}; }};\n  listen-on-v6 {{ none; }};\n  \
         recursion no;\n  dnssec-validation no;\n  allow-query {{ any; }};\n  reuseport no;\n}};\ncontrols {{ }};\n",
        lab.server_ip
    );
    for z in &zones.zones {
        let file = dir.join(format!("{}.zone", z.name.trim_end_matches('.')));
        std::fs::write(&file, zone_file(z)?)?;
        writeln!(
            conf,
            "zone \"{}\" {{ type primary; file \"{}\"; }};",
            z.name.trim_end_matches('.'),
            file.display()
        )?;
    }
    Ok(conf)
}

#[allow(clippy::too_many_arguments)]
async fn bench_one(
    a: &Args,
    threads: u32,
    lab: &Lab,
    dir: &Path,
    zones: &ZoneSet,
    hosts: &[(String, Ipv4Addr)],
    queries: &Path,
    peer: Peer,
) -> Result<Row> {
    let (name, note, mut daemon) = match peer {
        Peer::Kumo => (
            "kumo",
            "authoritative; repeated queries answered in XDP, the rest as kumo-sock",
            kumo_dns_daemon(
                a,
                lab,
                dir,
                zones,
                &["--xdp", &lab.server_if, "--xdp-mode", &a.xdp_mode],
                "kumo-dns.log",
            )?,
        ),
        Peer::KumoSockets => (
            "kumo-sock",
            "authoritative; UDP threads (recvmmsg/sendmmsg batches), reply cache",
            kumo_dns_daemon(a, lab, dir, zones, &[], "kumo-dns-sock.log")?,
        ),
        Peer::KumoBaseline => (
            "kumo-1",
            "authoritative; one UDP thread, no reply cache",
            kumo_dns_daemon(
                a,
                lab,
                dir,
                zones,
                &["--udp-workers", "1", "--cache-entries", "0"],
                "kumo-dns-1.log",
            )?,
        ),
        Peer::Bind => {
            let conf = dir.join("named.conf");
            std::fs::write(&conf, named_conf(dir, lab, zones)?)?;
            let mut cmd = scheduled(a, |p| lab.server_cmd(p), "named");
            cmd.args(["-g", "-4", "-c"]).arg(&conf);
            (
                "BIND",
                "authoritative; a thread per core, reuseport off",
                Daemon::spawn("named", cmd, &dir.join("named.log"))?,
            )
        }
        Peer::Dnsmasq => {
            let hosts_file = dir.join("dnsmasq.hosts");
            let mut text = String::new();
            for (n, ip) in hosts {
                writeln!(text, "{ip} {n}")?;
            }
            std::fs::write(&hosts_file, text)?;
            let mut cmd = scheduled(a, |p| lab.server_cmd(p), "dnsmasq");
            cmd.args([
                "--conf-file=/dev/null",
                "--keep-in-foreground",
                "--no-resolv",
            ])
            .args(["--no-hosts", "--bind-interfaces", "--log-facility=-"])
            .arg(format!("--listen-address={}", lab.server_ip))
            .arg(format!("--addn-hosts={}", hosts_file.display()))
            // Names under our zones that are not hosts: NXDOMAIN, not forwarded.
            .arg(format!("--local=/{DOMAIN}/"))
            .arg("--local=/80.10.in-addr.arpa/")
            .arg(format!(
                "--pid-file={}",
                dir.join("dnsmasq-dns.pid").display()
            ))
            .arg("--user=root");
            (
                "dnsmasq",
                "hosts file, not authoritative (no AA, no SOA)",
                Daemon::spawn("dnsmasq", cmd, &dir.join("dnsmasq-dns.log"))?,
            )
        }
    };
    lab.wait_udp(&mut daemon, 53).await?;
    let mut perf = scheduled(a, |p| lab.client_cmd(p), "dnsperf");
    perf.args(["-s", &lab.server_ip.to_string()])
        .arg("-d")
        .arg(queries)
        .args(["-l", &a.secs.to_string()])
        .args(["-c", &(a.sockets * threads).to_string()])
        .args(["-T", &threads.to_string()])
        .args(["-q", &a.outstanding.to_string()]);
    let (busy_before, _) = cpu_jiffies();
    let result = lab::output(perf, "dnsperf").await;
    let (busy_after, _) = cpu_jiffies();
    let stopped = daemon.stop().await;
    let (text, _) = result?;
    stopped?;
    if peer == Peer::Kumo {
        // Where the answers came from (XDP or the sockets), or why XDP was not used.
        let log = std::fs::read_to_string(dir.join("kumo-dns.log")).unwrap_or_default();
        for line in log
            .lines()
            .filter(|l| l.contains("xdp") || l.contains("counters"))
        {
            println!("    kumo: {line}");
        }
    }
    let f = |k: &str| lab::field(&text, k).with_context(|| format!("no {k:?} in:\n{text}"));
    let latency = text
        .lines()
        .find(|l| l.contains("Average Latency (s):"))
        .unwrap_or("");
    Ok(Row {
        name,
        threads,
        qps: f("Queries per second:")?,
        worst: f("Queries per second:")?,
        sent: f("Queries sent:")?,
        completed: f("Queries completed:")?,
        lost: f("Queries lost:")?,
        avg_ms: f("Average Latency (s):")? * 1000.0,
        max_ms: lab::field(latency, "max").unwrap_or(0.0) * 1000.0,
        cpu_us: {
            // USER_HZ is 100 on Linux: a jiffy is 10 ms.
            let busy_us = busy_after.saturating_sub(busy_before) as f64 * 10_000.0;
            busy_us / f("Queries completed:")?.max(1.0)
        },
        note,
    })
}

/// kumo's DNS shell (`serve-dns`) on the lab's server address with the
/// benchmark's zones and `extra` arguments, logging to `log`.
fn kumo_dns_daemon(
    a: &Args,
    lab: &Lab,
    dir: &Path,
    zones: &ZoneSet,
    extra: &[&str],
    log: &str,
) -> Result<Daemon> {
    let path = dir.join("kumo-zones.json");
    std::fs::write(&path, serde_json::to_vec(zones)?)?;
    let mut cmd = scheduled(a, |p| lab.server_cmd(p), lab::this_exe()?);
    cmd.arg("serve-dns")
        .args(["--listen", &format!("{}:53", lab.server_ip)])
        .arg("--zones")
        .arg(&path)
        .args(extra);
    Daemon::spawn("kumo dns", cmd, &dir.join(log))
}

/// `program` through `in_ns` (a namespace's command), under `chrt -r`
/// when `--rt-priority` is given.
fn scheduled(
    a: &Args,
    in_ns: impl Fn(&OsStr) -> tokio::process::Command,
    program: impl AsRef<OsStr>,
) -> tokio::process::Command {
    let Some(priority) = a.rt_priority else {
        return in_ns(program.as_ref());
    };
    let mut cmd = in_ns(OsStr::new("chrt"));
    cmd.args(["-r", &priority.to_string()]).arg(program);
    cmd
}

fn print_table(a: &Args, rows: &[Row]) {
    println!();
    println!(
        "DNS at saturation (dnsperf, {} outstanding over {} sockets per thread, {:?} threads, {} s per server; \
         each server at its best thread count (T), best of {} interleaved rounds, the worst at that count in brackets): answered queries per second, queries lost (no answer within dnsperf's 5 s timeout), latency, \
         the whole machine's busy CPU per answered query (dnsperf and the kernel included; steal excluded)",
        a.outstanding, a.sockets, a.threads, a.secs, a.rounds
    );
    let header = format!(
        "{:<9} | {:>17} | {:>2} | {:>11} | {:>11} | {:>9} | {:>9} | {:>9} | {:>9} | {:>7} | {}",
        "server",
        "queries/s",
        "T",
        "sent",
        "completed",
        "lost",
        "avg ms",
        "max ms",
        "CPU µs/q",
        "vs BIND",
        "serves"
    );
    println!("{header}");
    println!("{}", "-".repeat(header.len() + 30));
    let bind = rows.iter().find(|r| r.name == "BIND").map(|r| r.qps);
    for r in rows {
        let ratio = bind
            .filter(|b| *b > 0.0)
            .map_or("-".into(), |b| format!("{:.2}x", r.qps / b));
        println!(
            "{:<9} | {:>17} | {:>2} | {:>11.0} | {:>11.0} | {:>9.0} | {:>9.3} | {:>9.3} | {:>9.1} | {:>7} | {}",
            r.name,
            format!("{:.0} ({:.0})", r.qps, r.worst),
            r.threads,
            r.sent,
            r.completed,
            r.lost,
            r.avg_ms,
            r.max_ms,
            r.cpu_us,
            ratio,
            r.note
        );
    }
    println!(
        "Peers: {}, {}, {}",
        dnsperf_version(),
        lab::version("named", &["-v"]),
        lab::version("dnsmasq", &["-v"])
            .split("  ")
            .next()
            .unwrap_or("dnsmasq")
    );
}

fn dnsperf_version() -> String {
    // dnsperf prints its version at the top of every run, not with a flag.
    let out = std::process::Command::new("dpkg-query")
        .args(["-W", "-f=${Version}", "dnsperf"])
        .output();
    match out {
        Ok(o) if o.status.success() => format!("dnsperf {}", String::from_utf8_lossy(&o.stdout)),
        _ => "dnsperf (version unknown)".into(),
    }
}
