// SPDX-License-Identifier: Apache-2.0
//! Black-box tests of the plugin binary on bad input: each case must end in exit status 1 with
//! exactly one CNI error object on stdout carrying the expected code, and never in a panic or
//! anything else on stdout.

use std::io::Write;
use std::os::unix::ffi::OsStrExt;
use std::process::{Command, Stdio};

const PLUGIN: &str = env!("CARGO_BIN_EXE_pod-pacemaker");

const CHAINED: &str = r#"{"cniVersion":"1.0.0","name":"n","type":"pod-pacemaker",
    "daemonSocketPath":"/nonexistent/ppm.sock",
    "prevResult":{"cniVersion":"1.0.0","ips":[{"address":"10.0.0.2/24"}]}}"#;

struct Outcome {
    status: Option<i32>,
    stdout: Vec<u8>,
    stderr: String,
}

fn run(vars: &[(&str, &[u8])], stdin: &[u8]) -> Outcome {
    let mut command = Command::new(PLUGIN);
    command.env_clear();
    for (key, value) in vars {
        command.env(key, std::ffi::OsStr::from_bytes(value));
    }
    let mut child = command
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn the plugin");
    let mut input = child.stdin.take().expect("stdin");
    let stdin = stdin.to_vec();
    // Write from a thread: the plugin may stop reading early (oversized input) and exit.
    let writer = std::thread::spawn(move || {
        let _ = input.write_all(&stdin);
    });
    let output = child.wait_with_output().expect("wait for the plugin");
    let _ = writer.join();
    Outcome {
        status: output.status.code(),
        stdout: output.stdout,
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    }
}

fn add_env() -> Vec<(&'static str, &'static [u8])> {
    vec![
        ("CNI_COMMAND", b"ADD"),
        ("CNI_CONTAINERID", b"c0ffee"),
        ("CNI_NETNS", b"/var/run/netns/x"),
        ("CNI_IFNAME", b"eth0"),
        ("CNI_PATH", b"/opt/cni/bin"),
        ("CNI_ARGS", b"K8S_POD_NAMESPACE=shop;K8S_POD_NAME=cart"),
    ]
}

fn without(
    vars: &[(&'static str, &'static [u8])],
    name: &str,
) -> Vec<(&'static str, &'static [u8])> {
    vars.iter().copied().filter(|(k, _)| *k != name).collect()
}

fn with(
    vars: &[(&'static str, &'static [u8])],
    name: &'static str,
    value: &'static [u8],
) -> Vec<(&'static str, &'static [u8])> {
    let mut vars = without(vars, name);
    vars.push((name, value));
    vars
}

/// Asserts a clean CNI error with `code`, whose details mention `needle`.
fn assert_cni_error(outcome: &Outcome, code: u64, needle: &str) {
    assert_eq!(
        outcome.status,
        Some(1),
        "exit status; stderr: {}",
        outcome.stderr
    );
    assert!(!outcome.stderr.contains("panicked"), "{}", outcome.stderr);
    let error: serde_json::Value = serde_json::from_slice(&outcome.stdout)
        .unwrap_or_else(|e| panic!("stdout is not one JSON object ({e}): {:?}", outcome.stdout));
    assert_eq!(error["code"], code, "{error}");
    assert!(error["msg"].is_string(), "{error}");
    let details = error["details"].as_str().unwrap_or_default();
    assert!(
        details.contains(needle),
        "details {details:?} lack {needle:?}"
    );
}

#[test]
fn truncated_stdin_is_a_decoding_error() {
    let outcome = run(&add_env(), &CHAINED.as_bytes()[..40]);
    assert_cni_error(&outcome, 6, "not a JSON object");
}

#[test]
fn non_json_stdin_is_a_decoding_error() {
    assert_cni_error(&run(&add_env(), b"\x00\xffhello"), 6, "not a JSON object");
    assert_cni_error(&run(&add_env(), b""), 6, "not a JSON object");
    assert_cni_error(&run(&add_env(), b"[1,2]"), 6, "not a JSON object");
}

#[test]
fn huge_stdin_is_refused() {
    let huge = vec![b' '; 3 << 20];
    assert_cni_error(&run(&add_env(), &huge), 6, "larger than");
}

#[test]
fn deeply_nested_stdin_does_not_crash() {
    let deep = format!("{}{}", "[".repeat(100_000), "]".repeat(100_000));
    // Under an unknown key it is skipped like any unknown key; the missing prevResult remains.
    let stdin = format!(r#"{{"cniVersion":"1.0.0","x":{deep}}}"#);
    assert_cni_error(
        &run(&add_env(), stdin.as_bytes()),
        7,
        "prevResult is missing",
    );
    // As prevResult it is refused by name.
    let stdin = format!(r#"{{"cniVersion":"1.0.0","prevResult":{deep}}}"#);
    assert_cni_error(&run(&add_env(), stdin.as_bytes()), 7, "prevResult");
}

#[test]
fn wrong_types_are_config_errors_naming_the_key() {
    let stdin = CHAINED.replace(r#""name":"n""#, r#""maxWaitTimeInSeconds":"120""#);
    assert_cni_error(
        &run(&add_env(), stdin.as_bytes()),
        7,
        "maxWaitTimeInSeconds",
    );
}

#[test]
fn missing_variables_are_environment_errors() {
    for name in ["CNI_COMMAND", "CNI_CONTAINERID", "CNI_IFNAME", "CNI_NETNS"] {
        let outcome = run(&without(&add_env(), name), CHAINED.as_bytes());
        assert_cni_error(&outcome, 4, name);
    }
}

#[test]
fn non_utf8_variables_are_environment_errors() {
    let outcome = run(
        &with(&add_env(), "CNI_ARGS", b"K8S_POD_NAME=\xff"),
        CHAINED.as_bytes(),
    );
    assert_cni_error(&outcome, 4, "CNI_ARGS is not valid UTF-8");
    let outcome = run(
        &with(&add_env(), "CNI_COMMAND", b"A\xffD"),
        CHAINED.as_bytes(),
    );
    assert_cni_error(&outcome, 4, "CNI_COMMAND is not valid UTF-8");
}

#[test]
fn unsupported_version_is_error_1() {
    let stdin = CHAINED.replacen(r#""cniVersion":"1.0.0""#, r#""cniVersion":"0.2.0""#, 1);
    let outcome = run(&add_env(), stdin.as_bytes());
    assert_cni_error(&outcome, 1, "0.2.0");
    // The error object itself uses a version we speak.
    let error: serde_json::Value = serde_json::from_slice(&outcome.stdout).expect("JSON");
    assert_eq!(error["cniVersion"], "1.1.0");
}

#[test]
fn config_without_prev_result_is_not_chained() {
    let stdin = r#"{"cniVersion":"0.4.0","name":"n","type":"pod-pacemaker"}"#;
    let outcome = run(&add_env(), stdin.as_bytes());
    assert_cni_error(&outcome, 7, "must be chained");
    let error: serde_json::Value = serde_json::from_slice(&outcome.stdout).expect("JSON");
    assert_eq!(error["cniVersion"], "0.4.0");
}

#[test]
fn del_succeeds_on_garbage_and_prints_nothing() {
    let vars = with(&add_env(), "CNI_COMMAND", b"DEL");
    for stdin in [&b"garbage"[..], b"", &vec![b'{'; 2 << 20]] {
        let outcome = run(&vars, stdin);
        assert_eq!(outcome.status, Some(0), "{}", outcome.stderr);
        assert!(outcome.stdout.is_empty());
    }
}

#[test]
fn add_with_agent_absent_proceeds_and_prints_only_prev_result() {
    let outcome = run(&add_env(), CHAINED.as_bytes());
    assert_eq!(outcome.status, Some(0), "{}", outcome.stderr);
    let stdout = String::from_utf8(outcome.stdout).expect("UTF-8");
    assert_eq!(
        stdout,
        r#"{"cniVersion":"1.0.0","ips":[{"address":"10.0.0.2/24"}]}"#
    );
    assert!(outcome.stderr.contains("fail-open"), "{}", outcome.stderr);
}

#[test]
fn unwritable_log_file_never_fails_add() {
    let stdin = CHAINED.replacen('{', r#"{"logFile":"/nonexistent/dir/ppm.log","#, 1);
    let outcome = run(&add_env(), stdin.as_bytes());
    assert_eq!(outcome.status, Some(0), "{}", outcome.stderr);
    assert!(outcome.stderr.contains("fail-open"), "{}", outcome.stderr);
}

#[test]
fn log_file_gets_the_lines_and_is_capped() {
    let dir = std::env::temp_dir().join(format!("ppm-logfile-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let log = dir.join("ppm.log");
    let stdin = CHAINED.replacen('{', &format!(r#"{{"logFile":"{}","#, log.display()), 1);

    let outcome = run(&add_env(), stdin.as_bytes());
    assert_eq!(outcome.status, Some(0), "{}", outcome.stderr);
    let written = std::fs::read_to_string(&log).expect("log file");
    assert!(written.contains("fail-open"), "{written}");

    // A full file is moved aside before the next line, so the log never grows past the cap.
    let full = usize::try_from(pod_pacemaker::logger::MAX_LOG_FILE_BYTES).expect("fits");
    std::fs::write(&log, vec![b'x'; full]).expect("fill the log");
    let outcome = run(&add_env(), stdin.as_bytes());
    assert_eq!(outcome.status, Some(0), "{}", outcome.stderr);
    let rotated = dir.join("ppm.log.1");
    assert_eq!(
        std::fs::metadata(&rotated).expect("rotated").len(),
        full as u64
    );
    assert!(std::fs::metadata(&log).expect("new log").len() < 1024);
    let _ = std::fs::remove_dir_all(&dir);
}
