//! Client commands for deploying: OS images in the region, and the SSH
//! keys deployed machines let in.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use clap::Subcommand;
use kumo_client::{enc, Client};
use kumo_model::api::NewSshKey;
use kumo_model::deploy::{Image, SshKey};
use serde::Deserialize;

use crate::output::{emit, fields, mib, table, time, Format};

#[derive(Subcommand, Debug)]
pub enum SshKeyCommand {
    /// Your SSH public keys, which machines you deploy let in.
    List,
    /// Add a public key, given on the command line or with --file.
    Add {
        /// The key line (`ssh-ed25519 AAAA… comment`).
        key: Option<String>,
        /// A public key file, e.g. ~/.ssh/id_ed25519.pub.
        #[arg(long, conflicts_with = "key")]
        file: Option<PathBuf>,
    },
    /// Remove a key by its fingerprint (`SHA256:…`).
    Delete { fingerprint: String },
}

pub async fn ssh_keys(c: &Client, format: Format, cmd: SshKeyCommand) -> Result<()> {
    match cmd {
        SshKeyCommand::List => {
            let keys: Vec<SshKey> = c.get("/api/v1/ssh-keys").await?;
            emit(format, &keys, |keys| {
                table(
                    &["FINGERPRINT", "TYPE", "COMMENT", "ADDED"],
                    keys.iter()
                        .map(|k| {
                            vec![
                                k.fingerprint.clone(),
                                k.key_type.clone(),
                                k.comment.clone(),
                                time(k.created_at),
                            ]
                        })
                        .collect(),
                )
            })
        }
        SshKeyCommand::Add { key, file } => {
            let key = match (key, file) {
                (Some(k), None) => k,
                (None, Some(f)) => std::fs::read_to_string(&f)
                    .with_context(|| format!("reading {}", f.display()))?,
                _ => bail!("give the key, or --file with a public key file"),
            };
            let k: SshKey = c.post("/api/v1/ssh-keys", &NewSshKey { key }).await?;
            emit(format, &k, |k| {
                fields(vec![
                    ("fingerprint", k.fingerprint.clone()),
                    ("type", k.key_type.clone()),
                    ("comment", k.comment.clone()),
                ])
            })
        }
        SshKeyCommand::Delete { fingerprint } => {
            c.delete(&format!("/api/v1/ssh-keys/{}", enc(&fingerprint)))
                .await?;
            Ok(())
        }
    }
}

pub fn image_table(images: &[Image]) -> comfy_table::Table {
    table(
        &[
            "NAME", "OS", "RELEASE", "ARCH", "SIZE", "DISK", "SHA256", "UPLOADED",
        ],
        images
            .iter()
            .map(|i| {
                vec![
                    i.name.clone(),
                    i.os.clone(),
                    i.release.clone(),
                    i.arch.clone(),
                    mib(i.size >> 20),
                    mib(i.raw_size >> 20),
                    i.sha256[..12.min(i.sha256.len())].to_owned(),
                    time(i.created_at),
                ]
            })
            .collect(),
    )
}

pub async fn list_images(c: &Client, format: Format) -> Result<()> {
    let images: Vec<Image> = c.get("/api/v1/images").await?;
    emit(format, &images, |i| image_table(i))
}

pub async fn delete_image(c: &Client, name: &str) -> Result<()> {
    c.delete(&format!("/api/v1/images/{}", enc(name))).await?;
    Ok(())
}

/// What `kumo images build` writes beside an image (`<name>.json`).
#[derive(Deserialize, Debug)]
pub struct Manifest {
    pub name: String,
    pub path: PathBuf,
    pub sha256: String,
    pub raw_size: u64,
    #[serde(default)]
    pub raw_sha256: String,
    #[serde(default)]
    pub os: String,
    #[serde(default)]
    pub release: String,
    #[serde(default)]
    pub arch: String,
}

impl Manifest {
    pub fn read(path: &Path) -> Result<Manifest> {
        let text =
            std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        let mut m: Manifest =
            serde_json::from_str(&text).with_context(|| format!("parsing {}", path.display()))?;
        if m.path.is_relative() {
            m.path = path.parent().unwrap_or(Path::new(".")).join(&m.path);
        }
        Ok(m)
    }
}

/// Streams an image file to the region, which checks it against the
/// manifest's checksum before it replaces anything.
pub async fn upload_image(c: &Client, m: &Manifest, name: Option<&str>) -> Result<Image> {
    let file = tokio::fs::File::open(&m.path)
        .await
        .with_context(|| format!("opening {}", m.path.display()))?;
    let len = file.metadata().await?.len();
    let name = name.unwrap_or(&m.name);
    let mut q = vec![
        format!("sha256={}", enc(&m.sha256)),
        format!("raw_size={}", m.raw_size),
    ];
    for (k, v) in [
        ("raw_sha256", &m.raw_sha256),
        ("os", &m.os),
        ("release", &m.release),
        ("arch", &m.arch),
    ] {
        if !v.is_empty() {
            q.push(format!("{k}={}", enc(v)));
        }
    }
    let started = std::time::Instant::now();
    let image: Image = c
        .put_file(
            &format!("/api/v1/images/{}?{}", enc(name), q.join("&")),
            file,
            len,
        )
        .await
        .with_context(|| format!("uploading image {name}"))?;
    eprintln!(
        "uploaded image {} ({} MiB) in {:.1} s",
        image.name,
        len >> 20,
        started.elapsed().as_secs_f64()
    );
    Ok(image)
}
