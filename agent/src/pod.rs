// SPDX-License-Identifier: Apache-2.0
//! What the agent knows about one pod: the facts pacing needs, reduced from the API object.
//!
//! The kube client builds a [`PodInfo`] from each pod it lists or watches (`kube::model`); the
//! scheduler keeps them in its cache and never sees the API object itself. The conversion records
//! facts (the skip annotation, a DaemonSet owner, the release reasons that hold whatever the
//! options); [`PodInfo::skip_reason`] and [`PodInfo::release_reason`] turn them into decisions
//! under the agent's options ([`SkipOptions`], [`ReleaseOn`]). docs/scheduling.md lists every rule.
//! This module holds only types and those rules, no I/O.

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
    /// `spec.priority`: a higher priority is served first.
    pub priority: i32,
    /// hostNetwork pods never call CNI, so they are never adopted as holders.
    pub host_network: bool,
    /// The annotation or DaemonSet facts behind a skip; [`PodInfo::skip_reason`] decides.
    pub skip: Option<SkipReason>,
    /// The skip annotation is present with a value other than `"true"`: the pod is paced even
    /// where a default rule (excluded namespace, DaemonSet) would let it through.
    pub pace_forced: bool,
    /// The pod has an IP or container statuses: its sandbox has been set up, so it went through
    /// CNI ADD already. Used only to rebuild the holders when the agent starts.
    pub sandbox_started: bool,
    /// Every container status says `started`, and there is at least one (an empty list, as
    /// before the kubelet's first status update, is never "started": docs/prior-art.md W4, F20).
    pub started: bool,
    /// Why a slot held by this pod is released now under the default `--release-on ready`;
    /// [`PodInfo::release_reason`] applies the option.
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

    /// Whether the pod is done or going away (being deleted, Failed, Succeeded): a sandbox for it
    /// needs no slot.
    pub fn is_finished(&self) -> bool {
        matches!(
            self.release,
            Some(ReleaseReason::Deleting | ReleaseReason::Failed | ReleaseReason::Succeeded)
        )
    }

    /// Why the agent lets this pod through without a slot, if it does. In order: the annotation
    /// (`"true"` skips; any other value paces, whatever the rules below say), a DaemonSet owner
    /// (unless `--skip-daemonsets=false`), an excluded namespace.
    pub fn skip_reason(&self, options: &SkipOptions) -> Option<SkipReason> {
        if self.pace_forced {
            return None;
        }
        match self.skip {
            Some(SkipReason::Annotation) => return Some(SkipReason::Annotation),
            Some(SkipReason::DaemonSet) if options.daemonsets => {
                return Some(SkipReason::DaemonSet)
            }
            _ => {}
        }
        options
            .namespaces
            .contains(&self.namespace)
            .then_some(SkipReason::Namespace)
    }

    /// Why a slot held by this pod is released now, if it is. Deletion, Failed and Succeeded come
    /// first, then Ready (or, with `--release-on started`, all containers started), then a
    /// container that cannot start.
    pub fn release_reason(&self, on: ReleaseOn) -> Option<ReleaseReason> {
        match self.release {
            Some(
                final_reason @ (ReleaseReason::Deleting
                | ReleaseReason::Failed
                | ReleaseReason::Succeeded
                | ReleaseReason::Ready),
            ) => Some(final_reason),
            _ if on == ReleaseOn::Started && self.started => Some(ReleaseReason::Started),
            other => other,
        }
    }
}

/// What frees a slot besides the rules that always do (`--release-on`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReleaseOn {
    /// The pod condition `Ready` is `True`: the pod has warmed up as far as its readiness probe
    /// can tell. The default.
    Ready,
    /// Every container has started (the Go implementation's rule): with a startup probe, after
    /// it passed; without one, as soon as the process runs.
    Started,
}

/// Which pods the agent grants without a slot, besides those annotated `pod-pacemaker/skip`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SkipOptions {
    /// Pods whose first owner is a DaemonSet (`--skip-daemonsets`, default true).
    pub daemonsets: bool,
    /// Pods in these namespaces (`--namespace-exclusions`, default `kube-system`), as the plugin's
    /// `namespaceExclusions`; the agent needs them too, so that it never adopts such a pod as a
    /// holder when it restarts.
    pub namespaces: Vec<String>,
}

impl Default for SkipOptions {
    fn default() -> Self {
        Self {
            daemonsets: true,
            namespaces: vec!["kube-system".to_owned()],
        }
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
    /// The pod's namespace is excluded.
    Namespace,
}

/// Why a slot was released; the `reason=` of the `release` log line.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReleaseReason {
    /// The pod condition `Ready` is `True`.
    Ready,
    /// Every container has started (`--release-on started`).
    Started,
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
    /// would block the node (docs/prior-art.md W3).
    ContainerError,
    /// The GRANTED line could not be written: the client left, so the pod did not get the slot.
    Undelivered,
    /// The slot was granted before the pod was known, and the pod turned out to be one the agent
    /// does not pace.
    Skip,
    /// The pod never showed up in the agent's view while it held the slot, although the view
    /// was current (a list or a bookmark) well after the grant: a pod the API does not know.
    NotFound,
}

impl ReleaseReason {
    /// The stable word used in the `release` log line.
    pub fn as_str(self) -> &'static str {
        match self {
            ReleaseReason::Ready => "ready",
            ReleaseReason::Started => "started",
            ReleaseReason::Failed => "failed",
            ReleaseReason::Succeeded => "succeeded",
            ReleaseReason::Deleting => "deleting",
            ReleaseReason::Deleted => "deleted",
            ReleaseReason::Lease => "lease",
            ReleaseReason::ContainerError => "container-error",
            ReleaseReason::Undelivered => "undelivered",
            ReleaseReason::Skip => "skip",
            ReleaseReason::NotFound => "not-found",
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
            SkipReason::Namespace => "namespace",
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
