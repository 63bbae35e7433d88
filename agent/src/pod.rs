// SPDX-License-Identifier: Apache-2.0
//! What the agent knows about one pod: the facts pacing needs, reduced from the API object.
//!
//! The kube client builds a [`PodInfo`] from each pod it lists or watches (`kube::model`); the
//! scheduler keeps them in its cache and never sees the API object itself. Which pods are skipped
//! and when a slot is released is decided once, at that conversion, and stored here as
//! [`SkipReason`] and [`ReleaseReason`]. This module holds only the types, no I/O.

use std::fmt;

/// The facts about one pod of this node that pacing uses.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PodInfo {
    pub uid: String,
    pub namespace: String,
    pub name: String,
    /// `metadata.creationTimestamp` as the API server writes it (RFC 3339, UTC, whole seconds), so
    /// that string order is time order. Empty when absent.
    pub created: String,
    /// For the mirror pod of a static pod: the static pod's own UID (annotation
    /// `kubernetes.io/config.mirror`). The runtime passes that UID, not the mirror's, as
    /// `K8S_POD_UID`.
    pub mirror_of: Option<String>,
    /// `spec.priority`; logged only for now.
    // TODO(#6): order the queue by priority.
    pub priority: i32,
    /// hostNetwork pods never call CNI, so they are never adopted as holders.
    pub host_network: bool,
    /// Why the agent does not pace this pod, if it does not.
    pub skip: Option<SkipReason>,
    /// The pod has an IP or container statuses: its sandbox has been set up, so it went through
    /// CNI ADD already. Used only to rebuild the holders when the agent starts.
    pub sandbox_started: bool,
    /// Why a slot held by this pod is released now, if it is.
    pub release: Option<ReleaseReason>,
    /// The container and waiting reason or exit code behind [`ReleaseReason::ContainerError`],
    /// for the debug log.
    pub release_detail: Option<String>,
}

impl PodInfo {
    /// `namespace/name`, for log lines.
    pub fn full_name(&self) -> String {
        format!("{}/{}", self.namespace, self.name)
    }

    /// Whether the pod is being deleted (`metadata.deletionTimestamp` is set).
    pub fn is_deleting(&self) -> bool {
        self.release == Some(ReleaseReason::Deleting)
    }
}

/// Why the agent grants a pod at once without a slot.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SkipReason {
    /// The annotation `pod-pacemaker/skip: "true"`.
    Annotation,
    /// The first owner reference is a DaemonSet: node-level plumbing that must not queue behind
    /// application pods.
    DaemonSet,
}

/// Why a slot was released; the `reason=` of the `release` log line.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReleaseReason {
    /// The pod condition `Ready` is `True`.
    Ready,
    /// `status.phase` is `Failed`.
    Failed,
    /// `status.phase` is `Succeeded`.
    Succeeded,
    /// `metadata.deletionTimestamp` is set.
    Deleting,
    /// The pod was deleted, or is missing from a relist.
    Deleted,
    /// The slot was held for `--lease-seconds`.
    Lease,
    /// A container or init container cannot start (image pull failure, bad config, crash loop,
    /// failed init container). Such a pod may stay in this state for hours, so holding its slot
    /// would block the node (FIELD.md W3).
    ContainerError,
    /// The GRANTED line could not be written: the client left, so the pod did not get the slot.
    Undelivered,
    /// The slot was granted before the pod was known, and the pod turned out to be one the agent
    /// does not pace.
    Skip,
}

impl ReleaseReason {
    /// The stable word used in the `release` log line.
    pub fn as_str(self) -> &'static str {
        match self {
            ReleaseReason::Ready => "ready",
            ReleaseReason::Failed => "failed",
            ReleaseReason::Succeeded => "succeeded",
            ReleaseReason::Deleting => "deleting",
            ReleaseReason::Deleted => "deleted",
            ReleaseReason::Lease => "lease",
            ReleaseReason::ContainerError => "container-error",
            ReleaseReason::Undelivered => "undelivered",
            ReleaseReason::Skip => "skip",
        }
    }
}

impl fmt::Display for ReleaseReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl SkipReason {
    pub fn as_str(self) -> &'static str {
        match self {
            SkipReason::Annotation => "annotation",
            SkipReason::DaemonSet => "daemonset",
        }
    }
}

impl fmt::Display for SkipReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn release_words_are_stable() {
        let words: Vec<&str> = [
            ReleaseReason::Ready,
            ReleaseReason::Failed,
            ReleaseReason::Succeeded,
            ReleaseReason::Deleting,
            ReleaseReason::Deleted,
            ReleaseReason::Lease,
        ]
        .iter()
        .map(|r| r.as_str())
        .collect();
        assert_eq!(
            words,
            [
                "ready",
                "failed",
                "succeeded",
                "deleting",
                "deleted",
                "lease"
            ]
        );
    }
}
