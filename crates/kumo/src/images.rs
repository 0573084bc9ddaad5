//! `kumo images build-ephemeral`: the kernel and initramfs that machines
//! network-boot to enlist, commission and (later) deploy. The kernel is
//! Debian's (`linux-image-amd64`'s current dependency); the initramfs holds
//! Debian's static busybox, the NIC and disk modules with their
//! dependencies, this kumo binary with the shared libraries it needs, and
//! an `/init` that brings up the boot NIC and runs `kumo agent ephemeral`.
//!
//! Downloads are cached (`--cache-dir`), so a rebuild after changing kumo
//! only re-packs the initramfs. The binary is stripped either way, but a
//! release build is what to ship: the stripped debug binary makes a 17 MiB
//! initramfs, which iPXE downloads and the kernel unpacks under TCG in a
//! few seconds — fine for tests, wasteful on a real network of machines. The cpio writer and the module resolution
//! are pure and tested here; the rest drives apt-get, dpkg-deb, depmod,
//! ldd, strip and gzip.

use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};

/// Modules for the NICs and disks QEMU and common servers have; their
/// dependencies come along. Built-in ones (e.g. `af_packet`) are skipped.
pub const MODULES: &[&str] = &[
    "virtio_pci",
    "virtio_net",
    "virtio_blk",
    "virtio_scsi",
    "sd_mod",
    "ahci",
    "nvme",
    "e1000",
    "e1000e",
    "igb",
    "af_packet",
    "ipmi_si",
    "ipmi_devintf",
    // Deploying mounts the written root to seed its first boot.
    "ext4",
    "crc32c_generic",
];

const KERNEL_META: &str = "linux-image-amd64";
const BUSYBOX: &str = "busybox-static";

const INIT: &str = r#"#!/bin/busybox sh
# kumo's ephemeral environment: PID 1 of the network-booted initramfs.
/bin/busybox --install -s
export PATH=/usr/sbin:/usr/bin:/sbin:/bin LD_LIBRARY_PATH=/lib/x86_64-linux-gnu:/lib64
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
mkdir -p /dev/pts /run /tmp
hostname kumo-ephemeral
echo "kumo: ephemeral environment up $(cut -d' ' -f1 /proc/uptime) s after boot"
while read -r m; do insmod "$m" 2>/dev/null; done < /etc/kumo/modules

# The NIC iPXE booted from, else the first one backed by a device.
bootif=$(sed -n 's/.*BOOTIF=01-\([0-9a-fA-F-]*\).*/\1/p' /proc/cmdline | tr 'A-F-' 'a-f:')
iface=""
for _ in $(seq 50); do
  for d in /sys/class/net/*; do
    [ -e "$d/device" ] || continue
    [ -z "$iface" ] && [ -z "$bootif" ] && iface=${d##*/}
    [ "$(cat "$d/address")" = "$bootif" ] && iface=${d##*/}
  done
  [ -n "$iface" ] && break
  sleep 0.1
done
ip link set lo up
if [ -n "$iface" ]; then
  echo "kumo: dhcp on $iface ($bootif)"
  ip link set "$iface" up
  udhcpc -i "$iface" -s /usr/share/udhcpc/default.script -t 20 -T 1 -n -q
else
  echo "kumo: no NIC with MAC $bootif"
fi

echo "kumo: running the agent $(cut -d' ' -f1 /proc/uptime) s after boot"
kumo agent ephemeral
echo "kumo: the agent exited ($?); staying up with a shell on the console"
while :; do setsid cttyhack sh; sleep 5; done
"#;

const UDHCPC_SCRIPT: &str = r#"#!/bin/sh
# udhcpc's hook: configure what the lease says.
case "$1" in
  deconfig)
    ip -4 addr flush dev "$interface"
    ip link set "$interface" up
    ;;
  bound|renew)
    ip -4 addr flush dev "$interface"
    ip addr add "$ip/${mask:-24}" dev "$interface"
    [ -n "$router" ] && ip route add default via "${router%% *}" dev "$interface"
    : > /etc/resolv.conf
    for d in $dns; do echo "nameserver $d" >> /etc/resolv.conf; done
    [ -n "$domain" ] && echo "search $domain" >> /etc/resolv.conf
    echo "kumo: $interface is $ip/$mask"
    ;;
esac
exit 0
"#;

pub struct BuildOptions {
    pub output: PathBuf,
    pub cache_dir: PathBuf,
    pub kumo_binary: PathBuf,
}

/// Builds `vmlinuz` and `initrd.img` into `o.output`.
pub fn build(o: &BuildOptions) -> Result<()> {
    let debs = o.cache_dir.join("debs");
    std::fs::create_dir_all(&debs).with_context(|| format!("creating {}", debs.display()))?;
    let kernel_pkg = kernel_package(&debs)?;
    let kernel_root = extract(&fetch(&debs, &kernel_pkg)?, &o.cache_dir)?;
    let busybox_root = extract(&fetch(&debs, BUSYBOX)?, &o.cache_dir)?;

    let version = single_dir(&kernel_root.join("lib/modules"))?;
    let modules_dir = kernel_root.join("lib/modules").join(&version);
    if !modules_dir.join("modules.dep").exists() {
        run(Command::new("depmod")
            .arg("-b")
            .arg(&kernel_root)
            .arg(&version))?;
    }
    let dep = read_text(&modules_dir.join("modules.dep"))?;
    let builtin = read_text(&modules_dir.join("modules.builtin")).unwrap_or_default();
    let (load, missing) = resolve_modules(&dep, &builtin, MODULES);
    for m in missing {
        eprintln!("kumo: module {m} is neither a module nor built into kernel {version}; skipped");
    }

    let mut fs = Initramfs::default();
    for d in [
        "bin", "sbin", "usr/bin", "usr/sbin", "proc", "sys", "dev", "run", "tmp", "root", "etc",
    ] {
        fs.dir(d);
    }
    fs.char_dev("dev/console", 0o600, 5, 1);
    fs.file("init", 0o755, INIT.as_bytes().to_vec());
    fs.file(
        "usr/share/udhcpc/default.script",
        0o755,
        UDHCPC_SCRIPT.as_bytes().to_vec(),
    );
    fs.file(
        "bin/busybox",
        0o755,
        read(&busybox_root.join("bin/busybox"))?,
    );
    let mut list = String::new();
    for rel in &load {
        let path = format!("lib/modules/{version}/{rel}");
        fs.file(&path, 0o644, read(&modules_dir.join(rel))?);
        list.push_str(&format!("/{path}\n"));
    }
    fs.file("etc/kumo/modules", 0o644, list.into_bytes());
    fs.file(
        "usr/bin/kumo",
        0o755,
        stripped(&o.kumo_binary, &o.cache_dir)?,
    );
    let ldd = Command::new("ldd")
        .arg(&o.kumo_binary)
        .output()
        .context("running ldd")?;
    for lib in parse_ldd(&String::from_utf8_lossy(&ldd.stdout)) {
        let real = std::fs::canonicalize(&lib).with_context(|| format!("resolving {lib}"))?;
        fs.file(lib.trim_start_matches('/'), 0o755, read(&real)?);
    }

    std::fs::create_dir_all(&o.output)
        .with_context(|| format!("creating {}", o.output.display()))?;
    let kernel = kernel_root.join(format!("boot/vmlinuz-{version}"));
    install(&o.output.join("vmlinuz"), &read(&kernel)?)?;
    let initrd = gzip(&fs.to_newc())?;
    install(&o.output.join("initrd.img"), &initrd)?;
    println!(
        "kernel {version} and a {} MiB initramfs ({} modules) in {}",
        initrd.len() / (1 << 20),
        load.len(),
        o.output.display()
    );
    Ok(())
}

/// The real kernel package `linux-image-amd64` points at now, or the one
/// cached before when apt cannot say (no package lists, offline).
fn kernel_package(debs: &Path) -> Result<String> {
    let out = Command::new("apt-cache")
        .args(["depends", KERNEL_META])
        .output();
    if let Some(p) = out
        .ok()
        .filter(|o| o.status.success())
        .and_then(|o| parse_depends(&String::from_utf8_lossy(&o.stdout), "linux-image-"))
    {
        return Ok(p);
    }
    let mut cached: Vec<String> = list(debs)?
        .into_iter()
        .filter(|f| f.starts_with("linux-image-") && !f.starts_with("linux-image-amd64_"))
        .filter_map(|f| f.split('_').next().map(str::to_owned))
        .collect();
    cached.sort();
    cached.pop().with_context(|| {
        format!("apt-cache does not know {KERNEL_META} and none is cached; run apt-get update")
    })
}

/// The first `Depends:` naming a package that starts with `prefix`.
fn parse_depends(text: &str, prefix: &str) -> Option<String> {
    text.lines()
        .filter_map(|l| l.trim().strip_prefix("Depends:"))
        .map(str::trim)
        .find(|p| p.starts_with(prefix))
        .map(str::to_owned)
}

/// The cached `.deb` of `pkg`, downloaded with `apt-get download` if absent.
fn fetch(debs: &Path, pkg: &str) -> Result<PathBuf> {
    let find = || -> Result<Option<PathBuf>> {
        Ok(list(debs)?
            .into_iter()
            .find(|f| f.starts_with(&format!("{pkg}_")) && f.ends_with(".deb"))
            .map(|f| debs.join(f)))
    };
    if let Some(p) = find()? {
        return Ok(p);
    }
    eprintln!("kumo: downloading {pkg}");
    run(Command::new("apt-get")
        .args(["-q", "-o", "APT::Sandbox::User=root", "download", pkg])
        .current_dir(debs))?;
    find()?.with_context(|| format!("apt-get download {pkg} left no .deb"))
}

/// Unpacks a `.deb` once into the cache; returns its root.
fn extract(deb: &Path, cache: &Path) -> Result<PathBuf> {
    let stem = deb.file_stem().unwrap_or_default().to_string_lossy();
    let root = cache.join("extract").join(stem.as_ref());
    let done = root.join(".kumo-extracted");
    if !done.exists() {
        let _ = std::fs::remove_dir_all(&root);
        std::fs::create_dir_all(&root)?;
        run(Command::new("dpkg-deb").arg("-x").arg(deb).arg(&root))?;
        std::fs::write(&done, "")?;
    }
    Ok(root)
}

/// The binary without debug information and symbols: a debug build of
/// kumo shrinks several times over. Without `strip` it goes in as it is.
fn stripped(bin: &Path, cache: &Path) -> Result<Vec<u8>> {
    let out = cache.join("kumo.stripped");
    match Command::new("strip")
        .arg("--strip-all")
        .arg("-o")
        .arg(&out)
        .arg(bin)
        .status()
    {
        Ok(s) if s.success() => read(&out),
        _ => {
            eprintln!("kumo: strip failed or missing (Debian's binutils); packing kumo unstripped");
            read(bin)
        }
    }
}

/// Modules to load, in order (dependencies first), as paths relative to
/// the modules directory; and the wanted names found nowhere. Names match
/// with `-` and `_` alike, as modprobe's do. Pure.
pub fn resolve_modules(dep: &str, builtin: &str, wanted: &[&str]) -> (Vec<String>, Vec<String>) {
    let name_of = |path: &str| {
        let file = path.rsplit('/').next().unwrap_or(path);
        let stem = file.split(".ko").next().unwrap_or(file);
        stem.replace('-', "_")
    };
    let mut deps: BTreeMap<String, (String, Vec<String>)> = BTreeMap::new();
    for line in dep.lines() {
        let Some((module, rest)) = line.split_once(':') else {
            continue;
        };
        let list = rest.split_whitespace().map(str::to_owned).collect();
        deps.insert(name_of(module), (module.to_owned(), list));
    }
    let builtin: HashSet<String> = builtin.lines().map(name_of).collect();
    let (mut order, mut missing, mut seen) = (Vec::new(), Vec::new(), HashSet::new());
    for w in wanted {
        let w = w.replace('-', "_");
        let Some((path, list)) = deps.get(&w) else {
            if !builtin.contains(&w) {
                missing.push(w);
            }
            continue;
        };
        // modules.dep lists every (transitive) dependency, each after the
        // ones it needs itself: load them in reverse.
        for p in list.iter().rev().chain(std::iter::once(path)) {
            if seen.insert(p.clone()) {
                order.push(p.clone());
            }
        }
    }
    (order, missing)
}

/// The libraries `ldd` resolved (absolute paths, the loader included). Pure.
pub fn parse_ldd(text: &str) -> Vec<String> {
    text.lines()
        .filter_map(|l| {
            let l = l.trim();
            let path = match l.split_once("=>") {
                Some((_, rest)) => rest.trim(),
                None => l,
            };
            let path = path.split(" (").next()?.trim();
            path.starts_with('/').then(|| path.to_owned())
        })
        .collect()
}

/// An initramfs in memory: every parent directory is implied, entries are
/// written in path order (parents first), owned by root, with time 0 so the
/// same inputs give the same bytes.
#[derive(Default)]
pub struct Initramfs {
    entries: BTreeMap<String, Entry>,
}

enum Entry {
    Dir,
    File { mode: u32, data: Vec<u8> },
    CharDev { mode: u32, major: u32, minor: u32 },
}

impl Initramfs {
    pub fn dir(&mut self, path: &str) {
        self.parents(path);
        self.entries.entry(path.to_owned()).or_insert(Entry::Dir);
    }

    pub fn file(&mut self, path: &str, mode: u32, data: Vec<u8>) {
        self.parents(path);
        self.entries
            .insert(path.to_owned(), Entry::File { mode, data });
    }

    pub fn char_dev(&mut self, path: &str, mode: u32, major: u32, minor: u32) {
        self.parents(path);
        self.entries
            .insert(path.to_owned(), Entry::CharDev { mode, major, minor });
    }

    fn parents(&mut self, path: &str) {
        let mut at = 0;
        while let Some(i) = path[at..].find('/') {
            let parent = &path[..at + i];
            self.entries.entry(parent.to_owned()).or_insert(Entry::Dir);
            at += i + 1;
        }
    }

    /// The SVR4 "newc" cpio archive the kernel unpacks.
    pub fn to_newc(&self) -> Vec<u8> {
        let mut out = Vec::new();
        for (ino, (path, e)) in (1..).zip(&self.entries) {
            let (mode, nlink, data, rdev): (u32, u32, &[u8], (u32, u32)) = match e {
                Entry::Dir => (0o040755, 2, &[], (0, 0)),
                Entry::File { mode, data } => (0o100000 | mode, 1, data, (0, 0)),
                Entry::CharDev { mode, major, minor } => {
                    (0o020000 | mode, 1, &[], (*major, *minor))
                }
            };
            newc_entry(&mut out, ino, mode, nlink, rdev, path, data);
        }
        newc_entry(&mut out, 0, 0, 1, (0, 0), "TRAILER!!!", &[]);
        out
    }
}

fn newc_entry(
    out: &mut Vec<u8>,
    ino: u32,
    mode: u32,
    nlink: u32,
    rdev: (u32, u32),
    name: &str,
    data: &[u8],
) {
    let fields = [
        ino,
        mode,
        0, // uid
        0, // gid
        nlink,
        0, // mtime
        data.len() as u32,
        0, // devmajor
        0, // devminor
        rdev.0,
        rdev.1,
        name.len() as u32 + 1,
        0, // check
    ];
    out.extend_from_slice(b"070701");
    for f in fields {
        out.extend_from_slice(format!("{f:08x}").as_bytes());
    }
    out.extend_from_slice(name.as_bytes());
    out.push(0);
    pad4(out);
    out.extend_from_slice(data);
    pad4(out);
}

fn pad4(out: &mut Vec<u8>) {
    out.resize(out.len().next_multiple_of(4), 0);
}

fn gzip(data: &[u8]) -> Result<Vec<u8>> {
    use std::io::Write;
    let mut child = Command::new("gzip")
        .args(["-6", "-n", "-c"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .context("running gzip")?;
    let mut stdin = child.stdin.take().expect("piped stdin");
    let data = data.to_vec();
    let writer = std::thread::spawn(move || stdin.write_all(&data));
    let out = child.wait_with_output().context("running gzip")?;
    writer
        .join()
        .map_err(|_| anyhow::anyhow!("gzip writer panicked"))?
        .context("feeding gzip")?;
    if !out.status.success() {
        bail!("gzip exited with {}", out.status);
    }
    Ok(out.stdout)
}

/// Writes `path` whole or not at all, so the rack never serves half a file.
fn install(path: &Path, data: &[u8]) -> Result<()> {
    let tmp = path.with_extension("partial");
    std::fs::write(&tmp, data).with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("writing {}", path.display()))
}

fn run(cmd: &mut Command) -> Result<()> {
    let status = cmd
        .status()
        .with_context(|| format!("running {:?}", cmd.get_program()))?;
    if !status.success() {
        bail!("{cmd:?} exited with {status}");
    }
    Ok(())
}

fn read(path: &Path) -> Result<Vec<u8>> {
    std::fs::read(path).with_context(|| format!("reading {}", path.display()))
}

fn read_text(path: &Path) -> Result<String> {
    std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))
}

fn list(dir: &Path) -> Result<Vec<String>> {
    let mut names = Vec::new();
    for e in std::fs::read_dir(dir).with_context(|| format!("reading {}", dir.display()))? {
        names.push(e?.file_name().to_string_lossy().into_owned());
    }
    names.sort();
    Ok(names)
}

fn single_dir(dir: &Path) -> Result<String> {
    let names = list(dir)?;
    match names.as_slice() {
        [one] => Ok(one.clone()),
        _ => bail!("expected one kernel in {}, found {names:?}", dir.display()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DEP: &str = "\
kernel/drivers/virtio/virtio.ko:
kernel/drivers/virtio/virtio_ring.ko:
kernel/drivers/virtio/virtio_pci_modern_dev.ko:
kernel/drivers/virtio/virtio_pci.ko: kernel/drivers/virtio/virtio_pci_modern_dev.ko kernel/drivers/virtio/virtio_ring.ko kernel/drivers/virtio/virtio.ko
kernel/net/core/failover.ko:
kernel/drivers/net/net_failover.ko: kernel/net/core/failover.ko
kernel/drivers/net/virtio_net.ko: kernel/drivers/net/net_failover.ko kernel/net/core/failover.ko kernel/drivers/virtio/virtio_ring.ko kernel/drivers/virtio/virtio.ko
kernel/lib/crc-t10dif.ko:
";

    #[test]
    fn modules_load_after_their_dependencies_once_each() {
        let (order, missing) = resolve_modules(
            DEP,
            "kernel/net/packet/af_packet.ko\n",
            &[
                "virtio_pci",
                "virtio_net",
                "af_packet",
                "crc_t10dif",
                "nope",
            ],
        );
        assert_eq!(
            order,
            [
                "kernel/drivers/virtio/virtio.ko",
                "kernel/drivers/virtio/virtio_ring.ko",
                "kernel/drivers/virtio/virtio_pci_modern_dev.ko",
                "kernel/drivers/virtio/virtio_pci.ko",
                "kernel/net/core/failover.ko",
                "kernel/drivers/net/net_failover.ko",
                "kernel/drivers/net/virtio_net.ko",
                "kernel/lib/crc-t10dif.ko",
            ]
        );
        assert_eq!(missing, ["nope"], "af_packet is built in");
    }

    #[test]
    fn ldd_output_gives_library_paths_and_the_loader() {
        let text = "\tlinux-vdso.so.1 (0x00007ffd)\n\
                    \tlibgcc_s.so.1 => /lib/x86_64-linux-gnu/libgcc_s.so.1 (0x00007f1)\n\
                    \tlibc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x00007f2)\n\
                    \t/lib64/ld-linux-x86-64.so.2 (0x00007f3)\n";
        assert_eq!(
            parse_ldd(text),
            [
                "/lib/x86_64-linux-gnu/libgcc_s.so.1",
                "/lib/x86_64-linux-gnu/libc.so.6",
                "/lib64/ld-linux-x86-64.so.2",
            ]
        );
    }

    #[test]
    fn apt_cache_depends_names_the_real_kernel() {
        let text = "linux-image-amd64\n  Depends: linux-image-6.1.0-56-amd64\n";
        assert_eq!(
            parse_depends(text, "linux-image-").as_deref(),
            Some("linux-image-6.1.0-56-amd64")
        );
        assert_eq!(parse_depends("x\n  Recommends: y\n", "linux-image-"), None);
    }

    #[test]
    fn newc_archives_have_parents_first_and_aligned_entries() {
        let mut fs = Initramfs::default();
        fs.file("usr/bin/kumo", 0o755, b"abc".to_vec());
        fs.char_dev("dev/console", 0o600, 5, 1);
        fs.dir("proc");
        let a = fs.to_newc();
        assert_eq!(a.len() % 4, 0);
        let names: Vec<String> = newc_names(&a);
        assert_eq!(
            names,
            [
                "dev",
                "dev/console",
                "proc",
                "usr",
                "usr/bin",
                "usr/bin/kumo",
                "TRAILER!!!"
            ]
        );
        // The file's header: regular, 0755, three bytes, name size 13.
        let at = a.windows(12).position(|w| w == b"usr/bin/kumo").unwrap() - 110;
        let field = |i: usize| {
            u32::from_str_radix(
                std::str::from_utf8(&a[at + 6 + i * 8..at + 14 + i * 8]).unwrap(),
                16,
            )
            .unwrap()
        };
        assert_eq!(field(1), 0o100755);
        assert_eq!(field(6), 3);
        assert_eq!(field(11), 13);
        let console = a.windows(11).position(|w| w == b"dev/console").unwrap() - 110;
        let f = |i: usize| {
            u32::from_str_radix(
                std::str::from_utf8(&a[console + 6 + i * 8..console + 14 + i * 8]).unwrap(),
                16,
            )
            .unwrap()
        };
        assert_eq!((f(1), f(9), f(10)), (0o020600, 5, 1));
    }

    /// Walks an archive the way the kernel does, collecting names.
    fn newc_names(a: &[u8]) -> Vec<String> {
        let (mut at, mut names) = (0, vec![]);
        while at < a.len() {
            assert_eq!(&a[at..at + 6], b"070701", "magic at {at}");
            let field = |i: usize| {
                usize::from_str_radix(
                    std::str::from_utf8(&a[at + 6 + i * 8..at + 14 + i * 8]).unwrap(),
                    16,
                )
                .unwrap()
            };
            let (size, namesize) = (field(6), field(11));
            let name = std::str::from_utf8(&a[at + 110..at + 110 + namesize - 1]).unwrap();
            names.push(name.to_owned());
            let data = (at + 110 + namesize).next_multiple_of(4);
            at = (data + size).next_multiple_of(4);
            if name == "TRAILER!!!" {
                break;
            }
        }
        assert_eq!(at, a.len());
        names
    }
}
