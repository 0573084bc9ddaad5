//! The rack's mirror of the region's OS images: machines stream their
//! image from the rack that boots them, so a rack keeps a verified copy of
//! each image under `<boot>/images/<sha256>.img.zst` and drops the ones
//! the region no longer has. Each pass starts from what is on disk, so a
//! rack restarted mid-download simply downloads again.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use kumo_client::Client;
use kumo_model::deploy::Image;
use sha2::{Digest, Sha256};
use tokio::io::AsyncWriteExt;
use tokio::sync::watch;

/// Keeps `dir` equal to the images `wanted` names, until the sender goes.
pub async fn mirror(region: Client, dir: PathBuf, mut wanted: watch::Receiver<Vec<Image>>) {
    loop {
        let images = wanted.borrow_and_update().clone();
        let mut failed = false;
        if let Err(e) = tokio::fs::create_dir_all(&dir).await {
            tracing::error!(dir = %dir.display(), error = %e, "image directory not created");
            failed = true;
        }
        for image in &images {
            let path = dir.join(file_name(image));
            if tokio::fs::try_exists(&path).await.unwrap_or(false) {
                continue;
            }
            match fetch(&region, image, &path).await {
                Ok(took) => {
                    tracing::info!(image = %image.name, bytes = image.size, seconds = took.as_secs_f64(), "image mirrored")
                }
                Err(e) => {
                    tracing::warn!(image = %image.name, error = %e, "image not mirrored; retrying");
                    failed = true;
                }
            }
        }
        remove_unwanted(&dir, &images).await;
        if failed {
            tokio::select! {
                r = wanted.changed() => if r.is_err() { return },
                () = tokio::time::sleep(Duration::from_secs(10)) => {}
            }
        } else if wanted.changed().await.is_err() {
            return;
        }
    }
}

fn file_name(image: &Image) -> String {
    kumo_model::deploy::image_file_name(&image.sha256)
}

/// Downloads one image beside its final name and renames it into place
/// only once its checksum matches: machines never see a partial file.
async fn fetch(region: &Client, image: &Image, path: &Path) -> Result<Duration, String> {
    let started = Instant::now();
    let part = path.with_extension("part");
    let url = format!("/api/v1/images/{}/file", kumo_client::enc(&image.name));
    let mut resp = region.download(&url).await.map_err(|e| e.to_string())?;
    let mut file = tokio::fs::File::create(&part)
        .await
        .map_err(|e| format!("creating {}: {e}", part.display()))?;
    let mut hasher = Sha256::new();
    let mut size = 0u64;
    let result = async {
        while let Some(chunk) = resp
            .chunk()
            .await
            .map_err(|e| format!("downloading {url}: {e}"))?
        {
            hasher.update(&chunk);
            size += chunk.len() as u64;
            file.write_all(&chunk)
                .await
                .map_err(|e| format!("writing {}: {e}", part.display()))?;
        }
        file.sync_all()
            .await
            .map_err(|e| format!("syncing {}: {e}", part.display()))?;
        let got = hex(&hasher.finalize());
        if got != image.sha256 {
            return Err(format!(
                "image {} arrived with sha256 {got} ({size} bytes), expected {}",
                image.name, image.sha256
            ));
        }
        tokio::fs::rename(&part, path)
            .await
            .map_err(|e| format!("renaming {}: {e}", part.display()))
    }
    .await;
    if result.is_err() {
        let _ = tokio::fs::remove_file(&part).await;
    }
    result.map(|()| started.elapsed())
}

async fn remove_unwanted(dir: &Path, images: &[Image]) {
    let keep: HashSet<String> = images.iter().map(file_name).collect();
    let Ok(mut entries) = tokio::fs::read_dir(dir).await else {
        return;
    };
    while let Ok(Some(e)) = entries.next_entry().await {
        let name = e.file_name().to_string_lossy().into_owned();
        if !keep.contains(&name) {
            tracing::info!(file = %name, "removing an image the region no longer has");
            let _ = tokio::fs::remove_file(e.path()).await;
        }
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
