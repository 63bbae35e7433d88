// SPDX-License-Identifier: Apache-2.0
//! The HTTPS transport to the API server: one ureq agent, the bearer token, the list and watch
//! calls. The writes (Node patches, Events) are in `writes.rs` on the same client.
//!
//! The agent is built at start, and again when the CA file changes (checked before every request,
//! like the token: the ServiceAccount CA in a projected volume changes on CA rotation, and the
//! old roots would fail every handshake forever). It trusts only the certificates of the cluster
//! CA (no web PKI roots),
//! treats every HTTP status as an outcome rather than an error, follows no redirects (they would
//! carry the token elsewhere) and has explicit timeouts on every phase: resolve and connect, send,
//! the response head, the body, each read, and the request as a whole. A list page must arrive within [`LIST_BODY_TIMEOUT`]; a watch
//! asks the server to end it after a random 5–10 minutes (`timeoutSeconds`, as client-go does, so
//! that a node's agents do not reconnect in step) and gives up on the body a margin after that.
//! A watch also has a per-read bound, the silence bound: the server sends a BOOKMARK about once a
//! minute even when nothing changes, so a stream that delivers no byte for longer is dead (a
//! half-open connection after an API server restart) and the read fails with
//! [`KubeError::WatchSilent`].
//!
//! Every request goes through [`KubeClient::send`], which adds the `Authorization` header from the
//! [`TokenSource`] and, on a 401, reads the token again and repeats the request once if the token
//! changed. Decoding is in `watch.rs`; retry policy in `mod.rs`.

use std::fmt;
use std::io::BufReader;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use log::{info, warn};
use ureq::http::{HeaderValue, Response};
use ureq::tls::{Certificate, PemItem, RootCerts, TlsConfig, TlsProvider};
use ureq::{Agent, Body};

use super::access::{
    lock, read_limited, ApiAccess, ApiConfig, Auth, FileStamp, TokenSource, MAX_CA_BYTES,
};
use super::backoff::random_between;
use super::watch::{decode_list, pump, status_message, Listed, Status, StreamEnd, WatchEvent};
use super::KubeError;
use crate::config::Config;

/// The shortest watch the client asks for; each watch asks for a random length between this and
/// twice this (client-go's reflector does the same).
const WATCH_MIN: Duration = Duration::from_secs(300);
/// Extra time on top of the requested watch length before the client gives up on a watch body.
const WATCH_MARGIN: Duration = Duration::from_secs(30);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
const SEND_TIMEOUT: Duration = Duration::from_secs(10);
/// The response head: the API server answers a list or a watch start within seconds when healthy.
const RESPONSE_TIMEOUT: Duration = Duration::from_secs(30);
/// A page of 500 pods is a few MiB; a minute is plenty on any working link.
pub(super) const LIST_BODY_TIMEOUT: Duration = Duration::from_secs(60);
/// The whole of a request that is not a watch, from resolving to the last byte of the body.
const REQUEST_TOTAL_TIMEOUT: Duration = Duration::from_secs(120);
/// Any single read of a list or write response; a stalled connection fails this long after its
/// last byte instead of at the end of the body timeout.
const READ_TIMEOUT: Duration = Duration::from_secs(30);
const LIST_PAGE_SIZE: &str = "500";
/// A page of 500 pods with large annotations stays well below this.
const MAX_LIST_BYTES: u64 = 64 << 20;
/// Only the `Status` message of an error body is read.
const MAX_ERROR_BYTES: u64 = 64 << 10;

/// The API client for the pods of one node, and for the few writes the agent makes.
pub struct KubeClient {
    /// The ureq agent for the current CA; replaced when the CA file changes.
    agent: Mutex<Agent>,
    ca: CaFile,
    pub(super) server: String,
    node: String,
    field_selector: String,
    token: TokenSource,
    watch_silence: Duration,
}

impl fmt::Debug for KubeClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KubeClient")
            .field("server", &self.server)
            .field("node", &self.node)
            .field("token", &self.token)
            .field("watch_silence", &self.watch_silence)
            .finish_non_exhaustive()
    }
}

impl KubeClient {
    /// Builds the client; fails when the kubeconfig or the CA cannot be read or holds no
    /// certificate.
    pub fn new(config: &Config) -> Result<Self, KubeError> {
        let access = ApiAccess::load(&ApiConfig::from_config(config))?;
        let agent = tls_agent(&access.ca_pem, &access.ca_origin)?;
        info!(
            "API server {} (CA from {}, token from {}, own namespace {})",
            access.server,
            access.ca_origin,
            access.token.origin(),
            access.namespace.as_deref().unwrap_or("unknown")
        );
        Ok(Self::from_parts(
            agent,
            access,
            &config.node_name,
            config.watch_silence,
        ))
    }

    fn from_parts(agent: Agent, access: ApiAccess, node: &str, watch_silence: Duration) -> Self {
        let stamp = access.ca_file.as_deref().and_then(FileStamp::of);
        Self {
            agent: Mutex::new(agent),
            ca: CaFile {
                path: access.ca_file,
                origin: access.ca_origin,
                state: Mutex::new(CaState {
                    pem: access.ca_pem,
                    stamp,
                }),
            },
            server: access.server,
            node: node.to_owned(),
            field_selector: format!("spec.nodeName={node}"),
            token: access.token,
            watch_silence,
        }
    }

    /// The ureq agent for the next request: first, if the CA file changed since it was last
    /// read and now holds another bundle that parses, a new agent trusting it.
    pub(super) fn agent(&self) -> Agent {
        if let Some(pem) = self.ca.changed() {
            match tls_agent(&pem, &self.ca.origin) {
                Ok(agent) => {
                    info!(
                        "the CA file {} changed: new connections trust the new CA",
                        self.ca.origin
                    );
                    *lock(&self.agent) = agent;
                }
                Err(err) => warn!("keeping the CA in use: {err}"),
            }
        }
        lock(&self.agent).clone()
    }

    /// The node whose pods this client lists.
    pub fn node(&self) -> &str {
        &self.node
    }

    /// The silence bound of a watch.
    pub fn watch_silence(&self) -> Duration {
        self.watch_silence
    }

    /// Lists every pod of the node, following `continue` tokens, and returns them with the list's
    /// resource version.
    pub fn list(&self) -> Result<(Vec<Listed>, String), KubeError> {
        let url = format!("{}/api/v1/pods", self.server);
        let mut pods = Vec::new();
        let mut next: Option<String> = None;
        let mut restarted = false;
        loop {
            let response = self.send("listing pods", |auth| {
                let mut request = self
                    .agent()
                    .get(&url)
                    .query("fieldSelector", &self.field_selector)
                    .query("limit", LIST_PAGE_SIZE);
                if let Some(token) = &next {
                    request = request.query("continue", token);
                }
                request.header("Authorization", auth).call()
            })?;
            let status = response.status().as_u16();

            // A continue token expires with its snapshot (410); start the list over, once.
            if status == 410 && next.is_some() && !restarted {
                info!("pod list: continue token expired, listing again from the start");
                restarted = true;
                pods.clear();
                next = None;
                continue;
            }
            if status != 200 {
                return Err(http_error("listing pods", response));
            }
            let body = response
                .into_body()
                .into_with_config()
                .limit(MAX_LIST_BYTES)
                .reader();
            let page = decode_list(BufReader::with_capacity(32 << 10, body), &self.node)?;
            if page.skipped > 0 {
                warn!(
                    "pod list: left out {} pods that do not decode or lack a uid, namespace or \
                     name",
                    page.skipped
                );
            }
            pods.extend(page.pods);
            match page.next {
                Some(token) => next = Some(token),
                None => return Ok((pods, page.resource_version)),
            }
        }
    }

    /// Watches the node's pods from `resource_version` until the stream ends, passing events to
    /// `on_event` and keeping `resource_version` current.
    pub fn watch(
        &self,
        resource_version: &mut String,
        on_event: &mut impl FnMut(WatchEvent, &str) -> bool,
    ) -> Result<StreamEnd, KubeError> {
        let url = format!("{}/api/v1/pods", self.server);
        let length = random_between(WATCH_MIN, WATCH_MIN * 2);
        let response = self.send("starting the pod watch", |auth| {
            self.agent()
                .get(&url)
                .query("fieldSelector", &self.field_selector)
                .query("watch", "true")
                .query("allowWatchBookmarks", "true")
                .query("resourceVersion", resource_version.as_str())
                .query("timeoutSeconds", length.as_secs().to_string())
                .header("Authorization", auth)
                .config()
                .timeout_global(Some(length + WATCH_MARGIN + REQUEST_TOTAL_TIMEOUT))
                .timeout_recv_body(Some(length + WATCH_MARGIN))
                .timeout_per_read(Some(self.watch_silence))
                .build()
                .call()
        })?;
        match response.status().as_u16() {
            200 => {}
            410 => return Ok(StreamEnd::Expired),
            _ => return Err(http_error("starting the pod watch", response)),
        }
        let mut reader = BufReader::with_capacity(64 << 10, response.into_body().into_reader());
        pump(&mut reader, &self.node, resource_version, on_event)
    }

    /// Sends one request built by `make` with the current token. On a 401 the token is read
    /// again and, if it changed (rotated since), the request is sent once more with the new one.
    pub(super) fn send(
        &self,
        what: &'static str,
        make: impl Fn(HeaderValue) -> Result<Response<Body>, ureq::Error>,
    ) -> Result<Response<Body>, KubeError> {
        let auth = self.token.auth()?;
        let response = self.call(what, &make, &auth)?;
        if response.status().as_u16() != 401 {
            return Ok(response);
        }
        match self.token.after_unauthorized(&auth) {
            Some(fresh) => {
                info!("{what}: 401 Unauthorized, retrying at once with the token read again");
                self.call(what, &make, &fresh)
            }
            None => Ok(response),
        }
    }

    fn call(
        &self,
        what: &'static str,
        make: &impl Fn(HeaderValue) -> Result<Response<Body>, ureq::Error>,
        auth: &Auth,
    ) -> Result<Response<Body>, KubeError> {
        make(auth.header.clone()).map_err(|source| KubeError::Request { what, source })
    }
}

/// The settings every request shares: statuses are outcomes, no redirects, explicit timeouts,
/// bodies read with a per-read bound, and no gzip (not compiled in; docs/decisions.md D7).
fn agent_config() -> ureq::config::ConfigBuilder<ureq::typestate::AgentScope> {
    Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(REQUEST_TOTAL_TIMEOUT))
        .max_redirects(0)
        .user_agent(concat!("pod-pacemaker-agent/", env!("CARGO_PKG_VERSION")))
        .accept("application/json")
        .timeout_resolve(Some(CONNECT_TIMEOUT))
        .timeout_connect(Some(CONNECT_TIMEOUT))
        .timeout_send_request(Some(SEND_TIMEOUT))
        .timeout_send_body(Some(SEND_TIMEOUT))
        .timeout_recv_response(Some(RESPONSE_TIMEOUT))
        .timeout_recv_body(Some(LIST_BODY_TIMEOUT))
        .timeout_per_read(Some(READ_TIMEOUT))
        .timeout_per_write(Some(SEND_TIMEOUT))
        // Two connections cover the watch and one request beside it; fewer idle buffers.
        .max_idle_connections(2)
        .max_idle_connections_per_host(2)
        .input_buffer_size(32 << 10)
        .output_buffer_size(16 << 10)
}

/// A ureq agent that trusts exactly the certificates of the CA bundle `pem`.
fn tls_agent(pem: &[u8], origin: &str) -> Result<Agent, KubeError> {
    let roots = parse_ca(pem, origin)?;
    let tls = TlsConfig::builder()
        .provider(TlsProvider::Rustls)
        .root_certs(RootCerts::Specific(Arc::new(roots)))
        .build();
    Ok(agent_config()
        .tls_config(tls)
        .https_only(true)
        .build()
        .into())
}

/// The CA bundle in use and the file it came from.
#[derive(Debug)]
struct CaFile {
    /// `None` for inline kubeconfig data, which never changes.
    path: Option<PathBuf>,
    origin: String,
    state: Mutex<CaState>,
}

#[derive(Debug)]
struct CaState {
    /// The bundle last read (in use, unless it did not parse).
    pem: Vec<u8>,
    stamp: Option<FileStamp>,
}

impl CaFile {
    /// `Some(bundle)` when the file changed (size, mtime, inode) since it was last read and now
    /// holds different bytes. A file that cannot be read is logged and skipped until it changes
    /// again; the agent keeps the CA it has.
    fn changed(&self) -> Option<Vec<u8>> {
        let path = self.path.as_ref()?;
        let stamp = FileStamp::of(path)?;
        let mut state = lock(&self.state);
        if state.stamp == Some(stamp) {
            return None;
        }
        state.stamp = Some(stamp);
        match read_limited(path, MAX_CA_BYTES) {
            Ok(pem) if pem != state.pem => {
                state.pem.clone_from(&pem);
                Some(pem)
            }
            Ok(_) => None,
            Err(err) => {
                warn!("reading the changed CA file {}: {err}", path.display());
                None
            }
        }
    }
}

/// Parses the CA bundle; every certificate in it becomes a trust root, and nothing else does.
fn parse_ca(pem: &[u8], origin: &str) -> Result<Vec<Certificate<'static>>, KubeError> {
    let mut certs = Vec::new();
    for item in ureq::tls::parse_pem(pem) {
        match item {
            Ok(PemItem::Certificate(cert)) => certs.push(cert),
            Ok(_) => {}
            Err(err) => {
                return Err(KubeError::BadCa {
                    origin: origin.to_owned(),
                    problem: err.to_string(),
                })
            }
        }
    }
    if certs.is_empty() {
        return Err(KubeError::BadCa {
            origin: origin.to_owned(),
            problem: "no certificate in it".to_owned(),
        });
    }
    Ok(certs)
}

/// The error for a response with an unexpected status, with the `Status` message if the body has
/// one and the `Retry-After` delay if the server gave one.
pub(super) fn http_error(what: &'static str, mut response: Response<Body>) -> KubeError {
    let status = response.status().as_u16();
    let retry_after = response
        .headers()
        .get("Retry-After")
        .and_then(|v| v.to_str().ok())
        .and_then(parse_retry_after);
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
        retry_after,
    }
}

/// `Retry-After` in delay-seconds form (RFC 9110 §10.2.3), the form the API server sends. The
/// HTTP-date form is ignored: the backoff applies then.
fn parse_retry_after(value: &str) -> Option<Duration> {
    let value = value.trim();
    if value.is_empty() || !value.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    // More than a day is not a delay anyone means; the caller caps it further.
    let seconds = value.parse::<u64>().ok()?.min(86_400);
    Some(Duration::from_secs(seconds))
}

#[cfg(test)]
pub(super) mod tests {
    use std::path::Path;

    use super::super::access::BearerToken;
    use super::super::testserver::{Reply, TestServer};
    use super::*;

    /// A client for `server` over plain HTTP (tests only), with a token file or a fixed token.
    pub fn test_client(server: &TestServer, token: TokenSource, silence: Duration) -> KubeClient {
        let agent = agent_config()
            .timeout_recv_response(Some(Duration::from_secs(5)))
            .build()
            .into();
        let access = ApiAccess {
            server: server.url(),
            ca_pem: Vec::new(),
            ca_origin: "none".to_owned(),
            ca_file: None,
            token,
            namespace: Some("pod-pacemaker".to_owned()),
        };
        KubeClient::from_parts(agent, access, "n1", silence)
    }

    pub fn fixed_token(token: &str) -> TokenSource {
        TokenSource::inline(BearerToken::new(token), Path::new("/test"))
    }

    fn pod(uid: &str, rv: &str) -> String {
        format!(
            r#"{{"metadata":{{"name":"p-{uid}","namespace":"ns","uid":"{uid}","resourceVersion":"{rv}"}},"spec":{{"nodeName":"n1"}}}}"#
        )
    }

    #[test]
    fn list_follows_continue_tokens_with_the_node_selector() {
        let server = TestServer::start(|request| {
            let body = if request.query("continue").is_none() {
                format!(
                    r#"{{"metadata":{{"resourceVersion":"9","continue":"c1"}},"items":[{}]}}"#,
                    pod("a", "5")
                )
            } else {
                format!(
                    r#"{{"metadata":{{"resourceVersion":"9"}},"items":[{}]}}"#,
                    pod("b", "6")
                )
            };
            Reply::json(200, &body)
        });
        let client = test_client(&server, fixed_token("t0"), Duration::from_secs(5));
        let (pods, version) = client.list().expect("lists");
        assert_eq!(version, "9");
        let uids: Vec<&str> = pods.iter().map(|l| l.pod.uid.as_str()).collect();
        assert_eq!(uids, ["a", "b"]);
        let requests = server.requests();
        assert_eq!(requests.len(), 2);
        for request in &requests {
            assert_eq!(request.path, "/api/v1/pods");
            assert_eq!(
                request.query("fieldSelector").as_deref(),
                Some("spec.nodeName=n1")
            );
            assert_eq!(request.query("limit").as_deref(), Some("500"));
            assert_eq!(
                request.header("authorization").as_deref(),
                Some("Bearer t0")
            );
        }
        assert_eq!(requests[1].query("continue").as_deref(), Some("c1"));
    }

    #[test]
    fn an_expired_continue_token_restarts_the_list_once() {
        let server = TestServer::start(|request| match request.query("continue").as_deref() {
            None => Reply::json(
                200,
                &format!(
                    r#"{{"metadata":{{"resourceVersion":"9","continue":"old"}},"items":[{}]}}"#,
                    pod("a", "5")
                ),
            ),
            Some(_) => Reply::json(410, r#"{"kind":"Status","code":410,"reason":"Expired"}"#),
        });
        let client = test_client(&server, fixed_token("t"), Duration::from_secs(5));
        let err = client.list().expect_err("410 twice");
        assert!(
            matches!(err, KubeError::HttpStatus { status: 410, .. }),
            "{err}"
        );
        assert_eq!(server.requests().len(), 4);
    }

    #[test]
    fn retry_after_and_status_message_are_kept() {
        let server = TestServer::start(|_| {
            Reply::json(
                429,
                r#"{"kind":"Status","code":429,"message":"too many requests, slow down"}"#,
            )
            .with_header("Retry-After", "7")
        });
        let client = test_client(&server, fixed_token("t"), Duration::from_secs(5));
        let err = client.list().expect_err("429");
        assert_eq!(err.retry_after(), Some(Duration::from_secs(7)));
        assert!(err.to_string().contains("slow down"), "{err}");
        assert_eq!(parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT"), None);
        assert_eq!(parse_retry_after(" 3 "), Some(Duration::from_secs(3)));
        assert_eq!(parse_retry_after("-1"), None);
    }

    #[test]
    fn a_401_rereads_the_token_file_and_retries_once_with_the_new_token() {
        let dir = std::env::temp_dir().join(format!("pp-agent-401-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("dir");
        let path = dir.join("token");
        std::fs::write(&path, "old").expect("write");
        let server_path = path.clone();
        // The server accepts only "new"; the test rotates the file after the client read "old",
        // the way a kubelet rotation can land between two requests.
        let server = TestServer::start(move |request| {
            if request.header("authorization").as_deref() == Some("Bearer new") {
                Reply::json(200, r#"{"metadata":{"resourceVersion":"3"},"items":[]}"#)
            } else {
                let _ = std::fs::write(&server_path, "new");
                Reply::json(
                    401,
                    r#"{"kind":"Status","code":401,"reason":"Unauthorized"}"#,
                )
            }
        });
        let client = test_client(
            &server,
            TokenSource::file(path.clone()),
            Duration::from_secs(5),
        );
        let (_, version) = client.list().expect("second try succeeds");
        assert_eq!(version, "3");
        let auths: Vec<Option<String>> = server
            .requests()
            .iter()
            .map(|r| r.header("authorization"))
            .collect();
        assert_eq!(
            auths,
            [Some("Bearer old".to_owned()), Some("Bearer new".to_owned())]
        );

        // A 401 with a token file that did not change is reported, not retried in a loop.
        let refusing = TestServer::start(|_| {
            Reply::json(
                401,
                r#"{"kind":"Status","code":401,"reason":"Unauthorized"}"#,
            )
        });
        let client = test_client(&refusing, TokenSource::file(path), Duration::from_secs(5));
        let err = client.list().expect_err("401");
        assert!(err.is_unauthorized(), "{err}");
        assert_eq!(refusing.requests().len(), 1);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn watch_asks_for_bookmarks_and_a_bounded_length_and_resumes_from_the_version() {
        let server = TestServer::start(|_| {
            Reply::stream(vec![
                format!("{{\"type\":\"ADDED\",\"object\":{}}}\n", pod("a", "11")),
                "{\"type\":\"BOOKMARK\",\"object\":{\"metadata\":{\"resourceVersion\":\"12\"}}}\n"
                    .to_owned(),
            ])
        });
        let client = test_client(&server, fixed_token("t"), Duration::from_secs(5));
        let mut version = "10".to_owned();
        let mut events = Vec::new();
        let end = client
            .watch(&mut version, &mut |e, _| {
                events.push(e);
                true
            })
            .expect("watch");
        assert_eq!(end, StreamEnd::Closed);
        assert_eq!(version, "12");
        assert_eq!(events.len(), 2);
        let request = &server.requests()[0];
        assert_eq!(request.query("watch").as_deref(), Some("true"));
        assert_eq!(
            request.query("allowWatchBookmarks").as_deref(),
            Some("true")
        );
        assert_eq!(request.query("resourceVersion").as_deref(), Some("10"));
        let seconds: u64 = request
            .query("timeoutSeconds")
            .and_then(|s| s.parse().ok())
            .expect("timeoutSeconds");
        assert!((300..600).contains(&seconds), "{seconds}");
    }

    #[test]
    fn a_watch_that_goes_silent_fails_with_watch_silent() {
        // One event, then the connection stays open and says nothing: a half-open stream.
        let server = TestServer::start(|_| {
            Reply::stream(vec![format!(
                "{{\"type\":\"ADDED\",\"object\":{}}}\n",
                pod("a", "11")
            )])
            .then_hang()
        });
        let client = test_client(&server, fixed_token("t"), Duration::from_millis(300));
        let mut version = "10".to_owned();
        let mut seen = 0;
        let err = client
            .watch(&mut version, &mut |_, _| {
                seen += 1;
                true
            })
            .expect_err("silent");
        assert!(matches!(err, KubeError::WatchSilent), "{err}");
        assert_eq!(seen, 1);
        assert_eq!(version, "11");
    }

    #[test]
    fn a_watch_answered_410_asks_for_a_relist() {
        let server = TestServer::start(|_| Reply::json(410, r#"{"code":410}"#));
        let client = test_client(&server, fixed_token("t"), Duration::from_secs(5));
        let mut version = "1".to_owned();
        let end = client.watch(&mut version, &mut |_, _| true).expect("410");
        assert_eq!(end, StreamEnd::Expired);
    }
}
