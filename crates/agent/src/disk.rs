//! Writing and erasing disks. Blocking code on plain files, so the same
//! functions run on a machine's `/dev/vda` and, in tests, on a file.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::fd::AsRawFd;
use std::path::Path;
use std::time::{Duration, Instant};

use kumo_model::inventory::Disk;
use kumo_model::EraseMode;
use sha2::{Digest, Sha256};

use crate::AgentError;

/// The unit of writing (and of spotting runs of zeros).
const BLOCK: usize = 1 << 20;

/// How much is written between flushes to the disk.
const SYNC_EVERY: u64 = 64 << 20;

fn io(path: &Path, what: &str) -> impl FnOnce(std::io::Error) -> AgentError {
    let path = format!("{what} {}", path.display());
    move |source| AgentError::Io { path, source }
}

/// The disk to deploy to: the first (in the kernel's order) that is big
/// enough. Pure.
pub fn choose_disk(disks: &[Disk], need_bytes: u64) -> Option<&Disk> {
    let mut sorted: Vec<&Disk> = disks.iter().collect();
    sorted.sort_by(|a, b| a.name.len().cmp(&b.name.len()).then(a.name.cmp(&b.name)));
    sorted.into_iter().find(|d| d.size_bytes >= need_bytes)
}

/// The device of a disk's `n`th partition: `vda` → `vda1`, `nvme0n1` → `nvme0n1p1`.
pub fn partition_name(disk: &str, n: u32) -> String {
    if disk.ends_with(|c: char| c.is_ascii_digit()) {
        format!("{disk}p{n}")
    } else {
        format!("{disk}{n}")
    }
}

/// What writing an image did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Written {
    /// Compressed bytes read, and their SHA-256.
    pub compressed: u64,
    pub sha256: String,
    /// Bytes now on disk, of which `zeroed` were written as zero ranges.
    pub raw: u64,
    pub zeroed: u64,
    pub time: Timings,
}

/// Where the writer's time went, so a slow deployment says whether the
/// network, zstd, SHA-256 or the disk held it up.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Timings {
    /// Blocked on the compressed stream (for the agent: the download).
    pub waiting: Duration,
    pub decompressing: Duration,
    pub hashing: Duration,
    /// Looking for all-zero blocks.
    pub scanning: Duration,
    /// Writes, zero ranges and flushes.
    pub writing: Duration,
}

impl std::fmt::Display for Timings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "waiting for data {:.1} s, decompressing {:.1} s, sha256 {:.1} s, \
             finding zeros {:.1} s, writing and flushing {:.1} s",
            self.waiting.as_secs_f64(),
            self.decompressing.as_secs_f64(),
            self.hashing.as_secs_f64(),
            self.scanning.as_secs_f64(),
            self.writing.as_secs_f64()
        )
    }
}

/// A reader that hashes what passes through it, timing its source and
/// the hashing.
struct Hashing<R> {
    inner: R,
    hasher: Sha256,
    count: u64,
    waiting: Duration,
    hashing: Duration,
}

impl<R: Read> Read for Hashing<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let t = Instant::now();
        let n = self.inner.read(buf)?;
        let read = Instant::now();
        self.hasher.update(&buf[..n]);
        self.hashing += read.elapsed();
        self.waiting += read - t;
        self.count += n as u64;
        Ok(n)
    }
}

/// Streams a zstd-compressed raw image onto `target` from its start.
/// Runs of zero blocks become zero-range requests (a fast "write zeroes"
/// on disks that support it, plain writes of zeros on those that don't),
/// so the whole disk region the image covers is written either way.
/// `progress` is told the raw bytes written so far; the result says
/// where the time went.
pub fn write_image(
    compressed: impl Read,
    target: &mut File,
    target_path: &Path,
    mut progress: impl FnMut(u64),
) -> Result<Written, AgentError> {
    let mut input = Hashing {
        inner: compressed,
        hasher: Sha256::new(),
        count: 0,
        waiting: Duration::ZERO,
        hashing: Duration::ZERO,
    };
    let mut time = Timings::default();
    let mut decoder = zstd::stream::read::Decoder::new(&mut input)
        .map_err(|e| AgentError::Image(format!("starting to decompress the image: {e}")))?;
    target
        .seek(SeekFrom::Start(0))
        .map_err(io(target_path, "seeking"))?;
    let mut buf = vec![0u8; BLOCK];
    let (mut raw, mut zeroed) = (0u64, 0u64);
    let mut zero_run: Option<(u64, u64)> = None;
    loop {
        let t = Instant::now();
        let n = read_full(&mut decoder, &mut buf).map_err(|e| {
            AgentError::Image(format!("decompressing the image at byte {raw}: {e}"))
        })?;
        // Reading the decoder ran the source and the hashing too.
        time.decompressing += t.elapsed();
        if n == 0 {
            break;
        }
        let block = &buf[..n];
        let t = Instant::now();
        let zeros = is_zero(block);
        let scanned = Instant::now();
        time.scanning += scanned - t;
        if zeros {
            let run = zero_run.get_or_insert((raw, 0));
            run.1 += n as u64;
        } else {
            if let Some((at, len)) = zero_run.take() {
                zero_range(target, target_path, at, len)?;
                zeroed += len;
            }
            target
                .seek(SeekFrom::Start(raw))
                .map_err(io(target_path, "seeking"))?;
            target
                .write_all(block)
                .map_err(io(target_path, "writing"))?;
        }
        raw += n as u64;
        // Flush as we go: "written" then means on the disk, and the time
        // goes where the progress reports show it, not into one long
        // silent flush at the end.
        if raw % SYNC_EVERY < n as u64 {
            target.sync_data().map_err(io(target_path, "syncing"))?;
        }
        time.writing += scanned.elapsed();
        progress(raw);
    }
    let t = Instant::now();
    if let Some((at, len)) = zero_run.take() {
        zero_range(target, target_path, at, len)?;
        zeroed += len;
    }
    drop(decoder);
    target.sync_all().map_err(io(target_path, "syncing"))?;
    time.writing += t.elapsed();
    time.waiting = input.waiting;
    time.hashing = input.hashing;
    time.decompressing = time
        .decompressing
        .saturating_sub(input.waiting + input.hashing);
    Ok(Written {
        compressed: input.count,
        sha256: hex(&input.hasher.finalize()),
        raw,
        zeroed,
        time,
    })
}

fn read_full(r: &mut impl Read, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        match r.read(&mut buf[filled..]) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(filled)
}

/// Zeroes `len` bytes at `at`: FALLOC_FL_ZERO_RANGE, which a block device
/// turns into write-zeroes commands, else plain writes of zeros.
/// Whether every byte of `block` is zero. Compared against a zeroed
/// buffer, which is libc's memcmp: 16 bytes or more an instruction, where
/// a byte loop costs an emulated instruction a byte in a TCG machine (it
/// took 60% of an image write there).
fn is_zero(block: &[u8]) -> bool {
    static ZEROS: [u8; 64 << 10] = [0; 64 << 10];
    block.chunks(ZEROS.len()).all(|c| c == &ZEROS[..c.len()])
}

fn zero_range(f: &mut File, path: &Path, at: u64, len: u64) -> Result<(), AgentError> {
    // SAFETY: fallocate on an open descriptor with in-range arguments.
    let r = unsafe {
        libc::fallocate(
            f.as_raw_fd(),
            libc::FALLOC_FL_ZERO_RANGE | libc::FALLOC_FL_KEEP_SIZE,
            at as libc::off_t,
            len as libc::off_t,
        )
    };
    if r == 0 {
        return Ok(());
    }
    f.seek(SeekFrom::Start(at)).map_err(io(path, "seeking"))?;
    let zeros = vec![0u8; BLOCK];
    let mut left = len;
    while left > 0 {
        let n = left.min(BLOCK as u64) as usize;
        f.write_all(&zeros[..n]).map_err(io(path, "zeroing"))?;
        left -= n as u64;
    }
    Ok(())
}

/// Asks the kernel to read the new partition table (a no-op on files).
pub fn reread_partitions(f: &File) {
    // BLKRRPART = _IO(0x12, 95)
    const BLKRRPART: libc::c_ulong = 0x125f;
    // SAFETY: an ioctl without arguments on an open descriptor.
    unsafe {
        libc::ioctl(f.as_raw_fd(), BLKRRPART as _);
    }
}

/// Erases a disk: quick wipes the first and last 2 MiB (partition tables,
/// RAID and LVM labels, the GPT backup); full zeroes every block.
pub fn erase(
    path: &Path,
    mode: EraseMode,
    mut progress: impl FnMut(u64, u64),
) -> Result<u64, AgentError> {
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .open(path)
        .map_err(io(path, "opening"))?;
    let size = f.seek(SeekFrom::End(0)).map_err(io(path, "sizing"))?;
    let done = match mode {
        EraseMode::None => 0,
        EraseMode::Quick => {
            let edge = size.min(2 << 20);
            write_zeros(&mut f, path, 0, edge)?;
            write_zeros(&mut f, path, size - edge, edge)?;
            edge * 2
        }
        EraseMode::Full => {
            // In steps, so progress is reported and a disk without
            // write-zeroes support still makes visible headway.
            let step = 256u64 << 20;
            let mut at = 0;
            while at < size {
                let len = step.min(size - at);
                zero_range(&mut f, path, at, len)?;
                at += len;
                progress(at, size);
            }
            size
        }
    };
    f.sync_all().map_err(io(path, "syncing"))?;
    reread_partitions(&f);
    Ok(done)
}

fn write_zeros(f: &mut File, path: &Path, at: u64, len: u64) -> Result<(), AgentError> {
    f.seek(SeekFrom::Start(at)).map_err(io(path, "seeking"))?;
    f.write_all(&vec![0u8; len as usize])
        .map_err(io(path, "zeroing"))
}

/// Writes the NoCloud seed below a mounted root: cloud-init reads it on
/// first boot before it looks at any network.
pub fn write_seed(
    root: &Path,
    docs: &kumo_model::api::CloudInitDocuments,
) -> Result<(), AgentError> {
    use std::os::unix::fs::PermissionsExt;
    let dir = root.join("var/lib/cloud/seed/nocloud");
    std::fs::create_dir_all(&dir).map_err(io(&dir, "creating"))?;
    for (name, body) in [
        ("meta-data", &docs.meta_data),
        ("user-data", &docs.user_data),
        ("vendor-data", &docs.vendor_data),
        ("network-config", &docs.network_config),
    ] {
        let path = dir.join(name);
        std::fs::write(&path, body).map_err(io(&path, "writing"))?;
        // vendor-data holds the machine's token.
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))
            .map_err(io(&path, "protecting"))?;
    }
    Ok(())
}

pub(crate) fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn disk(name: &str, gib: u64) -> Disk {
        Disk {
            name: name.into(),
            size_bytes: gib << 30,
            ..Default::default()
        }
    }

    #[test]
    fn the_first_big_enough_disk_in_kernel_order_is_chosen() {
        let disks = [disk("vdb", 8), disk("vda", 1), disk("vdaa", 8)];
        assert_eq!(choose_disk(&disks, 2 << 30).unwrap().name, "vdb");
        assert_eq!(choose_disk(&disks, 1 << 30).unwrap().name, "vda");
        assert!(choose_disk(&disks, 9 << 30).is_none());
    }

    #[test]
    fn partition_names_follow_the_kernel() {
        assert_eq!(partition_name("vda", 1), "vda1");
        assert_eq!(partition_name("sdb", 2), "sdb2");
        assert_eq!(partition_name("nvme0n1", 1), "nvme0n1p1");
        assert_eq!(partition_name("mmcblk0", 1), "mmcblk0p1");
    }

    /// An image with data, a long run of zeros and a tail that is not a
    /// whole block lands byte for byte over a target full of old data.
    #[test]
    fn an_image_is_written_exactly_over_old_data() {
        let mut raw = vec![0u8; 5 * BLOCK + 4321];
        raw[..BLOCK]
            .iter_mut()
            .enumerate()
            .for_each(|(i, b)| *b = (i % 251) as u8 + 1);
        raw[4 * BLOCK + 7] = 9;
        *raw.last_mut().unwrap() = 7;
        let compressed = zstd::encode_all(&raw[..], 3).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("disk");
        std::fs::write(&path, vec![0xAAu8; 8 * BLOCK]).unwrap();
        let mut f = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(&path)
            .unwrap();
        let mut seen = 0;
        let w = write_image(&compressed[..], &mut f, &path, |n| seen = n).unwrap();
        assert_eq!(w.raw, raw.len() as u64);
        assert_eq!(seen, w.raw);
        assert_eq!(w.compressed, compressed.len() as u64);
        assert_eq!(w.sha256, hex(&Sha256::digest(&compressed)));
        assert_eq!(w.zeroed, 3 * BLOCK as u64, "blocks 1–3 are a zero run");
        let disk = std::fs::read(&path).unwrap();
        assert_eq!(&disk[..raw.len()], &raw[..]);
        assert!(
            disk[raw.len()..].iter().all(|&b| b == 0xAA),
            "beyond the image nothing changes"
        );
    }

    /// A source that sleeps before each read, like a slow network.
    struct Slow<'a>(&'a [u8]);

    impl Read for Slow<'_> {
        fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
            std::thread::sleep(Duration::from_millis(10));
            self.0.read(buf)
        }
    }

    #[test]
    fn time_blocked_on_the_source_counts_as_waiting_not_decompressing() {
        let compressed = zstd::encode_all(&vec![3u8; 2 * BLOCK][..], 3).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("disk");
        let mut f = File::create(&path).unwrap();
        let w = write_image(Slow(&compressed[..]), &mut f, &path, |_| {}).unwrap();
        // At least one read with data and one that finds the end.
        assert!(w.time.waiting >= Duration::from_millis(20), "{w:?}");
        assert!(
            w.time.to_string().contains("waiting for data"),
            "{}",
            w.time
        );
    }

    #[test]
    fn a_corrupt_image_is_an_error_not_a_short_write() {
        let mut compressed = zstd::encode_all(&vec![1u8; 3 * BLOCK][..], 3).unwrap();
        let mid = compressed.len() / 2;
        compressed.truncate(mid);
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("disk");
        let mut f = File::create(&path).unwrap();
        let e = write_image(&compressed[..], &mut f, &path, |_| {}).unwrap_err();
        assert!(e.to_string().contains("decompressing"), "{e}");
    }

    #[test]
    fn quick_erase_wipes_both_ends_and_full_erase_everything() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("disk");
        let size = 16 << 20;
        std::fs::write(&path, vec![0x55u8; size]).unwrap();
        erase(&path, EraseMode::Quick, |_, _| {}).unwrap();
        let d = std::fs::read(&path).unwrap();
        assert!(d[..2 << 20].iter().all(|&b| b == 0));
        assert!(d[size - (2 << 20)..].iter().all(|&b| b == 0));
        assert!(d[(2 << 20)..size - (2 << 20)].iter().all(|&b| b == 0x55));
        let mut last = (0, 0);
        erase(&path, EraseMode::Full, |a, b| last = (a, b)).unwrap();
        assert!(std::fs::read(&path).unwrap().iter().all(|&b| b == 0));
        assert_eq!(last, (size as u64, size as u64));
    }

    #[test]
    fn is_zero_sees_one_set_byte_anywhere_in_any_length() {
        assert!(is_zero(&[]));
        for len in [1, 15, 64 << 10, (64 << 10) + 1, 1 << 20] {
            let mut b = vec![0u8; len];
            assert!(is_zero(&b), "{len} zeros");
            for at in [0, len / 2, len - 1] {
                b[at] = 1;
                assert!(!is_zero(&b), "a 1 at {at} of {len}");
                b[at] = 0;
            }
        }
    }

    #[test]
    fn the_seed_is_written_private() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let docs = kumo_model::api::CloudInitDocuments {
            meta_data: "{}".into(),
            network_config: "{\"version\":2}".into(),
            vendor_data: "#cloud-config\n{}".into(),
            user_data: "#cloud-config\n{}".into(),
        };
        write_seed(dir.path(), &docs).unwrap();
        let p = dir.path().join("var/lib/cloud/seed/nocloud/vendor-data");
        assert_eq!(std::fs::read_to_string(&p).unwrap(), docs.vendor_data);
        assert_eq!(
            std::fs::metadata(&p).unwrap().permissions().mode() & 0o777,
            0o600
        );
    }
}
