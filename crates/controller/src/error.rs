use std::path::PathBuf;

use kumo_store::StoreError;

#[derive(Debug, thiserror::Error)]
pub enum ControllerError {
    #[error("{what} {name} not found")]
    NotFound { what: &'static str, name: String },
    #[error("{what} {name} already exists")]
    AlreadyExists { what: &'static str, name: String },
    /// A request field is wrong; `field` names it.
    #[error("{field}: {message}")]
    Invalid { field: String, message: String },
    /// Config does not fit the charm's schema.
    #[error("{0}")]
    Config(kumo_charm::Error),
    /// A charm archive or directory is not a charm.
    #[error("{0}")]
    Charm(kumo_charm::Error),
    /// A bundle does not parse, validate or fit the model.
    #[error("{0}")]
    Bundle(kumo_charm::Error),
    #[error("{0}")]
    Relation(String),
    /// The request does not fit the model as it is now.
    #[error("{0}")]
    Conflict(String),
    #[error("agent token not valid for machine {0}")]
    Unauthorized(String),
    #[error("provider: {0}")]
    Provider(String),
    #[error("controller is not bootstrapped: run kumo bootstrap")]
    NotBootstrapped,
    #[error("{}", .path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl ControllerError {
    /// The stable code API clients branch on.
    pub fn code(&self) -> &'static str {
        match self {
            ControllerError::NotFound { .. } => "not_found",
            ControllerError::AlreadyExists { .. } => "already_exists",
            ControllerError::Invalid { .. } => "invalid_field",
            ControllerError::Config(_) => "invalid_config",
            ControllerError::Charm(_) => "invalid_charm",
            ControllerError::Bundle(_) => "invalid_bundle",
            ControllerError::Relation(_) => "invalid_relation",
            ControllerError::Conflict(_) => "conflict",
            ControllerError::Unauthorized(_) => "unauthorized",
            ControllerError::Provider(_) => "provider_failed",
            ControllerError::NotBootstrapped => "not_bootstrapped",
            ControllerError::Io { .. } | ControllerError::Store(_) => "internal",
        }
    }

    pub fn field(&self) -> Option<&str> {
        match self {
            ControllerError::Invalid { field, .. } => Some(field),
            _ => None,
        }
    }
}

pub(crate) fn invalid(field: &str, message: impl Into<String>) -> ControllerError {
    ControllerError::Invalid {
        field: field.to_string(),
        message: message.into(),
    }
}

pub(crate) fn not_found(what: &'static str, name: &str) -> ControllerError {
    ControllerError::NotFound {
        what,
        name: name.to_string(),
    }
}

pub type Result<T, E = ControllerError> = std::result::Result<T, E>;
