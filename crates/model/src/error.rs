use crate::lifecycle::MachineStatus;

/// Errors of the domain model. Each names the field or object at fault.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ModelError {
    /// A field's value is malformed.
    #[error("invalid {field} {value:?}: {reason}")]
    InvalidField {
        field: &'static str,
        value: String,
        reason: String,
    },
    /// An action is not allowed in the machine's current status.
    #[error("cannot {action} machine {system_id} while it is {status}; allowed: {}", allowed.join(", "))]
    IllegalTransition {
        system_id: String,
        action: String,
        status: MachineStatus,
        allowed: Vec<String>,
    },
    /// A constraint string could not be parsed.
    #[error("invalid constraint {constraint:?}: {reason}")]
    InvalidConstraint { constraint: String, reason: String },
    /// No Ready machine satisfies an allocation request.
    #[error("no ready machine matches {constraints:?}: {}", describe_miss(*ready, *not_ready, ruled_out))]
    NoMachineMatches {
        constraints: String,
        ready: usize,
        not_ready: usize,
        ruled_out: Vec<(String, usize)>,
    },
    /// A tag definition is not a valid expression.
    #[error("invalid tag definition {definition:?}: {reason}")]
    InvalidTagDefinition { definition: String, reason: String },
}

impl ModelError {
    pub(crate) fn field(
        field: &'static str,
        value: impl Into<String>,
        reason: impl Into<String>,
    ) -> Self {
        ModelError::InvalidField {
            field,
            value: value.into(),
            reason: reason.into(),
        }
    }
}

fn describe_miss(ready: usize, not_ready: usize, ruled_out: &[(String, usize)]) -> String {
    let mut s = format!("of {ready} ready machines");
    if ruled_out.is_empty() {
        s.push_str(", none was ruled out by a constraint");
    }
    for (i, (c, n)) in ruled_out.iter().enumerate() {
        s.push_str(if i == 0 { ", " } else { "; " });
        s.push_str(&format!("{c} ruled out {n}"));
    }
    if not_ready > 0 {
        s.push_str(&format!(" ({not_ready} other machines are not ready)"));
    }
    s
}
