// SPDX-License-Identifier: Apache-2.0
//! `pod-pacemaker`: a chained CNI plugin that holds a pod's ADD until the node agent grants a
//! start slot, then hands the previous plugin's result on unchanged.
//!
//! This file only does process I/O: read stdin (bounded), run the command, print the result or the
//! CNI error object on stdout, and set the exit code.

use std::io::{Read, Write};
use std::process::ExitCode;

use pod_pacemaker::cni::{peek_cni_version, MAX_STDIN_BYTES};
use pod_pacemaker::error::PluginError;
use pod_pacemaker::{logger, plugin};

fn main() -> ExitCode {
    let level = std::env::var("PODPACEMAKER_LOG").ok();
    logger::init(level.as_deref());

    let stdin = read_stdin();
    let cni_version = stdin.as_deref().ok().and_then(peek_cni_version);
    let result = plugin::run(&|name| std::env::var_os(name), stdin);

    let (output, code) = match result {
        Ok(Some(json)) => (json, ExitCode::SUCCESS),
        Ok(None) => return ExitCode::SUCCESS,
        Err(err) => {
            log::error!("{err}");
            (err.to_cni_json(cni_version.as_deref()), ExitCode::FAILURE)
        }
    };
    let mut stdout = std::io::stdout().lock();
    if let Err(err) = stdout
        .write_all(output.as_bytes())
        .and_then(|()| stdout.flush())
    {
        log::error!("writing the result to stdout: {err}");
        return ExitCode::FAILURE;
    }
    code
}

/// Reads stdin, refusing more than [`MAX_STDIN_BYTES`].
fn read_stdin() -> Result<Vec<u8>, PluginError> {
    let mut buf = Vec::with_capacity(4096);
    let limit = u64::try_from(MAX_STDIN_BYTES + 1).unwrap_or(u64::MAX);
    std::io::stdin()
        .lock()
        .take(limit)
        .read_to_end(&mut buf)
        .map_err(PluginError::ReadStdin)?;
    if buf.len() > MAX_STDIN_BYTES {
        return Err(PluginError::StdinTooLarge {
            limit: MAX_STDIN_BYTES,
        });
    }
    Ok(buf)
}
