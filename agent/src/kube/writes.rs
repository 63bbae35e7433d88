// SPDX-License-Identifier: Apache-2.0
//! The writes the agent makes: patches of its own Node (taints, annotations) and Events.
//!
//! Two kinds of Node change, two strategies:
//!
//! - annotations are a map, so a JSON merge patch of the keys that change needs no knowledge of
//!   the rest of the object and cannot conflict ([`KubeClient::annotate_node`]);
//! - taints are a list, which a merge patch replaces whole, so changing one means
//!   read-modify-write: GET the Node, edit the list, PATCH it back with the Node's
//!   `metadata.resourceVersion` as a precondition. If someone else wrote the Node in between, the
//!   API server answers 409 Conflict and the edit starts over from a fresh GET, a few times
//!   ([`KubeClient::edit_node_taints`]). A conflict is an expected outcome, never a crash
//!   (docs/prior-art.md W20: the Go agent died on it).
//!
//! [`KubeClient::patch_node`] sends any merge or JSON patch as given; a 409 comes back as an error
//! for the caller to handle. Events ([`KubeClient::create_event`]) get a unique name; a name clash
//! (409 AlreadyExists) is retried with a new one. Every write is logged at info, once, as an audit
//! line (STYLE.md habit 9).

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use log::info;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use super::backoff::random_between;
use super::client::{http_error, KubeClient};
use super::KubeError;

/// How many times a read-modify-write or an Event name is tried before giving up.
const WRITE_ATTEMPTS: u32 = 5;
/// The API server's limit on an Event message (events.k8s.io validation).
const MAX_EVENT_MESSAGE: usize = 1024;
/// The component name in Events.
const COMPONENT: &str = "pod-pacemaker-agent";
/// The namespace of Events about cluster-scoped objects (the Node), where kubectl shows them.
const CLUSTER_EVENTS_NAMESPACE: &str = "default";

/// A patch document and its type.
#[derive(Debug, Clone, PartialEq)]
pub enum Patch {
    /// `application/merge-patch+json` (RFC 7386).
    Merge(Value),
    /// `application/json-patch+json` (RFC 6902): a list of operations.
    Json(Value),
}

impl Patch {
    fn content_type(&self) -> &'static str {
        match self {
            Patch::Merge(_) => "application/merge-patch+json",
            Patch::Json(_) => "application/json-patch+json",
        }
    }

    fn body(&self) -> &Value {
        match self {
            Patch::Merge(body) | Patch::Json(body) => body,
        }
    }
}

/// A Node taint (core/v1 Taint: all of its fields).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Taint {
    pub key: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<String>,
    pub effect: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub time_added: Option<String>,
}

/// The object an Event is about.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectRef {
    /// `Pod` or `Node`.
    pub kind: &'static str,
    /// `None` for the Node.
    pub namespace: Option<String>,
    pub name: String,
    pub uid: Option<String>,
}

/// An Event to record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventSpec {
    pub about: ObjectRef,
    /// UpperCamelCase, e.g. `SlotGranted`.
    pub reason: &'static str,
    pub message: String,
    pub warning: bool,
}

#[derive(Deserialize)]
struct NodeView {
    metadata: Option<NodeMeta>,
    spec: Option<NodeSpec>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct NodeMeta {
    resource_version: Option<String>,
}

#[derive(Deserialize)]
struct NodeSpec {
    taints: Option<Vec<Taint>>,
}

/// A successful response body is read only this far (a Node with many images is some 100 KiB).
const MAX_RESPONSE_BYTES: u64 = 4 << 20;

impl KubeClient {
    fn node_url(&self) -> String {
        format!("{}/api/v1/nodes/{}", self.server, self.node())
    }

    /// Sends `patch` to the agent's Node. A 409 is returned as an error for the caller.
    pub fn patch_node(&self, patch: &Patch) -> Result<(), KubeError> {
        let url = self.node_url();
        let body = patch.body().to_string();
        let response = self.send("patching the node", |auth| {
            self.agent()
                .patch(&url)
                .header("Authorization", auth)
                .header("Content-Type", patch.content_type())
                .send(body.as_bytes())
        })?;
        if response.status().as_u16() != 200 {
            return Err(http_error("patching the node", response));
        }
        info!("patched node {} ({})", self.node(), patch.content_type());
        Ok(())
    }

    /// Sets (`Some`) or removes (`None`) annotations of the agent's Node with one merge patch.
    pub fn annotate_node(&self, changes: &[(&str, Option<&str>)]) -> Result<(), KubeError> {
        let annotations: serde_json::Map<String, Value> = changes
            .iter()
            .map(|(key, value)| ((*key).to_owned(), value.map_or(Value::Null, Value::from)))
            .collect();
        self.patch_node(&Patch::Merge(
            json!({ "metadata": { "annotations": annotations } }),
        ))
    }

    /// Edits the Node's taints: `edit` changes the list and returns whether it changed anything.
    /// Conflicting writes by others are retried from a fresh read. Returns whether the Node was
    /// changed.
    pub fn edit_node_taints(
        &self,
        edit: impl Fn(&mut Vec<Taint>) -> bool,
    ) -> Result<bool, KubeError> {
        for attempt in 1..=WRITE_ATTEMPTS {
            // 1. Read the Node as it is now.
            let (version, mut taints) = self.get_node_taints()?;

            // 2. Edit; nothing to write is done.
            if !edit(&mut taints) {
                return Ok(false);
            }

            // 3. Write it back, on the condition that nobody wrote in between.
            let taints = if taints.is_empty() {
                Value::Null
            } else {
                serde_json::to_value(&taints).unwrap_or(Value::Null)
            };
            let patch = Patch::Merge(json!({
                "metadata": { "resourceVersion": version },
                "spec": { "taints": taints },
            }));
            match self.patch_node(&patch) {
                Ok(()) => return Ok(true),
                Err(KubeError::HttpStatus { status: 409, .. }) => {
                    info!(
                        "node {} changed while editing its taints (409), attempt {attempt} of \
                         {WRITE_ATTEMPTS}",
                        self.node()
                    );
                    std::thread::sleep(random_between(
                        Duration::from_millis(50),
                        Duration::from_millis(250),
                    ));
                }
                Err(err) => return Err(err),
            }
        }
        Err(KubeError::Conflict {
            what: "editing the node's taints",
            attempts: WRITE_ATTEMPTS,
        })
    }

    /// Removes every taint with `key` from the Node; `Ok(false)` if there was none.
    pub fn remove_node_taint(&self, key: &str) -> Result<bool, KubeError> {
        self.edit_node_taints(|taints| {
            let before = taints.len();
            taints.retain(|t| t.key != key);
            taints.len() != before
        })
    }

    fn get_node_taints(&self) -> Result<(String, Vec<Taint>), KubeError> {
        const WHAT: &str = "reading the node";
        let url = self.node_url();
        let response = self.send(WHAT, |auth| {
            self.agent().get(&url).header("Authorization", auth).call()
        })?;
        if response.status().as_u16() != 200 {
            return Err(http_error(WHAT, response));
        }
        let body = response
            .into_body()
            .into_with_config()
            .limit(MAX_RESPONSE_BYTES)
            .read_to_vec()
            .map_err(|source| KubeError::Request { what: WHAT, source })?;
        let node: NodeView = serde_json::from_slice(&body)
            .map_err(|source| KubeError::DecodeResponse { what: WHAT, source })?;
        let version = node
            .metadata
            .and_then(|m| m.resource_version)
            .unwrap_or_default();
        let taints = node.spec.and_then(|s| s.taints).unwrap_or_default();
        Ok((version, taints))
    }

    /// Records an Event. A clash with an existing Event's name is retried with a new name.
    pub fn create_event(&self, event: &EventSpec) -> Result<(), KubeError> {
        const WHAT: &str = "creating an event";
        let namespace = event
            .about
            .namespace
            .as_deref()
            .unwrap_or(CLUSTER_EVENTS_NAMESPACE);
        let url = format!("{}/api/v1/namespaces/{namespace}/events", self.server);
        for _ in 0..WRITE_ATTEMPTS {
            let body = event_body(event, namespace, self.node(), SystemTime::now()).to_string();
            let response = self.send(WHAT, |auth| {
                self.agent()
                    .post(&url)
                    .header("Authorization", auth)
                    .header("Content-Type", "application/json")
                    .send(body.as_bytes())
            })?;
            match response.status().as_u16() {
                200 | 201 => {
                    info!(
                        "event {} {} {}/{}: {}",
                        if event.warning { "Warning" } else { "Normal" },
                        event.reason,
                        event.about.kind,
                        event.about.name,
                        event.message
                    );
                    return Ok(());
                }
                409 => {}
                _ => return Err(http_error(WHAT, response)),
            }
        }
        Err(KubeError::Conflict {
            what: WHAT,
            attempts: WRITE_ATTEMPTS,
        })
    }
}

/// The core/v1 Event object for `event`, named `<object>.<random hex>` like the client-go
/// recorder names them.
fn event_body(event: &EventSpec, namespace: &str, node: &str, now: SystemTime) -> Value {
    let suffix = format!(
        "{:x}",
        random_between(Duration::ZERO, Duration::from_secs(1 << 30)).as_nanos()
    );
    let mut message: String = event.message.chars().take(MAX_EVENT_MESSAGE).collect();
    if message.len() > MAX_EVENT_MESSAGE {
        // Multi-byte characters: the limit counts bytes too.
        while message.len() > MAX_EVENT_MESSAGE {
            message.pop();
        }
    }
    let stamp = rfc3339(now);
    let mut involved = json!({
        "kind": event.about.kind,
        "name": event.about.name,
        "apiVersion": "v1",
    });
    if let Some(ns) = &event.about.namespace {
        involved["namespace"] = json!(ns);
    }
    if let Some(uid) = &event.about.uid {
        involved["uid"] = json!(uid);
    }
    json!({
        "apiVersion": "v1",
        "kind": "Event",
        "metadata": {
            "name": format!("{}.{suffix}", event.about.name),
            "namespace": namespace,
        },
        "involvedObject": involved,
        "reason": event.reason,
        "message": message,
        "type": if event.warning { "Warning" } else { "Normal" },
        "source": { "component": COMPONENT, "host": node },
        "reportingComponent": COMPONENT,
        "reportingInstance": node,
        "firstTimestamp": stamp,
        "lastTimestamp": stamp,
        "count": 1,
    })
}

/// `YYYY-MM-DDTHH:MM:SSZ` for a time at or after 1970 (a clock before it prints the epoch).
fn rfc3339(time: SystemTime) -> String {
    let secs = time.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    let days = secs / 86_400;
    let rem = secs % 86_400;
    // Civil date from days since 1970-01-01 (H. Hinnant's days_from_civil, inverted), for u64.
    let z = days + 719_468;
    let era = z / 146_097;
    let doe = z % 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + u64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU32, Ordering};
    use std::sync::Arc;

    use super::super::client::tests::{fixed_token, test_client};
    use super::super::testserver::{Reply, TestServer};
    use super::*;

    fn node_json(version: &str, taints: &str) -> String {
        format!(
            r#"{{"kind":"Node","metadata":{{"name":"n1","resourceVersion":"{version}"}},
            "spec":{{"taints":{taints}}},"status":{{"images":[]}}}}"#
        )
    }

    #[test]
    fn a_taint_is_removed_with_a_version_precondition_and_a_conflict_is_retried() {
        let patches = Arc::new(AtomicU32::new(0));
        let seen = Arc::clone(&patches);
        let server = TestServer::start(move |request| match request.method.as_str() {
            "GET" => {
                let version = 5 + seen.load(Ordering::SeqCst);
                Reply::json(
                    200,
                    &node_json(
                        &version.to_string(),
                        r#"[{"key":"pod-pacemaker","effect":"NoSchedule"},
                        {"key":"other","value":"x","effect":"NoExecute","timeAdded":"2024-01-01T00:00:00Z"}]"#,
                    ),
                )
            }
            _ if seen.fetch_add(1, Ordering::SeqCst) == 0 => Reply::json(
                409,
                r#"{"kind":"Status","code":409,"reason":"Conflict","message":"the object has been modified"}"#,
            ),
            _ => Reply::json(200, &node_json("7", "[]")),
        });
        let client = test_client(&server, fixed_token("t"), Duration::from_secs(5));
        assert!(client.remove_node_taint("pod-pacemaker").expect("removed"));

        let requests = server.requests();
        let methods: Vec<&str> = requests.iter().map(|r| r.method.as_str()).collect();
        assert_eq!(methods, ["GET", "PATCH", "GET", "PATCH"]);
        let last = &requests[3];
        assert_eq!(last.path, "/api/v1/nodes/n1");
        assert_eq!(
            last.header("content-type").as_deref(),
            Some("application/merge-patch+json")
        );
        assert_eq!(
            last.body_json(),
            json!({"metadata":{"resourceVersion":"6"},"spec":{"taints":[
                {"key":"other","value":"x","effect":"NoExecute","timeAdded":"2024-01-01T00:00:00Z"}]}})
        );
    }

    #[test]
    fn no_taint_to_remove_means_no_write_and_endless_conflicts_give_up() {
        let server = TestServer::start(|request| match request.method.as_str() {
            "GET" => Reply::json(
                200,
                &node_json("5", r#"[{"key":"k","effect":"NoSchedule"}]"#),
            ),
            _ => Reply::json(409, r#"{"kind":"Status","code":409,"reason":"Conflict"}"#),
        });
        let client = test_client(&server, fixed_token("t"), Duration::from_secs(5));
        assert!(!client.remove_node_taint("absent").expect("nothing to do"));
        assert_eq!(server.requests().len(), 1);

        let err = client.remove_node_taint("k").expect_err("always 409");
        assert!(
            matches!(
                err,
                KubeError::Conflict {
                    attempts: WRITE_ATTEMPTS,
                    ..
                }
            ),
            "{err}"
        );
        // The last taint removed is written as null: the field goes away.
        let last = server.requests().pop().expect("requests");
        assert_eq!(last.body_json()["spec"]["taints"], Value::Null);
    }

    #[test]
    fn annotations_are_set_and_removed_with_one_merge_patch() {
        let server = TestServer::start(|_| Reply::json(200, &node_json("9", "null")));
        let client = test_client(&server, fixed_token("t"), Duration::from_secs(5));
        client
            .annotate_node(&[("pod-pacemaker/limit", Some("2")), ("old", None)])
            .expect("patched");
        let request = &server.requests()[0];
        assert_eq!(request.method, "PATCH");
        assert_eq!(
            request.body_json(),
            json!({"metadata":{"annotations":{"pod-pacemaker/limit":"2","old":null}}})
        );

        let json_patch = Patch::Json(json!([{"op":"add","path":"/metadata/labels/x","value":"y"}]));
        client.patch_node(&json_patch).expect("json patch");
        assert_eq!(
            server.requests()[1].header("content-type").as_deref(),
            Some("application/json-patch+json")
        );
    }

    #[test]
    fn an_event_name_clash_is_retried_under_a_new_name() {
        let posts = Arc::new(AtomicU32::new(0));
        let seen = Arc::clone(&posts);
        let server = TestServer::start(move |_| {
            if seen.fetch_add(1, Ordering::SeqCst) == 0 {
                Reply::json(
                    409,
                    r#"{"kind":"Status","code":409,"reason":"AlreadyExists"}"#,
                )
            } else {
                Reply::json(201, "{}")
            }
        });
        let client = test_client(&server, fixed_token("t"), Duration::from_secs(5));
        let event = EventSpec {
            about: ObjectRef {
                kind: "Pod",
                namespace: Some("shop".to_owned()),
                name: "web-0".to_owned(),
                uid: Some("u1".to_owned()),
            },
            reason: "SlotGranted",
            message: "é".repeat(600),
            warning: false,
        };
        client.create_event(&event).expect("created");
        let requests = server.requests();
        assert_eq!(requests.len(), 2);
        assert_eq!(requests[1].path, "/api/v1/namespaces/shop/events");
        let first = requests[0].body_json();
        let body = requests[1].body_json();
        assert_ne!(first["metadata"]["name"], body["metadata"]["name"]);
        assert!(body["metadata"]["name"]
            .as_str()
            .is_some_and(|n| n.starts_with("web-0.")));
        assert_eq!(body["involvedObject"]["uid"], "u1");
        assert_eq!(body["type"], "Normal");
        assert_eq!(body["source"]["host"], "n1");
        assert!(body["message"]
            .as_str()
            .is_some_and(|m| m.len() <= MAX_EVENT_MESSAGE));
    }

    #[test]
    fn timestamps_are_rfc3339_utc() {
        assert_eq!(rfc3339(UNIX_EPOCH), "1970-01-01T00:00:00Z");
        assert_eq!(
            rfc3339(UNIX_EPOCH + Duration::from_secs(951_782_400)),
            "2000-02-29T00:00:00Z"
        );
        assert_eq!(
            rfc3339(UNIX_EPOCH + Duration::from_secs(1_714_557_600 + 3_661)),
            "2024-05-01T11:01:01Z"
        );
    }
}
