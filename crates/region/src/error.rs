use kumo_model::ModelError;
use kumo_power::PowerError;
use kumo_store::StoreError;

/// Everything a region operation can fail with. [`RegionError::code`] gives
/// the stable code API clients branch on.
#[derive(Debug, thiserror::Error)]
pub enum RegionError {
    #[error(transparent)]
    Model(#[from] ModelError),
    #[error("invalid {field}: {reason}")]
    Invalid { field: String, reason: String },
    #[error(transparent)]
    Power(#[from] PowerError),
    #[error("{what} {id:?} not found")]
    NotFound { what: &'static str, id: String },
    #[error("{what} {value:?} already exists")]
    AlreadyExists { what: &'static str, value: String },
    #[error("machine {hostname} ({system_id}) already has MAC {mac}; not enlisted again")]
    AlreadyEnlisted {
        system_id: String,
        hostname: String,
        mac: String,
    },
    #[error("{what} {id:?} is in use by {count} machines")]
    InUse {
        what: &'static str,
        id: String,
        count: i64,
    },
    #[error("machine {0} kept changing under concurrent writers; try again")]
    Busy(String),
    #[error("authentication required")]
    Unauthorized,
    #[error("{0}")]
    Forbidden(String),
    #[error("secrets: {0}")]
    Secrets(String),
    #[error("store")]
    Store(#[source] StoreError),
    #[error("internal error: {0}")]
    Internal(String),
}

impl From<StoreError> for RegionError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::NotFound { what, id } => RegionError::NotFound { what, id },
            StoreError::Duplicate { what, value } => RegionError::AlreadyExists { what, value },
            StoreError::InUse { what, id, count } => RegionError::InUse { what, id, count },
            StoreError::Conflict(id) => RegionError::Busy(id),
            other => RegionError::Store(other),
        }
    }
}

impl RegionError {
    pub fn invalid(field: impl Into<String>, reason: impl Into<String>) -> Self {
        RegionError::Invalid {
            field: field.into(),
            reason: reason.into(),
        }
    }

    /// The stable error code for API clients.
    pub fn code(&self) -> &'static str {
        match self {
            RegionError::Model(ModelError::InvalidField { .. }) | RegionError::Invalid { .. } => {
                "invalid_field"
            }
            RegionError::Model(ModelError::IllegalTransition { .. }) => "illegal_transition",
            RegionError::Model(ModelError::InvalidConstraint { .. }) => "invalid_constraint",
            RegionError::Model(ModelError::NoMachineMatches { .. }) => "no_machine_matches",
            RegionError::Model(ModelError::InvalidTagDefinition { .. }) => "invalid_tag_definition",
            RegionError::Power(PowerError::InvalidParameters { .. }) => "invalid_power_parameters",
            RegionError::Power(_) => "power_failed",
            RegionError::NotFound { .. } => "not_found",
            RegionError::AlreadyExists { .. } => "already_exists",
            RegionError::AlreadyEnlisted { .. } => "already_enlisted",
            RegionError::InUse { .. } => "in_use",
            RegionError::Busy(_) => "busy",
            RegionError::Unauthorized => "unauthorized",
            RegionError::Forbidden(_) => "forbidden",
            RegionError::Secrets(_) | RegionError::Store(_) | RegionError::Internal(_) => {
                "internal"
            }
        }
    }

    /// The field at fault, when one is.
    pub fn field(&self) -> Option<String> {
        match self {
            RegionError::Model(ModelError::InvalidField { field, .. }) => Some((*field).to_owned()),
            RegionError::Invalid { field, .. } => Some(field.clone()),
            RegionError::Power(PowerError::InvalidParameters { field, .. }) => {
                Some(format!("power_parameters.{field}"))
            }
            _ => None,
        }
    }

    pub fn allowed_actions(&self) -> Vec<String> {
        match self {
            RegionError::Model(ModelError::IllegalTransition { allowed, .. }) => allowed.clone(),
            _ => Vec::new(),
        }
    }
}
