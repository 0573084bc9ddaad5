//! Files inside a container's root filesystem, written from the host.
//!
//! Paths are resolved below the root the way the container would see
//! them: an absolute symlink in the tree (`/etc/foo -> /run/foo`) points
//! into the tree, never onto the host.

use std::collections::VecDeque;
use std::io::{Read, Seek, SeekFrom};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use crate::Error;

/// Resolves every component of `inner` but the last below `root`,
/// following symlinks as if `root` were `/`. Returns the host path of
/// the parent directory and the last component.
pub(crate) fn resolve_parent(root: &Path, inner: &str) -> Result<(PathBuf, String), Error> {
    let mut parts: Vec<&str> = inner.split('/').filter(|c| !c.is_empty()).collect();
    let last = parts.pop().unwrap_or_default().to_owned();
    let mut queue: VecDeque<String> = parts.into_iter().map(str::to_owned).collect();
    let mut stack: Vec<String> = vec![];
    let mut hops = 0;
    while let Some(c) = queue.pop_front() {
        match c.as_str() {
            "." => continue,
            ".." => {
                stack.pop();
                continue;
            }
            _ => {}
        }
        let here: PathBuf = stack
            .iter()
            .fold(root.to_path_buf(), |p, c| p.join(c))
            .join(&c);
        match std::fs::symlink_metadata(&here) {
            Ok(m) if m.file_type().is_symlink() => {
                hops += 1;
                if hops > 40 {
                    return Err(Error::Io {
                        what: "resolving",
                        path: root.join(inner.trim_start_matches('/')),
                        source: std::io::Error::from_raw_os_error(libc::ELOOP),
                    });
                }
                let target = std::fs::read_link(&here).map_err(Error::io("reading", &here))?;
                let target = target.to_string_lossy().into_owned();
                if target.starts_with('/') {
                    stack.clear();
                }
                for (i, t) in target.split('/').filter(|t| !t.is_empty()).enumerate() {
                    queue.insert(i, t.to_owned());
                }
            }
            _ => stack.push(c),
        }
    }
    let dir = stack.iter().fold(root.to_path_buf(), |p, c| p.join(c));
    Ok((dir, last))
}

/// Where `inner` is on the host, its last component not followed.
pub(crate) fn host_path(root: &Path, inner: &str) -> Result<PathBuf, Error> {
    let (dir, last) = resolve_parent(root, inner)?;
    Ok(dir.join(last))
}

/// Writes `contents` at `inner` below `root` with `mode`, creating parent
/// directories and replacing whatever was there but a directory.
pub(crate) fn write_in_root(
    root: &Path,
    inner: &str,
    contents: &[u8],
    mode: u32,
) -> Result<(), Error> {
    let (dir, last) = resolve_parent(root, inner)?;
    std::fs::create_dir_all(&dir).map_err(Error::io("creating", &dir))?;
    let path = dir.join(last);
    remove_unless_dir(&path)?;
    std::fs::write(&path, contents).map_err(Error::io("writing", &path))?;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode))
        .map_err(Error::io("setting the mode of", &path))
}

/// Makes `inner` below `root` a symlink to `target` (read inside the
/// container), replacing a file or symlink there.
pub(crate) fn symlink_in_root(root: &Path, inner: &str, target: &str) -> Result<(), Error> {
    let (dir, last) = resolve_parent(root, inner)?;
    std::fs::create_dir_all(&dir).map_err(Error::io("creating", &dir))?;
    let path = dir.join(last);
    remove_unless_dir(&path)?;
    std::os::unix::fs::symlink(target, &path).map_err(Error::io("linking", &path))
}

fn remove_unless_dir(path: &Path) -> Result<(), Error> {
    match std::fs::symlink_metadata(path) {
        Ok(m) if m.is_dir() => Err(Error::Io {
            what: "replacing",
            path: path.to_owned(),
            source: std::io::Error::from_raw_os_error(libc::EISDIR),
        }),
        Ok(_) => std::fs::remove_file(path).map_err(Error::io("removing", path)),
        Err(_) => Ok(()),
    }
}

/// Bytes free for unprivileged use on the filesystem holding `dir`.
pub(crate) fn free_bytes(dir: &Path) -> Result<u64, Error> {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(dir.as_os_str().as_bytes()).map_err(|_| Error::Io {
        what: "checking free space in",
        path: dir.to_owned(),
        source: std::io::Error::from_raw_os_error(libc::EINVAL),
    })?;
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: `c` is a NUL-terminated path and `st` a writable statvfs.
    if unsafe { libc::statvfs(c.as_ptr(), &mut st) } != 0 {
        return Err(Error::io("checking free space in", dir)(
            std::io::Error::last_os_error(),
        ));
    }
    Ok(st.f_bavail as u64 * st.f_frsize as u64)
}

pub(crate) fn ensure_free_space(dir: &Path, need: u64, what: &str) -> Result<(), Error> {
    let free = free_bytes(dir)?;
    if free < need {
        return Err(Error::NoSpace {
            path: dir.to_owned(),
            what: what.to_owned(),
            free_mib: free >> 20,
            need_mib: need >> 20,
        });
    }
    Ok(())
}

/// The last `lines` lines of a log, terminal escapes removed; empty when
/// the file cannot be read (it is only ever context for another error).
pub(crate) fn tail(path: &Path, lines: usize) -> String {
    let mut buf = vec![];
    if let Ok(mut f) = std::fs::File::open(path) {
        let len = f.metadata().map(|m| m.len()).unwrap_or(0);
        let _ = f.seek(SeekFrom::Start(len.saturating_sub(64 << 10)));
        let _ = f.read_to_end(&mut buf);
    }
    let text = strip_escapes(&String::from_utf8_lossy(&buf));
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// Removes ANSI CSI sequences (systemd colours its console) and CRs.
pub(crate) fn strip_escapes(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\x1b' => {
                if chars.peek() == Some(&'[') {
                    chars.next();
                    for c in chars.by_ref() {
                        if ('@'..='~').contains(&c) {
                            break;
                        }
                    }
                }
            }
            '\r' => {}
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn symlinks_resolve_inside_the_root() {
        let t = tempfile::tempdir().unwrap();
        let root = t.path();
        std::fs::create_dir_all(root.join("usr/lib")).unwrap();
        std::fs::create_dir_all(root.join("run/x")).unwrap();
        std::os::unix::fs::symlink("usr/lib", root.join("lib")).unwrap();
        std::fs::create_dir(root.join("etc")).unwrap();
        // Absolute: would be the host's /run without resolving in the root.
        std::os::unix::fs::symlink("/run/x", root.join("etc/link")).unwrap();
        std::os::unix::fs::symlink("../../..", root.join("etc/up")).unwrap();

        let (dir, last) = resolve_parent(root, "/lib/systemd/system/a.service").unwrap();
        assert_eq!(dir, root.join("usr/lib/systemd/system"));
        assert_eq!(last, "a.service");
        assert_eq!(
            host_path(root, "/etc/link/f").unwrap(),
            root.join("run/x/f")
        );
        // `..` stops at the root, as it does at `/`.
        assert_eq!(host_path(root, "/etc/up/f").unwrap(), root.join("f"));

        write_in_root(root, "/etc/link/conf", b"hi", 0o640).unwrap();
        assert_eq!(std::fs::read(root.join("run/x/conf")).unwrap(), b"hi");
        let mode = std::fs::metadata(root.join("run/x/conf"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o7777, 0o640);
        // A symlink in the last place is replaced, not followed.
        std::os::unix::fs::symlink("/etc/passwd", root.join("etc/resolv.conf")).unwrap();
        write_in_root(root, "/etc/resolv.conf", b"nameserver 1.1.1.1\n", 0o644).unwrap();
        assert!(!std::fs::symlink_metadata(root.join("etc/resolv.conf"))
            .unwrap()
            .file_type()
            .is_symlink());
    }

    #[test]
    fn symlink_loops_end() {
        let t = tempfile::tempdir().unwrap();
        std::os::unix::fs::symlink("b", t.path().join("a")).unwrap();
        std::os::unix::fs::symlink("a", t.path().join("b")).unwrap();
        assert!(resolve_parent(t.path(), "/a/f").is_err());
    }

    #[test]
    fn escapes_are_stripped() {
        assert_eq!(
            strip_escapes("[\x1b[0;32m  OK  \x1b[0m] Reached target\r\n"),
            "[  OK  ] Reached target\n"
        );
    }
}
