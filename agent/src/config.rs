// SPDX-License-Identifier: Apache-2.0
//! The command line, parsed once into a validated [`Config`].
//!
//! The parser is hand-written (no clap): a few dozen flags do not earn a dependency. Flags take
//! their value as the next argument or after `=`. The throttle settings (`throttle`) are shaped
//! like the `PacemakerConfig` CRD's `throttleConfig` and can come from a JSON file that SIGHUP
//! reloads. Defaults come from the in-cluster conventions
//! (`NODE_NAME` from the downward API, `KUBERNETES_SERVICE_HOST`/`_PORT`, the service-account
//! mount). Every error names the flag; `main` prints it and exits with status 2. The environment is
//! passed in as a function so tests do not touch the process environment.

use std::borrow::Cow;
use std::ffi::OsString;
use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use log::LevelFilter;

use crate::pod::{ReleaseOn, SkipOptions};

pub mod throttle;

use throttle::{MaxConcurrent, PerCore, RateLimit, ThrottleConfig, MAX_BURST, MAX_MAX_CONCURRENT};

/// The validated configuration of one agent run.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Config {
    pub node_name: String,
    pub socket: PathBuf,
    /// The gates, from the flags or from `config_file`.
    pub throttle: ThrottleConfig,
    /// `--config`: the JSON file `throttle` was read from, read again on SIGHUP.
    pub config_file: Option<PathBuf>,
    /// Where the scheduler keeps its queue and holders across restarts.
    pub state_file: PathBuf,
    /// What frees a slot besides the rules that always do: Ready, or all containers started.
    pub release_on: ReleaseOn,
    /// Which pods the agent grants at once without a slot.
    pub skip: SkipOptions,
    /// How long a WAIT for a pod the agent has not seen waits for it to appear.
    pub unknown_pod_wait: Duration,
    /// What happens to such a WAIT after that.
    pub unknown_pod_policy: UnknownPodPolicy,
    /// `https://host:port` without a trailing `/`.
    pub api_server: String,
    pub token_file: PathBuf,
    pub ca_file: PathBuf,
    /// `--kubeconfig`: the server, CA and token come from this file; `api_server` is then empty
    /// and `token_file` and `ca_file` are unused.
    pub kubeconfig: Option<PathBuf>,
    /// `--watch-silence-seconds`: a pod watch that delivers nothing for this long is reopened.
    pub watch_silence: Duration,
    /// `--pod-cache-file`: where the watch loop writes its view of the node's pods.
    pub pod_cache_file: Option<PathBuf>,
    pub lease: Duration,
    pub log_level: LevelFilter,
}

/// What the command line asks for.
#[derive(Clone, Debug, PartialEq, Eq)]
// Built once at start and moved into `main`; boxing the config would buy nothing.
#[allow(clippy::large_enum_variant)]
pub enum Command {
    Run(Config),
    Help,
    /// `--status`: print the running agent's STATUS answer.
    Status {
        socket: PathBuf,
    },
}

/// What a WAIT for a pod the agent has not seen becomes once `--unknown-pod-wait-ms` has passed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum UnknownPodPolicy {
    /// Paced like any pod: it queues at its arrival and its slot is released when the pod shows
    /// up and a rule frees it, or by the lease.
    Pace,
    /// Let through without a slot.
    Skip,
}

/// Why the command line was rejected.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ConfigError {
    BadValue {
        flag: &'static str,
        value: String,
        problem: Cow<'static, str>,
    },
    /// The `--config` file does not parse or holds a bad value.
    ConfigFile {
        path: PathBuf,
        problem: throttle::ThrottleError,
    },
    /// Two flags that exclude each other.
    Conflict(&'static str, &'static str),
    DuplicateFlag(&'static str),
    MissingApiServer,
    /// The first flag needs the second.
    MissingPartner(&'static str, &'static str),
    MissingNodeName,
    MissingValue(&'static str),
    NotUtf8(String),
    UnexpectedArgument(String),
    UnknownFlag(String),
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ConfigError::BadValue {
                flag,
                value,
                problem,
            } => write!(f, "{flag} {value:?}: {problem}"),
            ConfigError::ConfigFile { path, problem } => {
                write!(f, "config file {}: {problem}", path.display())
            }
            ConfigError::Conflict(a, b) => write!(f, "{a} and {b} cannot be given together"),
            ConfigError::DuplicateFlag(flag) => write!(f, "{flag} given twice"),
            ConfigError::MissingApiServer => f.write_str(
                "--api-server not given and KUBERNETES_SERVICE_HOST/KUBERNETES_SERVICE_PORT not set",
            ),
            ConfigError::MissingNodeName => {
                f.write_str("--node-name not given and NODE_NAME not set")
            }
            ConfigError::MissingPartner(flag, partner) => write!(f, "{flag} needs {partner}"),
            ConfigError::MissingValue(flag) => write!(f, "{flag} needs a value"),
            ConfigError::NotUtf8(arg) => write!(f, "argument {arg:?} is not UTF-8"),
            ConfigError::UnexpectedArgument(arg) => write!(f, "unexpected argument {arg:?}"),
            ConfigError::UnknownFlag(flag) => write!(f, "unknown flag {flag:?}"),
        }
    }
}

impl std::error::Error for ConfigError {}

/// The `--help` text.
pub const USAGE: &str = "\
usage: pod-pacemaker-agent [options]

Paces pod sandbox starts on this node: the pod-pacemaker CNI plugin asks for a start slot on
every pod ADD and blocks until the agent grants one.

options:
  --node-name NAME     node whose pods are paced (default: $NODE_NAME; required)
  --socket PATH        where to serve the plugin protocol
                       (default: /var/run/pod-pacemaker/pod-pacemaker.sock)
  --max-concurrent N   pods that may hold a start slot at once, 1 to 10000 (default: 2)
  --max-concurrent-per-core X
                       instead: ceil(X x the node's CPUs) slots, X a decimal such as 0.5
  --rate-fill-factor DURATION
                       token bucket: one grant token every DURATION (Go syntax: 500ms, 1.5s)
  --rate-burst N       token bucket size, 1 to 10000 (default: 1; needs --rate-fill-factor)
  --config FILE        read the throttle settings above from FILE instead: JSON shaped like
                       the PacemakerConfig spec, {throttleConfig: {maxConcurrent: {value | perCore},
                       rateLimit: {fillFactor, burst}}}; SIGHUP reads it again
  --release-on WHEN    ready (the pod is Ready) or started (all containers started)
                       (default: ready)
  --skip-daemonsets B  true or false: grant DaemonSet pods without a slot (default: true)
  --namespace-exclusions LIST
                       comma-separated namespaces whose pods are not paced
                       (default: kube-system; empty: none)
  --unknown-pod-wait-ms N
                       how long a request for a pod not seen yet waits for it, 0 to 60000
                       (default: 2000)
  --unknown-pod-policy P
                       then: pace (queue it like any pod) or skip (let it through)
                       (default: pace)
  --state-file PATH    queue and holders kept across restarts
                       (default: agent-state.json next to the socket)
  --api-server URL     API server (default: https://$KUBERNETES_SERVICE_HOST:$KUBERNETES_SERVICE_PORT)
  --token-file PATH    bearer token, read again when the file changes or after a 401
                       (default: /var/run/secrets/kubernetes.io/serviceaccount/token)
  --ca-file PATH       the only CA trusted for the API server
                       (default: /var/run/secrets/kubernetes.io/serviceaccount/ca.crt)
  --kubeconfig PATH    take the API server, its CA and a bearer token (token or tokenFile)
                       from this kubeconfig instead of the three options above
  --watch-silence-seconds N
                       reopen a pod watch that sends nothing, not even a bookmark, for this
                       long, 1 to 3600 (default: 90)
  --pod-cache-file PATH
                       write the agent's view of the node's pods to PATH as JSON (debugging)
  --lease-seconds N    release a slot at the latest this long after the grant (default: 300)
  --log-level LEVEL    error, warn, info, debug or trace (default: info)
  --status             print the holders, the queue and the counts of the agent serving
                       --socket, then exit
  --help               print this text
";

const DEFAULT_SOCKET: &str = "/var/run/pod-pacemaker/pod-pacemaker.sock";
const DEFAULT_TOKEN_FILE: &str = "/var/run/secrets/kubernetes.io/serviceaccount/token";
const DEFAULT_CA_FILE: &str = "/var/run/secrets/kubernetes.io/serviceaccount/ca.crt";
/// The API server sends a bookmark about once a minute on a quiet watch (k8s.io/apiserver cacher,
/// `defaultBookmarkFrequency`); 90 s of nothing at all means the stream is dead.
const DEFAULT_WATCH_SILENCE_SECONDS: u64 = 90;
const MAX_WATCH_SILENCE_SECONDS: u64 = 3_600;
const DEFAULT_MAX_CONCURRENT: u32 = 2;
const DEFAULT_LEASE_SECONDS: u64 = 300;
const DEFAULT_UNKNOWN_POD_WAIT_MS: u64 = 2_000;
const DEFAULT_NAMESPACE_EXCLUSIONS: &str = "kube-system";
/// The state file's name, in the socket's directory unless `--state-file` says otherwise.
const DEFAULT_STATE_FILE_NAME: &str = "agent-state.json";
/// Upper bounds that catch typos (an extra zero or two) rather than encode a policy.
const MAX_LEASE_SECONDS: u64 = 86_400;
const MAX_UNKNOWN_POD_WAIT_MS: u64 = 60_000;
/// A node name is a DNS subdomain (RFC 1123): at most 253 characters.
const MAX_NODE_NAME: usize = 253;

/// Parses the arguments after the program name. `env` looks up an environment variable.
pub fn parse(
    args: impl IntoIterator<Item = OsString>,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Command, ConfigError> {
    // 1. `--help` anywhere wins over everything else.
    let args: Vec<OsString> = args.into_iter().collect();
    if args.iter().any(|a| a == "--help" || a == "-h") {
        return Ok(Command::Help);
    }
    // `--status` takes no value; with it, only `--socket` means anything.
    let status = args.iter().any(|a| a == "--status");
    let args: Vec<OsString> = args.into_iter().filter(|a| a != "--status").collect();

    // 2. Turn the raw arguments into (flag, value) pairs.
    let mut raw = RawArgs::default();
    let mut given: Vec<&'static str> = Vec::new();
    let mut args = args.into_iter();
    while let Some(arg) = args.next() {
        let arg = arg
            .into_string()
            .map_err(|a| ConfigError::NotUtf8(a.to_string_lossy().into_owned()))?;
        let (name, inline) = match arg.split_once('=') {
            Some((name, value)) if name.starts_with("--") => (name.to_owned(), Some(value)),
            _ => (arg.clone(), None),
        };
        if !name.starts_with("--") {
            return Err(ConfigError::UnexpectedArgument(arg));
        }
        let slot = raw.slot(&name)?;
        let value = match inline {
            Some(value) => value.to_owned(),
            None => {
                let next = args.next().ok_or(ConfigError::MissingValue(slot.0))?;
                next.into_string()
                    .map_err(|a| ConfigError::NotUtf8(a.to_string_lossy().into_owned()))?
            }
        };
        if slot.1.replace(value).is_some() {
            return Err(ConfigError::DuplicateFlag(slot.0));
        }
        given.push(slot.0);
    }

    // 3. Validate each value and fill in the defaults.
    if status {
        if let Some(flag) = given.into_iter().find(|f| *f != "--socket") {
            return Err(ConfigError::Conflict("--status", flag));
        }
        return Ok(Command::Status {
            socket: path_or("--socket", raw.socket.take(), DEFAULT_SOCKET)?,
        });
    }
    let node_name = match raw.node_name.take() {
        Some(name) => check_node_name("--node-name", name)?,
        None => match env("NODE_NAME").filter(|n| !n.is_empty()) {
            Some(name) => check_node_name("NODE_NAME", name)?,
            None => return Err(ConfigError::MissingNodeName),
        },
    };
    let kubeconfig = optional_path("--kubeconfig", raw.kubeconfig.take())?;
    if kubeconfig.is_some() {
        let given = [
            ("--api-server", raw.api_server.is_some()),
            ("--token-file", raw.token_file.is_some()),
            ("--ca-file", raw.ca_file.is_some()),
        ];
        if let Some((flag, _)) = given.iter().find(|(_, given)| *given) {
            return Err(ConfigError::Conflict("--kubeconfig", flag));
        }
    }
    let api_server = match raw.api_server.take() {
        Some(url) => check_api_server(url)?,
        // The kubeconfig names the server.
        None if kubeconfig.is_some() => String::new(),
        None => api_server_from_env(env)?,
    };
    let socket = path_or("--socket", raw.socket.take(), DEFAULT_SOCKET)?;
    let state_file = match raw.state_file.take() {
        Some(value) => path_or("--state-file", Some(value), "")?,
        None => socket
            .parent()
            .map_or_else(|| PathBuf::from("."), PathBuf::from)
            .join(DEFAULT_STATE_FILE_NAME),
    };
    let (throttle, config_file) = throttle_settings(&mut raw)?;
    Ok(Command::Run(Config {
        node_name,
        socket,
        throttle,
        config_file,
        state_file,
        release_on: match raw.release_on.take().as_deref() {
            None | Some("ready") => ReleaseOn::Ready,
            Some("started") => ReleaseOn::Started,
            Some(other) => {
                return Err(ConfigError::BadValue {
                    flag: "--release-on",
                    value: other.to_owned(),
                    problem: "must be ready or started".into(),
                })
            }
        },
        skip: SkipOptions {
            daemonsets: boolean("--skip-daemonsets", raw.skip_daemonsets.take(), true)?,
            namespaces: namespace_list(
                raw.namespace_exclusions
                    .take()
                    .unwrap_or_else(|| DEFAULT_NAMESPACE_EXCLUSIONS.to_owned()),
            )?,
        },
        unknown_pod_wait: Duration::from_millis(number_in(
            "--unknown-pod-wait-ms",
            raw.unknown_pod_wait_ms.take(),
            DEFAULT_UNKNOWN_POD_WAIT_MS,
            0,
            MAX_UNKNOWN_POD_WAIT_MS,
        )?),
        unknown_pod_policy: match raw.unknown_pod_policy.take().as_deref() {
            None | Some("pace") => UnknownPodPolicy::Pace,
            Some("skip") => UnknownPodPolicy::Skip,
            Some(other) => {
                return Err(ConfigError::BadValue {
                    flag: "--unknown-pod-policy",
                    value: other.to_owned(),
                    problem: "must be pace or skip".into(),
                })
            }
        },
        api_server,
        token_file: path_or("--token-file", raw.token_file.take(), DEFAULT_TOKEN_FILE)?,
        ca_file: path_or("--ca-file", raw.ca_file.take(), DEFAULT_CA_FILE)?,
        kubeconfig,
        watch_silence: Duration::from_secs(number_or(
            "--watch-silence-seconds",
            raw.watch_silence_seconds.take(),
            DEFAULT_WATCH_SILENCE_SECONDS,
            MAX_WATCH_SILENCE_SECONDS,
        )?),
        pod_cache_file: optional_path("--pod-cache-file", raw.pod_cache_file.take())?,
        lease: Duration::from_secs(number_or(
            "--lease-seconds",
            raw.lease_seconds.take(),
            DEFAULT_LEASE_SECONDS,
            MAX_LEASE_SECONDS,
        )?),
        log_level: match raw.log_level.take() {
            Some(level) => parse_level(level)?,
            None => LevelFilter::Info,
        },
    }))
}

/// The throttle settings from `--config FILE`, or else from the flags.
fn throttle_settings(raw: &mut RawArgs) -> Result<(ThrottleConfig, Option<PathBuf>), ConfigError> {
    if let Some(file) = raw.config.take() {
        let flags = [
            ("--max-concurrent", raw.max_concurrent.is_some()),
            (
                "--max-concurrent-per-core",
                raw.max_concurrent_per_core.is_some(),
            ),
            ("--rate-fill-factor", raw.rate_fill_factor.is_some()),
            ("--rate-burst", raw.rate_burst.is_some()),
        ];
        if let Some((flag, _)) = flags.iter().find(|(_, given)| *given) {
            return Err(ConfigError::Conflict("--config", flag));
        }
        let path = path_or("--config", Some(file), "")?;
        let throttle = throttle::read_file(&path).map_err(|problem| ConfigError::ConfigFile {
            path: path.clone(),
            problem,
        })?;
        return Ok((throttle, Some(path)));
    }

    let max_concurrent = match (
        raw.max_concurrent.take(),
        raw.max_concurrent_per_core.take(),
    ) {
        (Some(_), Some(_)) => {
            return Err(ConfigError::Conflict(
                "--max-concurrent",
                "--max-concurrent-per-core",
            ))
        }
        (None, Some(value)) => match PerCore::parse(&value) {
            Ok(per_core) => MaxConcurrent::PerCore(per_core),
            Err(problem) => {
                return Err(ConfigError::BadValue {
                    flag: "--max-concurrent-per-core",
                    value,
                    problem: problem.into(),
                })
            }
        },
        (value, None) => MaxConcurrent::Value(number_or(
            "--max-concurrent",
            value,
            DEFAULT_MAX_CONCURRENT,
            MAX_MAX_CONCURRENT,
        )?),
    };
    let rate_limit = match (raw.rate_fill_factor.take(), raw.rate_burst.take()) {
        (None, None) => None,
        (None, Some(_)) => {
            return Err(ConfigError::MissingPartner(
                "--rate-burst",
                "--rate-fill-factor",
            ))
        }
        (Some(fill), burst) => {
            let fill_factor = match throttle::parse_fill_factor(&fill) {
                Ok(d) => d,
                Err(problem) => {
                    return Err(ConfigError::BadValue {
                        flag: "--rate-fill-factor",
                        value: fill,
                        problem: problem.into(),
                    })
                }
            };
            Some(RateLimit {
                fill_factor,
                burst: number_or("--rate-burst", burst, 1, MAX_BURST)?,
            })
        }
    };
    Ok((
        ThrottleConfig {
            max_concurrent,
            rate_limit,
        },
        None,
    ))
}

fn boolean(flag: &'static str, value: Option<String>, default: bool) -> Result<bool, ConfigError> {
    match value.as_deref() {
        None => Ok(default),
        Some("true") => Ok(true),
        Some("false") => Ok(false),
        Some(_) => Err(ConfigError::BadValue {
            flag,
            value: value.unwrap_or_default(),
            problem: "must be true or false".into(),
        }),
    }
}

/// A comma-separated list of namespace names (DNS labels); empty means none.
fn namespace_list(value: String) -> Result<Vec<String>, ConfigError> {
    if value.is_empty() {
        return Ok(Vec::new());
    }
    let mut names = Vec::new();
    for name in value.split(',') {
        let valid = !name.is_empty()
            && name.len() <= 63
            && name
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
        if !valid {
            return Err(ConfigError::BadValue {
                flag: "--namespace-exclusions",
                value,
                problem: "must be namespace names separated by commas".into(),
            });
        }
        names.push(name.to_owned());
    }
    Ok(names)
}

/// The flag values as given, before validation.
#[derive(Default)]
struct RawArgs {
    node_name: Option<String>,
    socket: Option<String>,
    max_concurrent: Option<String>,
    max_concurrent_per_core: Option<String>,
    rate_fill_factor: Option<String>,
    rate_burst: Option<String>,
    config: Option<String>,
    release_on: Option<String>,
    skip_daemonsets: Option<String>,
    namespace_exclusions: Option<String>,
    unknown_pod_wait_ms: Option<String>,
    unknown_pod_policy: Option<String>,
    state_file: Option<String>,
    api_server: Option<String>,
    token_file: Option<String>,
    ca_file: Option<String>,
    kubeconfig: Option<String>,
    watch_silence_seconds: Option<String>,
    pod_cache_file: Option<String>,
    lease_seconds: Option<String>,
    log_level: Option<String>,
}

impl RawArgs {
    /// The flag's canonical name and where its value goes.
    fn slot(&mut self, name: &str) -> Result<(&'static str, &mut Option<String>), ConfigError> {
        Ok(match name {
            "--node-name" => ("--node-name", &mut self.node_name),
            "--socket" => ("--socket", &mut self.socket),
            "--max-concurrent" => ("--max-concurrent", &mut self.max_concurrent),
            "--max-concurrent-per-core" => (
                "--max-concurrent-per-core",
                &mut self.max_concurrent_per_core,
            ),
            "--rate-fill-factor" => ("--rate-fill-factor", &mut self.rate_fill_factor),
            "--rate-burst" => ("--rate-burst", &mut self.rate_burst),
            "--config" => ("--config", &mut self.config),
            "--release-on" => ("--release-on", &mut self.release_on),
            "--skip-daemonsets" => ("--skip-daemonsets", &mut self.skip_daemonsets),
            "--namespace-exclusions" => ("--namespace-exclusions", &mut self.namespace_exclusions),
            "--unknown-pod-wait-ms" => ("--unknown-pod-wait-ms", &mut self.unknown_pod_wait_ms),
            "--unknown-pod-policy" => ("--unknown-pod-policy", &mut self.unknown_pod_policy),
            "--state-file" => ("--state-file", &mut self.state_file),
            "--api-server" => ("--api-server", &mut self.api_server),
            "--token-file" => ("--token-file", &mut self.token_file),
            "--ca-file" => ("--ca-file", &mut self.ca_file),
            "--kubeconfig" => ("--kubeconfig", &mut self.kubeconfig),
            "--watch-silence-seconds" => {
                ("--watch-silence-seconds", &mut self.watch_silence_seconds)
            }
            "--pod-cache-file" => ("--pod-cache-file", &mut self.pod_cache_file),
            "--lease-seconds" => ("--lease-seconds", &mut self.lease_seconds),
            "--log-level" => ("--log-level", &mut self.log_level),
            other => return Err(ConfigError::UnknownFlag(other.to_owned())),
        })
    }
}

fn check_node_name(flag: &'static str, name: String) -> Result<String, ConfigError> {
    let problem = if name.is_empty() || name.len() > MAX_NODE_NAME {
        Some("must be 1 to 253 characters")
    } else if !name
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.')
    {
        Some("must be a DNS subdomain: lowercase letters, digits, '-' and '.'")
    } else {
        None
    };
    match problem {
        Some(problem) => Err(ConfigError::BadValue {
            flag,
            value: name,
            problem: problem.into(),
        }),
        None => Ok(name),
    }
}

fn check_api_server(url: String) -> Result<String, ConfigError> {
    let bad = |problem: &'static str| ConfigError::BadValue {
        flag: "--api-server",
        value: url.clone(),
        problem: problem.into(),
    };
    let Some(rest) = url.strip_prefix("https://") else {
        return Err(bad("must start with https://"));
    };
    if rest.is_empty() || rest.starts_with('/') {
        return Err(bad("has no host"));
    }
    if url.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(bad("must not contain spaces or control characters"));
    }
    if url.contains('?') || url.contains('#') {
        return Err(bad("must not have a query or fragment"));
    }
    Ok(url.trim_end_matches('/').to_owned())
}

/// `https://$KUBERNETES_SERVICE_HOST:$KUBERNETES_SERVICE_PORT`, with an IPv6 host in brackets.
fn api_server_from_env(env: &dyn Fn(&str) -> Option<String>) -> Result<String, ConfigError> {
    let host = env("KUBERNETES_SERVICE_HOST").filter(|h| !h.is_empty());
    let port = env("KUBERNETES_SERVICE_PORT").filter(|p| !p.is_empty());
    let (Some(host), Some(port)) = (host, port) else {
        return Err(ConfigError::MissingApiServer);
    };
    let host = if host.contains(':') && !host.starts_with('[') {
        format!("[{host}]")
    } else {
        host
    };
    check_api_server(format!("https://{host}:{port}"))
}

/// An optional path flag: absent is `None`, empty is an error.
fn optional_path(
    flag: &'static str,
    value: Option<String>,
) -> Result<Option<PathBuf>, ConfigError> {
    value.map(|v| path_or(flag, Some(v), "")).transpose()
}

fn path_or(
    flag: &'static str,
    value: Option<String>,
    default: &str,
) -> Result<PathBuf, ConfigError> {
    match value {
        None => Ok(PathBuf::from(default)),
        Some(value) if value.is_empty() => Err(ConfigError::BadValue {
            flag,
            value,
            problem: "must not be empty".into(),
        }),
        Some(value) => Ok(PathBuf::from(value)),
    }
}

fn number_or<N>(
    flag: &'static str,
    value: Option<String>,
    default: N,
    max: N,
) -> Result<N, ConfigError>
where
    N: std::str::FromStr + PartialOrd + From<u8> + std::fmt::Display,
{
    let Some(value) = value else {
        return Ok(default);
    };
    // `FromStr` accepts a leading '+'; a flag value should be plain digits.
    let parsed = if value.bytes().all(|b| b.is_ascii_digit()) {
        value.parse::<N>().ok()
    } else {
        None
    };
    match parsed {
        Some(n) if n >= N::from(1) && n <= max => Ok(n),
        _ => Err(ConfigError::BadValue {
            flag,
            value,
            problem: format!("must be a whole number from 1 to {max}").into(),
        }),
    }
}

/// A whole number from `min` to `max`, or `default` when the flag is absent.
fn number_in(
    flag: &'static str,
    value: Option<String>,
    default: u64,
    min: u64,
    max: u64,
) -> Result<u64, ConfigError> {
    let Some(value) = value else {
        return Ok(default);
    };
    let parsed = if !value.is_empty() && value.bytes().all(|b| b.is_ascii_digit()) {
        value.parse::<u64>().ok()
    } else {
        None
    };
    match parsed {
        Some(n) if (min..=max).contains(&n) => Ok(n),
        _ => Err(ConfigError::BadValue {
            flag,
            value,
            problem: format!("must be a whole number from {min} to {max}").into(),
        }),
    }
}

fn parse_level(value: String) -> Result<LevelFilter, ConfigError> {
    let level = match value.as_str() {
        "error" => LevelFilter::Error,
        "warn" => LevelFilter::Warn,
        "info" => LevelFilter::Info,
        "debug" => LevelFilter::Debug,
        "trace" => LevelFilter::Trace,
        _ => {
            return Err(ConfigError::BadValue {
                flag: "--log-level",
                value,
                problem: "must be error, warn, info, debug or trace".into(),
            })
        }
    };
    Ok(level)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env_with(vars: &'static [(&'static str, &'static str)]) -> impl Fn(&str) -> Option<String> {
        move |key| {
            vars.iter()
                .find(|(k, _)| *k == key)
                .map(|(_, v)| (*v).to_owned())
        }
    }

    fn run(
        args: &[&str],
        vars: &'static [(&'static str, &'static str)],
    ) -> Result<Config, ConfigError> {
        let env = env_with(vars);
        match parse(args.iter().map(OsString::from), &env)? {
            Command::Run(config) => Ok(config),
            other => panic!("unexpected {other:?}"),
        }
    }

    const CLUSTER: &[(&str, &str)] = &[
        ("NODE_NAME", "node-1"),
        ("KUBERNETES_SERVICE_HOST", "10.96.0.1"),
        ("KUBERNETES_SERVICE_PORT", "443"),
    ];

    #[test]
    fn defaults_come_from_the_cluster_environment() {
        let config = run(&[], CLUSTER).expect("parses");
        assert_eq!(
            config,
            Config {
                node_name: "node-1".to_owned(),
                socket: PathBuf::from(DEFAULT_SOCKET),
                throttle: ThrottleConfig {
                    max_concurrent: MaxConcurrent::Value(2),
                    rate_limit: None,
                },
                config_file: None,
                state_file: PathBuf::from("/var/run/pod-pacemaker/agent-state.json"),
                release_on: ReleaseOn::Ready,
                skip: SkipOptions {
                    daemonsets: true,
                    namespaces: vec!["kube-system".to_owned()],
                },
                unknown_pod_wait: Duration::from_secs(2),
                unknown_pod_policy: UnknownPodPolicy::Pace,
                api_server: "https://10.96.0.1:443".to_owned(),
                token_file: PathBuf::from(DEFAULT_TOKEN_FILE),
                ca_file: PathBuf::from(DEFAULT_CA_FILE),
                kubeconfig: None,
                watch_silence: Duration::from_secs(90),
                pod_cache_file: None,
                lease: Duration::from_secs(300),
                log_level: LevelFilter::Info,
            }
        );
    }

    #[test]
    fn flags_override_defaults_in_both_spellings() {
        let config = run(
            &[
                "--node-name",
                "n1",
                "--socket=/tmp/s.sock",
                "--max-concurrent",
                "5",
                "--api-server",
                "https://127.0.0.1:6443/",
                "--token-file",
                "/tmp/token",
                "--ca-file=/tmp/ca.crt",
                "--lease-seconds",
                "60",
                "--log-level",
                "debug",
            ],
            &[],
        )
        .expect("parses");
        assert_eq!(config.node_name, "n1");
        assert_eq!(config.socket, PathBuf::from("/tmp/s.sock"));
        assert_eq!(config.throttle.max_concurrent, MaxConcurrent::Value(5));
        assert_eq!(config.state_file, PathBuf::from("/tmp/agent-state.json"));
        assert_eq!(config.api_server, "https://127.0.0.1:6443");
        assert_eq!(config.token_file, PathBuf::from("/tmp/token"));
        assert_eq!(config.ca_file, PathBuf::from("/tmp/ca.crt"));
        assert_eq!(config.lease, Duration::from_secs(60));
        assert_eq!(config.log_level, LevelFilter::Debug);
    }

    #[test]
    fn kubeconfig_replaces_the_api_flags_and_the_cluster_environment() {
        let config = run(
            &[
                "--node-name",
                "n1",
                "--kubeconfig",
                "/etc/k/config",
                "--watch-silence-seconds=3",
                "--pod-cache-file",
                "/tmp/pods.json",
            ],
            &[],
        )
        .expect("parses without KUBERNETES_SERVICE_HOST");
        assert_eq!(config.kubeconfig, Some(PathBuf::from("/etc/k/config")));
        assert_eq!(config.api_server, "");
        assert_eq!(config.watch_silence, Duration::from_secs(3));
        assert_eq!(config.pod_cache_file, Some(PathBuf::from("/tmp/pods.json")));
        for flag in [
            "--api-server=https://h:1",
            "--token-file=/t",
            "--ca-file=/c",
        ] {
            let err = run(&["--node-name", "n1", "--kubeconfig", "/k", flag], &[]).expect_err(flag);
            assert!(
                err.to_string().contains("cannot be given together"),
                "{err}"
            );
        }
        for bad in ["0", "3601", "x"] {
            let arg = format!("--watch-silence-seconds={bad}");
            assert!(run(&["--node-name", "n1", &arg], CLUSTER).is_err(), "{bad}");
        }
    }

    #[test]
    fn ipv6_service_host_is_bracketed() {
        let config = run(
            &["--node-name", "n1"],
            &[
                ("KUBERNETES_SERVICE_HOST", "fd00::1"),
                ("KUBERNETES_SERVICE_PORT", "443"),
            ],
        )
        .expect("parses");
        assert_eq!(config.api_server, "https://[fd00::1]:443");
    }

    #[test]
    fn help_wins() {
        let env = env_with(&[]);
        let args = ["--bogus", "--help"].map(OsString::from);
        assert_eq!(parse(args, &env), Ok(Command::Help));
    }

    #[test]
    fn errors_name_the_flag() {
        let cases: &[(&[&str], &str)] = &[
            (&["--max-concurrent", "0"], "--max-concurrent"),
            (&["--max-concurrent", "+3"], "--max-concurrent"),
            (&["--max-concurrent", "two"], "--max-concurrent"),
            (&["--lease-seconds", "-1"], "--lease-seconds"),
            (&["--lease-seconds"], "--lease-seconds needs a value"),
            (&["--log-level", "loud"], "--log-level"),
            (&["--api-server", "http://x"], "--api-server"),
            (&["--api-server", "https://"], "--api-server"),
            (&["--node-name", "Node_1"], "--node-name"),
            (&["--socket", ""], "--socket"),
            (&["--frobnicate", "1"], "--frobnicate"),
            (&["--socket", "/a", "--socket", "/b"], "given twice"),
            (&["stray"], "unexpected argument"),
        ];
        for (args, want) in cases {
            let err = run(args, CLUSTER).expect_err(&format!("{args:?}"));
            assert!(err.to_string().contains(want), "{args:?}: {err}");
        }
    }

    #[test]
    fn node_name_and_api_server_are_required() {
        let no_node = &[
            ("KUBERNETES_SERVICE_HOST", "10.96.0.1"),
            ("KUBERNETES_SERVICE_PORT", "443"),
        ];
        assert_eq!(run(&[], no_node), Err(ConfigError::MissingNodeName));
        assert_eq!(
            run(&[], &[("NODE_NAME", "n1")]),
            Err(ConfigError::MissingApiServer)
        );
    }
    #[test]
    fn gate_and_scheduling_flags() {
        let config = run(
            &[
                "--max-concurrent-per-core",
                "0.5",
                "--rate-fill-factor=1.5s",
                "--rate-burst",
                "3",
                "--release-on",
                "started",
                "--skip-daemonsets",
                "false",
                "--namespace-exclusions",
                "kube-system,monitoring",
                "--unknown-pod-wait-ms",
                "0",
                "--unknown-pod-policy",
                "skip",
                "--state-file",
                "/run/x/state.json",
            ],
            CLUSTER,
        )
        .expect("parses");
        let per_core = PerCore::parse("0.5").expect("valid");
        assert_eq!(
            config.throttle,
            ThrottleConfig {
                max_concurrent: MaxConcurrent::PerCore(per_core),
                rate_limit: Some(RateLimit {
                    fill_factor: Duration::from_millis(1500),
                    burst: 3,
                }),
            }
        );
        assert_eq!(config.release_on, ReleaseOn::Started);
        assert_eq!(
            config.skip,
            SkipOptions {
                daemonsets: false,
                namespaces: vec!["kube-system".to_owned(), "monitoring".to_owned()],
            }
        );
        assert_eq!(config.unknown_pod_wait, Duration::ZERO);
        assert_eq!(config.unknown_pod_policy, UnknownPodPolicy::Skip);
        assert_eq!(config.state_file, PathBuf::from("/run/x/state.json"));

        let config = run(
            &["--namespace-exclusions", "", "--rate-fill-factor", "100ms"],
            CLUSTER,
        )
        .expect("parses");
        assert!(config.skip.namespaces.is_empty());
        assert_eq!(config.throttle.rate_limit.map(|r| r.burst), Some(1));
    }

    #[test]
    fn config_file_replaces_the_gate_flags() {
        let dir = std::env::temp_dir().join(format!("ppm-config-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("mkdir");
        let file = dir.join("pacemaker.json");
        std::fs::write(
            &file,
            r#"{"throttleConfig":{"maxConcurrent":{"value":7},"rateLimit":{"fillFactor":"2s","burst":2}}}"#,
        )
        .expect("write");
        let path = file.to_str().expect("utf-8");
        let config = run(&["--config", path], CLUSTER).expect("parses");
        assert_eq!(config.throttle.max_concurrent, MaxConcurrent::Value(7));
        assert_eq!(config.config_file, Some(file.clone()));
        let err = run(&["--config", path, "--max-concurrent", "3"], CLUSTER).expect_err("conflict");
        assert!(
            err.to_string().contains("cannot be given together"),
            "{err}"
        );
        std::fs::write(&file, "{}").expect("write");
        let err = run(&["--config", path], CLUSTER).expect_err("bad file");
        assert!(err.to_string().contains("throttleConfig"), "{err}");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn status_takes_only_the_socket() {
        let env = env_with(&[]);
        let parsed = parse(
            ["--status", "--socket", "/tmp/s.sock"].map(OsString::from),
            &env,
        );
        assert_eq!(
            parsed,
            Ok(Command::Status {
                socket: PathBuf::from("/tmp/s.sock")
            })
        );
        let parsed = parse(["--status"].map(OsString::from), &env);
        assert_eq!(
            parsed,
            Ok(Command::Status {
                socket: PathBuf::from(DEFAULT_SOCKET)
            })
        );
        let parsed = parse(
            ["--status", "--max-concurrent", "2"].map(OsString::from),
            &env,
        );
        assert!(matches!(
            parsed,
            Err(ConfigError::Conflict("--status", "--max-concurrent"))
        ));
    }

    #[test]
    fn gate_flag_errors_name_the_flag() {
        let cases: &[(&[&str], &str)] = &[
            (
                &["--max-concurrent", "2", "--max-concurrent-per-core", "1"],
                "cannot be given",
            ),
            (
                &["--max-concurrent-per-core", "0"],
                "--max-concurrent-per-core",
            ),
            (&["--rate-fill-factor", "0s"], "--rate-fill-factor"),
            (&["--rate-fill-factor", "fast"], "--rate-fill-factor"),
            (
                &["--rate-burst", "2"],
                "--rate-burst needs --rate-fill-factor",
            ),
            (
                &["--rate-fill-factor", "1s", "--rate-burst", "0"],
                "--rate-burst",
            ),
            (&["--release-on", "warm"], "--release-on"),
            (&["--skip-daemonsets", "yes"], "--skip-daemonsets"),
            (
                &["--namespace-exclusions", "a,,b"],
                "--namespace-exclusions",
            ),
            (
                &["--namespace-exclusions", "Kube"],
                "--namespace-exclusions",
            ),
            (&["--unknown-pod-wait-ms", "60001"], "--unknown-pod-wait-ms"),
            (&["--unknown-pod-policy", "fail"], "--unknown-pod-policy"),
            (&["--state-file", ""], "--state-file"),
        ];
        for (args, want) in cases {
            let err = run(args, CLUSTER).expect_err(&format!("{args:?}"));
            assert!(err.to_string().contains(want), "{args:?}: {err}");
        }
    }
}
