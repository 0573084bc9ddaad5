//! Where served files come from: a [`FileResolver`] the rack can replace
//! (e.g. to generate per-machine boot configs), and [`DirResolver`], which
//! serves a directory.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use async_trait::async_trait;
use tokio::io::AsyncRead;

use crate::request::RequestPath;
use crate::TftpError;

/// An open file: a sequential reader and its exact length, which `tsize`
/// announces and the transfer checks.
pub struct ResolvedFile {
    pub len: u64,
    pub reader: Box<dyn AsyncRead + Send + Unpin>,
}

impl ResolvedFile {
    /// A file held in memory (handy for generated content).
    pub fn from_bytes(bytes: Vec<u8>) -> ResolvedFile {
        ResolvedFile {
            len: bytes.len() as u64,
            reader: Box::new(std::io::Cursor::new(bytes)),
        }
    }
}

/// Maps a request path (already free of `..` and leading `/`) and the
/// client's address to a file. Errors become ERROR packets:
/// [`TftpError::NotFound`] → 1, [`TftpError::AccessViolation`] → 2.
#[async_trait]
pub trait FileResolver: Send + Sync + 'static {
    async fn open(&self, path: &RequestPath, peer: SocketAddr) -> Result<ResolvedFile, TftpError>;
}

/// Serves regular files below a directory. Symlinks are followed only while
/// they stay inside the root (the canonical path must be below the
/// canonical root); directories and other non-files are refused.
#[derive(Clone, Debug)]
pub struct DirResolver {
    root: PathBuf,
}

impl DirResolver {
    pub fn new(root: impl AsRef<Path>) -> Result<DirResolver, TftpError> {
        let root = root.as_ref();
        let root = std::fs::canonicalize(root).map_err(|source| TftpError::Io {
            path: root.display().to_string(),
            source,
        })?;
        Ok(DirResolver { root })
    }

    pub fn root(&self) -> &Path {
        &self.root
    }
}

#[async_trait]
impl FileResolver for DirResolver {
    async fn open(&self, path: &RequestPath, _peer: SocketAddr) -> Result<ResolvedFile, TftpError> {
        let shown = path.to_string();
        let joined = self.root.join(path.to_relative());
        let real = match tokio::fs::canonicalize(&joined).await {
            Ok(p) => p,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(TftpError::NotFound { path: shown })
            }
            Err(source) => {
                return Err(TftpError::Io {
                    path: shown,
                    source,
                })
            }
        };
        if !real.starts_with(&self.root) {
            return Err(TftpError::AccessViolation {
                path: shown,
                reason: "it resolves outside the root",
            });
        }
        let file = tokio::fs::File::open(&real)
            .await
            .map_err(|source| match source.kind() {
                std::io::ErrorKind::NotFound => TftpError::NotFound {
                    path: shown.clone(),
                },
                _ => TftpError::Io {
                    path: shown.clone(),
                    source,
                },
            })?;
        let meta = file.metadata().await.map_err(|source| TftpError::Io {
            path: shown.clone(),
            source,
        })?;
        if !meta.is_file() {
            return Err(TftpError::AccessViolation {
                path: shown,
                reason: "it is not a regular file",
            });
        }
        Ok(ResolvedFile {
            len: meta.len(),
            reader: Box::new(file),
        })
    }
}
