// SPDX-License-Identifier: Apache-2.0
//! A stderr logger for the plugin, in a few lines so the binary stays small.
//!
//! Stdout belongs to the CNI result; everything else goes to stderr as
//! `pod-pacemaker: <level>: <message>`, which the runtime copies into its own log.
//! Levels: error = the invocation failed; warn = the pod proceeded without a slot (fail-open) or
//! something else abnormal was handled; info = a slot was granted; debug = decisions and
//! protocol progress.

use std::io::Write;

use log::{LevelFilter, Log, Metadata, Record};

struct StderrLogger;

impl Log for StderrLogger {
    fn enabled(&self, metadata: &Metadata<'_>) -> bool {
        metadata.level() <= log::max_level()
    }

    fn log(&self, record: &Record<'_>) {
        if !self.enabled(record.metadata()) {
            return;
        }
        let level = record.level().as_str().to_ascii_lowercase();
        // A log line that cannot be written must never fail the ADD.
        let _ = writeln!(
            std::io::stderr(),
            "pod-pacemaker: {level}: {}",
            record.args()
        );
    }

    fn flush(&self) {}
}

static LOGGER: StderrLogger = StderrLogger;

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
