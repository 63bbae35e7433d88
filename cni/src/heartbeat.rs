// SPDX-License-Identifier: Apache-2.0
//! The agent's heartbeat file, which tells the plugin whether an unreachable agent is restarting
//! or gone.
//!
//! The agent touches `<socket>.heartbeat` every [`INTERVAL`] while it serves. When the plugin
//! cannot connect, it looks at the file's age: a recent heartbeat means the agent is restarting
//! (a rollout, a crash the kubelet is about to restart), so the plugin keeps trying for
//! `agentRestartGraceSeconds` after the last beat; an old or missing one means the agent is gone
//! (uninstalled, not yet installed) and the pod passes at once. The file is deliberately left in
//! place when the agent stops cleanly, so a rollout restart counts as "restarting".

use std::path::{Path, PathBuf};
use std::time::Duration;

/// How often the agent touches the heartbeat file.
pub const INTERVAL: Duration = Duration::from_secs(5);

/// The heartbeat file that belongs to the agent socket at `socket`.
pub fn path(socket: &Path) -> PathBuf {
    let mut name = socket.as_os_str().to_owned();
    name.push(".heartbeat");
    PathBuf::from(name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn heartbeat_sits_beside_the_socket() {
        assert_eq!(
            path(Path::new("/var/run/pod-pacemaker/pod-pacemaker.sock")),
            Path::new("/var/run/pod-pacemaker/pod-pacemaker.sock.heartbeat")
        );
    }
}
