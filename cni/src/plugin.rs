// SPDX-License-Identifier: Apache-2.0
//! The CNI commands: what each one reads, decides and prints.
//!
//! Only ADD ever waits, and only through [`client::wait_for_slot`] with a deadline. DEL, CHECK,
//! STATUS, GC and VERSION answer at once without the agent (SPEC.md, "CNI operations"): a DEL
//! that failed or waited would leak the primary plugin's resources.

use std::ffi::OsString;
use std::path::Path;
use std::time::{Duration, Instant, SystemTime};

use crate::client::{self, WaitOutcome};
use crate::cni::{self, AddEnv, Command, NetConf, OnDeadline, PodIdentity};
use crate::error::PluginError;
use crate::heartbeat;
use crate::logger;
use crate::protocol::{GrantReason, WaitRequest};

/// Runs one invocation. `Ok(Some(json))` is the result for stdout; `Ok(None)` means success with
/// nothing to print.
pub fn run(
    get_env: &dyn Fn(&str) -> Option<OsString>,
    stdin: Result<Vec<u8>, PluginError>,
) -> Result<Option<String>, PluginError> {
    let command = match cni::env_var(get_env, "CNI_COMMAND")? {
        Some(value) => Command::parse(&value)?,
        None => return Err(PluginError::EnvMissing("CNI_COMMAND")),
    };
    log::debug!("{command:?}");
    match command {
        // DEL succeeds whatever it is given: there is nothing of ours to clean up, and a failed
        // DEL makes the runtime retry and leaks the primary's resources meanwhile.
        Command::Del => Ok(None),
        Command::Version => Ok(Some(version_json())),
        Command::Check | Command::Gc | Command::Status => {
            NetConf::parse(&stdin?)?;
            Ok(None)
        }
        Command::Add => add(get_env, &stdin?).map(Some),
    }
}

fn version_json() -> String {
    serde_json::json!({
        "cniVersion": cni::SUPPORTED_VERSIONS[cni::SUPPORTED_VERSIONS.len() - 1],
        "supportedVersions": cni::SUPPORTED_VERSIONS,
    })
    .to_string()
}

/// ADD: decide whether to pace, wait for a slot if so, then hand `prevResult` on.
fn add(get_env: &dyn Fn(&str) -> Option<OsString>, stdin: &[u8]) -> Result<String, PluginError> {
    let start = Instant::now();

    // 1. Parse everything before deciding anything.
    let env = AddEnv::parse(get_env)?;
    let conf = NetConf::parse(stdin)?;
    if let Some(path) = &conf.log_file {
        logger::set_file(Path::new(path));
    }
    let output = conf.prev_result_output()?;

    // 2. Skip rules that need no agent.
    let pod = match decide(&conf, env.pod.as_ref()) {
        Decision::Skip(reason) => {
            log::debug!("container {}: not paced: {reason}", env.container_id);
            return Ok(output);
        }
        Decision::Pace(pod) => pod,
    };

    // 3. Wait for a slot, within the deadline. An agent that cannot be reached is waited for
    //    only while its heartbeat is recent, i.e. while it is restarting, not when it is gone.
    let socket = Path::new(&conf.socket_path);
    let deadline = start + conf.max_wait;
    let connect_until = || {
        heartbeat_age(socket)
            .and_then(|age| conf.agent_restart_grace.checked_sub(age))
            .map_or(start, |left| (start + left).min(deadline))
    };
    let request = WaitRequest {
        namespace: pod.namespace.clone(),
        name: pod.name.clone(),
        uid: pod.uid.clone(),
        timeout_ms: None,
    };
    let outcome = client::wait_for_slot(socket, &request, &connect_until, deadline);
    let waited_ms = u64::try_from(start.elapsed().as_millis()).unwrap_or(u64::MAX);
    let who = format!("{}/{}", pod.namespace, pod.name);

    // 4. Proceed, or fail where the config asks for it.
    match outcome {
        WaitOutcome::Granted(GrantReason::Slot) => {
            log::info!("{who}: start slot granted after {waited_ms} ms");
        }
        WaitOutcome::Granted(GrantReason::Skip) => {
            log::info!("{who}: agent does not pace this pod");
        }
        WaitOutcome::Unreachable(reason) => {
            if !conf.success_on_connection_timeout {
                return Err(PluginError::AgentUnavailable(reason));
            }
            log::warn!("{who}: fail-open: agent unreachable ({reason}); starting without a slot");
        }
        WaitOutcome::Refused(reason) => {
            if !conf.success_on_connection_timeout {
                return Err(PluginError::AgentRefused(reason));
            }
            log::warn!("{who}: fail-open: agent refused ({reason}); starting without a slot");
        }
        WaitOutcome::DeadlinePassed { last_error } => {
            if conf.on_deadline == OnDeadline::Retry {
                return Err(PluginError::DeadlineExceeded { waited_ms });
            }
            let why = last_error
                .map(|e| format!(", last error: {e}"))
                .unwrap_or_default();
            log::warn!(
                "{who}: fail-open: no slot within maxWaitTimeInSeconds ({waited_ms} ms{why}); \
                 starting without a slot"
            );
        }
    }
    Ok(output)
}

/// How long ago the agent last touched its heartbeat file, `None` if it never did.
fn heartbeat_age(socket: &Path) -> Option<Duration> {
    let modified = std::fs::metadata(heartbeat::path(socket))
        .ok()?
        .modified()
        .ok()?;
    // A heartbeat from the future (clock step) counts as fresh.
    Some(
        SystemTime::now()
            .duration_since(modified)
            .unwrap_or_default(),
    )
}

#[derive(Debug, PartialEq, Eq)]
enum Decision<'a> {
    Pace(&'a PodIdentity),
    Skip(&'static str),
}

/// The skip rules of the Go implementation, in its order: `disableThrottling`, then the
/// `pod-pacemaker/skip` annotation (`"true"` skips, any other value forces pacing even in an
/// excluded namespace), then `namespaceExclusions`.
fn decide<'a>(conf: &NetConf, pod: Option<&'a PodIdentity>) -> Decision<'a> {
    if conf.disable_throttling {
        return Decision::Skip("disableThrottling is set");
    }
    let Some(pod) = pod else {
        return Decision::Skip("CNI_ARGS names no Kubernetes pod");
    };
    match conf.skip_annotation() {
        Some("true") => return Decision::Skip("pod-pacemaker/skip annotation is \"true\""),
        Some(_) => return Decision::Pace(pod),
        None => {}
    }
    if conf
        .namespace_exclusions
        .iter()
        .any(|ns| ns == pod.namespace.as_str())
    {
        return Decision::Skip("namespace is excluded");
    }
    Decision::Pace(pod)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::Token;

    fn conf(extra: &str) -> NetConf {
        let body = format!(r#"{{"cniVersion":"1.0.0","prevResult":{{}}{extra}}}"#);
        NetConf::parse(body.as_bytes()).expect("valid config")
    }

    fn pod(namespace: &str) -> PodIdentity {
        PodIdentity {
            namespace: Token::new(namespace).expect("token"),
            name: Token::new("p").expect("token"),
            uid: None,
        }
    }

    fn annotated(value: &str) -> String {
        format!(
            r#","runtimeConfig":{{"io.kubernetes.cri.pod-annotations":{{"pod-pacemaker/skip":"{value}"}}}}"#
        )
    }

    #[test]
    fn skip_rules_follow_the_go_implementation() {
        let app = pod("shop");
        let system = pod("kube-system");
        assert_eq!(decide(&conf(""), Some(&app)), Decision::Pace(&app));
        assert!(matches!(
            decide(&conf(""), Some(&system)),
            Decision::Skip(_)
        ));
        assert!(matches!(decide(&conf(""), None), Decision::Skip(_)));
        let disabled = conf(r#","disableThrottling":true"#);
        assert!(matches!(decide(&disabled, Some(&app)), Decision::Skip(_)));
        assert!(matches!(
            decide(&conf(&annotated("true")), Some(&app)),
            Decision::Skip(_)
        ));
        // Any other value forces pacing, even in an excluded namespace.
        let forced = conf(&annotated("false"));
        assert_eq!(decide(&forced, Some(&system)), Decision::Pace(&system));
    }

    fn env<'a>(vars: &'a [(&'a str, &'a str)]) -> impl Fn(&str) -> Option<OsString> + 'a {
        move |name| {
            vars.iter()
                .find(|(k, _)| *k == name)
                .map(|(_, v)| OsString::from(*v))
        }
    }

    #[test]
    fn del_succeeds_on_any_input() {
        let vars = [("CNI_COMMAND", "DEL")];
        assert!(run(&env(&vars), Ok(b"not json".to_vec()))
            .expect("DEL")
            .is_none());
        let unreadable = Err(PluginError::StdinTooLarge { limit: 1 });
        assert!(run(&env(&vars), unreadable).expect("DEL").is_none());
    }

    #[test]
    fn version_lists_every_supported_version() {
        let out = run(&env(&[("CNI_COMMAND", "VERSION")]), Ok(Vec::new()))
            .expect("VERSION")
            .expect("output");
        let json: serde_json::Value = serde_json::from_str(&out).expect("JSON");
        assert_eq!(
            json["supportedVersions"],
            serde_json::json!(cni::SUPPORTED_VERSIONS)
        );
    }

    #[test]
    fn add_without_prev_result_is_a_config_error() {
        let vars = [
            ("CNI_COMMAND", "ADD"),
            ("CNI_CONTAINERID", "c1"),
            ("CNI_NETNS", "/n"),
            ("CNI_IFNAME", "eth0"),
        ];
        let err = run(&env(&vars), Ok(br#"{"cniVersion":"1.0.0"}"#.to_vec())).expect_err("ADD");
        assert_eq!(err.code(), 7);
    }

    #[test]
    fn add_with_unreachable_agent_proceeds_with_prev_result() {
        let vars = [
            ("CNI_COMMAND", "ADD"),
            ("CNI_CONTAINERID", "c1"),
            ("CNI_NETNS", "/n"),
            ("CNI_IFNAME", "eth0"),
            ("CNI_ARGS", "K8S_POD_NAMESPACE=shop;K8S_POD_NAME=p"),
        ];
        let prev = r#"{"cniVersion":"1.0.0","ips":[{"address":"10.0.0.2/24"}]}"#;
        let stdin = format!(
            r#"{{"cniVersion":"1.0.0","daemonSocketPath":"/nonexistent/s.sock","prevResult":{prev}}}"#
        );
        let out = run(&env(&vars), Ok(stdin.clone().into_bytes())).expect("fail-open");
        assert_eq!(out.as_deref(), Some(prev));

        let closed = stdin.replacen('{', r#"{"successOnConnectionTimeout":false,"#, 1);
        let err = run(&env(&vars), Ok(closed.into_bytes())).expect_err("fail-closed");
        assert_eq!(err.code(), 11);
    }

    #[test]
    fn missing_or_unknown_command_is_an_environment_error() {
        assert_eq!(run(&env(&[]), Ok(Vec::new())).expect_err("none").code(), 4);
        let vars = [("CNI_COMMAND", "EXPLODE")];
        assert_eq!(
            run(&env(&vars), Ok(Vec::new()))
                .expect_err("unknown")
                .code(),
            4
        );
    }
}
