//! `kumo images build`: the raw disk image a deployed machine runs. The
//! ephemeral environment streams it onto the machine's disk, writes
//! cloud-init's NoCloud seed (meta-data, user-data, network-config) into
//! `/var/lib/cloud/seed/nocloud/` on the written root partition, and the
//! machine then boots from local disk (BIOS, iPXE `sanboot --drive 0x80`).
//!
//! The image is Debian from debootstrap plus a kernel, GRUB for BIOS,
//! cloud-init and OpenSSH: an MBR with one ext4 partition at 1 MiB labelled
//! `kumo-root`, found by label (fstab and the kernel command line), so the
//! image boots whether the disk is virtio, SATA or NVMe. Nothing in it is
//! machine-specific (empty machine-id, no SSH host keys, neutral hostname):
//! cloud-init makes each copy a machine of its own on first boot.
//!
//! Two stages, the first cached: the root filesystem (debootstrap, then
//! `apt-get install` in a chroot, then configuration) becomes a tarball
//! under the cache directory keyed by [`recipe_key`]; the disk (a sparse
//! file, sfdisk, a loop device, mkfs.ext4, the tarball unpacked, GRUB
//! installed from the image's own grub-pc) is made every time, in seconds.
//! The raw disk is then compressed with zstd while both SHA-256s are
//! computed. Mounts and loop devices are undone by a guard ([`Mounts`]) on
//! success, error and Ctrl-C alike. The build mounts in a private mount
//! namespace ([`enter_private_mount_namespace`]), so no other process ever
//! sees its mounts and a build killed outright leaves none behind; a loop
//! device it left attached is detached by the next build. Commands' output
//! goes to `<output>/<name>.build.log`; errors quote its last lines.
//!
//! The configuration files and the partition arithmetic are pure and
//! tested here; `tests/image_e2e.rs` boots the result in QEMU.

use std::fmt::Write as _;
use std::fs::File;
use std::io::{BufWriter, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// Bumped whenever the root filesystem's making changes in a way the
/// other inputs of [`recipe_key`] do not show (a step, what is cleaned
/// up), so cached root filesystems from older recipes are not reused.
/// Packages and the files in [`rootfs_files`] re-key the cache by themselves.
pub const RECIPE_VERSION: u32 = 1;

pub const DEFAULT_NAME: &str = "debian-12";
pub const DEFAULT_RELEASE: &str = "bookworm";
pub const DEFAULT_MIRROR: &str = "http://deb.debian.org/debian";
pub const DEFAULT_SIZE_MIB: u64 = 2048;

/// The root filesystem's label: fstab and the kernel's `root=` use it.
pub const ROOT_LABEL: &str = "kumo-root";

/// Installed on top of debootstrap's minbase. Besides what a deployed
/// machine plainly needs: e2fsprogs (fsck at boot, resize2fs) and
/// cloud-guest-utils (growpart), so cloud-init grows the root partition
/// to the whole disk, which is bigger than the image; zstd for the
/// initramfs; initramfs-tools named so apt picks no other generator;
/// systemd-container (systemd-nspawn), so a deployed machine can host a
/// model's containers (`lxd:N`) without reaching a package mirror.
pub const PACKAGES: &[&str] = &[
    "linux-image-amd64",
    "grub-pc",
    "systemd-sysv",
    "udev",
    "cloud-init",
    "openssh-server",
    "ifupdown",
    "isc-dhcp-client",
    "iproute2",
    "curl",
    "ca-certificates",
    "sudo",
    "netbase",
    "e2fsprogs",
    "cloud-guest-utils",
    "initramfs-tools",
    "zstd",
    "systemd-container",
];

/// Units a server deployed to run one job does without, each costing
/// seconds of boot or surprise I/O: apt's daily update and upgrade (the
/// operator's tooling decides when to upgrade), e2scrub (needs LVM
/// snapshots, which the image does not use) and fstrim's weekly timer.
pub const DISABLED_UNITS: &[&str] = &[
    "apt-daily.timer",
    "apt-daily-upgrade.timer",
    "e2scrub_all.timer",
    "e2scrub_reap.service",
    "fstrim.timer",
];

const SECTOR: u64 = 512;
const MIB: u64 = 1 << 20;
/// The partition starts at 1 MiB: aligned for any disk, and the gap
/// before it holds GRUB's core image.
const PART_START_SECTOR: u64 = MIB / SECTOR;
/// Below this the root filesystem does not fit.
const MIN_SIZE_MIB: u64 = 1024;
/// An MBR partition table addresses 2 TiB of 512-byte sectors.
const MAX_SIZE_MIB: u64 = (u32::MAX as u64 * SECTOR) / MIB;
/// zstd's level. Measured on this image (2 GiB raw, two threads): level 3
/// (zstd's default) gives 237 MiB in 11 s, level 9 213 MiB in 69 s.
/// Decompressing, what every deployed machine pays, is as fast either way.
const ZSTD_LEVEL: i32 = 3;

static INTERRUPTED: AtomicBool = AtomicBool::new(false);

/// Asks a running [`build`] to stop at its next step (Ctrl-C). The
/// command it is running gets the terminal's SIGINT itself, so the build
/// fails, and its guard unmounts and detaches what it set up.
pub fn interrupt() {
    INTERRUPTED.store(true, Ordering::SeqCst);
}

#[derive(Debug, Clone)]
pub struct DiskImageOptions {
    pub name: String,
    pub release: String,
    pub mirror: String,
    pub size_mib: u64,
    pub output_dir: PathBuf,
    pub cache_dir: PathBuf,
    pub extra_packages: Vec<String>,
}

/// What was built; also `<output>/<name>.json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BuiltImage {
    pub name: String,
    /// `<output>/<name>.img.zst`.
    pub path: PathBuf,
    /// Of the `.img.zst` file as served, hex.
    pub sha256: String,
    /// Bytes of the `.img.zst` file.
    pub size: u64,
    /// Bytes of the raw disk image, what is written to the machine's disk.
    pub raw_size: u64,
    pub raw_sha256: String,
    pub os: String,
    pub release: String,
    pub arch: String,
}

/// Moves this process into a mount namespace of its own, sharing no mount
/// events with the host's. Call it while the process is one thread (the
/// kernel refuses otherwise), before [`build`]. Why: a mount namespace
/// made elsewhere while the image's filesystem is mounted (`ip netns
/// exec`, a container) copies that mount, and where `/` is private (no
/// systemd) our umount does not reach the copy: the filesystem stays live
/// and half-written under the raw image. Mounts made in a namespace of our
/// own are in no other, and the kernel unmounts them if kumo is killed.
pub fn enter_private_mount_namespace() -> Result<()> {
    // SAFETY: unshare(2) takes no pointers.
    if unsafe { libc::unshare(libc::CLONE_NEWNS) } != 0 {
        bail!(
            "entering a private mount namespace (building an image needs root): {}",
            std::io::Error::last_os_error()
        );
    }
    // SAFETY: the one pointer is a NUL-terminated literal; the others are
    // null, which mount(2) accepts for a propagation change.
    let rc = unsafe {
        libc::mount(
            std::ptr::null(),
            c"/".as_ptr(),
            std::ptr::null(),
            libc::MS_REC | libc::MS_PRIVATE,
            std::ptr::null(),
        )
    };
    if rc != 0 {
        bail!(
            "making / private in kumo's mount namespace: {}",
            std::io::Error::last_os_error()
        );
    }
    Ok(())
}

/// Builds `<output>/<name>.img.zst` and `<output>/<name>.json`. Run it in
/// a private mount namespace ([`enter_private_mount_namespace`]).
pub fn build(opts: &DiskImageOptions) -> Result<BuiltImage> {
    validate(opts)?;
    for dir in [&opts.output_dir, &opts.cache_dir] {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    // Absolute paths: debootstrap wants them, and chroots change `/`.
    let cache = std::fs::canonicalize(&opts.cache_dir)
        .with_context(|| format!("resolving {}", opts.cache_dir.display()))?;
    let output = std::fs::canonicalize(&opts.output_dir)
        .with_context(|| format!("resolving {}", opts.output_dir.display()))?;
    let log = Log::create(output.join(format!("{}.build.log", opts.name)))?;
    let packages = package_list(&opts.extra_packages);
    let files = rootfs_files(&opts.mirror, &opts.release);
    let key = recipe_key(
        RECIPE_VERSION,
        &opts.release,
        &opts.mirror,
        &packages,
        &files,
    );
    let mut times: Vec<(&str, Duration)> = vec![];

    let tarball = cache.join(format!("rootfs-{}-{key}.tar.zst", opts.release));
    let info_path = tarball.with_extension("").with_extension("json");
    let start = Instant::now();
    let info = match read_rootfs_info(&info_path).filter(|_| tarball.exists()) {
        Some(info) => {
            eprintln!(
                "kumo: [1/3] root filesystem: cached ({})",
                tarball.display()
            );
            info
        }
        None => {
            eprintln!(
                "kumo: [1/3] root filesystem: debootstrap {} from {} and {} packages \
                 (a few minutes; log: {})",
                opts.release,
                opts.mirror,
                packages.len(),
                log.path.display()
            );
            // debootstrap's tree, its package cache and the tarball.
            ensure_free_space(&cache, 2048 << 20, "a root filesystem")?;
            let work = cache.join(format!("rootfs-{key}.partial"));
            let info = build_rootfs(opts, &packages, &files, &cache, &work, &log)?;
            pack_rootfs(&work.join("root"), &tarball, &log)?;
            write_json(&info_path, &info)?;
            remove_work_dir(&work)?;
            info
        }
    };
    times.push(("root filesystem", start.elapsed()));

    eprintln!(
        "kumo: [2/3] disk: {} MiB, ext4 {ROOT_LABEL}, GRUB",
        opts.size_mib
    );
    let start = Instant::now();
    // The sparse disk holds the unpacked tree plus ext4's metadata; the
    // compressed copy is about half the tree. A full disk shows up much
    // later as a filesystem gone read-only inside the loop device, which
    // names nothing useful, so say it up front.
    let need = info.bytes + info.bytes / 2 + (256 << 20);
    ensure_free_space(&cache, need, "the disk image")?;
    if output != cache {
        ensure_free_space(&output, info.bytes / 2, "the compressed image")?;
    }
    let work = cache.join(format!("disk-{}.partial", opts.name));
    let raw = work.join("disk.img");
    make_disk(opts.size_mib, &tarball, info.bytes, &work, &raw, &log)?;
    times.push(("disk", start.elapsed()));

    eprintln!("kumo: [3/3] compressing with zstd");
    let start = Instant::now();
    let path = output.join(format!("{}.img.zst", opts.name));
    let d = compress(&raw, &path)?;
    remove_work_dir(&work)?;
    times.push(("compress", start.elapsed()));

    let built = BuiltImage {
        name: opts.name.clone(),
        path,
        sha256: d.sha256,
        size: d.size,
        raw_size: d.raw_size,
        raw_sha256: d.raw_sha256,
        os: "debian".into(),
        release: opts.release.clone(),
        arch: "amd64".into(),
    };
    write_json(&output.join(format!("{}.json", opts.name)), &built)?;
    eprint!("{}", summary(&built, &times));
    Ok(built)
}

/// The image's packages: [`PACKAGES`] and the extra ones, sorted, once each.
pub fn package_list(extra: &[String]) -> Vec<String> {
    let mut all: Vec<String> = PACKAGES.iter().map(|p| p.to_string()).collect();
    all.extend(extra.iter().cloned());
    all.sort();
    all.dedup();
    all
}

/// The cache key of a root filesystem: everything that goes into it —
/// the recipe version, the release, the mirror, the packages and every
/// file [`rootfs_files`] writes — so editing a configuration file re-keys
/// the cache by itself. Trailing slashes on the mirror and the order of
/// packages do not matter. Pure.
pub fn recipe_key(
    version: u32,
    release: &str,
    mirror: &str,
    packages: &[String],
    files: &[ImageFile],
) -> String {
    let mut packages = packages.to_vec();
    packages.sort();
    packages.dedup();
    let mut text = format!(
        "kumo disk image\nrecipe {version}\nrelease {release}\nmirror {}\npackages {}\n\
         debconf {DEBCONF}\ndisabled {}\n",
        mirror.trim_end_matches('/'),
        packages.join(" "),
        DISABLED_UNITS.join(" ")
    );
    for f in files {
        let _ = write!(
            text,
            "file {} {:o} {} {}\n{}",
            f.path,
            f.mode,
            f.before_packages,
            f.text.len(),
            f.text
        );
    }
    format!("{:x}", Sha256::digest(text.as_bytes()))[..16].to_owned()
}

fn validate(opts: &DiskImageOptions) -> Result<()> {
    let word = |s: &str| {
        !s.is_empty()
            && s.chars().next().is_some_and(|c| c.is_ascii_alphanumeric())
            && s.chars()
                .all(|c| c.is_ascii_alphanumeric() || "+-._".contains(c))
    };
    ensure!(
        word(&opts.name),
        "image name {:?}: letters, digits and + - . _ only",
        opts.name
    );
    ensure!(
        word(&opts.release),
        "release {:?}: a Debian suite or codename like bookworm",
        opts.release
    );
    ensure!(
        opts.mirror.starts_with("http://") || opts.mirror.starts_with("https://"),
        "mirror {:?}: an http:// or https:// URL",
        opts.mirror
    );
    for p in &opts.extra_packages {
        // Package names, optionally =version or /suite; never an option.
        ensure!(
            p.chars().next().is_some_and(|c| c.is_ascii_alphanumeric())
                && p.chars()
                    .all(|c| c.is_ascii_alphanumeric() || "+-.:=~/_".contains(c)),
            "package {p:?} is not a Debian package name"
        );
    }
    Layout::new(opts.size_mib)?;
    Ok(())
}

/// Where the one partition lies on the disk, in 512-byte sectors.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Layout {
    pub disk_sectors: u64,
    pub start: u64,
    pub sectors: u64,
}

impl Layout {
    pub fn new(size_mib: u64) -> Result<Layout> {
        ensure!(
            (MIN_SIZE_MIB..=MAX_SIZE_MIB).contains(&size_mib),
            "image size {size_mib} MiB: between {MIN_SIZE_MIB} MiB and {MAX_SIZE_MIB} MiB \
             (an MBR partition table's limit)"
        );
        let disk_sectors = size_mib * MIB / SECTOR;
        Ok(Layout {
            disk_sectors,
            start: PART_START_SECTOR,
            sectors: disk_sectors - PART_START_SECTOR,
        })
    }

    pub fn bytes(&self) -> u64 {
        self.disk_sectors * SECTOR
    }

    /// sfdisk's input: an MBR with one bootable Linux partition.
    pub fn sfdisk_script(&self) -> String {
        format!(
            "label: dos\nunit: sectors\n\nstart={}, size={}, type=83, bootable\n",
            self.start, self.sectors
        )
    }
}

/// The image's /etc/fstab.
pub fn fstab() -> String {
    format!(
        "# kumo: the root filesystem by label, so the image boots from any disk.\n\
         LABEL={ROOT_LABEL} / ext4 errors=remount-ro 0 1\n"
    )
}

/// /etc/default/grub.d/kumo.cfg, read by update-grub after
/// /etc/default/grub (here and on the deployed machine's kernel updates).
/// Overriding GRUB_DEVICE, with UUIDs off, makes `root=LABEL=…`: GRUB
/// would otherwise name the build host's loop device, or the filesystem's
/// UUID only when udev's /dev/disk/by-uuid happens to list it.
pub fn grub_defaults() -> String {
    format!(
        "# kumo: boot at once, console on screen and serial, root by label.\n\
         GRUB_TIMEOUT=0\n\
         GRUB_TIMEOUT_STYLE=hidden\n\
         GRUB_CMDLINE_LINUX_DEFAULT=\"\"\n\
         GRUB_CMDLINE_LINUX=\"console=tty0 console=ttyS0,115200n8\"\n\
         GRUB_TERMINAL=\"console serial\"\n\
         GRUB_SERIAL_COMMAND=\"serial --unit=0 --speed=115200\"\n\
         GRUB_DISABLE_OS_PROBER=true\n\
         GRUB_DISABLE_RECOVERY=true\n\
         GRUB_DISABLE_LINUX_UUID=true\n\
         GRUB_DISABLE_LINUX_PARTUUID=true\n\
         GRUB_DEVICE=LABEL={ROOT_LABEL}\n"
    )
}

/// /etc/initramfs-tools/conf.d/kumo.conf. MODULES=most (Debian's default)
/// keeps virtio, SATA and NVMe drivers in, whatever the build host has.
/// FSTYPE names the root's type, which the fsck hook cannot probe in a
/// chroot; RESUME=none since there is no swap to resume from.
pub fn initramfs_conf() -> String {
    "# kumo: any disk controller, zstd (fast to unpack), ext4 root.\n\
     MODULES=most\n\
     COMPRESS=zstd\n\
     FSTYPE=ext4\n\
     RESUME=none\n"
        .to_owned()
}

/// /etc/cloud/cloud.cfg.d/90_kumo.cfg: the deploying agent writes a
/// NoCloud seed on the disk (or QEMU passes one by SMBIOS); None keeps
/// cloud-init's first-boot work (host keys, growpart) without one.
pub fn cloud_cfg() -> String {
    "# kumo: the seed is on the disk, written by the deploying agent.\n\
     datasource_list: [ NoCloud, None ]\n\
     # The hostname cloud-init sets resolves (sudo complains otherwise).\n\
     manage_etc_hosts: true\n\
     # No DSA: OpenSSH 9 refuses it, and each key costs first-boot seconds.\n\
     ssh_genkeytypes: [ rsa, ecdsa, ed25519 ]\n"
        .to_owned()
}

/// /etc/apt/sources.list: the release with its updates and security
/// suites (security from Debian itself, as Debian advises; mirrors often
/// lag or lack it). Suites without them (sid) get the release alone.
/// non-free-firmware lets `--package firmware-…` add NIC firmware.
pub fn sources_list(mirror: &str, release: &str) -> String {
    let mirror = mirror.trim_end_matches('/');
    let components = "main non-free-firmware";
    let mut s = format!("deb {mirror} {release} {components}\n");
    if !matches!(release, "sid" | "unstable" | "experimental" | "rc-buggy") {
        let _ = writeln!(s, "deb {mirror} {release}-updates {components}");
        let _ = writeln!(
            s,
            "deb http://security.debian.org/debian-security {release}-security {components}"
        );
    }
    s
}

/// A file the recipe writes into the root filesystem.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageFile {
    /// Relative to the root.
    pub path: &'static str,
    pub mode: u32,
    pub text: String,
    /// Written before `apt-get install`, because package scripts read it.
    pub before_packages: bool,
}

/// Every file the recipe writes, in order. Pure.
pub fn rootfs_files(mirror: &str, release: &str) -> Vec<ImageFile> {
    let file = |path, mode, text: String, before_packages| ImageFile {
        path,
        mode,
        text,
        before_packages,
    };
    vec![
        // Removed again before the tree is packed.
        file("usr/sbin/policy-rc.d", 0o755, POLICY_RC_D.into(), true),
        // The kernel's postinst builds the initramfs from this.
        file(
            "etc/initramfs-tools/conf.d/kumo.conf",
            0o644,
            initramfs_conf(),
            true,
        ),
        file("etc/default/grub.d/kumo.cfg", 0o644, grub_defaults(), true),
        // initramfs-tools' fsck hook reads the root's type here.
        file("etc/fstab", 0o644, fstab(), true),
        file(
            "etc/apt/sources.list",
            0o644,
            sources_list(mirror, release),
            true,
        ),
        file(
            "etc/cloud/cloud.cfg.d/90_kumo.cfg",
            0o644,
            cloud_cfg(),
            false,
        ),
        file(
            "etc/systemd/system/ssh.service.d/kumo-host-keys.conf",
            0o644,
            SSH_HOST_KEYS_DROPIN.into(),
            false,
        ),
        // cloud-init's locale module otherwise sets en_US.UTF-8, which
        // needs the locales package and fails without it.
        file("etc/default/locale", 0o644, "LANG=C.UTF-8\n".into(), false),
    ]
}

/// A systemd drop-in for ssh.service: host keys are made when missing,
/// before Debian's `sshd -t` check (which fails without them). cloud-init
/// makes them on first boot, but sshd then still starts if cloud-init is
/// disabled, finds no datasource or fails.
const SSH_HOST_KEYS_DROPIN: &str = "[Service]\n\
     # kumo: the image ships without host keys; make them if cloud-init did not.\n\
     ExecStartPre=\n\
     ExecStartPre=/usr/bin/ssh-keygen -A\n\
     ExecStartPre=/usr/sbin/sshd -t\n";

/// Keeps package scripts from starting daemons inside the build chroot.
const POLICY_RC_D: &str = "#!/bin/sh\n# kumo: no daemons in the image build chroot.\nexit 101\n";

/// grub-pc's postinst would ask for the disk to install to; there is none
/// yet. cloud-init's grub-dpkg module sets the real disk on first boot, so
/// later grub-pc upgrades reinstall the boot loader there.
const DEBCONF: &str = "grub-pc grub-pc/install_devices multiselect\n\
     grub-pc grub-pc/install_devices_empty boolean true\n";

/// What the cache records beside a root filesystem tarball.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RootfsInfo {
    pub recipe: u32,
    pub release: String,
    pub mirror: String,
    pub packages: Vec<String>,
    /// Disk usage of the unpacked tree, to check it fits before unpacking.
    pub bytes: u64,
}

fn read_rootfs_info(path: &Path) -> Option<RootfsInfo> {
    serde_json::from_slice(&std::fs::read(path).ok()?).ok()
}

/// debootstrap, the packages, the configuration; returns what it made.
fn build_rootfs(
    opts: &DiskImageOptions,
    packages: &[String],
    files: &[ImageFile],
    cache: &Path,
    work: &Path,
    log: &Log,
) -> Result<RootfsInfo> {
    remove_work_dir(work)?;
    let root = work.join("root");
    create_dir(&root)?;
    // Downloaded packages outlive the work directory, so a changed recipe
    // downloads only what changed. debootstrap and apt share the directory.
    let debs = cache.join("debs");
    create_dir(&debs.join("partial"))?;

    let step = Instant::now();
    log.run(
        Command::new("debootstrap")
            .args(["--variant=minbase", "--components=main"])
            .arg(format!("--cache-dir={}", debs.display()))
            .arg(&opts.release)
            .arg(&root)
            .arg(&opts.mirror),
    )?;
    eprintln!("kumo:   debootstrap: {:.0} s", step.elapsed().as_secs_f64());

    let mut mounts = Mounts::default();
    mounts.chroot_filesystems(&root)?;
    mounts.bind(&debs, &root.join("var/cache/apt/archives"))?;

    for f in files.iter().filter(|f| f.before_packages) {
        write(&root.join(f.path), &f.text, f.mode)?;
    }
    let mut c = chroot(&root, "debconf-set-selections");
    log.run_with_input(&mut c, DEBCONF)?;

    let step = Instant::now();
    log.run(chroot(&root, "apt-get").args(["-q", "update"]))?;
    log.run(
        chroot(&root, "apt-get")
            .args(["-q", "-y", "--no-install-recommends", "install"])
            .args(packages),
    )?;
    eprintln!(
        "kumo:   apt-get install: {:.0} s",
        step.elapsed().as_secs_f64()
    );

    for f in files.iter().filter(|f| !f.before_packages) {
        write(&root.join(f.path), &f.text, f.mode)?;
    }
    let present: Vec<&str> = DISABLED_UNITS
        .iter()
        .copied()
        .filter(|u| unit_exists(&root, u))
        .collect();
    if !present.is_empty() {
        log.run(chroot(&root, "systemctl").arg("disable").args(&present))?;
    }
    // The shared archive keeps what can still be downloaded, no more.
    log.run(chroot(&root, "apt-get").args(["-q", "autoclean"]))?;
    // apt's archive is the shared cache: unmount it before cleaning up.
    mounts.release()?;
    generalize(&root)?;

    let out = Command::new("du")
        .args(["-s", "-B1", "-x"])
        .arg(&root)
        .output()
        .context("running du")?;
    let bytes = String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .and_then(|n| n.parse().ok())
        .with_context(|| format!("du -s {} gave no size", root.display()))?;
    Ok(RootfsInfo {
        recipe: RECIPE_VERSION,
        release: opts.release.clone(),
        mirror: opts.mirror.clone(),
        packages: packages.to_vec(),
        bytes,
    })
}

fn unit_exists(root: &Path, unit: &str) -> bool {
    [
        "usr/lib/systemd/system",
        "lib/systemd/system",
        "etc/systemd/system",
    ]
    .iter()
    .any(|d| root.join(d).join(unit).exists())
}

/// Removes what makes a tree one machine rather than an image: its
/// identity, keys, caches and logs. The chroot is unmounted by now.
fn generalize(root: &Path) -> Result<()> {
    // Empty, not absent: systemd then makes a new id on first boot
    // (absent would break a read-only boot).
    write(&root.join("etc/machine-id"), "", 0o444)?;
    remove_file(&root.join("var/lib/dbus/machine-id"))?;
    remove_file(&root.join("var/lib/systemd/random-seed"))?;
    write(&root.join("etc/hostname"), "debian\n", 0o644)?;
    write(
        &root.join("etc/hosts"),
        "127.0.0.1\tlocalhost\n::1\t\tlocalhost ip6-localhost ip6-loopback\n\
         ff02::1\t\tip6-allnodes\nff02::2\t\tip6-allrouters\n",
        0o644,
    )?;
    // The build host's resolver; DHCP writes the machine's own.
    write(&root.join("etc/resolv.conf"), "", 0o644)?;
    remove_file(&root.join("usr/sbin/policy-rc.d"))?;
    remove_matching(&root.join("etc/ssh"), |n| n.starts_with("ssh_host_"))?;
    // Package lists are stale by the time the image is deployed, and
    // large; cloud-init's package_update (or the operator) fetches them.
    remove_matching(&root.join("var/lib/apt/lists"), |n| {
        n != "lock" && n != "partial"
    })?;
    remove_matching(&root.join("var/cache/apt/archives"), |n| {
        n.ends_with(".deb")
    })?;
    remove_matching(&root.join("var/cache/apt"), |n| n.ends_with(".bin"))?;
    remove_matching(&root.join("var/lib/cloud"), |_| true)?;
    remove_matching(&root.join("tmp"), |_| true)?;
    remove_matching(&root.join("var/tmp"), |_| true)?;
    remove_matching(&root.join("root"), |n| n == ".bash_history")?;
    empty_logs(&root.join("var/log"))
}

/// Removes the entries of `dir` whose names match.
fn remove_matching(dir: &Path, doomed: impl Fn(&str) -> bool) -> Result<()> {
    for name in list(dir)?.iter().filter(|n| doomed(n)) {
        let p = dir.join(name);
        if p.is_dir() && !p.is_symlink() {
            std::fs::remove_dir_all(&p)
        } else {
            std::fs::remove_file(&p)
        }
        .with_context(|| format!("removing {}", p.display()))?;
    }
    Ok(())
}

/// The build's logs (apt, dpkg, …) say nothing about a deployed machine;
/// directories stay, since services expect them.
fn empty_logs(dir: &Path) -> Result<()> {
    for name in list(dir)? {
        let p = dir.join(name);
        if p.is_symlink() {
            continue;
        } else if p.is_dir() {
            empty_logs(&p)?;
        } else {
            std::fs::remove_file(&p).with_context(|| format!("removing {}", p.display()))?;
        }
    }
    Ok(())
}

fn pack_rootfs(root: &Path, tarball: &Path, log: &Log) -> Result<()> {
    let step = Instant::now();
    let tmp = tarball.with_extension("partial");
    // --xattrs keeps file capabilities; numeric owners since the build
    // host's user names are not the image's.
    log.run(
        Command::new("tar")
            .args(["--create", "--zstd", "--numeric-owner", "--xattrs"])
            .args(["--xattrs-include=*", "--one-file-system", "-f"])
            .arg(&tmp)
            .arg("-C")
            .arg(root)
            .arg("."),
    )?;
    std::fs::rename(&tmp, tarball)
        .with_context(|| format!("renaming {} to {}", tmp.display(), tarball.display()))?;
    eprintln!(
        "kumo:   cached as {} in {:.0} s",
        tarball.display(),
        step.elapsed().as_secs_f64()
    );
    Ok(())
}

/// The raw disk: partition table, filesystem, root tree, boot loader.
fn make_disk(
    size_mib: u64,
    tarball: &Path,
    rootfs_bytes: u64,
    work: &Path,
    raw: &Path,
    log: &Log,
) -> Result<()> {
    remove_work_dir(work)?;
    create_dir(work)?;
    let layout = Layout::new(size_mib)?;
    let file = File::create(raw).with_context(|| format!("creating {}", raw.display()))?;
    // Sparse: only what is written takes space.
    file.set_len(layout.bytes())
        .with_context(|| format!("sizing {}", raw.display()))?;
    drop(file);
    log.run_with_input(
        Command::new("sfdisk").arg("--quiet").arg(raw),
        &layout.sfdisk_script(),
    )?;

    let mut mounts = Mounts::default();
    let disk = mounts.attach(raw)?;
    let part = format!("{disk}p1");
    wait_for_partition(&disk, &part)?;
    // Inode tables and journal written now, not by ext4lazyinit in the
    // background of every deployed machine's first boot.
    // metadata_csum_seed off: newer e2fsprogs default to it and
    // bookworm's GRUB cannot read such a filesystem.
    log.run(
        Command::new("mkfs.ext4")
            .args(["-q", "-F", "-L", ROOT_LABEL, "-O", "^metadata_csum_seed"])
            .args(["-E", "lazy_itable_init=0,lazy_journal_init=0"])
            .arg(&part),
    )?;
    let mnt = work.join("mnt");
    create_dir(&mnt)?;
    mounts.mount(&part, &mnt, &[])?;
    let room = available_bytes(&mnt)?;
    // 5% for the difference in block use between the build host's
    // filesystem and this one.
    ensure!(
        rootfs_bytes + rootfs_bytes / 20 < room,
        "the root filesystem takes {} MiB, more than the {} MiB free on a {size_mib} MiB \
         image: raise --size-mib",
        rootfs_bytes / MIB,
        room / MIB
    );
    log.run(
        Command::new("tar")
            .args([
                "--extract",
                "--zstd",
                "--numeric-owner",
                "--preserve-permissions",
            ])
            .args(["--xattrs", "--xattrs-include=*", "-f"])
            .arg(tarball)
            .arg("-C")
            .arg(&mnt),
    )?;
    mounts.chroot_filesystems(&mnt)?;
    log.run(chroot(&mnt, "grub-install").args(["--target=i386-pc", &disk]))?;
    log.run(&mut chroot(&mnt, "update-grub"))?;
    let cfg = read_text(&mnt.join("boot/grub/grub.cfg"))?;
    ensure!(
        cfg.contains(&format!("root=LABEL={ROOT_LABEL}")),
        "update-grub wrote no root=LABEL={ROOT_LABEL} into {}/boot/grub/grub.cfg",
        mnt.display()
    );
    // grub-install and update-grub leave nothing machine-specific but
    // this (the build host's loop device, in GRUB's device map).
    remove_file(&mnt.join("boot/grub/device.map"))?;
    mounts.unmount_all()?;
    wait_until_released(&part)?;
    // A clean, checked filesystem: the deployed machine's first fsck at
    // boot then has nothing to do.
    log.run(Command::new("e2fsck").args(["-f", "-n"]).arg(&part))?;
    mounts.release()
}

fn ensure_free_space(dir: &Path, need: u64, what: &str) -> Result<()> {
    let free = available_bytes(dir)?;
    if free < need {
        bail!(
            "not enough free space in {} for {what}: {} MiB free, about {} MiB needed",
            dir.display(),
            free >> 20,
            need >> 20
        );
    }
    Ok(())
}

fn available_bytes(mnt: &Path) -> Result<u64> {
    let out = Command::new("df")
        .args(["--output=avail", "-B1"])
        .arg(mnt)
        .output()
        .context("running df")?;
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .nth(1)
        .and_then(|l| l.trim().parse().ok())
        .with_context(|| format!("df {} gave no free space", mnt.display()))
}

/// Waits until no mounted filesystem holds `dev`: opening a block device
/// with O_EXCL fails with EBUSY while it is mounted in any namespace.
/// Compressing the disk before that would capture a half-written image.
fn wait_until_released(dev: &str) -> Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let start = Instant::now();
    loop {
        match std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_EXCL)
            .open(dev)
        {
            Ok(_) => return Ok(()),
            Err(e)
                if e.raw_os_error() == Some(libc::EBUSY)
                    && start.elapsed() < Duration::from_secs(10) =>
            {
                std::thread::sleep(Duration::from_millis(100));
            }
            Err(e) => bail!(
                "{dev} is still in use after unmounting it ({e}): another mount namespace \
                 holds its filesystem (run the build with kumo images build, which makes \
                 a private one)"
            ),
        }
    }
}

/// Waits for the loop device's first partition. `losetup -P` asks the
/// kernel to scan the partition table, but some kernels (seen on 6.18 in
/// a Firecracker VM) leave it unscanned; `partx --add` then asks again.
fn wait_for_partition(disk: &str, part: &str) -> Result<()> {
    let appeared = |secs: u64| {
        let start = Instant::now();
        while start.elapsed() < Duration::from_secs(secs) {
            if Path::new(part).exists() {
                return true;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        false
    };
    if appeared(2) {
        return Ok(());
    }
    let out = Command::new("partx")
        .args(["--add", disk])
        .output()
        .context("running partx")?;
    if !appeared(10) {
        bail!(
            "{part} did not appear after losetup -P and partx --add {disk} ({})",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

struct Digests {
    sha256: String,
    size: u64,
    raw_sha256: String,
    raw_size: u64,
}

/// Compresses `raw` into `out` (whole or not at all), hashing both sides
/// on the way.
fn compress(raw: &Path, out: &Path) -> Result<Digests> {
    let tmp = out.with_extension("partial");
    let file = File::create(&tmp).with_context(|| format!("creating {}", tmp.display()))?;
    let sink = HashingWriter {
        inner: BufWriter::with_capacity(MIB as usize, file),
        hasher: Sha256::new(),
        bytes: 0,
    };
    let mut input = File::open(raw).with_context(|| format!("opening {}", raw.display()))?;
    let raw_size = input
        .metadata()
        .with_context(|| format!("reading {}", raw.display()))?
        .len();
    let mut enc = zstd::stream::write::Encoder::new(sink, ZSTD_LEVEL).context("starting zstd")?;
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get() as u32);
    enc.multithread(threads).context("zstd threads")?;
    // Lets `zstd -l` and decompressors know the size; the frame checksum
    // lets them notice corruption without our SHA-256.
    enc.set_pledged_src_size(Some(raw_size))
        .context("zstd source size")?;
    enc.include_checksum(true).context("zstd checksum")?;
    let mut raw_hasher = Sha256::new();
    let mut buf = vec![0u8; 4 * MIB as usize];
    loop {
        let n = input
            .read(&mut buf)
            .with_context(|| format!("reading {}", raw.display()))?;
        if n == 0 {
            break;
        }
        raw_hasher.update(&buf[..n]);
        enc.write_all(&buf[..n])
            .with_context(|| format!("writing {}", tmp.display()))?;
        check_interrupted()?;
    }
    let sink = enc
        .finish()
        .with_context(|| format!("writing {}", tmp.display()))?;
    let (sha256, size) = (format!("{:x}", sink.hasher.finalize()), sink.bytes);
    let file = sink
        .inner
        .into_inner()
        .map_err(|e| e.into_error())
        .with_context(|| format!("writing {}", tmp.display()))?;
    file.sync_all()
        .with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, out)
        .with_context(|| format!("renaming {} to {}", tmp.display(), out.display()))?;
    Ok(Digests {
        sha256,
        size,
        raw_sha256: format!("{:x}", raw_hasher.finalize()),
        raw_size,
    })
}

/// Hashes and counts what passes through to `inner`.
struct HashingWriter<W> {
    inner: W,
    hasher: Sha256,
    bytes: u64,
}

impl<W: Write> Write for HashingWriter<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        self.bytes += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

/// The lines `kumo images build` ends with. Pure.
pub fn summary(b: &BuiltImage, times: &[(&str, Duration)]) -> String {
    let mib = |n: u64| n as f64 / MIB as f64;
    let steps: Vec<String> = times
        .iter()
        .map(|(what, d)| format!("{what} {:.1} s", d.as_secs_f64()))
        .collect();
    format!(
        "kumo: built {} ({} {} {})\n\
         kumo:   image   {} ({:.0} MiB, sha256 {})\n\
         kumo:   raw     {:.0} MiB (sha256 {})\n\
         kumo:   seconds {}\n",
        b.name,
        b.os,
        b.release,
        b.arch,
        b.path.display(),
        mib(b.size),
        b.sha256,
        mib(b.raw_size),
        b.raw_sha256,
        steps.join(", ")
    )
}

/// Mount points and loop devices this build set up, undone in reverse
/// order by [`Mounts::release`] or, on any early return, by drop.
#[derive(Default)]
struct Mounts {
    /// Mount points, in the order they were mounted.
    points: Vec<PathBuf>,
    loops: Vec<String>,
}

impl Mounts {
    fn mount(&mut self, source: &str, target: &Path, args: &[&str]) -> Result<()> {
        let out = Command::new("mount")
            .args(args)
            .arg(source)
            .arg(target)
            .output()
            .context("running mount")?;
        ensure!(
            out.status.success(),
            "mounting {source} on {}: {}",
            target.display(),
            String::from_utf8_lossy(&out.stderr).trim()
        );
        self.points.push(target.to_owned());
        Ok(())
    }

    fn bind(&mut self, source: &Path, target: &Path) -> Result<()> {
        create_dir(target)?;
        self.mount(&source.to_string_lossy(), target, &["--bind"])
    }

    /// What package scripts and GRUB expect in a chroot: /proc, /sys, the
    /// host's /dev (the loop device and its partition included), and an
    /// empty /run, so nothing they leave there ends up in the image.
    fn chroot_filesystems(&mut self, root: &Path) -> Result<()> {
        self.mount("proc", &root.join("proc"), &["-t", "proc"])?;
        self.bind(Path::new("/sys"), &root.join("sys"))?;
        self.bind(Path::new("/dev"), &root.join("dev"))?;
        self.bind(Path::new("/dev/pts"), &root.join("dev/pts"))?;
        create_dir(&root.join("run"))?;
        self.mount("tmpfs", &root.join("run"), &["-t", "tmpfs"])
    }

    /// Attaches `file` to a free loop device with its partitions scanned.
    fn attach(&mut self, file: &Path) -> Result<String> {
        let out = Command::new("losetup")
            .args(["--find", "--show", "--partscan"])
            .arg(file)
            .output()
            .context("running losetup")?;
        ensure!(
            out.status.success(),
            "attaching {} to a loop device: {}",
            file.display(),
            String::from_utf8_lossy(&out.stderr).trim()
        );
        let dev = String::from_utf8_lossy(&out.stdout).trim().to_owned();
        self.loops.push(dev.clone());
        Ok(dev)
    }

    /// Unmounts everything, keeping the loop devices.
    fn unmount_all(&mut self) -> Result<()> {
        let mut first: Option<anyhow::Error> = None;
        while let Some(p) = self.points.pop() {
            if let Err(e) = unmount(&p) {
                first.get_or_insert(e);
            }
        }
        first.map_or(Ok(()), Err)
    }

    /// Unmounts everything (retrying a busy mount, then detaching it
    /// lazily) and detaches the loop devices; the first failure is
    /// returned after trying every one.
    fn release(&mut self) -> Result<()> {
        let mut first = self.unmount_all().err();
        while let Some(dev) = self.loops.pop() {
            if let Err(e) = detach(&dev) {
                first.get_or_insert(e);
            }
        }
        first.map_or(Ok(()), Err)
    }
}

impl Drop for Mounts {
    fn drop(&mut self) {
        if let Err(e) = self.release() {
            eprintln!("kumo: cleaning up: {e:#}");
        }
    }
}

fn unmount(p: &Path) -> Result<()> {
    let mut last = String::new();
    for _ in 0..10 {
        let out = Command::new("umount")
            .arg(p)
            .output()
            .context("running umount")?;
        if out.status.success() {
            return Ok(());
        }
        last = String::from_utf8_lossy(&out.stderr).trim().to_owned();
        std::thread::sleep(Duration::from_millis(200));
    }
    // Something still has it open (a daemon a package started despite
    // policy-rc.d): detach it now, the kernel frees it when they close.
    let lazy = Command::new("umount").arg("--lazy").arg(p).status();
    if lazy.is_ok_and(|s| s.success()) {
        eprintln!(
            "kumo: {} was busy ({last}); detached it lazily",
            p.display()
        );
        return Ok(());
    }
    bail!("unmounting {}: {last}", p.display())
}

fn detach(dev: &str) -> Result<()> {
    let out = Command::new("losetup")
        .args(["--detach", dev])
        .output()
        .context("running losetup")?;
    ensure!(
        out.status.success(),
        "detaching loop device {dev}: {}",
        String::from_utf8_lossy(&out.stderr).trim()
    );
    Ok(())
}

/// Removes a work directory, first undoing what a killed build left
/// mounted below it or attached to files in it. Never follows a mount:
/// a leftover bind of /dev must not lose the host its device nodes.
fn remove_work_dir(dir: &Path) -> Result<()> {
    if !dir.exists() {
        return Ok(());
    }
    let dir = std::fs::canonicalize(dir).with_context(|| format!("resolving {}", dir.display()))?;
    let mounts = read_text(Path::new("/proc/self/mounts"))?;
    let mut below = mount_points_below(&mounts, &dir);
    // Deepest first.
    below.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
    for p in &below {
        eprintln!("kumo: unmounting {} left by an earlier build", p.display());
        unmount(p)?;
    }
    let out = Command::new("losetup")
        .args(["--list", "--noheadings", "--output", "NAME,BACK-FILE"])
        .output()
        .context("running losetup")?;
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        if let Some((dev, file)) = line.trim().split_once(char::is_whitespace) {
            if Path::new(file.trim()).starts_with(&dir) {
                eprintln!("kumo: detaching {dev} left by an earlier build");
                detach(dev)?;
            }
        }
    }
    let still = mount_points_below(&read_text(Path::new("/proc/self/mounts"))?, &dir);
    ensure!(
        still.is_empty(),
        "not removing {}: {} still mounted",
        dir.display(),
        still[0].display()
    );
    std::fs::remove_dir_all(&dir).with_context(|| format!("removing {}", dir.display()))
}

/// Mount points at or below `dir` in a /proc/mounts text (whose octal
/// escapes for spaces are undone). Pure.
pub fn mount_points_below(mounts: &str, dir: &Path) -> Vec<PathBuf> {
    mounts
        .lines()
        .filter_map(|l| l.split(' ').nth(1))
        .map(|p| {
            PathBuf::from(
                p.replace("\\040", " ")
                    .replace("\\011", "\t")
                    .replace("\\012", "\n")
                    .replace("\\134", "\\"),
            )
        })
        .filter(|p| p.starts_with(dir))
        .collect()
}

/// A command run inside `root` with a clean, non-interactive environment.
fn chroot(root: &Path, program: &str) -> Command {
    let mut c = Command::new("chroot");
    c.arg(root)
        .arg(program)
        .env_clear()
        .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
        .env("DEBIAN_FRONTEND", "noninteractive")
        .env("LC_ALL", "C.UTF-8")
        .env("HOME", "/root");
    c
}

/// The build log: every command's output, appended.
struct Log {
    path: PathBuf,
}

impl Log {
    fn create(path: PathBuf) -> Result<Log> {
        File::create(&path).with_context(|| format!("creating {}", path.display()))?;
        Ok(Log { path })
    }

    fn run(&self, cmd: &mut Command) -> Result<()> {
        self.run_inner(cmd, None)
    }

    fn run_with_input(&self, cmd: &mut Command, input: &str) -> Result<()> {
        self.run_inner(cmd, Some(input))
    }

    fn run_inner(&self, cmd: &mut Command, input: Option<&str>) -> Result<()> {
        check_interrupted()?;
        let line = format!("{cmd:?}");
        let mut file = File::options()
            .append(true)
            .open(&self.path)
            .with_context(|| format!("opening {}", self.path.display()))?;
        writeln!(file, "\n$ {line}").with_context(|| format!("writing {}", self.path.display()))?;
        let err = file
            .try_clone()
            .with_context(|| format!("opening {}", self.path.display()))?;
        let mut child = cmd
            .stdin(if input.is_some() {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(file)
            .stderr(err)
            .spawn()
            .with_context(|| format!("running {:?}", cmd.get_program()))?;
        if let Some(input) = input {
            let mut stdin = child.stdin.take().expect("piped stdin");
            stdin
                .write_all(input.as_bytes())
                .with_context(|| format!("writing to {line}"))?;
        }
        let status = child
            .wait()
            .with_context(|| format!("waiting for {line}"))?;
        if !status.success() {
            bail!(
                "{line} exited with {status}; last lines of {}:\n{}",
                self.path.display(),
                self.tail(15)
            );
        }
        Ok(())
    }

    fn tail(&self, n: usize) -> String {
        let text = std::fs::read_to_string(&self.path).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(n)..].join("\n")
    }
}

fn check_interrupted() -> Result<()> {
    if INTERRUPTED.load(Ordering::SeqCst) {
        bail!("interrupted");
    }
    Ok(())
}

fn write(path: &Path, text: &str, mode: u32) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    if let Some(dir) = path.parent() {
        create_dir(dir)?;
    }
    std::fs::write(path, text).with_context(|| format!("writing {}", path.display()))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .with_context(|| format!("setting the mode of {}", path.display()))
}

fn write_json<T: Serialize>(path: &Path, value: &T) -> Result<()> {
    let mut text = serde_json::to_string_pretty(value).context("encoding JSON")?;
    text.push('\n');
    let tmp = path.with_extension("partial");
    std::fs::write(&tmp, text).with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("writing {}", path.display()))
}

fn create_dir(dir: &Path) -> Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))
}

fn remove_file(path: &Path) -> Result<()> {
    match std::fs::remove_file(path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            Err(e).with_context(|| format!("removing {}", path.display()))
        }
        _ => Ok(()),
    }
}

fn read_text(path: &Path) -> Result<String> {
    std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))
}

/// Names in `dir`, sorted; none if it does not exist.
fn list(dir: &Path) -> Result<Vec<String>> {
    let entries = match std::fs::read_dir(dir) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(vec![]),
        r => r.with_context(|| format!("reading {}", dir.display()))?,
    };
    let mut names = Vec::new();
    for e in entries {
        let e = e.with_context(|| format!("reading {}", dir.display()))?;
        names.push(e.file_name().to_string_lossy().into_owned());
    }
    names.sort();
    Ok(names)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pkgs(extra: &[&str]) -> Vec<String> {
        package_list(&extra.iter().map(|s| s.to_string()).collect::<Vec<_>>())
    }

    fn key(version: u32, release: &str, mirror: &str, packages: &[String]) -> String {
        recipe_key(
            version,
            release,
            mirror,
            packages,
            &rootfs_files(mirror, release),
        )
    }

    #[test]
    fn the_recipe_key_is_stable() {
        let k = key(1, "bookworm", DEFAULT_MIRROR, &pkgs(&[]));
        assert_eq!(k.len(), 16);
        assert_eq!(k, key(1, "bookworm", DEFAULT_MIRROR, &pkgs(&[])));
        // Pinned: a change here silently re-keys every cache.
        assert_eq!(
            recipe_key(1, "bookworm", DEFAULT_MIRROR, &["a".into()], &[]),
            "e114849699bcbeb7"
        );
        // Order, duplicates and a trailing slash do not matter.
        assert_eq!(
            key(
                1,
                "bookworm",
                DEFAULT_MIRROR,
                &["b".into(), "a".into(), "b".into()]
            ),
            key(
                1,
                "bookworm",
                "http://deb.debian.org/debian/",
                &["a".into(), "b".into()]
            ),
        );
        assert_eq!(pkgs(&["vim", "curl"]), pkgs(&["curl", "vim", "vim"]));
    }

    #[test]
    fn the_recipe_key_changes_with_each_input() {
        let base = key(1, "bookworm", DEFAULT_MIRROR, &pkgs(&[]));
        let mut files = rootfs_files(DEFAULT_MIRROR, "bookworm");
        files[1].text.push_str("MODULES=dep\n");
        for other in [
            key(2, "bookworm", DEFAULT_MIRROR, &pkgs(&[])),
            key(1, "trixie", DEFAULT_MIRROR, &pkgs(&[])),
            key(1, "bookworm", "http://mirror.example/debian", &pkgs(&[])),
            key(1, "bookworm", DEFAULT_MIRROR, &pkgs(&["vim"])),
            recipe_key(1, "bookworm", DEFAULT_MIRROR, &pkgs(&[]), &files),
        ] {
            assert_ne!(base, other);
        }
    }

    #[test]
    fn files_go_where_package_scripts_expect_them() {
        let files = rootfs_files(DEFAULT_MIRROR, "bookworm");
        let before: Vec<&str> = files
            .iter()
            .filter(|f| f.before_packages)
            .map(|f| f.path)
            .collect();
        for p in [
            "etc/initramfs-tools/conf.d/kumo.conf",
            "etc/default/grub.d/kumo.cfg",
            "etc/fstab",
            "usr/sbin/policy-rc.d",
        ] {
            assert!(before.contains(&p), "{p} before apt-get install");
        }
        assert!(files.iter().all(|f| !f.path.starts_with('/')));
        let ssh = files
            .iter()
            .find(|f| f.path.contains("ssh.service.d"))
            .unwrap();
        // Debian's own `sshd -t` must come after the keys exist.
        assert!(ssh
            .text
            .contains("ExecStartPre=\nExecStartPre=/usr/bin/ssh-keygen -A\n"));
    }

    #[test]
    fn the_partition_starts_at_one_mib_and_fills_the_disk() {
        let l = Layout::new(2048).unwrap();
        assert_eq!(l.bytes(), 2 << 30);
        assert_eq!(l.start * SECTOR, 1 << 20);
        assert_eq!((l.start + l.sectors) * SECTOR, l.bytes());
        assert_eq!(
            l.sfdisk_script(),
            "label: dos\nunit: sectors\n\nstart=2048, size=4192256, type=83, bootable\n"
        );
        assert!(Layout::new(512).is_err(), "too small for the root tree");
        assert!(
            Layout::new(2 << 20).is_err(),
            "beyond what an MBR addresses"
        );
        let biggest = Layout::new(MAX_SIZE_MIB).unwrap();
        assert!(biggest.disk_sectors <= u32::MAX as u64);
    }

    #[test]
    fn root_is_found_by_label_everywhere() {
        assert!(fstab().contains("\nLABEL=kumo-root / ext4 errors=remount-ro 0 1\n"));
        let grub = grub_defaults();
        for line in [
            "GRUB_TIMEOUT=0",
            "GRUB_CMDLINE_LINUX=\"console=tty0 console=ttyS0,115200n8\"",
            "GRUB_DISABLE_LINUX_UUID=true",
            "GRUB_DEVICE=LABEL=kumo-root",
        ] {
            assert!(grub.lines().any(|l| l == line), "{line} in {grub}");
        }
        assert!(!grub.contains("/dev/"), "{grub}");
        let initramfs = initramfs_conf();
        for line in ["MODULES=most", "COMPRESS=zstd", "FSTYPE=ext4"] {
            assert!(initramfs.lines().any(|l| l == line), "{initramfs}");
        }
    }

    #[test]
    fn cloud_init_looks_for_nocloud_only() {
        let cfg = cloud_cfg();
        assert!(cfg
            .lines()
            .any(|l| l == "datasource_list: [ NoCloud, None ]"));
    }

    #[test]
    fn sources_carry_updates_and_security_when_the_suite_has_them() {
        assert_eq!(
            sources_list("http://deb.debian.org/debian/", "bookworm"),
            "deb http://deb.debian.org/debian bookworm main non-free-firmware\n\
             deb http://deb.debian.org/debian bookworm-updates main non-free-firmware\n\
             deb http://security.debian.org/debian-security bookworm-security main non-free-firmware\n"
        );
        assert_eq!(sources_list("http://m/debian", "sid").lines().count(), 1);
    }

    #[test]
    fn the_manifest_round_trips() {
        let b = BuiltImage {
            name: "debian-12".into(),
            path: "/var/lib/kumo/images/debian-12.img.zst".into(),
            sha256: "ab".repeat(32),
            size: 300 << 20,
            raw_size: 2 << 30,
            raw_sha256: "cd".repeat(32),
            os: "debian".into(),
            release: "bookworm".into(),
            arch: "amd64".into(),
        };
        let text = serde_json::to_string(&b).unwrap();
        assert_eq!(serde_json::from_str::<BuiltImage>(&text).unwrap(), b);
        let v: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(v["path"], "/var/lib/kumo/images/debian-12.img.zst");
        assert_eq!(v["raw_size"], 2u64 << 30);
        let s = summary(&b, &[("disk", Duration::from_millis(12_340))]);
        assert!(s.contains("300 MiB") && s.contains("disk 12.3 s"), "{s}");
    }

    #[test]
    fn bad_options_are_refused_naming_the_value() {
        let ok = DiskImageOptions {
            name: DEFAULT_NAME.into(),
            release: DEFAULT_RELEASE.into(),
            mirror: DEFAULT_MIRROR.into(),
            size_mib: DEFAULT_SIZE_MIB,
            output_dir: "/o".into(),
            cache_dir: "/c".into(),
            extra_packages: vec![],
        };
        assert!(validate(&ok).is_ok());
        let mut o = ok.clone();
        o.extra_packages = vec!["--allow-unauthenticated".into()];
        assert!(validate(&o)
            .unwrap_err()
            .to_string()
            .contains("--allow-unauthenticated"));
        let mut o = ok.clone();
        o.name = "../x".into();
        assert!(validate(&o).is_err());
        let mut o = ok.clone();
        o.mirror = "ftp://x".into();
        assert!(validate(&o).is_err());
        let mut o = ok;
        o.extra_packages = vec!["vim".into(), "linux-headers-amd64=6.1.0".into()];
        assert!(validate(&o).is_ok());
    }

    #[test]
    fn mounts_below_a_directory_are_found_with_escapes_undone() {
        let text = "proc /proc proc rw 0 0\n\
                    /dev/loop0p1 /c/disk-x.partial/mnt ext4 rw 0 0\n\
                    udev /c/disk-x.partial/mnt/dev devtmpfs rw 0 0\n\
                    tmpfs /c/with\\040space/run tmpfs rw 0 0\n\
                    tmpfs /c/disk-x.partial-other tmpfs rw 0 0\n";
        assert_eq!(
            mount_points_below(text, Path::new("/c/disk-x.partial")),
            [
                PathBuf::from("/c/disk-x.partial/mnt"),
                PathBuf::from("/c/disk-x.partial/mnt/dev")
            ]
        );
        assert_eq!(
            mount_points_below(text, Path::new("/c/with space")),
            [PathBuf::from("/c/with space/run")]
        );
    }
}
