//! Hardware inventory from the kernel's own files. The `parse_*` functions
//! are pure (text in, values out); [`collect`] reads them below a root
//! directory, `/` on a machine and a fake tree in tests.

use std::io::ErrorKind;
use std::path::Path;

use kumo_model::inventory::{Bmc, Cpu, Disk, Dmi, Nic};
use kumo_model::{Inventory, MacAddress};

use crate::AgentError;

/// Block devices that are never disks, by name prefix.
const NOT_DISKS: &[&str] = &["loop", "ram", "zram", "sr", "fd", "md", "dm-", "nbd"];

/// CPU model (first `model name`) and count (`processor` entries).
pub fn parse_cpuinfo(text: &str) -> Cpu {
    let mut cpu = Cpu::default();
    for line in text.lines() {
        let Some((key, value)) = line.split_once(':') else {
            continue;
        };
        match key.trim() {
            "processor" => cpu.count += 1,
            "model name" if cpu.model.is_empty() => cpu.model = value.trim().to_owned(),
            _ => {}
        }
    }
    cpu
}

/// `MemTotal` in MiB, rounded down.
pub fn parse_meminfo(text: &str) -> Option<u64> {
    let line = text.lines().find(|l| l.starts_with("MemTotal:"))?;
    let kib: u64 = line
        .trim_start_matches("MemTotal:")
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()?;
    Some(kib / 1024)
}

/// The size in MiB of one SMBIOS type 17 (Memory Device) structure, as in
/// `/sys/firmware/dmi/entries/17-*/raw`; `None` for an empty slot or an
/// unknown size. This is what was installed, which `MemTotal` (less what
/// the kernel reserved) undercounts.
pub fn dmi_memory_device_mib(raw: &[u8]) -> Option<u64> {
    if raw.first() != Some(&17) || raw.len() < 0x0e {
        return None;
    }
    let size = u16::from_le_bytes([raw[0x0c], raw[0x0d]]);
    match size {
        0 | 0xffff => None,
        0x7fff => {
            let ext = raw.get(0x1c..0x20)?;
            let mib = u32::from_le_bytes([ext[0], ext[1], ext[2], ext[3]]) & 0x7fff_ffff;
            (mib > 0).then_some(mib as u64)
        }
        s if s & 0x8000 != 0 => Some(((s & 0x7fff) as u64) / 1024),
        s => Some(s as u64),
    }
}

/// A block device, from `/sys/block/<name>`: `size` is in 512-byte sectors
/// whatever the device's sector size. `None` for what is not a disk.
pub fn parse_disk(name: &str, size: &str, model: &str, serial: &str) -> Option<Disk> {
    if NOT_DISKS.iter().any(|p| name.starts_with(p)) {
        return None;
    }
    let sectors: u64 = size.trim().parse().ok()?;
    if sectors == 0 {
        return None;
    }
    Some(Disk {
        name: name.to_owned(),
        size_bytes: sectors * 512,
        model: model.trim().to_owned(),
        serial: serial.trim().to_owned(),
    })
}

/// A network interface from `/sys/class/net/<name>`; `None` for an
/// address that is no NIC's (all zero, as on `lo`, or malformed).
pub fn parse_nic(name: &str, address: &str, operstate: &str, driver: &str) -> Option<Nic> {
    let mac: MacAddress = address.trim().parse().ok()?;
    Some(Nic {
        name: name.to_owned(),
        mac,
        driver: driver.to_owned(),
        link_up: operstate.trim() == "up",
    })
}

/// Reads the inventory of the machine whose `/proc` and `/sys` are below
/// `root`. Missing files leave their fields empty: firmware without DMI or
/// a disk without a serial is still a machine.
pub fn collect(root: &Path) -> Result<Inventory, AgentError> {
    let mut inv = Inventory {
        cpu: parse_cpuinfo(&read(root, "proc/cpuinfo")?),
        ..Default::default()
    };
    let installed: u64 = list(root, "sys/firmware/dmi/entries")?
        .iter()
        .filter(|e| e.starts_with("17-"))
        .map(|e| read_bytes(root, &format!("sys/firmware/dmi/entries/{e}/raw")))
        .collect::<Result<Vec<_>, _>>()?
        .iter()
        .filter_map(|raw| dmi_memory_device_mib(raw))
        .sum();
    inv.memory_mib = if installed > 0 {
        installed
    } else {
        parse_meminfo(&read(root, "proc/meminfo")?).unwrap_or(0)
    };

    for name in list(root, "sys/block")? {
        let dir = format!("sys/block/{name}");
        // virtio-blk has `serial` beside `size`; SCSI and NVMe below `device`.
        let mut serial = read(root, &format!("{dir}/serial"))?;
        if serial.trim().is_empty() {
            serial = read(root, &format!("{dir}/device/serial"))?;
        }
        if let Some(d) = parse_disk(
            &name,
            &read(root, &format!("{dir}/size"))?,
            &read(root, &format!("{dir}/device/model"))?,
            &serial,
        ) {
            inv.disks.push(d);
        }
    }

    for name in list(root, "sys/class/net")? {
        let dir = root.join("sys/class/net").join(&name);
        // Only interfaces backed by a device are NICs; lo, bridges, tunnels
        // and the like are virtual.
        if !dir.join("device").exists() {
            continue;
        }
        let driver = std::fs::read_link(dir.join("device/driver"))
            .ok()
            .and_then(|p| p.file_name().map(|f| f.to_string_lossy().into_owned()))
            .unwrap_or_default();
        let net = format!("sys/class/net/{name}");
        if let Some(n) = parse_nic(
            &name,
            &read(root, &format!("{net}/address"))?,
            &read(root, &format!("{net}/operstate"))?,
            &driver,
        ) {
            inv.nics.push(n);
        }
    }

    let dmi = |f: &str| read(root, &format!("sys/class/dmi/id/{f}")).map(|s| s.trim().to_owned());
    inv.dmi = Dmi {
        vendor: dmi("sys_vendor")?,
        product: dmi("product_name")?,
        serial: dmi("product_serial")?,
    };
    let has_bmc = root.join("dev/ipmi0").exists() || !list(root, "sys/class/ipmi")?.is_empty();
    inv.bmc = has_bmc.then(Bmc::default);
    Ok(inv)
}

fn io_error(root: &Path, rel: &str) -> impl FnOnce(std::io::Error) -> AgentError {
    let path = root.join(rel).display().to_string();
    move |source| AgentError::Io { path, source }
}

/// A file's bytes; empty when it does not exist.
fn read_bytes(root: &Path, rel: &str) -> Result<Vec<u8>, AgentError> {
    match std::fs::read(root.join(rel)) {
        Err(e) if e.kind() == ErrorKind::NotFound => Ok(Vec::new()),
        r => r.map_err(io_error(root, rel)),
    }
}

/// A text file; empty when it does not exist. Lossy, since firmware
/// strings are not always UTF-8.
fn read(root: &Path, rel: &str) -> Result<String, AgentError> {
    Ok(String::from_utf8_lossy(&read_bytes(root, rel)?).into_owned())
}

/// A directory's entries, sorted; empty when it does not exist.
fn list(root: &Path, rel: &str) -> Result<Vec<String>, AgentError> {
    let entries = match std::fs::read_dir(root.join(rel)) {
        Err(e) if e.kind() == ErrorKind::NotFound => return Ok(Vec::new()),
        r => r.map_err(io_error(root, rel))?,
    };
    let mut names = Vec::new();
    for e in entries {
        names.push(
            e.map_err(io_error(root, rel))?
                .file_name()
                .to_string_lossy()
                .into_owned(),
        );
    }
    names.sort();
    Ok(names)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    /// Snapshots of this development machine's files (a 2-vCPU AMD EPYC VM).
    const CPUINFO: &str = include_str!("testdata/cpuinfo");
    const MEMINFO: &str = include_str!("testdata/meminfo");

    #[test]
    fn real_cpuinfo_gives_model_and_count() {
        let cpu = parse_cpuinfo(CPUINFO);
        assert_eq!(cpu.count, 2);
        assert_eq!(cpu.model, "AMD EPYC");
    }

    #[test]
    fn real_meminfo_gives_mib() {
        assert_eq!(parse_meminfo(MEMINFO), Some(24684084 / 1024));
        assert_eq!(parse_meminfo("MemFree: 12 kB\n"), None);
    }

    #[test]
    fn dmi_memory_devices_in_mib_kib_and_extended() {
        let mut raw = vec![0u8; 0x28];
        raw[0] = 17;
        raw[0x0c..0x0e].copy_from_slice(&512u16.to_le_bytes());
        assert_eq!(dmi_memory_device_mib(&raw), Some(512));
        raw[0x0c..0x0e].copy_from_slice(&(0x8000u16 | 2048).to_le_bytes());
        assert_eq!(dmi_memory_device_mib(&raw), Some(2));
        raw[0x0c..0x0e].copy_from_slice(&0x7fffu16.to_le_bytes());
        raw[0x1c..0x20].copy_from_slice(&65536u32.to_le_bytes());
        assert_eq!(dmi_memory_device_mib(&raw), Some(65536));
        raw[0x0c..0x0e].copy_from_slice(&0u16.to_le_bytes());
        assert_eq!(dmi_memory_device_mib(&raw), None, "an empty slot");
        raw[0] = 16;
        assert_eq!(dmi_memory_device_mib(&raw), None, "not a memory device");
        assert_eq!(dmi_memory_device_mib(&[17, 4]), None, "truncated");
    }

    #[test]
    fn loop_ram_and_empty_devices_are_not_disks() {
        assert_eq!(parse_disk("loop0", "2048", "", ""), None);
        assert_eq!(parse_disk("ram0", "2048", "", ""), None);
        assert_eq!(parse_disk("sr0", "0", "QEMU DVD-ROM", ""), None);
        assert_eq!(parse_disk("sdb", "0", "card reader", ""), None);
        let d = parse_disk("vda", "536870912\n", "", "overlayblkblock").unwrap();
        assert_eq!(d.size_bytes, 256 << 30);
        assert_eq!(d.serial, "overlayblkblock");
    }

    #[test]
    fn nics_need_a_real_address() {
        assert_eq!(parse_nic("lo", "00:00:00:00:00:00\n", "unknown", ""), None);
        let n = parse_nic("eth0", "52:54:00:12:34:56\n", "up\n", "virtio_net").unwrap();
        assert_eq!(n.mac.to_string(), "52:54:00:12:34:56");
        assert!(n.link_up);
        assert_eq!(n.driver, "virtio_net");
    }

    struct Tree(tempfile::TempDir);

    impl Tree {
        fn new() -> Tree {
            Tree(tempfile::tempdir().unwrap())
        }
        fn root(&self) -> PathBuf {
            self.0.path().to_path_buf()
        }
        fn file(&self, rel: &str, content: impl AsRef<[u8]>) -> &Self {
            let p = self.0.path().join(rel);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(p, content).unwrap();
            self
        }
        fn link(&self, rel: &str, target: &str) -> &Self {
            let p = self.0.path().join(rel);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::os::unix::fs::symlink(target, p).unwrap();
            self
        }
    }

    /// A QEMU machine as `-smp 2 -m 512`, one virtio disk, one virtio NIC.
    fn qemu_like() -> Tree {
        let t = Tree::new();
        t.file("proc/cpuinfo", CPUINFO)
            .file("proc/meminfo", "MemTotal:         482516 kB\n")
            .file("sys/block/vda/size", "4194304\n")
            .file("sys/block/vda/serial", "kumo-disk-1\n")
            .file("sys/block/loop0/size", "0\n")
            .file("sys/block/sr0/size", "0\n")
            .file("sys/block/sr0/device/model", "QEMU DVD-ROM\n")
            .file("sys/class/net/lo/address", "00:00:00:00:00:00\n")
            .file("sys/class/net/lo/operstate", "unknown\n")
            .file("sys/class/net/eth0/address", "52:54:00:aa:00:01\n")
            .file("sys/class/net/eth0/operstate", "up\n")
            .file("devices/virtio1/uevent", "DRIVER=virtio_net\n")
            .link("sys/class/net/eth0/device", "../../../../devices/virtio1")
            // device/driver is a symlink whose last component names the driver.
            .link(
                "devices/virtio1/driver",
                "../../bus/virtio/drivers/virtio_net",
            )
            .file("sys/class/dmi/id/sys_vendor", "QEMU\n")
            .file(
                "sys/class/dmi/id/product_name",
                "Standard PC (i440FX + PIIX, 1996)\n",
            )
            .file("sys/class/dmi/id/product_serial", "\n");
        t
    }

    #[test]
    fn a_fake_qemu_tree_reads_back_what_qemu_was_given() {
        let t = qemu_like();
        let inv = collect(&t.root()).unwrap();
        assert_eq!(inv.cpu.count, 2);
        assert_eq!(inv.memory_mib, 471, "MemTotal without DMI memory devices");
        assert_eq!(inv.disks.len(), 1, "{:?}", inv.disks);
        assert_eq!(inv.disks[0].name, "vda");
        assert_eq!(inv.disks[0].size_bytes, 2 << 30);
        assert_eq!(inv.disks[0].serial, "kumo-disk-1");
        assert_eq!(inv.nics.len(), 1, "lo is skipped: {:?}", inv.nics);
        assert_eq!(inv.nics[0].mac.to_string(), "52:54:00:aa:00:01");
        assert_eq!(inv.nics[0].driver, "virtio_net");
        assert!(inv.nics[0].link_up);
        assert_eq!(inv.dmi.vendor, "QEMU");
        assert_eq!(inv.dmi.product, "Standard PC (i440FX + PIIX, 1996)");
        assert_eq!(inv.dmi.serial, "");
        assert_eq!(inv.bmc, None);
    }

    #[test]
    fn dmi_memory_devices_win_over_memtotal_and_ipmi_means_a_bmc() {
        let t = qemu_like();
        let mut raw = vec![0u8; 0x28];
        raw[0] = 17;
        raw[0x0c..0x0e].copy_from_slice(&512u16.to_le_bytes());
        t.file("sys/firmware/dmi/entries/17-0/raw", &raw)
            .file("sys/firmware/dmi/entries/16-0/raw", [16u8, 23])
            .file("sys/class/ipmi/ipmi0/dev", "239:0\n");
        let inv = collect(&t.root()).unwrap();
        assert_eq!(inv.memory_mib, 512);
        assert!(inv.bmc.is_some());
    }

    #[test]
    fn an_empty_root_is_an_empty_inventory() {
        let t = Tree::new();
        assert_eq!(collect(&t.root()).unwrap(), Inventory::default());
    }
}
