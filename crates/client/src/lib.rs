//! A small typed client for the region API. Errors keep the server's
//! stable code, message, field and allowed actions, so the CLI can show
//! them as they are.

use kumo_model::api::ErrorBody;
use reqwest::{Method, StatusCode};
use serde::de::DeserializeOwned;
use serde::Serialize;

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("{message}")]
    Api {
        status: u16,
        code: String,
        message: String,
        field: Option<String>,
        allowed_actions: Vec<String>,
    },
    #[error("cannot reach the region at {url}")]
    Transport {
        url: String,
        #[source]
        source: reqwest::Error,
    },
    #[error("unexpected answer from {url} ({status})")]
    Decode {
        url: String,
        status: u16,
        body: String,
    },
}

#[derive(Clone)]
pub struct Client {
    http: reqwest::Client,
    /// For image transfers, which may take longer than any fixed limit:
    /// it gives up only when the peer stops sending.
    bulk: reqwest::Client,
    base: String,
    key: Option<String>,
}

impl Client {
    pub fn new(base: &str, key: Option<String>) -> Self {
        Client {
            http: reqwest::Client::builder()
                .timeout(std::time::Duration::from_secs(120))
                .build()
                .expect("http client"),
            bulk: reqwest::Client::builder()
                .connect_timeout(std::time::Duration::from_secs(10))
                .read_timeout(std::time::Duration::from_secs(60))
                .build()
                .expect("http client"),
            base: base.trim_end_matches('/').to_owned(),
            key,
        }
    }

    pub fn base(&self) -> &str {
        &self.base
    }

    /// Sends a request to `path` (below the base URL) and decodes the answer.
    pub async fn request<B: Serialize + ?Sized, T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        body: Option<&B>,
    ) -> Result<T, ClientError> {
        let (url, resp) = self
            .send(method, path, |req| match body {
                Some(b) => req.json(b),
                None => req,
            })
            .await?;
        decode(url, resp).await
    }

    /// One authenticated request to `path`, shaped by `build`.
    async fn send(
        &self,
        method: Method,
        path: &str,
        build: impl FnOnce(reqwest::RequestBuilder) -> reqwest::RequestBuilder,
    ) -> Result<(String, reqwest::Response), ClientError> {
        let url = format!("{}{}", self.base, path);
        let mut req = self.http.request(method, &url);
        if let Some(k) = &self.key {
            req = req.bearer_auth(k);
        }
        let resp = build(req)
            .send()
            .await
            .map_err(|source| ClientError::Transport {
                url: url.clone(),
                source,
            })?;
        Ok((url, resp))
    }

    pub async fn get<T: DeserializeOwned>(&self, path: &str) -> Result<T, ClientError> {
        self.request::<(), T>(Method::GET, path, None).await
    }

    pub async fn post<B: Serialize + ?Sized, T: DeserializeOwned>(
        &self,
        path: &str,
        body: &B,
    ) -> Result<T, ClientError> {
        self.request(Method::POST, path, Some(body)).await
    }

    pub async fn patch<B: Serialize + ?Sized, T: DeserializeOwned>(
        &self,
        path: &str,
        body: &B,
    ) -> Result<T, ClientError> {
        self.request(Method::PATCH, path, Some(body)).await
    }

    pub async fn put<B: Serialize + ?Sized, T: DeserializeOwned>(
        &self,
        path: &str,
        body: &B,
    ) -> Result<T, ClientError> {
        self.request(Method::PUT, path, Some(body)).await
    }

    /// Posts raw bytes (a charm archive) and decodes the JSON answer.
    pub async fn post_bytes<T: DeserializeOwned>(
        &self,
        path: &str,
        bytes: Vec<u8>,
    ) -> Result<T, ClientError> {
        let (url, resp) = self
            .send(Method::POST, path, |req| {
                req.header(reqwest::header::CONTENT_TYPE, "application/x-tar")
                    .body(bytes)
            })
            .await?;
        decode(url, resp).await
    }

    /// A text answer (an exported bundle).
    pub async fn get_text(&self, path: &str) -> Result<String, ClientError> {
        let (url, resp) = self.send(Method::GET, path, |req| req).await?;
        let status = resp.status();
        let text = resp.text().await.map_err(|source| ClientError::Transport {
            url: url.clone(),
            source,
        })?;
        if status.is_success() {
            return Ok(text);
        }
        Err(api_error(url, status, text))
    }

    /// The rack configuration, long-polled: with `known` (the tag held
    /// now), waits up to `wait_secs` for it to change and returns `None` if
    /// it did not. Returns the new tag with the configuration.
    pub async fn rack_config(
        &self,
        known: Option<&str>,
        wait_secs: u64,
    ) -> Result<Option<(String, kumo_model::network::RackConfig)>, ClientError> {
        let url = format!("{}/api/v1/rack/config?wait={wait_secs}", self.base);
        let mut req = self
            .http
            .get(&url)
            .timeout(std::time::Duration::from_secs(wait_secs + 30));
        if let Some(k) = &self.key {
            req = req.bearer_auth(k);
        }
        if let Some(tag) = known {
            req = req.header(reqwest::header::IF_NONE_MATCH, format!("\"{tag}\""));
        }
        let resp = req.send().await.map_err(|source| ClientError::Transport {
            url: url.clone(),
            source,
        })?;
        if resp.status() == StatusCode::NOT_MODIFIED {
            return Ok(None);
        }
        let tag = resp
            .headers()
            .get(reqwest::header::ETAG)
            .and_then(|v| v.to_str().ok())
            .map(|v| v.trim_matches('"').to_owned());
        let status = resp.status();
        let text = resp.text().await.map_err(|source| ClientError::Transport {
            url: url.clone(),
            source,
        })?;
        if !status.is_success() {
            return Err(api_error(url, status, text));
        }
        match (tag, serde_json::from_str(&text)) {
            (Some(tag), Ok(cfg)) => Ok(Some((tag, cfg))),
            _ => Err(ClientError::Decode {
                url,
                status: status.as_u16(),
                body: text,
            }),
        }
    }

    /// Sends a request on someone else's behalf (the rack forwarding a
    /// machine's `/metadata/v1` call): with the caller's Authorization, never
    /// this client's key, and the answer returned whatever its status.
    pub async fn forward(
        &self,
        method: &str,
        path_and_query: &str,
        authorization: Option<&str>,
        content_type: Option<&str>,
        body: Vec<u8>,
    ) -> Result<Forwarded, ClientError> {
        let url = format!("{}{}", self.base, path_and_query);
        let method = Method::from_bytes(method.as_bytes()).map_err(|_| ClientError::Decode {
            url: url.clone(),
            status: 0,
            body: format!("not an HTTP method: {method:?}"),
        })?;
        let mut req = self.http.request(method, &url).body(body);
        if let Some(a) = authorization {
            req = req.header(reqwest::header::AUTHORIZATION, a);
        }
        if let Some(c) = content_type {
            req = req.header(reqwest::header::CONTENT_TYPE, c);
        }
        let transport = |source| ClientError::Transport {
            url: url.clone(),
            source,
        };
        let resp = req.send().await.map_err(transport)?;
        let status = resp.status().as_u16();
        let content_type = resp
            .headers()
            .get(reqwest::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let body = resp.bytes().await.map_err(transport)?.to_vec();
        Ok(Forwarded {
            status,
            content_type,
            body,
        })
    }

    /// Streams `file` as the body of `PUT path` and decodes the answer.
    pub async fn put_file<T: DeserializeOwned>(
        &self,
        path: &str,
        file: tokio::fs::File,
        len: u64,
    ) -> Result<T, ClientError> {
        let url = format!("{}{}", self.base, path);
        let body =
            reqwest::Body::wrap_stream(tokio_util::io::ReaderStream::with_capacity(file, 1 << 20));
        let mut req = self
            .bulk
            .put(&url)
            .header(reqwest::header::CONTENT_LENGTH, len)
            .header(reqwest::header::CONTENT_TYPE, "application/octet-stream")
            .body(body);
        if let Some(k) = &self.key {
            req = req.bearer_auth(k);
        }
        let resp = req.send().await.map_err(|source| ClientError::Transport {
            url: url.clone(),
            source,
        })?;
        decode(url, resp).await
    }

    /// Starts a download of `url_or_path` (a path is below the base URL,
    /// and carries this client's key); the caller reads the body with
    /// [`reqwest::Response::chunk`]. Unsuccessful answers are errors.
    pub async fn download(&self, url_or_path: &str) -> Result<reqwest::Response, ClientError> {
        let absolute = url_or_path.starts_with("http://") || url_or_path.starts_with("https://");
        let url = if absolute {
            url_or_path.to_owned()
        } else {
            format!("{}{}", self.base, url_or_path)
        };
        let mut req = self.bulk.get(&url);
        if let (false, Some(k)) = (absolute, &self.key) {
            req = req.bearer_auth(k);
        }
        let resp = req.send().await.map_err(|source| ClientError::Transport {
            url: url.clone(),
            source,
        })?;
        let status = resp.status();
        if !status.is_success() {
            let text = resp.text().await.unwrap_or_default();
            return Err(api_error(url, status, text));
        }
        Ok(resp)
    }

    pub async fn delete(&self, path: &str) -> Result<(), ClientError> {
        self.request::<(), serde_json::Value>(Method::DELETE, path, None)
            .await
            .map(|_| ())
    }
}

/// Decodes a JSON answer, or the error it carries.
async fn decode<T: DeserializeOwned>(
    url: String,
    resp: reqwest::Response,
) -> Result<T, ClientError> {
    let status = resp.status();
    let text = resp.text().await.map_err(|source| ClientError::Transport {
        url: url.clone(),
        source,
    })?;
    if status.is_success() {
        let text = if status == StatusCode::NO_CONTENT || text.is_empty() {
            "null"
        } else {
            &text
        };
        return serde_json::from_str(text).map_err(|_| ClientError::Decode {
            url,
            status: status.as_u16(),
            body: text.to_owned(),
        });
    }
    Err(api_error(url, status, text))
}

/// The answer to [`Client::forward`], as the region gave it.
#[derive(Clone, Debug)]
pub struct Forwarded {
    pub status: u16,
    pub content_type: Option<String>,
    pub body: Vec<u8>,
}

/// The error an unsuccessful answer carries, or a decode error if its body
/// is not kumo's error JSON.
fn api_error(url: String, status: StatusCode, text: String) -> ClientError {
    match serde_json::from_str::<ErrorBody>(&text) {
        Ok(e) => ClientError::Api {
            status: status.as_u16(),
            code: e.error.code,
            message: e.error.message,
            field: e.error.field,
            allowed_actions: e.error.allowed_actions,
        },
        Err(_) => ClientError::Decode {
            url,
            status: status.as_u16(),
            body: text,
        },
    }
}

/// Percent-encodes a path segment or query value.
pub fn enc(s: &str) -> String {
    let mut out = String::new();
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}
