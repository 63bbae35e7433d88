// SPDX-License-Identifier: Apache-2.0
//! How the agent reaches the API server: the server URL, the one CA it trusts, and the bearer
//! token, from the in-cluster service-account files or from a kubeconfig.
//!
//! [`ApiAccess::load`] runs once at start and reads everything except the token, which
//! [`TokenSource`] reads lazily: a file-backed token is checked for a change (size, mtime, inode:
//! the kubelet replaces projected tokens by swapping a symlink) before every request and read
//! again when it changed or when the server answered 401, so a rotated bound token is picked up
//! without a restart (docs/prior-art.md F18). The token lives in a [`BearerToken`] whose `Debug`
//! and `Display` print a placeholder, and the header built from it is marked sensitive, so it
//! never reaches a log line (STYLE.md habit 8).

use std::fmt;
use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::SystemTime;

use ureq::http::HeaderValue;

use super::kubeconfig::{CaSource, Kubeconfig, TokenSpec};
use super::KubeError;
use crate::config::Config;

/// Where the access settings come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ApiConfig {
    /// The service-account mount and `KUBERNETES_SERVICE_HOST`/`_PORT`, or the flags that
    /// override them.
    InCluster {
        api_server: String,
        token_file: PathBuf,
        ca_file: PathBuf,
    },
    /// `--kubeconfig`.
    Kubeconfig(PathBuf),
}

impl ApiConfig {
    pub fn from_config(config: &Config) -> Self {
        match &config.kubeconfig {
            Some(path) => ApiConfig::Kubeconfig(path.clone()),
            None => ApiConfig::InCluster {
                api_server: config.api_server.clone(),
                token_file: config.token_file.clone(),
                ca_file: config.ca_file.clone(),
            },
        }
    }
}

/// The namespace file of the in-cluster service-account mount, next to the token and CA.
const NAMESPACE_FILE: &str = "namespace";
/// A token or kubeconfig larger than this is not one.
const MAX_TOKEN_BYTES: u64 = 64 << 10;
const MAX_KUBECONFIG_BYTES: u64 = 1 << 20;
pub(super) const MAX_CA_BYTES: u64 = 1 << 20;

/// Everything needed to talk to the API server, loaded at start.
#[derive(Debug)]
pub struct ApiAccess {
    /// `https://host:port`, without a trailing `/`.
    pub server: String,
    /// The CA bundle in PEM; its certificates are the only trust roots.
    pub ca_pem: Vec<u8>,
    /// Where the CA came from, for error messages.
    pub ca_origin: String,
    /// The file the CA was read from, to read it again when it changes (`None`: inline data in
    /// a kubeconfig, which cannot change under the agent).
    pub ca_file: Option<PathBuf>,
    pub token: TokenSource,
    /// The agent's own namespace (in-cluster `namespace` file, or the kubeconfig context's).
    pub namespace: Option<String>,
}

impl ApiAccess {
    /// Reads the CA (and the kubeconfig, if one is configured). The token is read on first use.
    pub fn load(config: &ApiConfig) -> Result<Self, KubeError> {
        match config {
            ApiConfig::InCluster {
                api_server,
                token_file,
                ca_file,
            } => {
                // The namespace file sits beside the token in the service-account mount; outside a
                // pod (flags pointing elsewhere) it is usually absent, which is fine.
                let namespace = token_file
                    .parent()
                    .map(|dir| dir.join(NAMESPACE_FILE))
                    .and_then(|path| fs::read_to_string(path).ok())
                    .map(|ns| ns.trim().to_owned())
                    .filter(|ns| !ns.is_empty());
                Ok(Self {
                    server: api_server.clone(),
                    ca_pem: read_limited(ca_file, MAX_CA_BYTES).map_err(|source| {
                        KubeError::ReadCa {
                            path: ca_file.clone(),
                            source,
                        }
                    })?,
                    ca_origin: ca_file.display().to_string(),
                    ca_file: Some(ca_file.clone()),
                    token: TokenSource::file(token_file.clone()),
                    namespace,
                })
            }
            ApiConfig::Kubeconfig(path) => Self::from_kubeconfig(path),
        }
    }

    fn from_kubeconfig(path: &Path) -> Result<Self, KubeError> {
        let bad = |problem: String| KubeError::Kubeconfig {
            path: path.to_owned(),
            problem,
        };
        let bytes = read_limited(path, MAX_KUBECONFIG_BYTES)
            .map_err(|err| bad(format!("reading it: {err}")))?;
        let text = String::from_utf8(bytes).map_err(|_| bad("not UTF-8".to_owned()))?;
        let dir = path.parent().unwrap_or_else(|| Path::new("/"));
        let resolved = Kubeconfig::parse(&text)
            .and_then(|k| k.resolve(dir))
            .map_err(bad)?;
        let (ca_pem, ca_origin, ca_file) = match resolved.ca {
            CaSource::Pem(pem) => (
                pem,
                format!("certificate-authority-data in {}", path.display()),
                None,
            ),
            CaSource::File(ca) => (
                read_limited(&ca, MAX_CA_BYTES).map_err(|source| KubeError::ReadCa {
                    path: ca.clone(),
                    source,
                })?,
                ca.display().to_string(),
                Some(ca),
            ),
        };
        let token = match resolved.token {
            TokenSpec::Inline(token) => {
                TokenSource::inline(BearerToken(token.trim().to_owned()), path)
            }
            TokenSpec::File(file) => TokenSource::file(file),
        };
        Ok(Self {
            server: resolved.server,
            ca_pem,
            ca_origin,
            ca_file,
            token,
            namespace: resolved.namespace,
        })
    }
}

/// Reads a small file, refusing one larger than `limit`.
pub(super) fn read_limited(path: &Path, limit: u64) -> std::io::Result<Vec<u8>> {
    let len = fs::metadata(path)?.len();
    if len > limit {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("larger than {limit} bytes"),
        ));
    }
    fs::read(path)
}

/// A bearer token. Its `Debug` and `Display` print a placeholder, so it cannot leak into a log.
#[derive(Clone, PartialEq, Eq)]
pub struct BearerToken(String);

impl BearerToken {
    #[cfg(test)]
    pub fn new(token: &str) -> Self {
        Self(token.to_owned())
    }

    /// Reads the token from `path`, trimming the surrounding whitespace.
    pub fn read(path: &Path) -> Result<Self, KubeError> {
        let bytes = read_limited(path, MAX_TOKEN_BYTES).map_err(|source| KubeError::ReadToken {
            path: path.to_owned(),
            source,
        })?;
        let text = String::from_utf8(bytes).map_err(|_| KubeError::BadToken {
            origin: path.display().to_string(),
        })?;
        let token = text.trim();
        if token.is_empty() {
            return Err(KubeError::BadToken {
                origin: path.display().to_string(),
            });
        }
        Ok(Self(token.to_owned()))
    }

    /// The `Authorization` header value, marked sensitive so that http and ureq never show it.
    fn header_value(&self, origin: &str) -> Result<HeaderValue, KubeError> {
        let mut value = HeaderValue::from_str(&format!("Bearer {}", self.0)).map_err(|_| {
            KubeError::BadToken {
                origin: origin.to_owned(),
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

/// The `Authorization` header for one request, and which token generation it carries, so that a
/// 401 can tell "the token changed since" from "the token is still the one refused".
#[derive(Debug, Clone)]
pub struct Auth {
    pub header: HeaderValue,
    pub generation: u64,
}

/// Where the bearer token comes from, with the last one read.
#[derive(Debug)]
pub struct TokenSource {
    origin: String,
    file: Option<PathBuf>,
    state: Mutex<TokenState>,
}

#[derive(Debug, Default)]
struct TokenState {
    current: Option<Arc<(BearerToken, HeaderValue)>>,
    stamp: Option<FileStamp>,
    /// Bumped whenever a read gives a different token.
    generation: u64,
}

/// What tells a changed token file from an unchanged one without reading it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct FileStamp {
    len: u64,
    modified: Option<SystemTime>,
    inode: u64,
    device: u64,
}

impl FileStamp {
    pub(super) fn of(path: &Path) -> Option<Self> {
        let meta = fs::metadata(path).ok()?;
        Some(Self {
            len: meta.len(),
            modified: meta.modified().ok(),
            inode: meta.ino(),
            device: meta.dev(),
        })
    }
}

impl TokenSource {
    /// A token read from `path`, again whenever the file changes.
    pub fn file(path: PathBuf) -> Self {
        Self {
            origin: path.display().to_string(),
            file: Some(path),
            state: Mutex::new(TokenState::default()),
        }
    }

    /// A fixed token (a kubeconfig's `token`). `from` names where it came from.
    pub fn inline(token: BearerToken, from: &Path) -> Self {
        let origin = format!("token in {}", from.display());
        let state = match token.header_value(&origin) {
            Ok(header) => TokenState {
                current: Some(Arc::new((token, header))),
                stamp: None,
                generation: 1,
            },
            // Reported on first use, like a bad token file.
            Err(_) => TokenState::default(),
        };
        Self {
            origin,
            file: None,
            state: Mutex::new(state),
        }
    }

    /// Where the token comes from, for log lines.
    pub fn origin(&self) -> &str {
        &self.origin
    }

    /// The header for the next request: the file's token if it changed since it was last read.
    pub fn auth(&self) -> Result<Auth, KubeError> {
        let mut state = lock(&self.state);
        if let Some(path) = &self.file {
            let stamp = FileStamp::of(path);
            if state.current.is_none() || stamp != state.stamp {
                Self::reload_locked(&mut state, path, stamp)?;
            }
        }
        match &state.current {
            Some(current) => Ok(Auth {
                header: current.1.clone(),
                generation: state.generation,
            }),
            None => Err(KubeError::BadToken {
                origin: self.origin.clone(),
            }),
        }
    }

    /// Reads the token file again after the server refused `refused` (a 401), even if the file
    /// looks unchanged. `Some` with the new header when the token is now a different one.
    pub fn after_unauthorized(&self, refused: &Auth) -> Option<Auth> {
        let mut state = lock(&self.state);
        if state.generation == refused.generation {
            if let Some(path) = &self.file {
                let stamp = FileStamp::of(path);
                // A failed read keeps the old token; the caller reports the 401.
                let _ = Self::reload_locked(&mut state, path, stamp);
            }
        }
        if state.generation == refused.generation {
            return None;
        }
        state.current.as_ref().map(|current| Auth {
            header: current.1.clone(),
            generation: state.generation,
        })
    }

    fn reload_locked(
        state: &mut TokenState,
        path: &Path,
        stamp: Option<FileStamp>,
    ) -> Result<(), KubeError> {
        let token = BearerToken::read(path)?;
        let origin = path.display().to_string();
        let header = token.header_value(&origin)?;
        state.stamp = stamp;
        if state.current.as_ref().map(|c| &c.0) != Some(&token) {
            state.generation += 1;
            state.current = Some(Arc::new((token, header)));
        }
        Ok(())
    }
}

/// Locks a mutex whose data stays valid at every point (a cache of the token file): a panic in
/// another thread while holding it cannot leave it half-written, so a poisoned lock is taken over.
pub(super) fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp_dir(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("pp-agent-{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).expect("temp dir");
        dir
    }

    #[test]
    fn token_never_prints() {
        let token = BearerToken("s3cr3t".to_owned());
        assert!(!format!("{token:?}").contains("s3cr3t"));
        assert!(!format!("{token}").contains("s3cr3t"));
        let header = token.header_value("/t").expect("valid");
        assert!(header.is_sensitive());
        assert!(!format!("{header:?}").contains("s3cr3t"));
        let source = TokenSource::inline(token, Path::new("/k"));
        let auth = source.auth().expect("inline token");
        assert!(!format!("{source:?} {auth:?}").contains("s3cr3t"));
    }

    #[test]
    fn token_file_is_trimmed_and_checked() {
        let dir = temp_dir("token");
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
            token.header_value("x"),
            Err(KubeError::BadToken { .. })
        ));
        assert!(matches!(
            BearerToken::read(&dir.join("missing")),
            Err(KubeError::ReadToken { .. })
        ));
        let _ = fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_changed_token_file_is_read_again_and_bumps_the_generation() {
        let dir = temp_dir("rotate");
        let path = dir.join("token");
        fs::write(&path, "one\n").expect("write");
        let source = TokenSource::file(path.clone());
        let first = source.auth().expect("first");
        assert_eq!(first.generation, 1);
        // Unchanged: same generation, no re-read needed.
        assert_eq!(source.auth().expect("again").generation, 1);
        // Rotated the way the kubelet does it: a new file renamed into place (new inode).
        fs::write(dir.join("token.new"), "two-longer\n").expect("write");
        fs::rename(dir.join("token.new"), &path).expect("rename");
        let second = source.auth().expect("second");
        assert_eq!(second.generation, 2);
        assert_ne!(first.header, second.header);
        let _ = fs::remove_dir_all(&dir);
    }

    #[test]
    fn after_a_401_the_file_is_read_again_even_if_it_looks_unchanged() {
        let dir = temp_dir("401");
        let path = dir.join("token");
        fs::write(&path, "aaaa").expect("write");
        let source = TokenSource::file(path.clone());
        let refused = source.auth().expect("first");
        // A rewrite the stamp cannot see (same length, same mtime tick): `auth` keeps the old
        // token, and only the forced read after a 401 finds the new one.
        fs::write(&path, "bbbb").expect("write");
        lock(&source.state).stamp = FileStamp::of(&path);
        assert_eq!(source.auth().expect("unchanged").generation, 1);
        let fresh = source.after_unauthorized(&refused).expect("new token");
        assert_eq!(fresh.generation, 2);
        // A second 401 with the new token and an unchanged file: nothing newer to try.
        assert!(source.after_unauthorized(&fresh).is_none());
        let _ = fs::remove_dir_all(&dir);
    }

    #[test]
    fn in_cluster_access_reads_ca_and_namespace_but_not_the_token_yet() {
        let dir = temp_dir("incluster");
        fs::write(dir.join("ca.crt"), "pem").expect("write");
        fs::write(dir.join("namespace"), "pod-pacemaker\n").expect("write");
        let access = ApiAccess::load(&ApiConfig::InCluster {
            api_server: "https://10.96.0.1:443".to_owned(),
            token_file: dir.join("token"),
            ca_file: dir.join("ca.crt"),
        })
        .expect("loads without a token file");
        assert_eq!(access.namespace.as_deref(), Some("pod-pacemaker"));
        assert_eq!(access.ca_pem, b"pem");
        assert!(matches!(
            access.token.auth(),
            Err(KubeError::ReadToken { .. })
        ));
        let _ = fs::remove_dir_all(&dir);
    }

    #[test]
    fn kubeconfig_paths_are_relative_to_its_directory() {
        let dir = temp_dir("kubeconfig");
        fs::write(dir.join("ca.pem"), "pem").expect("write");
        fs::write(dir.join("tok"), "t0k\n").expect("write");
        fs::write(
            dir.join("config"),
            "current-context: c\ncontexts:\n- name: c\n  context: {\"cluster\": \"k\", \"user\": \"u\", \"namespace\": \"ns\"}\n\
             clusters:\n- name: k\n  cluster:\n    server: https://127.0.0.1:6443\n    certificate-authority: ca.pem\n\
             users:\n- name: u\n  user:\n    tokenFile: tok\n",
        )
        .expect("write");
        let access = ApiAccess::load(&ApiConfig::Kubeconfig(dir.join("config"))).expect("loads");
        assert_eq!(access.server, "https://127.0.0.1:6443");
        assert_eq!(access.ca_pem, b"pem");
        assert_eq!(access.namespace.as_deref(), Some("ns"));
        assert_eq!(access.token.auth().expect("token").generation, 1);
        let err = ApiAccess::load(&ApiConfig::Kubeconfig(dir.join("missing"))).expect_err("x");
        assert!(err.to_string().contains("missing"), "{err}");
        let _ = fs::remove_dir_all(&dir);
    }
}
