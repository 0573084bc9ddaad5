//! Generic HTTP webhooks: POST to power on/off, GET and regex-match to query.

use std::fmt;

use regex::Regex;
use reqwest::Method;

use crate::http;
use crate::params::Params;
use crate::{PowerDriver, PowerError, PowerState};

const DEFAULT_ON_REGEX: &str = r"(?i)status.*:.*running";
const DEFAULT_OFF_REGEX: &str = r"(?i)status.*:.*stopped";

enum Auth {
    None,
    Basic { user: String, password: String },
    Bearer(String),
}

pub struct WebhookDriver {
    on_uri: String,
    off_uri: String,
    query_uri: String,
    on_regex: Regex,
    off_regex: Regex,
    auth: Auth,
    client: reqwest::Client,
}

impl fmt::Debug for WebhookDriver {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let auth = match &self.auth {
            Auth::None => "none".to_owned(),
            Auth::Basic { user, .. } => format!("basic {user}:<redacted>"),
            Auth::Bearer(_) => "bearer <redacted>".to_owned(),
        };
        // The URIs are left out: they may embed tokens.
        f.debug_struct("WebhookDriver")
            .field("target", &self.target())
            .field("on_regex", &self.on_regex.as_str())
            .field("off_regex", &self.off_regex.as_str())
            .field("auth", &auth)
            .finish()
    }
}

/// scheme://host[:port] of a URL: names the peer without leaking path tokens.
fn origin(uri: &str) -> String {
    reqwest::Url::parse(uri)
        .map(|u| u.origin().ascii_serialization())
        .unwrap_or_else(|_| "<invalid url>".to_owned())
}

impl WebhookDriver {
    pub(crate) fn from_params(p: &Params) -> Result<Self, PowerError> {
        let regex = |name: &str, default: &str| {
            let s = p.str(name).unwrap_or_else(|| default.to_owned());
            Regex::new(&s).map_err(|_| PowerError::invalid(name, "not a valid regular expression"))
        };
        let auth = match (p.str("power_token"), p.str("power_user")) {
            (Some(token), _) => Auth::Bearer(token),
            (None, Some(user)) => Auth::Basic {
                user,
                password: p.str("power_pass").unwrap_or_default(),
            },
            (None, None) => Auth::None,
        };
        let on_uri = p.required("power_on_uri")?;
        Ok(WebhookDriver {
            client: http::client(
                &format!("webhook {}", origin(&on_uri)),
                p.bool("verify_tls", true),
            )?,
            on_uri,
            off_uri: p.required("power_off_uri")?,
            query_uri: p.required("power_query_uri")?,
            on_regex: regex("power_on_regex", DEFAULT_ON_REGEX)?,
            off_regex: regex("power_off_regex", DEFAULT_OFF_REGEX)?,
            auth,
        })
    }

    fn target(&self) -> String {
        format!("webhook {}", origin(&self.query_uri))
    }

    async fn call(&self, method: Method, uri: &str, what: &str) -> Result<String, PowerError> {
        let target = format!("webhook {}", origin(uri));
        let mut req = self.client.request(method, uri);
        req = match &self.auth {
            Auth::None => req,
            Auth::Basic { user, password } => req.basic_auth(user, Some(password)),
            Auth::Bearer(token) => req.bearer_auth(token),
        };
        let resp = req.send().await.map_err(|e| http::send_error(&target, e))?;
        let status = resp.status();
        if !status.is_success() {
            return Err(http::status_error(&target, what, status));
        }
        resp.text().await.map_err(|e| http::send_error(&target, e))
    }

    fn parse_state(&self, body: &str) -> PowerState {
        if self.on_regex.is_match(body) {
            PowerState::On
        } else if self.off_regex.is_match(body) {
            PowerState::Off
        } else {
            PowerState::Unknown
        }
    }
}

#[async_trait::async_trait]
impl PowerDriver for WebhookDriver {
    fn power_type(&self) -> &'static str {
        "webhook"
    }

    async fn power_on(&self) -> Result<(), PowerError> {
        self.call(Method::POST, &self.on_uri, "power on")
            .await
            .map(drop)
    }

    async fn power_off(&self) -> Result<(), PowerError> {
        self.call(Method::POST, &self.off_uri, "power off")
            .await
            .map(drop)
    }

    async fn power_query(&self) -> Result<PowerState, PowerError> {
        let body = self
            .call(Method::GET, &self.query_uri, "power query")
            .await?;
        Ok(self.parse_state(&body))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_regexes() {
        let m = serde_json::json!({"power_on_uri": "http://h/on?token=abc", "power_off_uri": "http://h/off",
            "power_query_uri": "http://h:8080/q?token=abc"});
        let d = WebhookDriver::from_params(&Params(m.as_object().unwrap())).unwrap();
        assert_eq!(d.parse_state(r#"{"Status": "Running"}"#), PowerState::On);
        assert_eq!(d.parse_state(r#"{"status":"stopped"}"#), PowerState::Off);
        assert_eq!(d.parse_state("status: rebooting"), PowerState::Unknown);
        assert_eq!(d.target(), "webhook http://h:8080");
        assert!(!format!("{d:?}").contains("abc"));
    }
}
