// SPDX-License-Identifier: Apache-2.0
//! The baseline for `scripts/bench.sh cni`: a chained CNI plugin that does the least any chained
//! plugin must do, reading its config and printing `prevResult` unchanged, and nothing else. The
//! benchmark compares an ADD through a chain ending in pod-pacemaker (with a free slot) with the
//! same chain ending in this. Not shipped.

use std::io::{Read, Write};
use std::process::ExitCode;

use serde_json::value::RawValue;

#[derive(serde::Deserialize)]
struct Conf<'a> {
    #[serde(rename = "prevResult", borrow)]
    prev_result: Option<&'a RawValue>,
}

fn main() -> ExitCode {
    let mut stdin = Vec::new();
    if std::io::stdin().read_to_end(&mut stdin).is_err() {
        return ExitCode::FAILURE;
    }
    if std::env::var("CNI_COMMAND").as_deref() != Ok("ADD") {
        return ExitCode::SUCCESS;
    }
    let Ok(Conf {
        prev_result: Some(prev),
    }) = serde_json::from_slice::<Conf<'_>>(&stdin)
    else {
        return ExitCode::FAILURE;
    };
    match std::io::stdout().write_all(prev.get().as_bytes()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(_) => ExitCode::FAILURE,
    }
}
