//! A charm directory: `metadata.yaml`, optional `config.yaml`, `hooks/`
//! (any executables) and `templates/`.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use crate::config::ConfigSchema;
use crate::error::{Error, Result};
use crate::metadata::Metadata;

#[derive(Debug, Clone, PartialEq)]
pub struct Charm {
    pub dir: PathBuf,
    pub metadata: Metadata,
    pub config: ConfigSchema,
    /// File names under `hooks/`.
    pub hooks: BTreeSet<String>,
    /// Paths under `templates/`, relative to it.
    pub templates: BTreeSet<String>,
}

/// Hooks Juju runs that are not about a relation.
const HOOKS: &[&str] = &[
    "install",
    "config-changed",
    "start",
    "stop",
    "remove",
    "upgrade-charm",
    "update-status",
    "leader-elected",
    "leader-settings-changed",
    "collect-metrics",
];

const RELATION_HOOKS: &[&str] = &[
    "-relation-created",
    "-relation-joined",
    "-relation-changed",
    "-relation-departed",
    "-relation-broken",
];

impl Charm {
    /// A charm known by its metadata and config alone (tests, charm stores).
    pub fn new(metadata: Metadata, config: ConfigSchema) -> Charm {
        Charm {
            dir: PathBuf::new(),
            metadata,
            config,
            hooks: BTreeSet::new(),
            templates: BTreeSet::new(),
        }
    }

    /// Reads and checks a charm directory.
    pub fn load_dir(dir: impl AsRef<Path>) -> Result<Charm> {
        let dir = dir.as_ref();
        let read = |name: &str| -> Result<Option<String>> {
            let path = dir.join(name);
            match std::fs::read_to_string(&path) {
                Ok(t) => Ok(Some(t)),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
                Err(source) => Err(Error::Io { path, source }),
            }
        };
        let Some(meta_text) = read("metadata.yaml")? else {
            return Err(Error::Charm {
                dir: dir.to_owned(),
                message: "no metadata.yaml".into(),
            });
        };
        let file = |name: &str| dir.join(name).display().to_string();
        let metadata = Metadata::parse(&file("metadata.yaml"), &meta_text)?;
        let config = match read("config.yaml")? {
            Some(t) => ConfigSchema::parse(&file("config.yaml"), &t)?,
            None => ConfigSchema::default(),
        };
        let hooks = list(dir, "hooks", false)?;
        for hook in &hooks {
            check_hook(dir, hook, &metadata)?;
        }
        let templates = list(dir, "templates", true)?;
        Ok(Charm {
            dir: dir.to_owned(),
            metadata,
            config,
            hooks,
            templates,
        })
    }
}

fn check_hook(dir: &Path, hook: &str, metadata: &Metadata) -> Result<()> {
    let err = |message: String| Error::Charm {
        dir: dir.to_owned(),
        message,
    };
    let path = dir.join("hooks").join(hook);
    let meta = std::fs::metadata(&path).map_err(|source| Error::Io {
        path: path.clone(),
        source,
    })?;
    if !meta.is_file() {
        return Err(err(format!("hook {hook} is not a file")));
    }
    if !executable(&meta) {
        return Err(err(format!("hook {hook} is not executable")));
    }
    if HOOKS.contains(&hook) {
        return Ok(());
    }
    if let Some(ep) = RELATION_HOOKS.iter().find_map(|s| hook.strip_suffix(s)) {
        return match metadata.endpoints.get(ep) {
            Some(_) => Ok(()),
            None => Err(err(format!("hook {hook} names unknown endpoint {ep}"))),
        };
    }
    // Helper scripts beside hooks are common; only names that look like a
    // relation hook for a missing endpoint are mistakes worth stopping on.
    Ok(())
}

#[cfg(unix)]
fn executable(meta: &std::fs::Metadata) -> bool {
    use std::os::unix::fs::PermissionsExt;
    meta.permissions().mode() & 0o111 != 0
}

#[cfg(not(unix))]
fn executable(_: &std::fs::Metadata) -> bool {
    true
}

/// Files below `dir/sub` (relative to it); a missing directory is empty.
fn list(dir: &Path, sub: &str, recurse: bool) -> Result<BTreeSet<String>> {
    let mut out = BTreeSet::new();
    let root = dir.join(sub);
    if !root.exists() {
        return Ok(out);
    }
    let mut stack = vec![PathBuf::new()];
    while let Some(rel) = stack.pop() {
        let here = root.join(&rel);
        let entries = std::fs::read_dir(&here).map_err(|source| Error::Io {
            path: here.clone(),
            source,
        })?;
        for entry in entries {
            let entry = entry.map_err(|source| Error::Io {
                path: here.clone(),
                source,
            })?;
            let name = rel.join(entry.file_name());
            let is_dir = entry.file_type().map(|t| t.is_dir()).unwrap_or(false);
            if is_dir && recurse {
                stack.push(name);
            } else {
                out.insert(name.to_string_lossy().into_owned());
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn write(dir: &Path, name: &str, text: &str, mode: u32) {
        let p = dir.join(name);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(&p, text).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode)).unwrap();
    }

    fn charm() -> tempfile::TempDir {
        let d = tempfile::tempdir().unwrap();
        write(
            d.path(),
            "metadata.yaml",
            "name: web\nrequires:\n  db: mysql\n",
            0o644,
        );
        write(
            d.path(),
            "config.yaml",
            "options:\n  port: {type: int, default: 80}\n",
            0o644,
        );
        write(d.path(), "hooks/install", "#!/bin/sh\n", 0o755);
        write(d.path(), "hooks/db-relation-changed", "#!/bin/sh\n", 0o755);
        write(
            d.path(),
            "templates/site/web.conf",
            "listen {{ port }}\n",
            0o644,
        );
        d
    }

    #[test]
    fn loads_a_charm_directory() {
        let d = charm();
        let c = Charm::load_dir(d.path()).unwrap();
        assert_eq!(c.metadata.name, "web");
        assert_eq!(c.config.options.len(), 1);
        assert_eq!(
            c.hooks.iter().collect::<Vec<_>>(),
            ["db-relation-changed", "install"]
        );
        assert_eq!(c.templates.iter().collect::<Vec<_>>(), ["site/web.conf"]);
    }

    #[test]
    fn rejects_bad_hooks_and_missing_metadata() {
        let d = charm();
        write(d.path(), "hooks/start", "#!/bin/sh\n", 0o644);
        let e = Charm::load_dir(d.path()).unwrap_err().to_string();
        assert!(e.ends_with("hook start is not executable"), "{e}");

        let d = charm();
        write(
            d.path(),
            "hooks/cache-relation-joined",
            "#!/bin/sh\n",
            0o755,
        );
        let e = Charm::load_dir(d.path()).unwrap_err().to_string();
        assert!(
            e.ends_with("hook cache-relation-joined names unknown endpoint cache"),
            "{e}"
        );

        let d = tempfile::tempdir().unwrap();
        let e = Charm::load_dir(d.path()).unwrap_err().to_string();
        assert!(e.ends_with("no metadata.yaml"), "{e}");
    }

    #[test]
    fn metadata_errors_name_the_file() {
        let d = charm();
        write(
            d.path(),
            "config.yaml",
            "options:\n  port: {type: int, default: x}\n",
            0o644,
        );
        let e = Charm::load_dir(d.path()).unwrap_err().to_string();
        assert!(e.contains("config.yaml:2:"), "{e}");
        assert!(
            e.contains("options.port.default: expected an integer"),
            "{e}"
        );
    }
}
