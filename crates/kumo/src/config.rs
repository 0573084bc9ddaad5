//! Where kumo keeps its state: the region's data directory, and the CLI's
//! profiles (`kumo login`), each a small JSON file.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};

pub const DEFAULT_LISTEN: &str = "127.0.0.1:5240";

pub fn default_data_dir() -> PathBuf {
    if let Ok(d) = std::env::var("KUMO_DATA_DIR") {
        return PathBuf::from(d);
    }
    home().join(".local/share/kumo")
}

fn home() -> PathBuf {
    std::env::var("HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|_| PathBuf::from("/root"))
}

/// `region.json` in the data directory.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct RegionFile {
    pub database: String,
    pub listen: String,
}

impl RegionFile {
    pub fn path(data_dir: &Path) -> PathBuf {
        data_dir.join("region.json")
    }

    pub fn load(data_dir: &Path) -> Result<Self> {
        let p = Self::path(data_dir);
        let raw = std::fs::read_to_string(&p).with_context(|| {
            format!(
                "reading {}: run `kumo init --data-dir {}` first",
                p.display(),
                data_dir.display()
            )
        })?;
        serde_json::from_str(&raw).with_context(|| format!("parsing {}", p.display()))
    }

    pub fn save(&self, data_dir: &Path) -> Result<()> {
        let p = Self::path(data_dir);
        std::fs::write(&p, serde_json::to_string_pretty(self)? + "\n")
            .with_context(|| format!("writing {}", p.display()))
    }
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Profiles {
    #[serde(default)]
    pub current: Option<String>,
    #[serde(default)]
    pub profiles: BTreeMap<String, Profile>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Profile {
    pub url: String,
    pub key: String,
    /// The current model of `kumo switch` (orchestration verbs' default).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
}

impl Profiles {
    pub fn path() -> PathBuf {
        let dir = std::env::var("KUMO_CONFIG_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|_| home().join(".config/kumo"));
        dir.join("profiles.json")
    }

    pub fn load() -> Result<Self> {
        let p = Self::path();
        match std::fs::read_to_string(&p) {
            Ok(raw) => {
                serde_json::from_str(&raw).with_context(|| format!("parsing {}", p.display()))
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Profiles::default()),
            Err(e) => Err(e).with_context(|| format!("reading {}", p.display())),
        }
    }

    /// Saves with mode 0600: the file holds API keys.
    pub fn save(&self) -> Result<()> {
        use std::io::Write;
        use std::os::unix::fs::OpenOptionsExt;
        let p = Self::path();
        if let Some(dir) = p.parent() {
            std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        }
        let tmp = p.with_extension("json.tmp");
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)
            .with_context(|| format!("writing {}", tmp.display()))?;
        f.write_all((serde_json::to_string_pretty(self)? + "\n").as_bytes())?;
        std::fs::rename(&tmp, &p).with_context(|| format!("writing {}", p.display()))?;
        Ok(())
    }

    /// The profile to use: the named one, else the current one.
    pub fn pick(&self, name: Option<&str>) -> Result<(String, Profile)> {
        let name = match name.map(str::to_owned).or_else(|| self.current.clone()) {
            Some(n) => n,
            None => bail!("no profile: log in first with `kumo login PROFILE URL KEY` (kumo init prints the key)"),
        };
        match self.profiles.get(&name) {
            Some(p) => Ok((name, p.clone())),
            None => bail!(
                "no profile named {name:?}; known profiles: {}",
                if self.profiles.is_empty() {
                    "none".to_string()
                } else {
                    self.profiles.keys().cloned().collect::<Vec<_>>().join(", ")
                }
            ),
        }
    }
}
