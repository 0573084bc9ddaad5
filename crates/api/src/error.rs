use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use kumo_model::api::{ApiErrorDetail, ErrorBody};
use kumo_region::RegionError;

/// An API failure: an HTTP status and the JSON error body.
#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub body: ApiErrorDetail,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &str, message: String) -> Self {
        ApiError {
            status,
            body: ApiErrorDetail {
                code: code.into(),
                message,
                field: None,
                allowed_actions: Vec::new(),
            },
        }
    }
}

impl From<RegionError> for ApiError {
    fn from(e: RegionError) -> Self {
        let code = e.code();
        let status = match code {
            "invalid_field"
            | "invalid_power_parameters"
            | "invalid_constraint"
            | "invalid_tag_definition" => StatusCode::BAD_REQUEST,
            "not_found" => StatusCode::NOT_FOUND,
            "already_exists" | "already_enlisted" | "illegal_transition" | "no_machine_matches"
            | "in_use" | "busy" => StatusCode::CONFLICT,
            "unauthorized" => StatusCode::UNAUTHORIZED,
            "forbidden" => StatusCode::FORBIDDEN,
            "power_failed" => StatusCode::BAD_GATEWAY,
            _ => StatusCode::INTERNAL_SERVER_ERROR,
        };
        let mut message = e.to_string();
        if status == StatusCode::INTERNAL_SERVER_ERROR {
            // The cause chain goes to the log, not to the client.
            let mut src = std::error::Error::source(&e);
            let mut chain = message.clone();
            while let Some(s) = src {
                chain.push_str(&format!(": {s}"));
                src = s.source();
            }
            tracing::error!("{chain}");
            message = "internal error; see the region log".into();
        }
        ApiError {
            status,
            body: ApiErrorDetail {
                code: code.into(),
                message,
                field: e.field(),
                allowed_actions: e.allowed_actions(),
            },
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.status, Json(ErrorBody { error: self.body })).into_response()
    }
}
