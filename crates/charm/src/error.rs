//! The crate's one error type.

use std::fmt;
use std::path::PathBuf;

/// Where in which file something was found (line and column count from 1).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Location {
    pub file: String,
    pub line: usize,
    pub column: usize,
}

impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}:{}", self.file, self.line, self.column)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The file is not YAML.
    #[error("{at}: {message}")]
    Syntax { at: Location, message: String },
    /// A value in a file is wrong; `path` is its key path (`applications.mysql.num_units`).
    #[error("{at}: {path}: {message}")]
    Invalid {
        at: Location,
        path: String,
        message: String,
    },
    /// A config value given outside a file (`kumo config app key=value`).
    #[error("config option {key}: {message}")]
    Config { key: String, message: String },
    /// A charm directory is not a charm.
    #[error("charm {}: {message}", .dir.display())]
    Charm { dir: PathBuf, message: String },
    #[error("reading {}", .path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// A bundle cannot be planned against the model as it is.
    #[error("{0}")]
    Conflict(String),
    /// Every problem found, so one run shows them all.
    #[error("{}", join(.0))]
    Many(Vec<Error>),
}

fn join(errors: &[Error]) -> String {
    errors
        .iter()
        .map(|e| e.to_string())
        .collect::<Vec<_>>()
        .join("\n")
}

impl Error {
    /// One error as itself, several as `Many`, none as `Ok`.
    pub(crate) fn collect(mut errors: Vec<Error>) -> Result<(), Error> {
        match errors.len() {
            0 => Ok(()),
            1 => Err(errors.remove(0)),
            _ => Err(Error::Many(errors)),
        }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
