// SPDX-License-Identifier: Apache-2.0
//! A stderr logger for the plugin, in a few lines so the binary stays small.
//!
//! Stdout belongs to the CNI result; everything else goes to stderr as
//! `pod-pacemaker: <level>: <message>`, which the runtime copies into its own log. When the config
//! names a `logFile`, lines are also appended there; the file is capped at [`MAX_LOG_FILE_BYTES`]
//! (when full it is renamed to `<logFile>.1`, replacing the previous one). Nothing about the file
//! can fail an ADD: every error writing it is ignored.
//!
//! Levels: error = the invocation failed; warn = the pod proceeded without a slot (fail-open) or
//! something else abnormal was handled; info = a slot was granted; debug = decisions and
//! protocol progress.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::Path;
use std::sync::Mutex;
use std::time::{SystemTime, UNIX_EPOCH};

use log::{LevelFilter, Log, Metadata, Record};

/// The size at which the log file is rotated.
pub const MAX_LOG_FILE_BYTES: u64 = 1 << 20;

struct PluginLogger {
    file: Mutex<Option<File>>,
}

impl Log for PluginLogger {
    fn enabled(&self, metadata: &Metadata<'_>) -> bool {
        metadata.level() <= log::max_level()
    }

    fn log(&self, record: &Record<'_>) {
        if !self.enabled(record.metadata()) {
            return;
        }
        let level = record.level().as_str().to_ascii_lowercase();
        let line = format!("pod-pacemaker: {level}: {}\n", record.args());
        // A log line that cannot be written must never fail the ADD.
        let _ = std::io::stderr().write_all(line.as_bytes());
        if let Ok(mut file) = self.file.lock() {
            if let Some(file) = file.as_mut() {
                let secs = SystemTime::now()
                    .duration_since(UNIX_EPOCH)
                    .map_or(0, |d| d.as_secs());
                let pid = std::process::id();
                let _ = write!(file, "{secs} [{pid}] {line}");
            }
        }
    }

    fn flush(&self) {}
}

static LOGGER: PluginLogger = PluginLogger {
    file: Mutex::new(None),
};

/// Installs the logger. `level` comes from `PODPACEMAKER_LOG` (error, warn, info, debug, trace);
/// anything else means info.
pub fn init(level: Option<&str>) {
    let filter = match level {
        Some("error") => LevelFilter::Error,
        Some("warn") => LevelFilter::Warn,
        Some("debug") => LevelFilter::Debug,
        Some("trace") => LevelFilter::Trace,
        _ => LevelFilter::Info,
    };
    // Fails only if a logger is already set, which cannot happen in this one-shot binary.
    let _ = log::set_logger(&LOGGER);
    log::set_max_level(filter);
}

/// Also appends log lines to `path` from now on, rotating it first if it is full. Any failure
/// leaves logging on stderr only.
pub fn set_file(path: &Path) {
    if std::fs::metadata(path).is_ok_and(|m| m.len() >= MAX_LOG_FILE_BYTES) {
        let mut rotated = path.as_os_str().to_owned();
        rotated.push(".1");
        let _ = std::fs::rename(path, rotated);
    }
    let Ok(file) = OpenOptions::new().create(true).append(true).open(path) else {
        return;
    };
    if let Ok(mut slot) = LOGGER.file.lock() {
        *slot = Some(file);
    }
}
