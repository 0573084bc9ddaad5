//! Shared reqwest plumbing for the Redfish and webhook drivers.

use std::time::Duration;

use reqwest::StatusCode;

use crate::PowerError;

const TIMEOUT: Duration = Duration::from_secs(20);

pub(crate) fn client(target: &str, verify_tls: bool) -> Result<reqwest::Client, PowerError> {
    reqwest::Client::builder()
        .timeout(TIMEOUT)
        .connect_timeout(Duration::from_secs(10))
        .danger_accept_invalid_certs(!verify_tls)
        .build()
        .map_err(|e| PowerError::fatal(target, format!("cannot build http client: {e}")))
}

/// Connection trouble and timeouts are transient. The URL is stripped from
/// the message: webhook URLs may carry tokens in their query.
pub(crate) fn send_error(target: &str, e: reqwest::Error) -> PowerError {
    let e = e.without_url();
    let mut reason = e.to_string();
    // reqwest's Display is terse ("error sending request"); the cause says why.
    let mut src = std::error::Error::source(&e);
    while let Some(s) = src {
        reason = format!("{reason}: {s}");
        src = s.source();
    }
    if e.is_builder() {
        PowerError::fatal(target, reason)
    } else {
        PowerError::transient(target, reason)
    }
}

/// 5xx, 408 and 429 are transient; other 4xx (401/403/404 above all) fatal.
pub(crate) fn status_error(target: &str, what: &str, status: StatusCode) -> PowerError {
    let reason = match status {
        StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN => {
            format!("{what}: authentication failed ({status})")
        }
        StatusCode::NOT_FOUND => format!("{what}: not found ({status})"),
        _ => format!("{what}: unexpected response {status}"),
    };
    if status.is_server_error()
        || status == StatusCode::REQUEST_TIMEOUT
        || status == StatusCode::TOO_MANY_REQUESTS
    {
        PowerError::transient(target, reason)
    } else {
        PowerError::fatal(target, reason)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_classes() {
        assert!(status_error("t", "get", StatusCode::SERVICE_UNAVAILABLE).is_transient());
        assert!(status_error("t", "get", StatusCode::TOO_MANY_REQUESTS).is_transient());
        for s in [
            StatusCode::UNAUTHORIZED,
            StatusCode::FORBIDDEN,
            StatusCode::NOT_FOUND,
            StatusCode::BAD_REQUEST,
        ] {
            assert!(!status_error("t", "get", s).is_transient(), "{s}");
        }
        assert_eq!(
            status_error("redfish h", "get system", StatusCode::UNAUTHORIZED).to_string(),
            "redfish h: get system: authentication failed (401 Unauthorized)"
        );
    }
}
