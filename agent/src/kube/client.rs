// SPDX-License-Identifier: Apache-2.0
//! The HTTPS transport to the API server: one ureq agent, the bearer token, list and watch calls.
//!
//! The agent is built once. It trusts only the certificates in the CA file (no web PKI roots),
//! treats every HTTP status as an outcome rather than an error, follows no redirects (they would
//! carry the token elsewhere) and has explicit connect, send and response timeouts; a watch gets
//! a body timeout of the server-side `timeoutSeconds` plus a margin. The token is read from its
//! file for every request, so a rotated projected token is picked up, and it lives in a
//! [`BearerToken`] that never prints. Decoding is in `watch.rs`; retry policy in `mod.rs`.

use std::fmt;
use std::fs;
use std::io::BufReader;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use ureq::http::{HeaderValue, Response};
use ureq::tls::{Certificate, PemItem, RootCerts, TlsConfig, TlsProvider};
use ureq::{Agent, Body};

use super::watch::{decode_list, pump, status_message, Status, StreamEnd};
use super::{KubeError, KubeEvent};
use crate::config::Config;
use crate::pod::PodInfo;

/// Seconds the API server keeps a watch open before it ends it cleanly.
pub const WATCH_SECONDS: u64 = 300;
/// Extra time on top of [`WATCH_SECONDS`] before the client gives up on a watch body.
const WATCH_MARGIN: Duration = Duration::from_secs(30);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
const SEND_TIMEOUT: Duration = Duration::from_secs(10);
const RESPONSE_TIMEOUT: Duration = Duration::from_secs(30);
/// A page of 500 pods is a few MiB; a minute is plenty on any working link.
const LIST_BODY_TIMEOUT: Duration = Duration::from_secs(60);
const LIST_PAGE_SIZE: &str = "500";
/// A page of 500 pods with large annotations stays well below this.
const MAX_LIST_BYTES: u64 = 64 << 20;
/// Only the `Status` message of an error body is read.
const MAX_ERROR_BYTES: u64 = 64 << 10;

/// A bearer token. Its `Debug` and `Display` print a placeholder, so it cannot leak into a log.
pub struct BearerToken(String);

impl BearerToken {
    /// Reads the token from `path`, trimming the surrounding whitespace.
    pub fn read(path: &Path) -> Result<Self, KubeError> {
        let text = fs::read_to_string(path).map_err(|source| KubeError::ReadToken {
            path: path.to_owned(),
            source,
        })?;
        let token = text.trim();
        if token.is_empty() {
            return Err(KubeError::BadToken {
                path: path.to_owned(),
            });
        }
        Ok(Self(token.to_owned()))
    }

    /// The `Authorization` header value, marked sensitive so that http and ureq never show it.
    fn header_value(&self, path: &Path) -> Result<HeaderValue, KubeError> {
        let mut value = HeaderValue::from_str(&format!("Bearer {}", self.0)).map_err(|_| {
            KubeError::BadToken {
                path: path.to_owned(),
            }
        })?;
        value.set_sensitive(true);
        Ok(value)
    }
}

impl fmt::Debug for BearerToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("BearerToken(<redacted>)")
    }
}

impl fmt::Display for BearerToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

/// The API client for the pods of one node.
pub struct KubeClient {
    agent: Agent,
    pods_url: String,
    node: String,
    field_selector: String,
    token_file: PathBuf,
}

impl fmt::Debug for KubeClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KubeClient")
            .field("pods_url", &self.pods_url)
            .field("node", &self.node)
            .field("token_file", &self.token_file)
            .finish_non_exhaustive()
    }
}

impl KubeClient {
    /// Builds the client; fails when the CA file cannot be read or holds no certificate.
    pub fn new(config: &Config) -> Result<Self, KubeError> {
        let roots = load_ca(&config.ca_file)?;
        let tls = TlsConfig::builder()
            .provider(TlsProvider::Rustls)
            .root_certs(RootCerts::Specific(Arc::new(roots)))
            .build();
        let agent: Agent = Agent::config_builder()
            .tls_config(tls)
            .https_only(true)
            .http_status_as_error(false)
            .max_redirects(0)
            .user_agent(concat!("pod-pacemaker-agent/", env!("CARGO_PKG_VERSION")))
            .accept("application/json")
            .timeout_resolve(Some(CONNECT_TIMEOUT))
            .timeout_connect(Some(CONNECT_TIMEOUT))
            .timeout_send_request(Some(SEND_TIMEOUT))
            .timeout_recv_response(Some(RESPONSE_TIMEOUT))
            .timeout_recv_body(Some(LIST_BODY_TIMEOUT))
            .build()
            .into();
        Ok(Self {
            agent,
            pods_url: format!("{}/api/v1/pods", config.api_server),
            node: config.node_name.clone(),
            field_selector: format!("spec.nodeName={}", config.node_name),
            token_file: config.token_file.clone(),
        })
    }

    /// The node whose pods this client lists.
    pub fn node(&self) -> &str {
        &self.node
    }

    /// Lists every pod of the node, following `continue` tokens, and returns them with the list's
    /// resource version.
    pub fn list(&self) -> Result<(Vec<PodInfo>, String), KubeError> {
        let auth = self.auth()?;
        let mut pods = Vec::new();
        let mut next: Option<String> = None;
        let mut restarted = false;
        loop {
            let mut request = self
                .agent
                .get(&self.pods_url)
                .query("fieldSelector", &self.field_selector)
                .query("limit", LIST_PAGE_SIZE);
            if let Some(token) = &next {
                request = request.query("continue", token);
            }
            let mut response = request
                .header("Authorization", auth.clone())
                .call()
                .map_err(|source| KubeError::Request {
                    what: "listing pods",
                    source,
                })?;
            let status = response.status().as_u16();

            // A continue token expires with its snapshot (410); start the list over once.
            if status == 410 && next.is_some() && !restarted {
                restarted = true;
                pods.clear();
                next = None;
                continue;
            }
            if status != 200 {
                return Err(http_error("listing pods", response));
            }
            let body = response
                .body_mut()
                .with_config()
                .limit(MAX_LIST_BYTES)
                .read_to_vec()
                .map_err(|source| KubeError::Request {
                    what: "reading the pod list",
                    source,
                })?;
            let page = decode_list(&body, &self.node)?;
            pods.extend(page.pods);
            match page.next {
                Some(token) => next = Some(token),
                None => return Ok((pods, page.resource_version)),
            }
        }
    }

    /// Watches the node's pods from `resource_version` until the stream ends, passing changes to
    /// `sink` and keeping `resource_version` current.
    pub fn watch(
        &self,
        resource_version: &mut String,
        sink: &mut impl FnMut(KubeEvent) -> bool,
    ) -> Result<StreamEnd, KubeError> {
        let auth = self.auth()?;
        let response = self
            .agent
            .get(&self.pods_url)
            .query("fieldSelector", &self.field_selector)
            .query("watch", "true")
            .query("allowWatchBookmarks", "true")
            .query("resourceVersion", resource_version.as_str())
            .query("timeoutSeconds", WATCH_SECONDS.to_string())
            .header("Authorization", auth)
            .config()
            .timeout_recv_body(Some(Duration::from_secs(WATCH_SECONDS) + WATCH_MARGIN))
            .build()
            .call()
            .map_err(|source| KubeError::Request {
                what: "starting the pod watch",
                source,
            })?;
        match response.status().as_u16() {
            200 => {}
            410 => return Ok(StreamEnd::Expired),
            _ => return Err(http_error("starting the pod watch", response)),
        }
        let mut reader = BufReader::with_capacity(64 << 10, response.into_body().into_reader());
        pump(&mut reader, &self.node, resource_version, sink)
    }

    /// The `Authorization` header from the token file as it is now.
    // TODO(#5): after a 401, retry at once with the token read again (the kubelet may have just
    // rotated it) instead of waiting out the backoff.
    fn auth(&self) -> Result<HeaderValue, KubeError> {
        BearerToken::read(&self.token_file)?.header_value(&self.token_file)
    }
}

/// Reads the CA bundle; every certificate in it becomes a trust root, and nothing else does.
fn load_ca(path: &Path) -> Result<Vec<Certificate<'static>>, KubeError> {
    let pem = fs::read(path).map_err(|source| KubeError::ReadCa {
        path: path.to_owned(),
        source,
    })?;
    let mut certs = Vec::new();
    for item in ureq::tls::parse_pem(&pem) {
        match item {
            Ok(PemItem::Certificate(cert)) => certs.push(cert),
            Ok(_) => {}
            Err(err) => {
                return Err(KubeError::BadCa {
                    path: path.to_owned(),
                    problem: err.to_string(),
                })
            }
        }
    }
    if certs.is_empty() {
        return Err(KubeError::BadCa {
            path: path.to_owned(),
            problem: "no certificate in the file".to_owned(),
        });
    }
    Ok(certs)
}

/// The error for a response with an unexpected status, with the `Status` message if the body has
/// one.
fn http_error(what: &'static str, mut response: Response<Body>) -> KubeError {
    let status = response.status().as_u16();
    let message = response
        .body_mut()
        .with_config()
        .limit(MAX_ERROR_BYTES)
        .read_to_vec()
        .ok()
        .and_then(|body| serde_json::from_slice::<Status>(&body).ok())
        .map(|s| status_message(&s))
        .unwrap_or_default();
    KubeError::HttpStatus {
        what,
        status,
        message,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_never_prints() {
        let token = BearerToken("s3cr3t".to_owned());
        assert!(!format!("{token:?}").contains("s3cr3t"));
        assert!(!format!("{token}").contains("s3cr3t"));
        let header = token.header_value(Path::new("/t")).expect("valid");
        assert!(header.is_sensitive());
        assert!(!format!("{header:?}").contains("s3cr3t"));
    }

    #[test]
    fn token_file_is_trimmed_and_checked() {
        let dir = std::env::temp_dir().join(format!("pp-agent-token-{}", std::process::id()));
        fs::create_dir_all(&dir).expect("temp dir");
        let path = dir.join("token");
        fs::write(&path, "abc.def\n").expect("write");
        let token = BearerToken::read(&path).expect("reads");
        assert_eq!(token.0, "abc.def");
        fs::write(&path, " \n").expect("write");
        assert!(matches!(
            BearerToken::read(&path),
            Err(KubeError::BadToken { .. })
        ));
        fs::write(&path, "a\nb").expect("write");
        let token = BearerToken::read(&path).expect("reads");
        assert!(matches!(
            token.header_value(&path),
            Err(KubeError::BadToken { .. })
        ));
        assert!(matches!(
            BearerToken::read(&dir.join("missing")),
            Err(KubeError::ReadToken { .. })
        ));
        let _ = fs::remove_dir_all(&dir);
    }

    #[test]
    fn ca_file_must_hold_a_certificate() {
        let dir = std::env::temp_dir().join(format!("pp-agent-ca-{}", std::process::id()));
        fs::create_dir_all(&dir).expect("temp dir");
        let path = dir.join("ca.crt");
        fs::write(&path, "not a pem file\n").expect("write");
        let err = load_ca(&path).expect_err("no certificate");
        assert!(err.to_string().contains("no certificate"), "{err}");
        assert!(matches!(
            load_ca(&dir.join("missing")),
            Err(KubeError::ReadCa { .. })
        ));
        let _ = fs::remove_dir_all(&dir);
    }
}
