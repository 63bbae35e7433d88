// SPDX-License-Identifier: Apache-2.0
//! The slice of the Kubernetes Pod API the agent reads, and its reduction to a [`PodInfo`].
//!
//! Only the fields the agent uses are declared; serde ignores the rest, so newer API servers with
//! more fields decode fine. Every field is optional, because the API server omits empty ones and
//! a missing field must never fail a whole list. Annotations, the one open-ended map the agent
//! reads, are filtered while decoding: only the two keys the agent uses are kept, so a pod with a
//! large `kubectl.kubernetes.io/last-applied-configuration` costs nothing beyond the decode.
//! [`Pod::into_info`] applies the skip and release rules once, so the scheduler works on plain
//! facts and the decoded object is dropped at once. Field meanings follow the core/v1 API
//! reference (Pod, PodStatus, ContainerStatus).

use std::fmt;

use serde::de::{IgnoredAny, MapAccess, Visitor};
use serde::{Deserialize, Deserializer};

use crate::pod::{PodInfo, ReleaseReason, SkipReason};

/// The annotation that exempts a pod from pacing when its value is `"true"`.
pub const SKIP_ANNOTATION: &str = "pod-pacemaker/skip";

/// The annotation the kubelet puts on the API mirror of a static pod; its value is the static
/// pod's UID (pkg/kubelet/types/pod_update.go, `ConfigMirrorAnnotationKey`).
const MIRROR_ANNOTATION: &str = "kubernetes.io/config.mirror";

/// Waiting reasons of a container that will not start without outside help (a new image, a fixed
/// config) or that crash-loops. The kubelet sets these in `state.waiting.reason`
/// (pkg/kubelet/images/types.go, pkg/kubelet/container/sync_result.go).
const STUCK_WAITING_REASONS: &[&str] = &[
    "CrashLoopBackOff",
    "CreateContainerConfigError",
    "CreateContainerError",
    "ErrImageNeverPull",
    "ErrImagePull",
    "ImageInspectError",
    "ImagePullBackOff",
    "InvalidImageName",
    "PreCreateHookError",
    "PreStartHookError",
    "RunContainerError",
];

#[derive(Debug, Default, Deserialize)]
pub struct Pod {
    pub metadata: Option<ObjectMeta>,
    pub spec: Option<PodSpec>,
    pub status: Option<PodStatus>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ObjectMeta {
    pub name: Option<String>,
    pub namespace: Option<String>,
    pub uid: Option<String>,
    pub resource_version: Option<String>,
    pub creation_timestamp: Option<String>,
    pub deletion_timestamp: Option<String>,
    pub annotations: Option<Annotations>,
    pub owner_references: Option<Vec<OwnerReference>>,
}

/// The annotations the agent reads; every other key is skipped while decoding.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Annotations {
    /// [`SKIP_ANNOTATION`].
    pub skip: Option<String>,
    /// [`MIRROR_ANNOTATION`].
    pub mirror: Option<String>,
}

impl<'de> Deserialize<'de> for Annotations {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_map(AnnotationsVisitor)
    }
}

struct AnnotationsVisitor;

impl<'de> Visitor<'de> for AnnotationsVisitor {
    type Value = Annotations;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a map of annotations")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Annotations, A::Error> {
        let mut out = Annotations::default();
        while let Some(key) = map.next_key::<AnnotationKey>()? {
            match key {
                AnnotationKey::Skip => out.skip = map.next_value()?,
                AnnotationKey::Mirror => out.mirror = map.next_value()?,
                AnnotationKey::Other => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        Ok(out)
    }
}

/// An annotation key, compared without keeping it.
enum AnnotationKey {
    Skip,
    Mirror,
    Other,
}

impl<'de> Deserialize<'de> for AnnotationKey {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_str(AnnotationKeyVisitor)
    }
}

struct AnnotationKeyVisitor;

impl Visitor<'_> for AnnotationKeyVisitor {
    type Value = AnnotationKey;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("an annotation key")
    }

    fn visit_str<E: serde::de::Error>(self, key: &str) -> Result<AnnotationKey, E> {
        Ok(match key {
            SKIP_ANNOTATION => AnnotationKey::Skip,
            MIRROR_ANNOTATION => AnnotationKey::Mirror,
            _ => AnnotationKey::Other,
        })
    }
}

/// Just enough of a pod to name it, for an event whose object does not decode as a [`Pod`].
#[derive(Debug, Default, Deserialize)]
pub struct PodIdentity {
    pub metadata: Option<IdentityMeta>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct IdentityMeta {
    pub uid: Option<String>,
    pub resource_version: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
pub struct OwnerReference {
    pub kind: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PodSpec {
    pub node_name: Option<String>,
    pub priority: Option<i32>,
    pub host_network: Option<bool>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PodStatus {
    pub phase: Option<String>,
    #[serde(rename = "podIP")]
    pub pod_ip: Option<String>,
    pub conditions: Option<Vec<PodCondition>>,
    pub container_statuses: Option<Vec<ContainerStatus>>,
    pub init_container_statuses: Option<Vec<ContainerStatus>>,
}

#[derive(Debug, Default, Deserialize)]
pub struct PodCondition {
    #[serde(rename = "type")]
    pub kind: Option<String>,
    pub status: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
pub struct ContainerStatus {
    pub name: Option<String>,
    pub state: Option<ContainerState>,
    /// Set once the container was created, which needs the pod's sandbox.
    #[serde(rename = "containerID")]
    pub container_id: Option<String>,
    /// The container has started (and passed its startup probe, if it has one).
    pub started: Option<bool>,
}

#[derive(Debug, Default, Deserialize)]
pub struct ContainerState {
    pub waiting: Option<ContainerStateWaiting>,
    pub running: Option<IgnoredAny>,
    pub terminated: Option<ContainerStateTerminated>,
}

#[derive(Debug, Default, Deserialize)]
pub struct ContainerStateWaiting {
    pub reason: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ContainerStateTerminated {
    pub exit_code: Option<i32>,
}

impl Pod {
    /// `metadata.resourceVersion`, if set.
    pub fn resource_version(&self) -> Option<&str> {
        self.metadata.as_ref()?.resource_version.as_deref()
    }

    /// `spec.nodeName`, if set.
    pub fn node_name(&self) -> Option<&str> {
        self.spec.as_ref()?.node_name.as_deref()
    }

    /// Reduces the pod to what pacing needs. `None` when it lacks a uid, namespace or name, which
    /// a real API server never sends; the caller logs and skips such an object.
    pub fn into_info(self) -> Option<PodInfo> {
        let meta = self.metadata.unwrap_or_default();
        let spec = self.spec.unwrap_or_default();
        let status = self.status.unwrap_or_default();
        let uid = meta.uid.filter(|u| !u.is_empty())?;
        let namespace = meta.namespace.filter(|n| !n.is_empty())?;
        let name = meta.name.filter(|n| !n.is_empty())?;

        // 1. Skip rules: the annotation, then a DaemonSet owner.
        let annotations = meta.annotations.unwrap_or_default();
        let annotated = annotations.skip.as_deref() == Some("true");
        let pace_forced = annotations.skip.as_deref().is_some_and(|v| v != "true");
        let daemonset = meta
            .owner_references
            .as_ref()
            .and_then(|refs| refs.first())
            .and_then(|r| r.kind.as_deref())
            == Some("DaemonSet");
        let skip = if annotated {
            Some(SkipReason::Annotation)
        } else if daemonset {
            Some(SkipReason::DaemonSet)
        } else {
            None
        };

        // 2. Release rules, the most final first.
        let (release, release_detail) = release_reason(meta.deletion_timestamp.is_some(), &status);

        // 3. Whether the sandbox exists, and whether every container has started.
        let (sandbox_started, started) = container_facts(&status);

        let mirror_of = annotations.mirror.filter(|v| !v.is_empty());

        Some(PodInfo {
            uid,
            namespace,
            name,
            mirror_of,
            created: meta.creation_timestamp.unwrap_or_default(),
            priority: spec.priority.unwrap_or(0),
            host_network: spec.host_network.unwrap_or(false),
            skip,
            pace_forced,
            sandbox_started,
            started,
            release,
            release_detail,
        })
    }
}

/// Whether the pod's sandbox exists (an IP, or a container that was created or ran), and whether
/// every container has started. The kubelet lists a container as waiting in `ContainerCreating`
/// before the sandbox exists, while the ADD is still blocked in the plugin, so a status alone is
/// no evidence; neither is an empty status list ever "started" (docs/prior-art.md W4, F20).
fn container_facts(status: &PodStatus) -> (bool, bool) {
    let regular = status.container_statuses.as_deref().unwrap_or_default();
    let init = status
        .init_container_statuses
        .as_deref()
        .unwrap_or_default();
    let created = |c: &ContainerStatus| {
        c.container_id.as_deref().is_some_and(|id| !id.is_empty())
            || c.state
                .as_ref()
                .is_some_and(|s| s.running.is_some() || s.terminated.is_some())
    };
    let sandbox = status.pod_ip.as_deref().is_some_and(|ip| !ip.is_empty())
        || regular.iter().chain(init).any(created);
    let started = !regular.is_empty() && regular.iter().all(|c| c.started == Some(true));
    (sandbox, started)
}

/// Why a slot held by a pod in this state is released, with a detail for the debug log.
fn release_reason(deleting: bool, status: &PodStatus) -> (Option<ReleaseReason>, Option<String>) {
    if deleting {
        return (Some(ReleaseReason::Deleting), None);
    }
    match status.phase.as_deref() {
        Some("Failed") => return (Some(ReleaseReason::Failed), None),
        Some("Succeeded") => return (Some(ReleaseReason::Succeeded), None),
        _ => {}
    }
    let ready = status
        .conditions
        .iter()
        .flatten()
        .any(|c| c.kind.as_deref() == Some("Ready") && c.status.as_deref() == Some("True"));
    if ready {
        return (Some(ReleaseReason::Ready), None);
    }
    if let Some(detail) = container_error(status) {
        return (Some(ReleaseReason::ContainerError), Some(detail));
    }
    (None, None)
}

/// A container or init container that is stuck, as `name: reason`.
fn container_error(status: &PodStatus) -> Option<String> {
    let regular = status.container_statuses.iter().flatten();
    let init = status.init_container_statuses.iter().flatten();
    for (is_init, container) in init.map(|c| (true, c)).chain(regular.map(|c| (false, c))) {
        let name = container.name.as_deref().unwrap_or("?");
        let Some(state) = &container.state else {
            continue;
        };
        if let Some(reason) = state.waiting.as_ref().and_then(|w| w.reason.as_deref()) {
            if STUCK_WAITING_REASONS.contains(&reason) {
                return Some(format!("{name}: {reason}"));
            }
        }
        // An init container that exited non-zero failed; the pod cannot get past it until a
        // retry succeeds, which may never happen.
        if is_init {
            if let Some(code) = state.terminated.as_ref().and_then(|t| t.exit_code) {
                if code != 0 {
                    return Some(format!("{name}: init container exited {code}"));
                }
            }
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info(json: &str) -> PodInfo {
        let pod: Pod = serde_json::from_str(json).expect("pod json");
        pod.into_info().expect("complete pod")
    }

    const META: &str = r#""metadata":{"name":"web-0","namespace":"shop","uid":"u1",
        "resourceVersion":"7","creationTimestamp":"2024-05-01T10:00:00Z"}"#;

    #[test]
    fn minimal_pod_is_paced_and_not_released() {
        let pod = info(&format!("{{{META}}}"));
        assert_eq!(pod.uid, "u1");
        assert_eq!(pod.full_name(), "shop/web-0");
        assert_eq!(pod.created, "2024-05-01T10:00:00Z");
        assert_eq!(pod.skip, None);
        assert_eq!(pod.release, None);
        assert!(!pod.sandbox_started);
    }

    #[test]
    fn unknown_fields_and_nulls_are_tolerated() {
        let pod = info(&format!(
            r#"{{"kind":"Pod","apiVersion":"v1",{META},
            "spec":{{"nodeName":"n1","containers":[{{"name":"c"}}],"priority":null}},
            "status":{{"phase":"Pending","conditions":null,"qosClass":"BestEffort"}}}}"#
        ));
        assert_eq!(pod.priority, 0);
        assert_eq!(pod.release, None);
    }

    #[test]
    fn mirror_pod_names_its_static_pod() {
        let pod = info(
            r#"{"metadata":{"name":"etcd-n1","namespace":"kube-system","uid":"api-uid",
            "annotations":{"kubernetes.io/config.mirror":"3f2a9c"}}}"#,
        );
        assert_eq!(pod.mirror_of.as_deref(), Some("3f2a9c"));
    }

    #[test]
    fn only_the_annotations_the_agent_reads_are_kept() {
        let big = "x".repeat(100_000);
        let pod: Pod = serde_json::from_str(&format!(
            r#"{{"metadata":{{"name":"a","namespace":"b","uid":"u","annotations":{{
            "kubectl.kubernetes.io/last-applied-configuration":"{big}",
            "pod-pacemaker/skip":"true","other":"\"quoted\"",
            "kubernetes.io/config.mirror":"m1"}}}}}}"#
        ))
        .expect("decodes");
        let annotations = pod
            .metadata
            .as_ref()
            .and_then(|m| m.annotations.as_ref())
            .expect("annotations");
        assert_eq!(
            *annotations,
            Annotations {
                skip: Some("true".to_owned()),
                mirror: Some("m1".to_owned()),
            }
        );
        // A mistyped annotation value is a decode error, not a panic.
        assert!(serde_json::from_str::<Pod>(
            r#"{"metadata":{"annotations":{"pod-pacemaker/skip":true}}}"#
        )
        .is_err());
    }

    #[test]
    fn incomplete_pod_is_rejected() {
        let pod: Pod =
            serde_json::from_str(r#"{"metadata":{"name":"a","namespace":"b"}}"#).expect("decodes");
        assert!(pod.into_info().is_none());
    }

    #[test]
    fn skip_rules() {
        let annotated = info(
            r#"{"metadata":{"name":"a","namespace":"b","uid":"u",
            "annotations":{"pod-pacemaker/skip":"true"}}}"#,
        );
        assert_eq!(annotated.skip, Some(SkipReason::Annotation));
        let other_value = info(
            r#"{"metadata":{"name":"a","namespace":"b","uid":"u",
            "annotations":{"pod-pacemaker/skip":"false"}}}"#,
        );
        assert_eq!(other_value.skip, None);
        let daemonset = info(
            r#"{"metadata":{"name":"a","namespace":"b","uid":"u",
            "ownerReferences":[{"kind":"DaemonSet","name":"ds"}]}}"#,
        );
        assert_eq!(daemonset.skip, Some(SkipReason::DaemonSet));
        let second_owner = info(
            r#"{"metadata":{"name":"a","namespace":"b","uid":"u",
            "ownerReferences":[{"kind":"ReplicaSet"},{"kind":"DaemonSet"}]}}"#,
        );
        assert_eq!(second_owner.skip, None);
    }

    #[test]
    fn release_rules() {
        let cases: &[(&str, Option<ReleaseReason>)] = &[
            (
                r#""status":{"conditions":[{"type":"Ready","status":"True"}]}"#,
                Some(ReleaseReason::Ready),
            ),
            (
                r#""status":{"conditions":[{"type":"Ready","status":"False"},
                {"type":"ContainersReady","status":"True"}]}"#,
                None,
            ),
            (
                r#""status":{"phase":"Failed"}"#,
                Some(ReleaseReason::Failed),
            ),
            (
                r#""status":{"phase":"Succeeded"}"#,
                Some(ReleaseReason::Succeeded),
            ),
            (
                r#""status":{"containerStatuses":[{"name":"app",
                "state":{"waiting":{"reason":"ImagePullBackOff"}}}]}"#,
                Some(ReleaseReason::ContainerError),
            ),
            (
                r#""status":{"containerStatuses":[{"name":"app",
                "state":{"waiting":{"reason":"ContainerCreating"}}}]}"#,
                None,
            ),
            (
                r#""status":{"initContainerStatuses":[{"name":"init",
                "state":{"terminated":{"exitCode":1}}}]}"#,
                Some(ReleaseReason::ContainerError),
            ),
            (
                r#""status":{"initContainerStatuses":[{"name":"init",
                "state":{"terminated":{"exitCode":0}}}]}"#,
                None,
            ),
            (
                r#""status":{"containerStatuses":[{"name":"app",
                "state":{"running":{}},"started":true,"ready":false}]}"#,
                None,
            ),
        ];
        for (status, want) in cases {
            let pod = info(&format!("{{{META},{status}}}"));
            assert_eq!(pod.release, *want, "{status}");
        }
    }

    #[test]
    fn deletion_wins_over_every_other_rule() {
        let pod = info(
            r#"{"metadata":{"name":"a","namespace":"b","uid":"u",
            "deletionTimestamp":"2024-05-01T10:00:00Z"},
            "status":{"phase":"Failed","conditions":[{"type":"Ready","status":"True"}]}}"#,
        );
        assert_eq!(pod.release, Some(ReleaseReason::Deleting));
        assert!(pod.is_deleting());
    }

    #[test]
    fn sandbox_started_needs_an_ip_or_a_created_container() {
        let with_ip = info(&format!(r#"{{{META},"status":{{"podIP":"10.0.0.5"}}}}"#));
        assert!(with_ip.sandbox_started);
        let created = info(&format!(
            r#"{{{META},"status":{{"containerStatuses":[{{"name":"c","containerID":"containerd://ab"}}]}}}}"#
        ));
        assert!(created.sandbox_started);
        let init_ran = info(&format!(
            r#"{{{META},"status":{{"initContainerStatuses":[{{"name":"i","state":{{"terminated":{{"exitCode":0}}}}}}]}}}}"#
        ));
        assert!(init_ran.sandbox_started);
        // What the kubelet posts while the ADD is still blocked: no IP, containers "creating".
        let creating = info(&format!(
            r#"{{{META},"status":{{"containerStatuses":[{{"name":"c",
            "state":{{"waiting":{{"reason":"ContainerCreating"}}}}}}]}}}}"#
        ));
        assert!(!creating.sandbox_started);
        let empty = info(&format!(
            r#"{{{META},"status":{{"podIP":"","containerStatuses":[]}}}}"#
        ));
        assert!(!empty.sandbox_started);
    }

    #[test]
    fn started_needs_every_container_started() {
        let started = |statuses: &str| {
            info(&format!(
                r#"{{{META},"status":{{"containerStatuses":{statuses}}}}}"#
            ))
            .started
        };
        assert!(started(
            r#"[{"name":"a","started":true},{"name":"b","started":true}]"#
        ));
        assert!(!started(
            r#"[{"name":"a","started":true},{"name":"b","started":false}]"#
        ));
        assert!(!started(r#"[{"name":"a","started":true},{"name":"b"}]"#));
        assert!(!started("[]"));
        assert!(!info(&format!("{{{META}}}")).started);
    }

    #[test]
    fn skip_annotation_other_than_true_forces_pacing() {
        let forced = info(
            r#"{"metadata":{"name":"a","namespace":"b","uid":"u",
            "annotations":{"pod-pacemaker/skip":"false"},
            "ownerReferences":[{"kind":"DaemonSet"}]}}"#,
        );
        assert!(forced.pace_forced);
        let skipped = info(
            r#"{"metadata":{"name":"a","namespace":"b","uid":"u",
            "annotations":{"pod-pacemaker/skip":"true"}}}"#,
        );
        assert!(!skipped.pace_forced);
        assert!(!info(&format!("{{{META}}}")).pace_forced);
    }
}
