//! A small client for fleetward's operator API: what `sim-devices` needs to provision LPWAN
//! devices and to read the server's side of an attack (its events).

use serde_json::Value;
use std::time::Duration;

/// Talking to the API failed.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("the API at {base}: {source}")]
    Http { base: String, source: reqwest::Error },
    #[error("{method} {path} answered {status}: {body}")]
    Status {
        method: &'static str,
        path: String,
        status: u16,
        body: String,
    },
    #[error("server CA for the API: {0}")]
    Ca(String),
}

/// The operator API at `base` (`http://127.0.0.1:8080`), with a bearer token.
#[derive(Clone)]
pub struct Api {
    http: reqwest::Client,
    base: String,
    token: String,
}

impl std::fmt::Debug for Api {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Api").field("base", &self.base).finish_non_exhaustive()
    }
}

impl Api {
    pub fn new(base: &str, token: &str) -> Result<Self, ApiError> {
        Self::with_ca(base, token, None)
    }

    /// For an HTTPS API (`--http-tls`) whose certificate `server_ca_der` signs.
    pub fn with_ca(base: &str, token: &str, server_ca_der: Option<&[u8]>) -> Result<Self, ApiError> {
        // reqwest's TLS stack wants a process-wide crypto provider.
        let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
        let mut builder = reqwest::Client::builder().timeout(Duration::from_secs(30));
        if let Some(der) = server_ca_der {
            let ca = reqwest::Certificate::from_der(der).map_err(|e| ApiError::Ca(e.to_string()))?;
            builder = builder.add_root_certificate(ca);
        }
        let base = base.trim_end_matches('/').to_owned();
        Ok(Api {
            http: builder.build().map_err(|source| ApiError::Http {
                base: base.clone(),
                source,
            })?,
            base,
            token: token.to_owned(),
        })
    }

    async fn call(&self, method: &'static str, path: &str, body: Option<&Value>) -> Result<(u16, Value), ApiError> {
        let url = format!("{}{path}", self.base);
        let req = match method {
            "POST" => self.http.post(url),
            _ => self.http.get(url),
        }
        .bearer_auth(&self.token);
        let req = match body {
            Some(b) => req.json(b),
            None => req,
        };
        let http = |source| ApiError::Http {
            base: self.base.clone(),
            source,
        };
        let resp = req.send().await.map_err(http)?;
        let status = resp.status().as_u16();
        let text = resp.text().await.map_err(http)?;
        let value = serde_json::from_str(&text).unwrap_or(Value::String(text));
        Ok((status, value))
    }

    /// POST, expecting a 2xx answer.
    pub async fn post(&self, path: &str, body: &Value) -> Result<Value, ApiError> {
        let (status, v) = self.call("POST", path, Some(body)).await?;
        ok("POST", path, status, v)
    }

    /// GET, expecting a 2xx answer.
    pub async fn get(&self, path: &str) -> Result<Value, ApiError> {
        let (status, v) = self.call("GET", path, None).await?;
        ok("GET", path, status, v)
    }

    /// Every item of a paged list (`items`, `next_cursor`), up to `max`.
    pub async fn list(&self, path: &str, max: usize) -> Result<Vec<Value>, ApiError> {
        let mut out = Vec::new();
        let sep = if path.contains('?') { '&' } else { '?' };
        let mut cursor: Option<String> = None;
        loop {
            let page_path = match &cursor {
                Some(c) => format!("{path}{sep}limit=1000&cursor={c}"),
                None => format!("{path}{sep}limit=1000"),
            };
            let page = self.get(&page_path).await?;
            if let Some(items) = page["items"].as_array() {
                out.extend(items.iter().cloned());
            }
            match page["next_cursor"].as_str() {
                Some(c) if out.len() < max => cursor = Some(c.to_owned()),
                _ => return Ok(out),
            }
        }
    }

    /// Events of `kind` (exact, or a family ending in `.`) since `since_unix` seconds, oldest
    /// first.
    pub async fn events(&self, kind: &str, since_unix: i64) -> Result<Vec<Value>, ApiError> {
        self.list(
            &format!("/api/v1/events?kind={kind}&since={since_unix}&order=asc"),
            10_000,
        )
        .await
    }
}

fn ok(method: &'static str, path: &str, status: u16, v: Value) -> Result<Value, ApiError> {
    if (200..300).contains(&status) {
        Ok(v)
    } else {
        Err(ApiError::Status {
            method,
            path: path.to_owned(),
            status,
            body: match v {
                Value::String(s) => s,
                other => other.to_string(),
            },
        })
    }
}
