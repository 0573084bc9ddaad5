use thiserror::Error;

/// The one error type of the crate.
///
/// `target` names the object acted on (e.g. `ipmi 10.0.0.5:623`); it never
/// holds a secret, and neither does `reason`.
#[derive(Debug, Error)]
pub enum PowerError {
    /// Worth retrying: the peer did not answer, timed out or failed on its side.
    #[error("{target}: {reason}")]
    Transient { target: String, reason: String },
    /// Retrying will not help: bad credentials, unknown machine, refused request.
    #[error("{target}: {reason}")]
    Fatal { target: String, reason: String },
    /// A power parameter is missing, unknown or of the wrong type.
    #[error("invalid power parameter {field}: {reason}")]
    InvalidParameters { field: String, reason: String },
    /// The power type cannot perform this action at all (e.g. wol power off).
    #[error("{power_type}: {action} is not supported")]
    Unsupported {
        power_type: &'static str,
        action: &'static str,
    },
}

impl PowerError {
    pub fn is_transient(&self) -> bool {
        matches!(self, PowerError::Transient { .. })
    }

    pub(crate) fn transient(target: impl Into<String>, reason: impl Into<String>) -> Self {
        PowerError::Transient {
            target: target.into(),
            reason: reason.into(),
        }
    }

    pub(crate) fn fatal(target: impl Into<String>, reason: impl Into<String>) -> Self {
        PowerError::Fatal {
            target: target.into(),
            reason: reason.into(),
        }
    }

    pub(crate) fn invalid(field: impl Into<String>, reason: impl Into<String>) -> Self {
        PowerError::InvalidParameters {
            field: field.into(),
            reason: reason.into(),
        }
    }
}
