// SPDX-License-Identifier: Apache-2.0
//! Decoding of pod list pages and of the watch stream, apart from the transport.
//!
//! A watch response is a stream of JSON objects `{"type": ..., "object": ...}`, one per line
//! (the API server writes each event followed by `\n`). [`pump`] reads them from any [`BufRead`],
//! each line bounded by [`MAX_EVENT_BYTES`], keeps the resource version current, and hands pod
//! changes to a sink. It decides nothing about retries: its [`StreamEnd`] or error tells the loop
//! in `kube/mod.rs` whether to watch again or relist. Because it only needs a reader, the tests
//! feed it byte strings; the TLS transport lives in `kube/client.rs`.

use std::io::{BufRead, Read};

use log::{debug, warn};
use serde::Deserialize;
use serde_json::value::RawValue;

use super::model::Pod;
use super::{KubeError, KubeEvent};
use crate::pod::PodInfo;

/// The longest watch event line accepted. A pod object is a few KiB to a few hundred KiB (managed
/// fields, long annotations); a longer line is treated as a broken stream and leads to a relist.
pub const MAX_EVENT_BYTES: usize = 4 << 20;

/// Why a watch stream ended without an error.
#[derive(Debug, PartialEq, Eq)]
pub enum StreamEnd {
    /// The server closed the stream (its `timeoutSeconds` passed): watch again from the last
    /// resource version.
    Closed,
    /// The resource version is too old (410 Gone): relist.
    Expired,
    /// The sink's receiver is gone: the agent is stopping.
    SinkClosed,
}

/// One decoded watch event.
#[derive(Debug, PartialEq, Eq)]
pub enum WatchEvent {
    /// ADDED or MODIFIED.
    Upsert(PodInfo),
    /// DELETED, with the pod's UID.
    Deleted(String),
    /// BOOKMARK, or an event without a usable pod: only the resource version moves.
    Bookmark,
    /// ERROR with code 410: the resource version is too old.
    Expired,
}

/// One page of a pod list.
#[derive(Debug)]
pub struct ListPage {
    pub pods: Vec<PodInfo>,
    pub resource_version: String,
    /// The `continue` token for the next page, if there is one.
    pub next: Option<String>,
}

/// Reads watch events from `reader` until the stream ends, keeping `resource_version` at the last
/// event's version and passing pod changes to `sink`. `sink` returns `false` when its receiver is
/// gone. Events for pods of another node (`node`) are dropped.
pub fn pump(
    reader: &mut impl BufRead,
    node: &str,
    resource_version: &mut String,
    sink: &mut impl FnMut(KubeEvent) -> bool,
) -> Result<StreamEnd, KubeError> {
    let mut line = Vec::with_capacity(16 * 1024);
    loop {
        if !read_event_line(reader, &mut line)? {
            return Ok(StreamEnd::Closed);
        }
        if line.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        let (event, version) = decode_event(&line, node)?;
        if let Some(version) = version {
            *resource_version = version;
        }
        let sent = match event {
            WatchEvent::Upsert(pod) => sink(KubeEvent::PodUpsert(pod)),
            WatchEvent::Deleted(uid) => sink(KubeEvent::PodDeleted(uid)),
            WatchEvent::Bookmark => true,
            WatchEvent::Expired => return Ok(StreamEnd::Expired),
        };
        if !sent {
            return Ok(StreamEnd::SinkClosed);
        }
    }
}

/// Reads one `\n`-terminated line into `line` (without the `\n`). `Ok(false)` at a clean end of
/// stream. A line longer than [`MAX_EVENT_BYTES`] is an error, and so is a stream that ends inside
/// a line.
pub fn read_event_line(reader: &mut impl BufRead, line: &mut Vec<u8>) -> Result<bool, KubeError> {
    line.clear();
    // One byte over the limit, to tell "at the limit" from "too long".
    let limit = u64::try_from(MAX_EVENT_BYTES + 1).unwrap_or(u64::MAX);
    reader
        .take(limit)
        .read_until(b'\n', line)
        .map_err(KubeError::ReadBody)?;
    if line.is_empty() {
        return Ok(false);
    }
    if line.last() != Some(&b'\n') {
        return Err(if line.len() > MAX_EVENT_BYTES {
            KubeError::EventTooLong {
                limit: MAX_EVENT_BYTES,
            }
        } else {
            KubeError::TruncatedEvent
        });
    }
    line.pop();
    Ok(true)
}

#[derive(Deserialize)]
struct RawEvent<'a> {
    #[serde(rename = "type")]
    kind: String,
    #[serde(borrow)]
    object: Option<&'a RawValue>,
}

/// `metav1.Status`, the object of an ERROR event and the body of a failed request.
#[derive(Debug, Default, Deserialize)]
pub struct Status {
    pub code: Option<u16>,
    pub reason: Option<String>,
    pub message: Option<String>,
}

/// Decodes one event line into the event and the resource version it carries.
pub fn decode_event(line: &[u8], node: &str) -> Result<(WatchEvent, Option<String>), KubeError> {
    let raw: RawEvent<'_> = serde_json::from_slice(line).map_err(KubeError::DecodeEvent)?;
    let object = raw.object.map_or("{}", RawValue::get);
    match raw.kind.as_str() {
        "ADDED" | "MODIFIED" | "DELETED" => {
            let pod: Pod = serde_json::from_str(object).map_err(KubeError::DecodeEvent)?;
            let version = pod.resource_version().map(str::to_owned);
            if pod.node_name().is_some_and(|n| n != node) {
                debug!("ignoring event for a pod of another node");
                return Ok((WatchEvent::Bookmark, version));
            }
            let Some(info) = pod.into_info() else {
                warn!(
                    "ignoring {} event for a pod without uid, namespace or name",
                    raw.kind
                );
                return Ok((WatchEvent::Bookmark, version));
            };
            let event = if raw.kind == "DELETED" {
                WatchEvent::Deleted(info.uid)
            } else {
                WatchEvent::Upsert(info)
            };
            Ok((event, version))
        }
        "BOOKMARK" => {
            let pod: Pod = serde_json::from_str(object).map_err(KubeError::DecodeEvent)?;
            Ok((
                WatchEvent::Bookmark,
                pod.resource_version().map(str::to_owned),
            ))
        }
        "ERROR" => {
            let status: Status = serde_json::from_str(object).unwrap_or_default();
            if status.code == Some(410) {
                return Ok((WatchEvent::Expired, None));
            }
            Err(KubeError::WatchStatus {
                code: status.code.unwrap_or(0),
                message: status_message(&status),
            })
        }
        other => {
            debug!("ignoring watch event of unknown type {other:?}");
            Ok((WatchEvent::Bookmark, None))
        }
    }
}

#[derive(Deserialize)]
struct RawList<'a> {
    metadata: Option<ListMeta>,
    #[serde(borrow)]
    items: Option<Vec<&'a RawValue>>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct ListMeta {
    resource_version: Option<String>,
    #[serde(rename = "continue")]
    next: Option<String>,
}

/// Decodes one page of a pod list. A pod that does not decode is logged and left out, so one bad
/// object cannot stop the agent from syncing (FIELD.md W6).
pub fn decode_list(body: &[u8], node: &str) -> Result<ListPage, KubeError> {
    let raw: RawList<'_> = serde_json::from_slice(body).map_err(KubeError::DecodeList)?;
    let meta = raw.metadata.ok_or(KubeError::ListWithoutVersion)?;
    let resource_version = meta
        .resource_version
        .filter(|v| !v.is_empty())
        .ok_or(KubeError::ListWithoutVersion)?;
    let mut pods = Vec::new();
    for item in raw.items.unwrap_or_default() {
        match serde_json::from_str::<Pod>(item.get()) {
            Ok(pod) if pod.node_name().is_some_and(|n| n != node) => {}
            Ok(pod) => match pod.into_info() {
                Some(info) => pods.push(info),
                None => warn!("pod list: skipping a pod without uid, namespace or name"),
            },
            Err(err) => warn!("pod list: skipping a pod that does not decode: {err}"),
        }
    }
    Ok(ListPage {
        pods,
        resource_version,
        next: meta.next.filter(|c| !c.is_empty()),
    })
}

/// The message of a `Status`, or its reason, shortened for a log line.
pub fn status_message(status: &Status) -> String {
    let text = status
        .message
        .as_deref()
        .or(status.reason.as_deref())
        .unwrap_or("no message");
    let mut short: String = text.chars().filter(|c| !c.is_control()).take(200).collect();
    if text.chars().count() > 200 {
        short.push('…');
    }
    short
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod_json(uid: &str, rv: &str) -> String {
        format!(
            r#"{{"metadata":{{"name":"p-{uid}","namespace":"ns","uid":"{uid}","resourceVersion":"{rv}"}},"spec":{{"nodeName":"n1"}}}}"#
        )
    }

    fn event(kind: &str, object: &str) -> String {
        format!("{{\"type\":\"{kind}\",\"object\":{object}}}\n")
    }

    fn run(stream: &str) -> (Result<StreamEnd, KubeError>, String, Vec<KubeEvent>) {
        let mut rv = "1".to_owned();
        let mut events = Vec::new();
        let mut reader = stream.as_bytes();
        let end = pump(&mut reader, "n1", &mut rv, &mut |e| {
            events.push(e);
            true
        });
        (end, rv, events)
    }

    #[test]
    fn events_update_the_cache_and_the_version() {
        let stream = [
            event("ADDED", &pod_json("a", "10")),
            event("MODIFIED", &pod_json("a", "11")),
            "\n".to_owned(),
            event("BOOKMARK", r#"{"metadata":{"resourceVersion":"15"}}"#),
            event("DELETED", &pod_json("a", "16")),
        ]
        .concat();
        let (end, rv, events) = run(&stream);
        assert_eq!(end.expect("clean end"), StreamEnd::Closed);
        assert_eq!(rv, "16");
        assert_eq!(events.len(), 3);
        assert!(matches!(&events[0], KubeEvent::PodUpsert(p) if p.uid == "a"));
        assert!(matches!(&events[1], KubeEvent::PodUpsert(p) if p.uid == "a"));
        assert!(matches!(&events[2], KubeEvent::PodDeleted(uid) if uid == "a"));
    }

    #[test]
    fn error_410_asks_for_a_relist() {
        let stream = [
            event("ADDED", &pod_json("a", "10")),
            event(
                "ERROR",
                r#"{"kind":"Status","status":"Failure","reason":"Expired","code":410}"#,
            ),
            event("ADDED", &pod_json("b", "12")),
        ]
        .concat();
        let (end, rv, events) = run(&stream);
        assert_eq!(end.expect("ends"), StreamEnd::Expired);
        assert_eq!(rv, "10");
        assert_eq!(events.len(), 1);
    }

    #[test]
    fn other_errors_are_errors() {
        let stream = event("ERROR", r#"{"code":500,"message":"etcd is sad"}"#);
        let (end, _, _) = run(&stream);
        let err = end.expect_err("error event");
        assert!(err.to_string().contains("etcd is sad"), "{err}");
        assert!(!err.needs_relist());
    }

    #[test]
    fn garbage_needs_a_relist() {
        // The version did not move past the bad event, so watching again would meet it again.
        for stream in [
            "not json\n".to_owned(),
            event("ADDED", r#"{"metadata":{"name":5}}"#),
        ] {
            let (end, rv, _) = run(&stream);
            let err = end.expect_err(&stream);
            assert!(err.needs_relist(), "{stream}: {err}");
            assert_eq!(rv, "1");
        }
    }

    #[test]
    fn truncated_stream_watches_again_from_the_last_complete_event() {
        let stream = [
            event("ADDED", &pod_json("a", "10")),
            event("ADDED", &pod_json("b", "11")).trim_end().to_owned(),
        ]
        .concat();
        let (end, rv, events) = run(&stream);
        let err = end.expect_err("truncated");
        assert!(matches!(err, KubeError::TruncatedEvent));
        assert!(!err.needs_relist());
        assert_eq!(rv, "10");
        assert_eq!(events.len(), 1);
    }

    #[test]
    fn overlong_line_is_rejected_without_reading_it_all() {
        let mut stream = b"{\"type\":\"ADDED\",\"object\":\"".to_vec();
        stream.resize(MAX_EVENT_BYTES * 2, b'a');
        let mut reader = stream.as_slice();
        let mut line = Vec::new();
        let err = read_event_line(&mut reader, &mut line).expect_err("too long");
        assert!(matches!(err, KubeError::EventTooLong { .. }));
        assert!(err.needs_relist());
        assert!(line.len() <= MAX_EVENT_BYTES + 1);
    }

    #[test]
    fn incomplete_and_foreign_pods_are_skipped() {
        let stream = [
            event("ADDED", r#"{"metadata":{"name":"x","resourceVersion":"20"}}"#),
            event(
                "ADDED",
                r#"{"metadata":{"name":"y","namespace":"ns","uid":"y","resourceVersion":"21"},"spec":{"nodeName":"n2"}}"#,
            ),
            event("SOMETHING_NEW", "{}"),
        ]
        .concat();
        let (end, rv, events) = run(&stream);
        assert_eq!(end.expect("clean"), StreamEnd::Closed);
        assert_eq!(rv, "21");
        assert!(events.is_empty());
    }

    #[test]
    fn closed_sink_stops_the_pump() {
        let stream = event("ADDED", &pod_json("a", "10")).repeat(3);
        let mut rv = String::new();
        let mut reader = stream.as_bytes();
        let end = pump(&mut reader, "n1", &mut rv, &mut |_| false).expect("stops");
        assert_eq!(end, StreamEnd::SinkClosed);
    }

    #[test]
    fn list_page_decodes_and_skips_bad_items() {
        let body = format!(
            r#"{{"kind":"PodList","metadata":{{"resourceVersion":"42","continue":"abc"}},
            "items":[{},{},{{"metadata":{{"uid":7}}}},{{"metadata":{{"name":"x"}}}}]}}"#,
            pod_json("a", "40"),
            pod_json("b", "41")
        );
        let page = decode_list(body.as_bytes(), "n1").expect("decodes");
        assert_eq!(page.resource_version, "42");
        assert_eq!(page.next.as_deref(), Some("abc"));
        let uids: Vec<&str> = page.pods.iter().map(|p| p.uid.as_str()).collect();
        assert_eq!(uids, ["a", "b"]);
    }

    #[test]
    fn list_without_version_is_an_error() {
        assert!(decode_list(br#"{"items":[]}"#, "n1").is_err());
        let page = decode_list(
            br#"{"metadata":{"resourceVersion":"1","continue":""}}"#,
            "n1",
        )
        .expect("empty list");
        assert!(page.pods.is_empty());
        assert_eq!(page.next, None);
    }
}
