// SPDX-License-Identifier: Apache-2.0
//! The state file: the holders and the queue, kept across agent restarts.
//!
//! The pod list rebuilds most holders after a restart (pods with a sandbox that are not released
//! yet), but not the order of the queue, nor a holder whose sandbox the kubelet has not reported
//! yet. So the scheduler thread writes both to a small JSON file whenever they changed and it is
//! about to idle, and the next agent reads it once at start (docs/decisions.md D10). The file
//! lives next to the socket (`/var/run/pod-pacemaker`, a hostPath on tmpfs): it survives a
//! container restart and is gone after a node reboot, when the queue is void anyway.
//!
//! Instants do not survive a process, so times are stored as wall-clock nanoseconds since the
//! Unix epoch, converted with one (`Instant`, wall clock) pair on each side: the differences
//! between entries, and so their order, come back exactly. A file that does not parse, is too
//! large, or has another version is logged and ignored: the agent then starts from the pod list
//! alone, as it would without the file.

use std::fmt;
use std::fs::{self, DirBuilder, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

/// The format version written and accepted.
const VERSION: u32 = 1;
/// A queue of ten thousand pods is about 2 MiB; a larger file is not ours.
const MAX_BYTES: u64 = 16 << 20;

/// What the file holds.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SavedState {
    pub version: u32,
    /// When it was written.
    pub saved_at_ns: u64,
    pub holders: Vec<SavedHolder>,
    /// In queue order.
    pub queue: Vec<SavedEntry>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SavedHolder {
    pub uid: Option<String>,
    pub namespace: String,
    pub name: String,
    /// The pod was in the agent's cache while it held the slot.
    #[serde(default)]
    pub seen: bool,
    pub granted_ns: u64,
    pub arrival_ns: u64,
    pub created: String,
    pub priority: i32,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SavedEntry {
    pub uid: Option<String>,
    #[serde(default)]
    pub uid_by_name: bool,
    pub namespace: String,
    pub name: String,
    /// The pod was in the agent's cache while queued.
    #[serde(default)]
    pub seen: bool,
    pub arrival_ns: u64,
    pub created: String,
    pub priority: i32,
    /// A client was waiting when the file was written.
    pub waiting: bool,
    /// For a remembered position: when it is dropped.
    pub forget_at_ns: Option<u64>,
}

/// The saved state with its times turned back into instants of this process.
#[derive(Debug)]
pub struct Restored {
    /// How long ago the file was written.
    pub age: Duration,
    pub holders: Vec<RestoredHolder>,
    pub queue: Vec<RestoredEntry>,
}

#[derive(Debug)]
pub struct RestoredHolder {
    pub uid: Option<String>,
    pub namespace: String,
    pub name: String,
    pub seen: bool,
    pub granted: Instant,
    pub arrival: Instant,
    pub created: String,
    pub priority: i32,
}

#[derive(Debug)]
pub struct RestoredEntry {
    pub uid: Option<String>,
    pub uid_by_name: bool,
    pub namespace: String,
    pub name: String,
    pub seen: bool,
    pub arrival: Instant,
    pub created: String,
    pub priority: i32,
    pub waiting: bool,
    pub forget_at: Option<Instant>,
}

/// Why the file could not be read or written.
#[derive(Debug)]
pub enum StateError {
    Read {
        path: PathBuf,
        source: io::Error,
    },
    Parse {
        path: PathBuf,
        source: serde_json::Error,
    },
    TooLarge {
        path: PathBuf,
    },
    Version {
        path: PathBuf,
        found: u32,
    },
    Write {
        path: PathBuf,
        source: io::Error,
    },
}

impl fmt::Display for StateError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StateError::Read { path, source } => {
                write!(f, "reading state file {}: {source}", path.display())
            }
            StateError::Parse { path, source } => {
                write!(f, "state file {} does not parse: {source}", path.display())
            }
            StateError::TooLarge { path } => write!(
                f,
                "state file {} is larger than {MAX_BYTES} bytes",
                path.display()
            ),
            StateError::Version { path, found } => write!(
                f,
                "state file {} has version {found}, this agent reads {VERSION}",
                path.display()
            ),
            StateError::Write { path, source } => {
                write!(f, "writing state file {}: {source}", path.display())
            }
        }
    }
}

impl std::error::Error for StateError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            StateError::Read { source, .. } | StateError::Write { source, .. } => Some(source),
            StateError::Parse { source, .. } => Some(source),
            StateError::TooLarge { .. } | StateError::Version { .. } => None,
        }
    }
}

/// The wall clock now, in nanoseconds since the Unix epoch (0 before 1970: a broken clock only
/// makes the saved ages wrong, never the order).
pub fn wall_now_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
}

/// `instant` as wall-clock nanoseconds, given that `now` is `wall_ns`. Works both ways: arrivals
/// are in the past, the instant a remembered position is dropped is in the future.
pub fn to_wall(instant: Instant, now: Instant, wall_ns: u64) -> u64 {
    let nanos = |d: Duration| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX);
    if instant >= now {
        wall_ns.saturating_add(nanos(instant - now))
    } else {
        wall_ns.saturating_sub(nanos(now - instant))
    }
}

/// Wall-clock nanoseconds as an instant of this process, given that `now` is `wall_ns`.
pub fn from_wall(ns: u64, now: Instant, wall_ns: u64) -> Instant {
    if ns >= wall_ns {
        now.checked_add(Duration::from_nanos(ns - wall_ns))
            .unwrap_or(now)
    } else {
        now.checked_sub(Duration::from_nanos(wall_ns - ns))
            .unwrap_or(now)
    }
}

/// Reads the file. `Ok(None)` when there is none.
pub fn load(path: &Path) -> Result<Option<SavedState>, StateError> {
    let file = match fs::File::open(path) {
        Ok(file) => file,
        Err(err) if err.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(source) => {
            return Err(StateError::Read {
                path: path.to_owned(),
                source,
            })
        }
    };
    let mut bytes = Vec::new();
    file.take(MAX_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(|source| StateError::Read {
            path: path.to_owned(),
            source,
        })?;
    if u64::try_from(bytes.len()).unwrap_or(u64::MAX) > MAX_BYTES {
        return Err(StateError::TooLarge {
            path: path.to_owned(),
        });
    }
    let state: SavedState = serde_json::from_slice(&bytes).map_err(|source| StateError::Parse {
        path: path.to_owned(),
        source,
    })?;
    if state.version != VERSION {
        return Err(StateError::Version {
            path: path.to_owned(),
            found: state.version,
        });
    }
    Ok(Some(state))
}

/// Writes the file: to a temporary name in the same directory with mode 0600, then renamed into
/// place, so a reader never sees half a file. No fsync: the file only has to survive the agent
/// process, not the node.
pub fn save(path: &Path, state: &SavedState) -> Result<(), StateError> {
    let err = |source| StateError::Write {
        path: path.to_owned(),
        source,
    };
    let bytes = serde_json::to_vec(state).map_err(|e| err(io::Error::other(e)))?;
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(err)?;
    }
    let mut temp = path.as_os_str().to_owned();
    temp.push(".tmp");
    let temp = PathBuf::from(temp);
    let mut file = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&temp)
        .map_err(err)?;
    file.write_all(&bytes).map_err(err)?;
    drop(file);
    fs::rename(&temp, path).map_err(err)
}

impl SavedState {
    /// The state with its times as instants, given that `now` is `wall_ns`.
    pub fn restore(self, now: Instant, wall_ns: u64) -> Restored {
        let at = |ns| from_wall(ns, now, wall_ns);
        Restored {
            age: Duration::from_nanos(wall_ns.saturating_sub(self.saved_at_ns)),
            holders: self
                .holders
                .into_iter()
                .map(|h| RestoredHolder {
                    uid: h.uid,
                    namespace: h.namespace,
                    name: h.name,
                    seen: h.seen,
                    // A grant "in the future" (the clock went back) starts its lease now.
                    granted: at(h.granted_ns).min(now),
                    arrival: at(h.arrival_ns),
                    created: h.created,
                    priority: h.priority,
                })
                .collect(),
            queue: self
                .queue
                .into_iter()
                .map(|e| RestoredEntry {
                    uid: e.uid,
                    uid_by_name: e.uid_by_name,
                    namespace: e.namespace,
                    name: e.name,
                    seen: e.seen,
                    arrival: at(e.arrival_ns),
                    created: e.created,
                    priority: e.priority,
                    waiting: e.waiting,
                    forget_at: e.forget_at_ns.map(at),
                })
                .collect(),
        }
    }

    pub fn new(saved_at_ns: u64, holders: Vec<SavedHolder>, queue: Vec<SavedEntry>) -> Self {
        Self {
            version: VERSION,
            saved_at_ns,
            holders,
            queue,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp_path(tag: &str) -> PathBuf {
        std::env::temp_dir()
            .join(format!("ppm-state-{tag}-{}", std::process::id()))
            .join("sub")
            .join("agent-state.json")
    }

    fn sample(saved_at_ns: u64) -> SavedState {
        SavedState::new(
            saved_at_ns,
            vec![SavedHolder {
                uid: Some("u1".to_owned()),
                namespace: "ns".to_owned(),
                name: "a".to_owned(),
                seen: true,
                granted_ns: saved_at_ns - 5_000_000_000,
                arrival_ns: saved_at_ns - 6_000_000_000,
                created: "2024-01-01T00:00:00Z".to_owned(),
                priority: 0,
            }],
            vec![
                SavedEntry {
                    uid: None,
                    uid_by_name: false,
                    namespace: "ns".to_owned(),
                    name: "b".to_owned(),
                    seen: false,
                    arrival_ns: saved_at_ns - 3_000_000_001,
                    created: String::new(),
                    priority: 5,
                    waiting: true,
                    forget_at_ns: None,
                },
                SavedEntry {
                    uid: Some("u3".to_owned()),
                    uid_by_name: true,
                    namespace: "ns".to_owned(),
                    name: "c".to_owned(),
                    seen: true,
                    arrival_ns: saved_at_ns - 3_000_000_000,
                    created: String::new(),
                    priority: 0,
                    waiting: false,
                    forget_at_ns: Some(saved_at_ns + 60_000_000_000),
                },
            ],
        )
    }

    #[test]
    fn saves_and_loads_privately() {
        let path = temp_path("roundtrip");
        let state = sample(1_700_000_000_000_000_000);
        save(&path, &state).expect("saves");
        save(&path, &state).expect("replaces");
        assert_eq!(load(&path).expect("loads"), Some(state));
        use std::os::unix::fs::PermissionsExt;
        let mode = fs::metadata(&path).expect("meta").permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        let dir = path.parent().expect("dir");
        assert_eq!(fs::read_dir(dir).expect("list").count(), 1, "no temp left");
        let _ = fs::remove_dir_all(dir.parent().expect("root"));
    }

    #[test]
    fn missing_file_is_none_and_bad_files_are_errors() {
        let path = temp_path("bad");
        assert!(matches!(load(&path), Ok(None)));
        fs::create_dir_all(path.parent().expect("dir")).expect("mkdir");
        fs::write(&path, "{not json").expect("write");
        assert!(matches!(load(&path), Err(StateError::Parse { .. })));
        let mut other = sample(10_000_000_000);
        other.version = 99;
        fs::write(&path, serde_json::to_vec(&other).expect("json")).expect("write");
        assert!(matches!(
            load(&path),
            Err(StateError::Version { found: 99, .. })
        ));
        let _ = fs::remove_dir_all(path.parent().and_then(Path::parent).expect("root"));
    }

    #[test]
    fn times_come_back_in_the_same_order_and_distance() {
        let saved_at = 1_700_000_000_000_000_000;
        let now = Instant::now();
        // Loaded ten seconds after it was saved.
        let restored = sample(saved_at).restore(now, saved_at + 10_000_000_000);
        assert_eq!(restored.age, Duration::from_secs(10));
        let h = &restored.holders[0];
        assert_eq!(now - h.granted, Duration::from_secs(15));
        let (b, c) = (&restored.queue[0], &restored.queue[1]);
        assert_eq!(c.arrival - b.arrival, Duration::from_nanos(1));
        assert_eq!(c.forget_at, Some(now + Duration::from_secs(50)));

        // Instants and wall times convert back and forth.
        let wall = 5_000_000_000_000;
        let earlier = now
            .checked_sub(Duration::from_millis(1500))
            .expect("uptime");
        let ns = to_wall(earlier, now, wall);
        assert_eq!(ns, wall - 1_500_000_000);
        assert_eq!(from_wall(ns, now, wall), earlier);
        assert_eq!(
            from_wall(wall + 1, now, wall),
            now + Duration::from_nanos(1)
        );
    }
}
