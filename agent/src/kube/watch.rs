// SPDX-License-Identifier: Apache-2.0
//! Decoding of pod list pages and of the watch stream, apart from the transport.
//!
//! A watch response is a stream of JSON objects `{"type": ..., "object": ...}`, one per line
//! (the API server writes each event followed by `\n`). [`pump`] reads them from any [`BufRead`],
//! each line bounded by [`MAX_EVENT_BYTES`], keeps the stream's resource version current, and
//! hands each decoded [`WatchEvent`] to the caller. A list page is decoded from a reader too
//! ([`decode_list`]), one item at a time, so a large list never sits in memory whole. Neither
//! decides anything about retries: a [`StreamEnd`] or an error tells the loop in `kube/mod.rs`
//! whether to watch again or relist. Because they only need a reader, the tests feed them byte
//! strings; the TLS transport lives in `kube/client.rs`.
//!
//! One pod that does not decode never stops the agent (docs/prior-art.md W6): in a list it is left out,
//! and in a watch event it is reported as gone when its UID can still be read. Both mean the
//! scheduler forgets it and frees any slot it held, which is the same outcome either way.

use std::fmt;
use std::io::{self, BufRead, Read};

use log::{debug, warn};
use serde::de::{DeserializeSeed, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde::Deserialize;
use serde_json::value::RawValue;

use super::model::{Pod, PodIdentity};
use super::KubeError;
use crate::pod::PodInfo;

/// The longest watch event line accepted. A pod object is a few KiB to a few hundred KiB (managed
/// fields, long annotations; the API server refuses objects over 1.5 MiB in etcd); a longer line
/// is treated as a broken stream and leads to a relist.
pub const MAX_EVENT_BYTES: usize = 4 << 20;

/// Why a watch stream ended without an error.
#[derive(Debug, PartialEq, Eq)]
pub enum StreamEnd {
    /// The server closed the stream (its `timeoutSeconds` passed): watch again from the last
    /// resource version.
    Closed,
    /// The resource version is too old (410 Gone): relist.
    Expired,
    /// The receiver of the events is gone: the agent is stopping.
    SinkClosed,
}

/// One decoded watch event.
#[derive(Debug, PartialEq, Eq)]
pub enum WatchEvent {
    /// ADDED or MODIFIED, with the pod's own resource version.
    Upsert { pod: PodInfo, version: String },
    /// DELETED (or a pod that no longer decodes), with the pod's UID.
    Deleted { uid: String },
    /// BOOKMARK, an event for another node's pod, or an unknown type: only the stream's version
    /// moves.
    Bookmark,
    /// ERROR with code 410: the resource version is too old.
    Expired,
}

/// One pod of a list, with its resource version.
#[derive(Debug, PartialEq, Eq)]
pub struct Listed {
    pub pod: PodInfo,
    pub version: String,
}

/// One page of a pod list.
#[derive(Debug)]
pub struct ListPage {
    pub pods: Vec<Listed>,
    pub resource_version: String,
    /// The `continue` token for the next page, if there is one.
    pub next: Option<String>,
    /// Items left out because they did not decode or lacked a uid, namespace or name.
    pub skipped: usize,
}

/// Reads watch events from `reader` until the stream ends, keeping `resource_version` at the last
/// event's version and passing every event, with that version, to `on_event`, which returns
/// `false` when the events' receiver is gone. Events for pods of another node (`node`) arrive as
/// [`WatchEvent::Bookmark`].
pub fn pump(
    reader: &mut impl BufRead,
    node: &str,
    resource_version: &mut String,
    on_event: &mut impl FnMut(WatchEvent, &str) -> bool,
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
        if event == WatchEvent::Expired {
            return Ok(StreamEnd::Expired);
        }
        if !on_event(event, resource_version) {
            return Ok(StreamEnd::SinkClosed);
        }
        // A burst of large events must not keep the buffer at its largest for the whole watch.
        if line.capacity() > 1 << 20 {
            line = Vec::with_capacity(16 * 1024);
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
        .map_err(read_error)?;
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

/// Classifies an error from reading a response body: ureq reports its per-read timeout, which the
/// watch uses as its silence bound, wrapped in an `io::Error`.
pub fn read_error(err: io::Error) -> KubeError {
    match ureq::Error::from(err) {
        ureq::Error::Timeout(ureq::Timeout::PerRead) => KubeError::WatchSilent,
        ureq::Error::Io(err) => KubeError::ReadBody(err),
        other => KubeError::ReadBody(other.into_io()),
    }
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
        "ADDED" | "MODIFIED" | "DELETED" => decode_pod_event(&raw.kind, object, node),
        "BOOKMARK" => {
            let identity: PodIdentity =
                serde_json::from_str(object).map_err(KubeError::DecodeEvent)?;
            let version = identity.metadata.and_then(|m| m.resource_version);
            Ok((WatchEvent::Bookmark, version))
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

fn decode_pod_event(
    kind: &str,
    object: &str,
    node: &str,
) -> Result<(WatchEvent, Option<String>), KubeError> {
    let pod: Pod = match serde_json::from_str(object) {
        Ok(pod) => pod,
        Err(err) => {
            // The pod is not what the model expects. If it can still be named, forget it (as a
            // list would leave it out) and carry on from its version; otherwise the stream can
            // only be trusted again after a relist.
            let identity: PodIdentity = serde_json::from_str(object).unwrap_or_default();
            let meta = identity.metadata.unwrap_or_default();
            let (Some(uid), Some(version)) = (meta.uid, meta.resource_version) else {
                return Err(KubeError::DecodeEvent(err));
            };
            warn!(
                "{kind} event for pod uid={uid} does not decode, treating the pod as gone: {err}"
            );
            return Ok((WatchEvent::Deleted { uid }, Some(version)));
        }
    };
    let version = pod.resource_version().map(str::to_owned);
    if pod.node_name().is_some_and(|n| n != node) {
        debug!("ignoring event for a pod of another node");
        return Ok((WatchEvent::Bookmark, version));
    }
    let Some(info) = pod.into_info() else {
        warn!("ignoring {kind} event for a pod without uid, namespace or name");
        return Ok((WatchEvent::Bookmark, version));
    };
    let event = if kind == "DELETED" {
        WatchEvent::Deleted { uid: info.uid }
    } else {
        WatchEvent::Upsert {
            pod: info,
            version: version.clone().unwrap_or_default(),
        }
    };
    Ok((event, version))
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct ListMeta {
    resource_version: Option<String>,
    #[serde(rename = "continue")]
    next: Option<String>,
}

/// Decodes one page of a pod list from `reader`, an item at a time. A pod that does not decode is
/// logged and left out, so one bad object cannot stop the agent from syncing (docs/prior-art.md W6).
pub fn decode_list(reader: impl Read, node: &str) -> Result<ListPage, KubeError> {
    let mut deserializer = serde_json::Deserializer::from_reader(reader);
    let page = ListSeed { node }
        .deserialize(&mut deserializer)
        .and_then(|page| deserializer.end().map(|()| page))
        .map_err(|err| {
            if err.is_io() {
                read_error(err.into())
            } else {
                KubeError::DecodeList(err)
            }
        })?;
    let meta = page.meta.ok_or(KubeError::ListWithoutVersion)?;
    let resource_version = meta
        .resource_version
        .filter(|v| !v.is_empty())
        .ok_or(KubeError::ListWithoutVersion)?;
    Ok(ListPage {
        pods: page.pods,
        resource_version,
        next: meta.next.filter(|c| !c.is_empty()),
        skipped: page.skipped,
    })
}

/// A list body as read, before the checks of [`decode_list`].
struct RawPage {
    meta: Option<ListMeta>,
    pods: Vec<Listed>,
    skipped: usize,
}

struct ListSeed<'n> {
    node: &'n str,
}

impl<'de> DeserializeSeed<'de> for ListSeed<'_> {
    type Value = RawPage;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<RawPage, D::Error> {
        deserializer.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for ListSeed<'_> {
    type Value = RawPage;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a PodList object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<RawPage, A::Error> {
        let mut page = RawPage {
            meta: None,
            pods: Vec::new(),
            skipped: 0,
        };
        while let Some(key) = map.next_key::<ListKey>()? {
            match key {
                ListKey::Metadata => page.meta = map.next_value()?,
                ListKey::Items => map.next_value_seed(ItemsSeed {
                    node: self.node,
                    page: &mut page,
                })?,
                ListKey::Other => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        Ok(page)
    }
}

/// A key of a list object, compared without keeping it.
enum ListKey {
    Metadata,
    Items,
    Other,
}

impl<'de> Deserialize<'de> for ListKey {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_str(ListKeyVisitor)
    }
}

struct ListKeyVisitor;

impl Visitor<'_> for ListKeyVisitor {
    type Value = ListKey;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a field name")
    }

    fn visit_str<E: serde::de::Error>(self, key: &str) -> Result<ListKey, E> {
        Ok(match key {
            "metadata" => ListKey::Metadata,
            "items" => ListKey::Items,
            _ => ListKey::Other,
        })
    }
}

/// Reads `items` (an array, or `null`) into the page, decoding each pod as it arrives.
struct ItemsSeed<'a, 'n> {
    node: &'n str,
    page: &'a mut RawPage,
}

impl<'de> DeserializeSeed<'de> for ItemsSeed<'_, '_> {
    type Value = ();

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<(), D::Error> {
        deserializer.deserialize_option(self)
    }
}

impl<'de> Visitor<'de> for ItemsSeed<'_, '_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a list of pods")
    }

    fn visit_none<E: serde::de::Error>(self) -> Result<(), E> {
        Ok(())
    }

    fn visit_unit<E: serde::de::Error>(self) -> Result<(), E> {
        Ok(())
    }

    fn visit_some<D: Deserializer<'de>>(self, deserializer: D) -> Result<(), D::Error> {
        deserializer.deserialize_seq(self)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        // Each item is copied out on its own (a `RawValue`) so that a pod the model rejects can be
        // skipped without losing the place in the stream.
        while let Some(item) = seq.next_element::<Box<RawValue>>()? {
            match serde_json::from_str::<Pod>(item.get()) {
                Ok(pod) if pod.node_name().is_some_and(|n| n != self.node) => {}
                Ok(pod) => {
                    let version = pod.resource_version().unwrap_or_default().to_owned();
                    match pod.into_info() {
                        Some(pod) => self.page.pods.push(Listed { pod, version }),
                        None => {
                            self.page.skipped += 1;
                            debug!("pod list: skipping a pod without uid, namespace or name");
                        }
                    }
                }
                Err(err) => {
                    // One line per page (logged by the caller with the count), not per pod.
                    if self.page.skipped == 0 {
                        warn!("pod list: skipping a pod that does not decode: {err}");
                    }
                    self.page.skipped += 1;
                }
            }
        }
        Ok(())
    }
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

    fn run(stream: &str) -> (Result<StreamEnd, KubeError>, String, Vec<WatchEvent>) {
        let mut rv = "1".to_owned();
        let mut events = Vec::new();
        let mut reader = stream.as_bytes();
        let end = pump(&mut reader, "n1", &mut rv, &mut |e, _| {
            events.push(e);
            true
        });
        (end, rv, events)
    }

    #[test]
    fn events_update_the_version_and_carry_the_pods_own() {
        let stream = [
            event("ADDED", &pod_json("a", "10")),
            event("MODIFIED", &pod_json("a", "11")),
            "\n".to_owned(),
            event(
                "BOOKMARK",
                r#"{"kind":"Pod","metadata":{"resourceVersion":"15"}}"#,
            ),
            event("DELETED", &pod_json("a", "16")),
        ]
        .concat();
        let (end, rv, events) = run(&stream);
        assert_eq!(end.expect("clean end"), StreamEnd::Closed);
        assert_eq!(rv, "16");
        assert_eq!(events.len(), 4);
        assert!(
            matches!(&events[0], WatchEvent::Upsert { pod, version } if pod.uid == "a" && version == "10")
        );
        assert!(matches!(&events[1], WatchEvent::Upsert { version, .. } if version == "11"));
        assert_eq!(events[2], WatchEvent::Bookmark);
        assert!(matches!(&events[3], WatchEvent::Deleted { uid } if uid == "a"));
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
            event("BOOKMARK", r#"{"metadata":{"resourceVersion":7}}"#),
        ] {
            let (end, rv, _) = run(&stream);
            let err = end.expect_err(&stream);
            assert!(err.needs_relist(), "{stream}: {err}");
            assert_eq!(rv, "1");
        }
    }

    #[test]
    fn a_pod_that_no_longer_decodes_is_gone_and_the_stream_goes_on() {
        let bad = r#"{"metadata":{"name":"a","namespace":"ns","uid":"a","resourceVersion":"12"},"spec":{"nodeName":"n1","priority":"high"}}"#;
        let stream = [event("MODIFIED", bad), event("ADDED", &pod_json("b", "13"))].concat();
        let (end, rv, events) = run(&stream);
        assert_eq!(end.expect("clean"), StreamEnd::Closed);
        assert_eq!(rv, "13");
        assert!(matches!(&events[0], WatchEvent::Deleted { uid } if uid == "a"));
        assert!(matches!(&events[1], WatchEvent::Upsert { pod, .. } if pod.uid == "b"));
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
    fn incomplete_and_foreign_pods_only_move_the_version() {
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
        assert!(events.iter().all(|e| *e == WatchEvent::Bookmark));
    }

    #[test]
    fn closed_receiver_stops_the_pump() {
        let stream = event("ADDED", &pod_json("a", "10")).repeat(3);
        let mut rv = String::new();
        let mut reader = stream.as_bytes();
        let end = pump(&mut reader, "n1", &mut rv, &mut |_, _| false).expect("stops");
        assert_eq!(end, StreamEnd::SinkClosed);
    }

    #[test]
    fn list_page_decodes_and_skips_bad_items() {
        let body = format!(
            r#"{{"kind":"PodList","apiVersion":"v1","metadata":{{"resourceVersion":"42","continue":"abc"}},
            "items":[{},{},{{"metadata":{{"uid":7}}}},{{"metadata":{{"name":"x"}}}},
            {{"metadata":{{"name":"o","namespace":"ns","uid":"o"}},"spec":{{"nodeName":"n9"}}}}]}}"#,
            pod_json("a", "40"),
            pod_json("b", "41")
        );
        let page = decode_list(body.as_bytes(), "n1").expect("decodes");
        assert_eq!(page.resource_version, "42");
        assert_eq!(page.next.as_deref(), Some("abc"));
        assert_eq!(page.skipped, 2);
        let pods: Vec<(&str, &str)> = page
            .pods
            .iter()
            .map(|l| (l.pod.uid.as_str(), l.version.as_str()))
            .collect();
        assert_eq!(pods, [("a", "40"), ("b", "41")]);
    }

    #[test]
    fn list_without_version_or_with_trailing_garbage_is_an_error() {
        assert!(matches!(
            decode_list(&br#"{"items":[]}"#[..], "n1"),
            Err(KubeError::ListWithoutVersion)
        ));
        assert!(matches!(
            decode_list(&br#"{"metadata":{"resourceVersion":"1"}} {}"#[..], "n1"),
            Err(KubeError::DecodeList(_))
        ));
        assert!(decode_list(&br#"[1,2]"#[..], "n1").is_err());
        let page = decode_list(
            &br#"{"metadata":{"resourceVersion":"1","continue":""},"items":null}"#[..],
            "n1",
        )
        .expect("empty list");
        assert!(page.pods.is_empty());
        assert_eq!(page.next, None);
    }

    #[test]
    fn a_list_cut_short_is_a_read_or_decode_error_never_a_short_list() {
        let body = format!(
            r#"{{"metadata":{{"resourceVersion":"42"}},"items":[{},{}]}}"#,
            pod_json("a", "40"),
            pod_json("b", "41")
        );
        for cut in [10, body.len() / 2, body.len() - 1] {
            assert!(decode_list(&body.as_bytes()[..cut], "n1").is_err(), "{cut}");
        }
    }
}
