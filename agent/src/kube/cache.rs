// SPDX-License-Identifier: Apache-2.0
//! The watch loop's own record of the node's pods: UID, name and resource version of each.
//!
//! The scheduler keeps the pods' facts; this record exists so that the watch loop itself knows
//! what it has told the scheduler. It turns a relist into a diff for the log ("3 pods gone while
//! the watch was down"), and, when `--pod-cache-file` is set, it is written as JSON after changes
//! so that tests and operators can compare the agent's view with the API server's. A few dozen
//! bytes per pod.
//!
//! The file is written to a temporary name and renamed after every change (a debugging aid: a few
//! dozen KiB per write on a busy node is the price of a file that is never stale). A write that
//! fails is logged once and retried with the next change; it never affects pacing.

use std::collections::HashMap;
use std::fs;
use std::io::Write;
use std::path::PathBuf;

use log::warn;
use serde::Serialize;

use super::watch::Listed;
use crate::pod::PodInfo;

#[derive(Debug)]
struct Entry {
    namespace: Box<str>,
    name: Box<str>,
    version: Box<str>,
}

/// What a relist changed, compared with the record before it.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Diff {
    /// Recorded pods missing from the list: deleted while the watch was down.
    pub gone: usize,
    pub added: usize,
    /// Listed pods whose resource version differs from the recorded one.
    pub changed: usize,
}

/// See the module docs.
#[derive(Debug)]
pub struct PodCache {
    pods: HashMap<String, Entry>,
    /// The last resource version the loop has seen (list, event or bookmark).
    version: String,
    file: Option<PathBuf>,
    dirty: bool,
    write_failed: bool,
}

impl PodCache {
    /// An empty record; `file`, if set, is where it is written.
    pub fn new(file: Option<PathBuf>) -> Self {
        Self {
            pods: HashMap::new(),
            version: String::new(),
            file,
            dirty: false,
            write_failed: false,
        }
    }

    /// Replaces the record with a full list and says what changed.
    pub fn replace(&mut self, listed: &[Listed], version: &str) -> Diff {
        let mut diff = Diff::default();
        let mut next = HashMap::with_capacity(listed.len());
        for item in listed {
            match self.pods.remove(&item.pod.uid) {
                None => diff.added += 1,
                Some(old) if *old.version != *item.version => diff.changed += 1,
                Some(_) => {}
            }
            next.insert(item.pod.uid.clone(), entry(&item.pod, &item.version));
        }
        diff.gone = self.pods.len();
        self.pods = next;
        self.pods.shrink_to_fit();
        self.set_version(version);
        diff
    }

    pub fn upsert(&mut self, pod: &PodInfo, version: &str) {
        self.pods.insert(pod.uid.clone(), entry(pod, version));
        self.dirty = true;
    }

    pub fn delete(&mut self, uid: &str) {
        if self.pods.remove(uid).is_some() {
            self.dirty = true;
        }
    }

    pub fn set_version(&mut self, version: &str) {
        if self.version != version {
            version.clone_into(&mut self.version);
            self.dirty = true;
        }
    }

    /// Writes the file if something changed since the last write.
    pub fn flush(&mut self) {
        let Some(path) = &self.file else {
            return;
        };
        if !self.dirty {
            return;
        }
        let tmp = path.with_extension("tmp");
        let result = fs::File::create(&tmp)
            .and_then(|mut f| f.write_all(self.to_json().as_bytes()))
            .and_then(|()| fs::rename(&tmp, path));
        match result {
            Ok(()) => {
                self.dirty = false;
                self.write_failed = false;
            }
            Err(err) if !self.write_failed => {
                self.write_failed = true;
                warn!("writing the pod cache file {}: {err}", path.display());
            }
            Err(_) => {}
        }
    }

    /// `{"resourceVersion": ..., "pods": [{"uid", "namespace", "name", "resourceVersion"}]}`,
    /// pods sorted by UID.
    fn to_json(&self) -> String {
        #[derive(Serialize)]
        #[serde(rename_all = "camelCase")]
        struct Out<'a> {
            resource_version: &'a str,
            pods: Vec<OutPod<'a>>,
        }
        #[derive(Serialize)]
        #[serde(rename_all = "camelCase")]
        struct OutPod<'a> {
            uid: &'a str,
            namespace: &'a str,
            name: &'a str,
            resource_version: &'a str,
        }
        let mut pods: Vec<OutPod<'_>> = self
            .pods
            .iter()
            .map(|(uid, e)| OutPod {
                uid,
                namespace: &e.namespace,
                name: &e.name,
                resource_version: &e.version,
            })
            .collect();
        pods.sort_by(|a, b| a.uid.cmp(b.uid));
        let out = Out {
            resource_version: &self.version,
            pods,
        };
        // Serializing strings and a Vec into a String cannot fail.
        serde_json::to_string(&out).unwrap_or_default() + "\n"
    }
}

fn entry(pod: &PodInfo, version: &str) -> Entry {
    Entry {
        namespace: pod.namespace.as_str().into(),
        name: pod.name.as_str().into(),
        version: version.into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(uid: &str) -> PodInfo {
        let json = format!(r#"{{"metadata":{{"name":"p-{uid}","namespace":"ns","uid":"{uid}"}}}}"#);
        let pod: super::super::model::Pod = serde_json::from_str(&json).expect("pod");
        pod.into_info().expect("complete")
    }

    fn listed(uid: &str, version: &str) -> Listed {
        Listed {
            pod: pod(uid),
            version: version.to_owned(),
        }
    }

    #[test]
    fn a_relist_derives_what_went_away_while_the_watch_was_down() {
        let mut cache = PodCache::new(None);
        let first = cache.replace(&[listed("a", "1"), listed("b", "2"), listed("c", "3")], "3");
        assert_eq!(
            first,
            Diff {
                gone: 0,
                added: 3,
                changed: 0
            }
        );
        cache.upsert(&pod("d"), "4");
        let diff = cache.replace(&[listed("a", "1"), listed("c", "7"), listed("e", "8")], "9");
        assert_eq!(
            diff,
            Diff {
                gone: 2,
                added: 1,
                changed: 1
            }
        );
        assert_eq!(cache.pods.len(), 3);
    }

    #[test]
    fn the_file_holds_the_record_sorted_by_uid() {
        let dir = std::env::temp_dir().join(format!("pp-agent-cache-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).expect("dir");
        let path = dir.join("pods.json");
        let mut cache = PodCache::new(Some(path.clone()));
        cache.replace(&[listed("b", "2"), listed("a", "1")], "5");
        cache.flush();
        cache.delete("b");
        cache.upsert(&pod("c"), "6");
        cache.set_version("6");
        cache.flush();
        let json: serde_json::Value =
            serde_json::from_str(&fs::read_to_string(&path).expect("file")).expect("json");
        assert_eq!(
            json,
            serde_json::json!({"resourceVersion":"6","pods":[
                {"uid":"a","namespace":"ns","name":"p-a","resourceVersion":"1"},
                {"uid":"c","namespace":"ns","name":"p-c","resourceVersion":"6"}]})
        );
        let _ = fs::remove_dir_all(&dir);
    }
}
