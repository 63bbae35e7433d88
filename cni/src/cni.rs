// SPDX-License-Identifier: Apache-2.0
//! Parsing of what the container runtime hands the plugin: the `CNI_*` environment and the
//! network config on stdin, each turned once into a validated type.
//!
//! The config keys follow the Go implementation of pod-pacemaker so that existing conflists keep
//! working (docs/configuration.md). Unknown keys are ignored; a known key with the wrong type is
//! rejected with its name. `prevResult` is kept as the exact bytes received, because a chained
//! plugin that does not change the result must hand it on unchanged.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::time::Duration;

use serde::de::DeserializeOwned;
use serde_json::value::RawValue;

use crate::error::PluginError;
use crate::protocol::Token;

/// The CNI versions this plugin speaks, oldest first.
pub const SUPPORTED_VERSIONS: &[&str] = &["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"];

/// The socket the agent listens on unless the config says otherwise.
pub const DEFAULT_SOCKET_PATH: &str = "/var/run/pod-pacemaker/pod-pacemaker.sock";

/// The default for `maxWaitTimeInSeconds`.
pub const DEFAULT_MAX_WAIT_SECONDS: u64 = 120;

/// The largest `maxWaitTimeInSeconds` we accept. The kubelet gives RunPodSandbox
/// 2 × runtimeRequestTimeout = 240 s by default; the primary plugin, the runtime and the teardown
/// of a failed attempt need the rest, or the kubelet's retry collides with the old attempt
/// ("failed to reserve sandbox name", containerd#12438).
pub const MAX_WAIT_LIMIT_SECONDS: u64 = 220;

/// The annotation that skips (`"true"`) or forces (any other value) pacing of a pod.
pub const SKIP_ANNOTATION: &str = "pod-pacemaker/skip";

/// The capability under which runtimes pass pod annotations in `runtimeConfig`.
const ANNOTATIONS_CAPABILITY: &str = "io.kubernetes.cri.pod-annotations";

/// Stdin larger than this is refused: a real config with its `prevResult` is a few KiB.
pub const MAX_STDIN_BYTES: usize = 1 << 20;

/// A CNI command, from `CNI_COMMAND`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Command {
    Add,
    Check,
    Del,
    Gc,
    Status,
    Version,
}

impl Command {
    /// Parses `CNI_COMMAND`.
    pub fn parse(value: &str) -> Result<Self, PluginError> {
        Ok(match value {
            "ADD" => Command::Add,
            "CHECK" => Command::Check,
            "DEL" => Command::Del,
            "GC" => Command::Gc,
            "STATUS" => Command::Status,
            "VERSION" => Command::Version,
            other => return Err(PluginError::UnknownCommand(other.to_owned())),
        })
    }
}

/// The pod an ADD is for, from `CNI_ARGS`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PodIdentity {
    pub namespace: Token,
    pub name: Token,
    pub uid: Option<Token>,
}

/// The validated `CNI_*` environment of an ADD.
#[derive(Debug)]
pub struct AddEnv {
    pub container_id: String,
    /// `None` when `CNI_ARGS` does not name a Kubernetes pod (not a kubelet-driven call).
    pub pod: Option<PodIdentity>,
}

/// Reads a variable through `get`, rejecting non-UTF-8 values.
pub fn env_var(
    get: &dyn Fn(&str) -> Option<OsString>,
    name: &'static str,
) -> Result<Option<String>, PluginError> {
    match get(name) {
        None => Ok(None),
        Some(value) => value
            .into_string()
            .map(Some)
            .map_err(|_| PluginError::EnvNotUtf8(name)),
    }
}

fn required_env(
    get: &dyn Fn(&str) -> Option<OsString>,
    name: &'static str,
) -> Result<String, PluginError> {
    match env_var(get, name)? {
        Some(value) if !value.is_empty() => Ok(value),
        _ => Err(PluginError::EnvMissing(name)),
    }
}

impl AddEnv {
    /// Checks the variables ADD and CHECK need (SPEC.md, "Parameters").
    pub fn parse(get: &dyn Fn(&str) -> Option<OsString>) -> Result<Self, PluginError> {
        // SPEC.md, "Parameters": an alphanumeric character, then alphanumerics, '_', '.', '-'.
        let container_id = required_env(get, "CNI_CONTAINERID")?;
        if !container_id.starts_with(|c: char| c.is_ascii_alphanumeric())
            || !container_id
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'))
        {
            return Err(PluginError::EnvInvalid {
                name: "CNI_CONTAINERID",
                reason: "must be a letter or digit followed by letters, digits, '_', '.' or '-'"
                    .to_owned(),
            });
        }
        required_env(get, "CNI_NETNS")?;
        let ifname = required_env(get, "CNI_IFNAME")?;
        // IFNAMSIZ is 16 including the NUL (include/uapi/linux/if.h).
        if ifname.len() > 15
            || ifname == "."
            || ifname == ".."
            || ifname.contains(['/', ':'])
            || ifname.contains(char::is_whitespace)
        {
            return Err(PluginError::EnvInvalid {
                name: "CNI_IFNAME",
                reason: format!("{ifname:?} is not a valid interface name"),
            });
        }
        let args = env_var(get, "CNI_ARGS")?.unwrap_or_default();
        let pod = parse_pod_identity(&args)?;
        Ok(Self { container_id, pod })
    }
}

/// Reads `K8S_POD_NAMESPACE`, `K8S_POD_NAME` and `K8S_POD_UID` from `CNI_ARGS` (`K=V;K=V`).
fn parse_pod_identity(args: &str) -> Result<Option<PodIdentity>, PluginError> {
    let mut namespace = None;
    let mut name = None;
    let mut uid = None;
    for pair in args.split(';').filter(|p| !p.is_empty()) {
        let Some((key, value)) = pair.split_once('=') else {
            return Err(PluginError::EnvInvalid {
                name: "CNI_ARGS",
                reason: format!("{pair:?} is not KEY=VALUE"),
            });
        };
        let slot = match key {
            "K8S_POD_NAMESPACE" => &mut namespace,
            "K8S_POD_NAME" => &mut name,
            "K8S_POD_UID" => &mut uid,
            _ => continue,
        };
        // Runtimes may pass an empty value for a key they know nothing about.
        if value.is_empty() {
            continue;
        }
        let token = Token::new(value).map_err(|err| PluginError::EnvInvalid {
            name: "CNI_ARGS",
            reason: format!("{key}: {err}"),
        })?;
        *slot = Some(token);
    }
    Ok(match (namespace, name) {
        (Some(namespace), Some(name)) => Some(PodIdentity {
            namespace,
            name,
            uid,
        }),
        _ => None,
    })
}

/// The default for `agentRestartGraceSeconds`.
pub const DEFAULT_AGENT_RESTART_GRACE_SECONDS: u64 = 30;

/// What ADD does when `maxWaitTimeInSeconds` passes without a grant.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OnDeadline {
    /// Start the pod without a slot (fail-open).
    Proceed,
    /// Fail with CNI error 11; the kubelet retries the sandbox and the agent keeps the pod's
    /// place in the queue.
    Retry,
}

/// The network config on stdin, validated.
#[derive(Debug)]
pub struct NetConf {
    pub cni_version: String,
    pub socket_path: String,
    pub max_wait: Duration,
    pub on_deadline: OnDeadline,
    /// How long after the agent's last heartbeat an unreachable agent is still waited for.
    pub agent_restart_grace: Duration,
    /// A file that receives a copy of the log lines, if set.
    pub log_file: Option<String>,
    pub namespace_exclusions: Vec<String>,
    pub success_on_connection_timeout: bool,
    pub disable_throttling: bool,
    /// The pod's annotations from `runtimeConfig`, when the runtime passes them.
    pub pod_annotations: Option<BTreeMap<String, String>>,
    /// `prevResult` exactly as received.
    pub prev_result: Option<Box<RawValue>>,
}

impl NetConf {
    /// Parses and validates the config. `cniVersion` must be one we speak.
    pub fn parse(stdin: &[u8]) -> Result<Self, PluginError> {
        let top: BTreeMap<String, Box<RawValue>> = serde_json::from_slice(stdin)
            .map_err(|err| PluginError::DecodeConfig(err.to_string()))?;
        let keys = Keys(&top);

        let cni_version: String = keys.required("cniVersion")?;
        if !SUPPORTED_VERSIONS.contains(&cni_version.as_str()) {
            return Err(PluginError::IncompatibleVersion(cni_version));
        }

        let socket_path: String = keys
            .optional("daemonSocketPath")?
            .unwrap_or_else(|| DEFAULT_SOCKET_PATH.to_owned());
        if !socket_path.starts_with('/') {
            return Err(invalid("daemonSocketPath", "must be an absolute path"));
        }
        // sun_path holds 108 bytes including the terminating NUL (include/uapi/linux/un.h).
        if socket_path.len() > 107 || socket_path.contains('\0') {
            return Err(invalid(
                "daemonSocketPath",
                "must be at most 107 bytes without NUL (a Unix socket path)",
            ));
        }

        let max_wait_seconds: u64 = keys
            .optional("maxWaitTimeInSeconds")?
            .unwrap_or(DEFAULT_MAX_WAIT_SECONDS);
        if max_wait_seconds == 0 {
            // Zero would never ask the agent: every pod would pass unpaced (or, with
            // onDeadline "retry", none would ever start). disableThrottling says "off" plainly.
            return Err(invalid(
                "maxWaitTimeInSeconds",
                "must be at least 1; use disableThrottling to turn pacing off",
            ));
        }
        if max_wait_seconds > MAX_WAIT_LIMIT_SECONDS {
            return Err(invalid(
                "maxWaitTimeInSeconds",
                &format!(
                    "{max_wait_seconds} leaves no safe margin under the kubelet's 240 s sandbox \
                     budget; use at most {MAX_WAIT_LIMIT_SECONDS}"
                ),
            ));
        }

        let on_deadline = match keys.optional::<String>("onDeadline")?.as_deref() {
            None | Some("proceed") => OnDeadline::Proceed,
            Some("retry") => OnDeadline::Retry,
            Some(other) => {
                return Err(invalid(
                    "onDeadline",
                    &format!("{other:?} is neither \"proceed\" nor \"retry\""),
                ))
            }
        };

        let grace_seconds: u64 = keys
            .optional("agentRestartGraceSeconds")?
            .unwrap_or(DEFAULT_AGENT_RESTART_GRACE_SECONDS);
        if grace_seconds > MAX_WAIT_LIMIT_SECONDS {
            return Err(invalid(
                "agentRestartGraceSeconds",
                &format!("must be at most {MAX_WAIT_LIMIT_SECONDS}"),
            ));
        }

        let log_file: Option<String> = keys.optional("logFile")?;
        if log_file.as_ref().is_some_and(|path| !path.starts_with('/')) {
            return Err(invalid("logFile", "must be an absolute path"));
        }

        let namespace_exclusions: Vec<String> = keys
            .optional("namespaceExclusions")?
            .unwrap_or_else(|| vec!["kube-system".to_owned()]);

        Ok(Self {
            pod_annotations: keys.pod_annotations()?,
            success_on_connection_timeout: keys
                .optional("successOnConnectionTimeout")?
                .unwrap_or(true),
            disable_throttling: keys.optional("disableThrottling")?.unwrap_or(false),
            prev_result: top
                .get("prevResult")
                .cloned()
                .filter(|raw| raw.get() != "null"),
            cni_version,
            socket_path,
            max_wait: Duration::from_secs(max_wait_seconds),
            on_deadline,
            agent_restart_grace: Duration::from_secs(grace_seconds),
            log_file,
            namespace_exclusions,
        })
    }

    /// `prevResult` in the config's `cniVersion`, for stdout.
    ///
    /// When the previous plugin answered in the config's version (the normal case), its bytes
    /// are returned unchanged, fields we do not know included. Otherwise the result is converted
    /// the way libcni converts between result versions: 0.3.x and 0.4.0 carry `version` ("4" or
    /// "6") in each `ips` entry, 1.x does not.
    pub fn prev_result_output(&self) -> Result<String, PluginError> {
        let raw = self
            .prev_result
            .as_ref()
            .ok_or(PluginError::MissingPrevResult)?;
        let mut result: serde_json::Map<String, serde_json::Value> =
            serde_json::from_str(raw.get())
                .map_err(|_| invalid("prevResult", "must be a JSON object"))?;
        let from = match result.get("cniVersion") {
            None => return Ok(raw.get().to_owned()),
            Some(serde_json::Value::String(version)) => version.clone(),
            Some(_) => return Err(invalid("prevResult.cniVersion", "must be a string")),
        };
        if from == self.cni_version {
            return Ok(raw.get().to_owned());
        }
        if !SUPPORTED_VERSIONS.contains(&from.as_str()) {
            return Err(invalid(
                "prevResult.cniVersion",
                &format!("{from:?} is not a supported version"),
            ));
        }
        let to_pre_1 = !self.cni_version.starts_with("1.");
        if let Some(serde_json::Value::Array(ips)) = result.get_mut("ips") {
            for ip in ips.iter_mut().filter_map(serde_json::Value::as_object_mut) {
                if to_pre_1 {
                    let v6 = ip
                        .get("address")
                        .and_then(serde_json::Value::as_str)
                        .is_some_and(|address| address.contains(':'));
                    ip.insert("version".to_owned(), if v6 { "6" } else { "4" }.into());
                } else {
                    ip.remove("version");
                }
            }
        }
        result.insert("cniVersion".to_owned(), self.cni_version.clone().into());
        Ok(serde_json::Value::Object(result).to_string())
    }

    /// The pod's `pod-pacemaker/skip` annotation, if the runtime passed annotations.
    pub fn skip_annotation(&self) -> Option<&str> {
        self.pod_annotations
            .as_ref()
            .and_then(|annotations| annotations.get(SKIP_ANNOTATION))
            .map(String::as_str)
    }
}

/// Reads only the `cniVersion` of a config that may be otherwise invalid, for error replies.
pub fn peek_cni_version(stdin: &[u8]) -> Option<String> {
    #[derive(serde::Deserialize)]
    struct Peek {
        #[serde(rename = "cniVersion")]
        cni_version: String,
    }
    let peek: Peek = serde_json::from_slice(stdin).ok()?;
    SUPPORTED_VERSIONS
        .contains(&peek.cni_version.as_str())
        .then_some(peek.cni_version)
}

fn invalid(key: &str, reason: &str) -> PluginError {
    PluginError::ConfigInvalid {
        key: key.to_owned(),
        reason: reason.to_owned(),
    }
}

/// Typed access to the top-level keys, naming the key in every error.
struct Keys<'a>(&'a BTreeMap<String, Box<RawValue>>);

impl Keys<'_> {
    fn optional<T: DeserializeOwned>(&self, key: &str) -> Result<Option<T>, PluginError> {
        let Some(raw) = self.0.get(key) else {
            return Ok(None);
        };
        if raw.get() == "null" {
            return Ok(None);
        }
        serde_json::from_str(raw.get())
            .map(Some)
            .map_err(|err| invalid(key, &err.to_string()))
    }

    fn required<T: DeserializeOwned>(&self, key: &str) -> Result<T, PluginError> {
        self.optional(key)?
            .ok_or_else(|| invalid(key, "is required"))
    }

    /// `runtimeConfig["io.kubernetes.cri.pod-annotations"]`. Absent or null at either level
    /// means the runtime does not pass annotations (CRI-O before 1.29, cri-o#7122).
    fn pod_annotations(&self) -> Result<Option<BTreeMap<String, String>>, PluginError> {
        let runtime: Option<BTreeMap<String, Box<RawValue>>> = self.optional("runtimeConfig")?;
        let Some(raw) = runtime
            .as_ref()
            .and_then(|rc| rc.get(ANNOTATIONS_CAPABILITY))
        else {
            return Ok(None);
        };
        serde_json::from_str(raw.get()).map_err(|err| {
            invalid(
                &format!("runtimeConfig.{ANNOTATIONS_CAPABILITY}"),
                &err.to_string(),
            )
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env<'a>(vars: &'a [(&'a str, &'a str)]) -> impl Fn(&str) -> Option<OsString> + 'a {
        move |name| {
            vars.iter()
                .find(|(k, _)| *k == name)
                .map(|(_, v)| OsString::from(*v))
        }
    }

    const ADD_ENV: &[(&str, &str)] = &[
        ("CNI_CONTAINERID", "abc123"),
        ("CNI_NETNS", "/var/run/netns/x"),
        ("CNI_IFNAME", "eth0"),
        (
            "CNI_ARGS",
            "IgnoreUnknown=1;K8S_POD_NAMESPACE=shop;K8S_POD_NAME=cart-1;\
             K8S_POD_INFRA_CONTAINER_ID=abc123;K8S_POD_UID=0b6c5e1e-3f0b",
        ),
    ];

    #[test]
    fn add_env_reads_the_pod_identity() {
        let parsed = AddEnv::parse(&env(ADD_ENV)).expect("valid env");
        let pod = parsed.pod.expect("pod identity");
        assert_eq!(pod.namespace.as_str(), "shop");
        assert_eq!(pod.name.as_str(), "cart-1");
        assert_eq!(
            pod.uid.map(|u| u.to_string()).as_deref(),
            Some("0b6c5e1e-3f0b")
        );
    }

    #[test]
    fn add_env_without_pod_args_has_no_identity() {
        let vars = [
            ("CNI_CONTAINERID", "abc"),
            ("CNI_NETNS", "/n"),
            ("CNI_IFNAME", "eth0"),
        ];
        assert!(AddEnv::parse(&env(&vars)).expect("valid").pod.is_none());
    }

    #[test]
    fn add_env_names_the_bad_variable() {
        for (drop, want) in [
            ("CNI_CONTAINERID", "CNI_CONTAINERID is not set"),
            ("CNI_NETNS", "CNI_NETNS is not set"),
            ("CNI_IFNAME", "CNI_IFNAME is not set"),
        ] {
            let vars: Vec<_> = ADD_ENV
                .iter()
                .copied()
                .filter(|(k, _)| *k != drop)
                .collect();
            let err = AddEnv::parse(&env(&vars)).expect_err(drop);
            assert_eq!(err.to_string(), want);
            assert_eq!(err.code(), 4);
        }
        let mut vars = ADD_ENV.to_vec();
        vars[3] = ("CNI_ARGS", "K8S_POD_NAME=a b;K8S_POD_NAMESPACE=x");
        let err = AddEnv::parse(&env(&vars)).expect_err("bad name");
        assert!(err.to_string().contains("K8S_POD_NAME"), "{err}");
        vars[3] = ("CNI_ARGS", "garbage");
        assert!(AddEnv::parse(&env(&vars)).is_err());
        vars[2] = ("CNI_IFNAME", "a-very-long-interface-name");
        assert!(AddEnv::parse(&env(&vars)).is_err());
        vars[2] = ("CNI_IFNAME", "eth 0");
        assert!(AddEnv::parse(&env(&vars)).is_err());
        let mut vars = ADD_ENV.to_vec();
        vars[0] = ("CNI_CONTAINERID", "-abc");
        assert!(AddEnv::parse(&env(&vars)).is_err());
    }

    #[test]
    fn config_defaults_match_the_go_implementation() {
        let conf = NetConf::parse(br#"{"cniVersion":"1.0.0","name":"n","type":"pod-pacemaker"}"#)
            .expect("valid");
        assert_eq!(conf.socket_path, DEFAULT_SOCKET_PATH);
        assert_eq!(conf.max_wait, Duration::from_secs(120));
        assert_eq!(conf.namespace_exclusions, ["kube-system"]);
        assert!(conf.success_on_connection_timeout);
        assert!(!conf.disable_throttling);
        assert!(conf.pod_annotations.is_none());
        assert!(conf.prev_result.is_none());
        assert_eq!(conf.on_deadline, OnDeadline::Proceed);
        assert_eq!(conf.agent_restart_grace, Duration::from_secs(30));
        assert!(conf.log_file.is_none());
    }

    #[test]
    fn prev_result_is_kept_byte_for_byte() {
        let prev = r#"{ "cniVersion":"1.0.0", "zz":1, "ips":[{"address":"10.1.0.5/24"}] }"#;
        let stdin = format!(r#"{{"cniVersion":"1.0.0","prevResult":{prev}}}"#);
        let conf = NetConf::parse(stdin.as_bytes()).expect("valid");
        assert_eq!(conf.prev_result.expect("prevResult").get(), prev);
    }

    fn output_for(conf_version: &str, prev: &str) -> Result<String, PluginError> {
        let stdin = format!(r#"{{"cniVersion":"{conf_version}","prevResult":{prev}}}"#);
        NetConf::parse(stdin.as_bytes())
            .expect("valid")
            .prev_result_output()
    }

    #[test]
    fn prev_result_is_converted_to_the_config_version() {
        let old = r#"{"cniVersion":"0.4.0","ips":[{"version":"4","address":"10.1.0.5/24"},
            {"version":"6","address":"fd00::5/64"}],"dns":{},"extra":true}"#;
        let out: serde_json::Value =
            serde_json::from_str(&output_for("1.0.0", old).expect("converts")).expect("JSON");
        assert_eq!(out["cniVersion"], "1.0.0");
        assert!(out["ips"][0].get("version").is_none());
        assert_eq!(out["extra"], true);

        let new = r#"{"cniVersion":"1.1.0","ips":[{"address":"10.1.0.5/24"},
            {"address":"fd00::5/64"}]}"#;
        let out: serde_json::Value =
            serde_json::from_str(&output_for("0.3.1", new).expect("converts")).expect("JSON");
        assert_eq!(out["cniVersion"], "0.3.1");
        assert_eq!(out["ips"][0]["version"], "4");
        assert_eq!(out["ips"][1]["version"], "6");
    }

    #[test]
    fn bad_prev_results_are_config_errors() {
        for prev in [
            r#"[1]"#,
            r#""x""#,
            r#"{"cniVersion":4}"#,
            r#"{"cniVersion":"0.1.0"}"#,
        ] {
            let err = output_for("1.0.0", prev).expect_err(prev);
            assert_eq!(err.code(), 7, "{prev}");
            assert!(err.to_string().contains("prevResult"), "{prev}: {err}");
        }
    }

    #[test]
    fn wrong_types_name_the_key() {
        for (body, key) in [
            (
                r#"{"cniVersion":"1.0.0","maxWaitTimeInSeconds":"10"}"#,
                "maxWaitTimeInSeconds",
            ),
            (
                r#"{"cniVersion":"1.0.0","namespaceExclusions":"a"}"#,
                "namespaceExclusions",
            ),
            (
                r#"{"cniVersion":"1.0.0","disableThrottling":1}"#,
                "disableThrottling",
            ),
            (
                r#"{"cniVersion":"1.0.0","daemonSocketPath":"rel.sock"}"#,
                "daemonSocketPath",
            ),
            (
                r#"{"cniVersion":"1.0.0","maxWaitTimeInSeconds":221}"#,
                "maxWaitTimeInSeconds",
            ),
            (r#"{"cniVersion":7}"#, "cniVersion"),
            (
                r#"{"cniVersion":"1.0.0","maxWaitTimeInSeconds":0}"#,
                "maxWaitTimeInSeconds",
            ),
            (
                r#"{"cniVersion":"1.0.0","daemonSocketPath":"/a\u0000b"}"#,
                "daemonSocketPath",
            ),
            (
                r#"{"cniVersion":"1.0.0","onDeadline":"panic"}"#,
                "onDeadline",
            ),
            (
                r#"{"cniVersion":"1.0.0","agentRestartGraceSeconds":-1}"#,
                "agentRestartGraceSeconds",
            ),
            (r#"{"cniVersion":"1.0.0","logFile":"x.log"}"#, "logFile"),
            (
                r#"{"cniVersion":"1.0.0","runtimeConfig":{"io.kubernetes.cri.pod-annotations":[1]}}"#,
                "runtimeConfig.io.kubernetes.cri.pod-annotations",
            ),
        ] {
            let err = NetConf::parse(body.as_bytes()).expect_err(body);
            assert_eq!(err.code(), 7, "{body}");
            assert!(err.to_string().contains(key), "{body}: {err}");
        }
    }

    #[test]
    fn bad_json_and_versions_get_their_codes() {
        assert_eq!(
            NetConf::parse(b"{\"cniVersion\":")
                .map(|_| ())
                .unwrap_err()
                .code(),
            6
        );
        assert_eq!(NetConf::parse(b"[]").map(|_| ()).unwrap_err().code(), 6);
        let err = NetConf::parse(br#"{"cniVersion":"0.2.0"}"#).expect_err("old version");
        assert_eq!(err.code(), 1);
    }

    #[test]
    fn null_runtime_config_means_no_annotations() {
        for body in [
            r#"{"cniVersion":"1.0.0","runtimeConfig":null}"#,
            r#"{"cniVersion":"1.0.0","runtimeConfig":{"io.kubernetes.cri.pod-annotations":null}}"#,
            r#"{"cniVersion":"1.0.0","runtimeConfig":{}}"#,
        ] {
            let conf = NetConf::parse(body.as_bytes()).expect(body);
            assert!(conf.pod_annotations.is_none(), "{body}");
            assert_eq!(conf.skip_annotation(), None);
        }
        let body = r#"{"cniVersion":"1.0.0","runtimeConfig":
            {"io.kubernetes.cri.pod-annotations":{"pod-pacemaker/skip":"true"}}}"#;
        let conf = NetConf::parse(body.as_bytes()).expect("valid");
        assert_eq!(conf.skip_annotation(), Some("true"));
    }

    #[test]
    fn peek_finds_a_supported_version_only() {
        assert_eq!(peek_cni_version(br#"{"cniVersion":"0.4.0","x":[}"#), None);
        assert_eq!(
            peek_cni_version(br#"{"cniVersion":"0.4.0","maxWaitTimeInSeconds":"x"}"#).as_deref(),
            Some("0.4.0")
        );
        assert_eq!(peek_cni_version(br#"{"cniVersion":"9.9.9"}"#), None);
    }
}
