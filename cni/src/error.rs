// SPDX-License-Identifier: Apache-2.0
//! Every way the plugin can fail, and the one function that turns a failure into a CNI error.
//!
//! The codes follow the CNI specification's error table (SPEC.md, "Error"): 1 incompatible
//! version, 4 invalid environment variables, 6 failure to decode content, 7 invalid network
//! config, 11 try again later. Codes from 100 up are ours. Nothing outside [`PluginError::code`]
//! picks a code.

use std::fmt;
use std::io;

/// The CNI version we answer in when the config's own version is unknown or unusable.
pub const FALLBACK_CNI_VERSION: &str = "1.1.0";

/// A failed plugin invocation.
#[derive(Debug)]
pub enum PluginError {
    /// The agent answered with an error or something unreadable, and
    /// `successOnConnectionTimeout` is false.
    AgentRefused(String),
    /// The agent could not be reached and `successOnConnectionTimeout` is false.
    AgentUnavailable(String),
    /// A config key has the wrong type or an invalid value.
    ConfigInvalid { key: String, reason: String },
    /// Stdin is not a JSON object.
    DecodeConfig(String),
    /// The wait ended without a grant and `successOnConnectionTimeout` is false.
    DeadlineExceeded { waited_ms: u64 },
    /// A CNI environment variable has an invalid value.
    EnvInvalid { name: &'static str, reason: String },
    /// A CNI environment variable the command needs is not set.
    EnvMissing(&'static str),
    /// A CNI environment variable is not valid UTF-8.
    EnvNotUtf8(&'static str),
    /// `cniVersion` names a version this plugin does not speak.
    IncompatibleVersion(String),
    /// A chained ADD or CHECK came without `prevResult`.
    MissingPrevResult,
    /// Stdin could not be read.
    ReadStdin(io::Error),
    /// Stdin is larger than we accept.
    StdinTooLarge { limit: usize },
    /// `CNI_COMMAND` names a command we do not know.
    UnknownCommand(String),
}

impl PluginError {
    /// The CNI error code for this failure.
    pub fn code(&self) -> u32 {
        match self {
            PluginError::IncompatibleVersion(_) => 1,
            PluginError::EnvInvalid { .. }
            | PluginError::EnvMissing(_)
            | PluginError::EnvNotUtf8(_)
            | PluginError::ReadStdin(_)
            | PluginError::UnknownCommand(_) => 4,
            PluginError::DecodeConfig(_) | PluginError::StdinTooLarge { .. } => 6,
            PluginError::ConfigInvalid { .. } | PluginError::MissingPrevResult => 7,
            PluginError::AgentUnavailable(_) | PluginError::DeadlineExceeded { .. } => 11,
            // Ours: the agent is there but said no, so "try again later" would be a guess.
            PluginError::AgentRefused(_) => 100,
        }
    }

    /// The error object the specification prescribes, as one line of JSON for stdout.
    pub fn to_cni_json(&self, cni_version: Option<&str>) -> String {
        let body = serde_json::json!({
            "cniVersion": cni_version.unwrap_or(FALLBACK_CNI_VERSION),
            "code": self.code(),
            "msg": self.summary(),
            "details": self.to_string(),
        });
        body.to_string()
    }

    /// A short, fixed description of the kind of failure (the spec's `msg`).
    fn summary(&self) -> &'static str {
        match self {
            PluginError::AgentRefused(_) => "pod-pacemaker agent refused the request",
            PluginError::AgentUnavailable(_) => "pod-pacemaker agent unavailable",
            PluginError::ConfigInvalid { .. } => "invalid network config",
            PluginError::DecodeConfig(_) => "failed to decode network config",
            PluginError::DeadlineExceeded { .. } => "no start slot before the deadline",
            PluginError::EnvInvalid { .. } => "invalid environment variable",
            PluginError::EnvMissing(_) => "missing environment variable",
            PluginError::EnvNotUtf8(_) => "environment variable is not UTF-8",
            PluginError::IncompatibleVersion(_) => "incompatible CNI version",
            PluginError::MissingPrevResult => "missing prevResult",
            PluginError::ReadStdin(_) => "failed to read stdin",
            PluginError::StdinTooLarge { .. } => "network config too large",
            PluginError::UnknownCommand(_) => "unknown CNI command",
        }
    }
}

impl fmt::Display for PluginError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PluginError::AgentRefused(reason) => write!(f, "agent refused: {reason}"),
            PluginError::AgentUnavailable(reason) => write!(f, "agent unavailable: {reason}"),
            PluginError::ConfigInvalid { key, reason } => write!(f, "config key {key}: {reason}"),
            PluginError::DecodeConfig(reason) => write!(f, "stdin is not a JSON object: {reason}"),
            PluginError::DeadlineExceeded { waited_ms } => {
                write!(f, "no start slot granted within {waited_ms} ms")
            }
            PluginError::EnvInvalid { name, reason } => write!(f, "{name}: {reason}"),
            PluginError::EnvMissing(name) => write!(f, "{name} is not set"),
            PluginError::EnvNotUtf8(name) => write!(f, "{name} is not valid UTF-8"),
            PluginError::IncompatibleVersion(version) => write!(
                f,
                "cniVersion {version:?} is not supported (supported: {})",
                crate::cni::SUPPORTED_VERSIONS.join(", ")
            ),
            PluginError::MissingPrevResult => f.write_str(
                "prevResult is missing: pod-pacemaker must be chained after the primary plugin",
            ),
            PluginError::ReadStdin(err) => write!(f, "reading stdin: {err}"),
            PluginError::StdinTooLarge { limit } => {
                write!(f, "stdin is larger than {limit} bytes")
            }
            PluginError::UnknownCommand(cmd) => write!(f, "CNI_COMMAND {cmd:?} is not known"),
        }
    }
}

impl std::error::Error for PluginError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            PluginError::ReadStdin(err) => Some(err),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_json_follows_the_spec_shape() {
        let err = PluginError::EnvMissing("CNI_IFNAME");
        let json: serde_json::Value =
            serde_json::from_str(&err.to_cni_json(Some("0.4.0"))).expect("valid JSON");
        assert_eq!(json["cniVersion"], "0.4.0");
        assert_eq!(json["code"], 4);
        assert_eq!(json["msg"], "missing environment variable");
        assert_eq!(json["details"], "CNI_IFNAME is not set");
    }

    #[test]
    fn codes_follow_the_spec_table() {
        assert_eq!(PluginError::IncompatibleVersion("9".into()).code(), 1);
        assert_eq!(PluginError::DecodeConfig("x".into()).code(), 6);
        assert_eq!(PluginError::MissingPrevResult.code(), 7);
        assert_eq!(PluginError::AgentUnavailable("x".into()).code(), 11);
        assert_eq!(PluginError::AgentRefused("x".into()).code(), 100);
    }
}
