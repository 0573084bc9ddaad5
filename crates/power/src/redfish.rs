//! Redfish BMCs over HTTPS (reqwest).

use std::fmt;

use reqwest::{Method, StatusCode};
use serde_json::{json, Value};
use tokio::sync::OnceCell;

use crate::http;
use crate::params::Params;
use crate::{PowerDriver, PowerError, PowerState};

/// GET `/redfish/v1/Systems/{id}` for `PowerState`, POST
/// `.../Actions/ComputerSystem.Reset` with `On` / `ForceOff`, basic auth.
pub struct RedfishDriver {
    base: String,
    user: String,
    password: String,
    node_id: Option<String>,
    verify_tls: bool,
    client: reqwest::Client,
    /// The System's path, resolved once from /redfish/v1/Systems if needed.
    system: OnceCell<String>,
}

impl fmt::Debug for RedfishDriver {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedfishDriver")
            .field("base", &self.base)
            .field("user", &self.user)
            .field("password", &"<redacted>")
            .field("node_id", &self.node_id)
            .field("verify_tls", &self.verify_tls)
            .finish()
    }
}

impl RedfishDriver {
    pub(crate) fn from_params(p: &Params) -> Result<Self, PowerError> {
        let address = p.required("power_address")?;
        let base = if address.starts_with("https://") || address.starts_with("http://") {
            address.trim_end_matches('/').to_owned()
        } else {
            format!("https://{}", address.trim_end_matches('/'))
        };
        if reqwest::Url::parse(&base).is_err() {
            return Err(PowerError::invalid(
                "power_address",
                "not a host[:port] or URL",
            ));
        }
        let verify_tls = p.bool("verify_tls", false);
        let target = format!("redfish {base}");
        Ok(RedfishDriver {
            client: http::client(&target, verify_tls)?,
            base,
            user: p.required("power_user")?,
            password: p.required("power_pass")?,
            node_id: p.str("node_id"),
            verify_tls,
            system: OnceCell::new(),
        })
    }

    fn target(&self) -> String {
        format!("redfish {}", self.base)
    }

    async fn request(
        &self,
        method: Method,
        path: &str,
        body: Option<Value>,
    ) -> Result<Value, PowerError> {
        let target = self.target();
        let mut req = self
            .client
            .request(method.clone(), format!("{}{path}", self.base))
            .basic_auth(&self.user, Some(&self.password))
            .header("Accept", "application/json");
        if let Some(body) = body {
            req = req.json(&body);
        }
        let what = format!("{method} {path}");
        let resp = req.send().await.map_err(|e| http::send_error(&target, e))?;
        let status = resp.status();
        if !status.is_success() {
            return Err(http::status_error(&target, &what, status));
        }
        if status == StatusCode::NO_CONTENT {
            return Ok(Value::Null);
        }
        let text = resp
            .text()
            .await
            .map_err(|e| http::send_error(&target, e))?;
        if text.trim().is_empty() {
            return Ok(Value::Null);
        }
        serde_json::from_str(&text).map_err(|e| {
            PowerError::transient(&target, format!("{what}: response is not json: {e}"))
        })
    }

    async fn system_path(&self) -> Result<&str, PowerError> {
        self.system
            .get_or_try_init(|| async {
                if let Some(id) = &self.node_id {
                    return Ok(format!("/redfish/v1/Systems/{id}"));
                }
                let systems = self
                    .request(Method::GET, "/redfish/v1/Systems", None)
                    .await?;
                systems["Members"]
                    .as_array()
                    .and_then(|m| m.first())
                    .and_then(|m| m["@odata.id"].as_str())
                    .map(|s| s.trim_end_matches('/').to_owned())
                    .ok_or_else(|| {
                        PowerError::fatal(self.target(), "no systems in /redfish/v1/Systems")
                    })
            })
            .await
            .map(String::as_str)
    }

    async fn reset(&self, reset_type: &str) -> Result<(), PowerError> {
        let system = self.system_path().await?;
        let path = format!("{system}/Actions/ComputerSystem.Reset");
        self.request(
            Method::POST,
            &path,
            Some(json!({ "ResetType": reset_type })),
        )
        .await
        .map(drop)
    }
}

#[async_trait::async_trait]
impl PowerDriver for RedfishDriver {
    fn power_type(&self) -> &'static str {
        "redfish"
    }

    async fn power_on(&self) -> Result<(), PowerError> {
        // Many BMCs answer a Reset On with an error when already on.
        if self.power_query().await? == PowerState::On {
            return Ok(());
        }
        self.reset("On").await
    }

    async fn power_off(&self) -> Result<(), PowerError> {
        if self.power_query().await? == PowerState::Off {
            return Ok(());
        }
        self.reset("ForceOff").await
    }

    async fn power_query(&self) -> Result<PowerState, PowerError> {
        let system = self.system_path().await?.to_owned();
        let body = self.request(Method::GET, &system, None).await?;
        // PoweringOn/PoweringOff are transitions; report them as unknown.
        Ok(match body["PowerState"].as_str() {
            Some("On") => PowerState::On,
            Some("Off") => PowerState::Off,
            _ => PowerState::Unknown,
        })
    }
}
