// SPDX-License-Identifier: Apache-2.0
//! The gates a grant must pass, shaped like `PacemakerConfig.spec.throttleConfig` of the Go
//! implementation (docs/configuration.md), so that the CRD of a later issue maps onto it field by field.
//!
//! [`ThrottleConfig`] is what the operator wrote: `maxConcurrent.value` or
//! `maxConcurrent.perCore`, and an optional `rateLimit` (`fillFactor` as a Go duration string,
//! `burst`). [`ThrottleConfig::resolve`] turns it into the [`Limits`] of this node: `perCore` is
//! multiplied by the node's CPUs as `/sys/devices/system/cpu/online` (or `/proc/cpuinfo`) counts
//! them, never by the agent's own CPU affinity, which the static CPU manager shrinks
//! (docs/prior-art.md W16). The file given by `--config` holds `{"throttleConfig": {...}}`; it is read at
//! start and again on SIGHUP. Everything here is parsing and arithmetic; the only I/O is reading
//! that file and the two CPU files.

use std::fmt;
use std::fs;
use std::io::Read;
use std::path::Path;
use std::time::Duration;

use serde_json::{Map, Value};

/// `throttleConfig`: what the operator asked for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ThrottleConfig {
    pub max_concurrent: MaxConcurrent,
    pub rate_limit: Option<RateLimit>,
}

/// `throttleConfig.maxConcurrent`: a fixed count, or a count per CPU of the node.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum MaxConcurrent {
    Value(u32),
    PerCore(PerCore),
}

/// A positive decimal such as `0.5`, kept exactly as millionths so that `0.1 × 10` is 1, not a
/// float a hair above it that rounds up to 2.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PerCore {
    micros: u64,
}

/// `throttleConfig.rateLimit`: a token bucket that gains one token every `fill_factor` and holds
/// at most `burst`; it starts full.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RateLimit {
    pub fill_factor: Duration,
    pub burst: u32,
}

/// The limits in force on this node, after `perCore` has been multiplied out.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    pub max_concurrent: u32,
    pub rate_limit: Option<RateLimit>,
}

/// Upper bounds that catch typos (an extra zero or two) rather than encode a policy.
pub const MAX_MAX_CONCURRENT: u32 = 10_000;
pub const MAX_BURST: u32 = 10_000;
const MAX_PER_CORE_MICROS: u64 = 1_000 * 1_000_000;
/// The config file is a few hundred bytes; anything far larger is not one.
const MAX_FILE_BYTES: u64 = 64 << 10;

impl ThrottleConfig {
    /// The limits for a node with `cpus` CPUs (`None`: they could not be counted). A `perCore`
    /// limit is `ceil(perCore × cpus)`, at least 1, as in the Go implementation.
    pub fn resolve(&self, cpus: Option<u32>) -> Result<Limits, ThrottleError> {
        let max_concurrent = match self.max_concurrent {
            MaxConcurrent::Value(n) => n,
            MaxConcurrent::PerCore(per_core) => {
                let cpus = cpus.ok_or(ThrottleError::NodeCpus)?;
                per_core.limit(cpus)
            }
        };
        Ok(Limits {
            max_concurrent,
            rate_limit: self.rate_limit,
        })
    }

    /// A short description for the start-up and reload log lines.
    pub fn describe(&self, limits: &Limits) -> String {
        let concurrent = match self.max_concurrent {
            MaxConcurrent::Value(n) => format!("max_concurrent={n}"),
            MaxConcurrent::PerCore(per_core) => format!(
                "max_concurrent={} (per_core={per_core})",
                limits.max_concurrent
            ),
        };
        match self.rate_limit {
            Some(rate) => format!(
                "{concurrent} rate_fill_factor={}ms rate_burst={}",
                rate.fill_factor.as_millis(),
                rate.burst
            ),
            None => concurrent,
        }
    }
}

impl PerCore {
    /// Parses a decimal of at most six fractional digits, greater than 0 and at most 1000.
    pub fn parse(text: &str) -> Result<Self, &'static str> {
        const PROBLEM: &str = "must be a decimal number above 0 and at most 1000, such as 0.5";
        let (whole, fraction) = text.split_once('.').unwrap_or((text, ""));
        let digits = |s: &str| s.bytes().all(|b| b.is_ascii_digit());
        if whole.is_empty() && fraction.is_empty()
            || !digits(whole)
            || !digits(fraction)
            || fraction.len() > 6
            || whole.len() > 4
        {
            return Err(PROBLEM);
        }
        let whole: u64 = if whole.is_empty() {
            0
        } else {
            whole.parse().map_err(|_| PROBLEM)?
        };
        let mut fraction_micros: u64 = 0;
        for (i, b) in fraction.bytes().enumerate() {
            let place = 10_u64.pow(5 - u32::try_from(i).map_err(|_| PROBLEM)?);
            fraction_micros += u64::from(b - b'0') * place;
        }
        let micros = whole * 1_000_000 + fraction_micros;
        if micros == 0 || micros > MAX_PER_CORE_MICROS {
            return Err(PROBLEM);
        }
        Ok(Self { micros })
    }

    /// `ceil(self × cpus)`, at least 1 and at most [`MAX_MAX_CONCURRENT`].
    pub fn limit(self, cpus: u32) -> u32 {
        let product = self.micros * u64::from(cpus);
        let slots = product.div_ceil(1_000_000).max(1);
        u32::try_from(slots)
            .unwrap_or(MAX_MAX_CONCURRENT)
            .min(MAX_MAX_CONCURRENT)
    }
}

impl fmt::Display for PerCore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let whole = self.micros / 1_000_000;
        let fraction = self.micros % 1_000_000;
        if fraction == 0 {
            write!(f, "{whole}")
        } else {
            let text = format!("{fraction:06}");
            write!(f, "{whole}.{}", text.trim_end_matches('0'))
        }
    }
}

/// Why a throttle setting was rejected.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ThrottleError {
    /// A field of the config file is wrong; `field` is its JSON path.
    Field { field: String, problem: String },
    /// The config file is not JSON, or not an object.
    NotJson(String),
    /// `perCore` is set but the node's CPUs could not be counted.
    NodeCpus,
    /// Reading the config file failed.
    Read(String),
    /// The config file is larger than a config file can be.
    TooLarge,
}

impl fmt::Display for ThrottleError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ThrottleError::Field { field, problem } => write!(f, "{field}: {problem}"),
            ThrottleError::NotJson(err) => write!(f, "not a JSON object: {err}"),
            ThrottleError::NodeCpus => f.write_str(
                "perCore is set but the node's CPUs could not be counted from \
                 /sys/devices/system/cpu/online or /proc/cpuinfo",
            ),
            ThrottleError::Read(err) => write!(f, "reading it: {err}"),
            ThrottleError::TooLarge => write!(f, "larger than {MAX_FILE_BYTES} bytes"),
        }
    }
}

impl std::error::Error for ThrottleError {}

/// Reads and parses the `--config` file.
pub fn read_file(path: &Path) -> Result<ThrottleConfig, ThrottleError> {
    let file = fs::File::open(path).map_err(|e| ThrottleError::Read(e.to_string()))?;
    let mut text = String::new();
    file.take(MAX_FILE_BYTES + 1)
        .read_to_string(&mut text)
        .map_err(|e| ThrottleError::Read(e.to_string()))?;
    if u64::try_from(text.len()).unwrap_or(u64::MAX) > MAX_FILE_BYTES {
        return Err(ThrottleError::TooLarge);
    }
    parse_json(&text)
}

/// Parses `{"throttleConfig": {...}}`. Keys other than `throttleConfig` at the top level are
/// ignored, so that a whole `PacemakerConfig` spec (with `nodeSelector`, `priority`) can be pasted
/// in. Inside `throttleConfig` every key must be known: a typo, or a gate this agent does not
/// have (`loadAvg`, `cpu`, `io`), is an error rather than a silent "no limit".
pub fn parse_json(text: &str) -> Result<ThrottleConfig, ThrottleError> {
    let value: Value =
        serde_json::from_str(text).map_err(|e| ThrottleError::NotJson(e.to_string()))?;
    let top = value
        .as_object()
        .ok_or_else(|| ThrottleError::NotJson("the top level is not an object".to_owned()))?;
    let throttle = object(top, "throttleConfig", "throttleConfig")?
        .ok_or_else(|| field_error("throttleConfig", "is required"))?;
    only_keys(throttle, "throttleConfig", &["maxConcurrent", "rateLimit"])?;

    // 1. maxConcurrent: exactly one of value and perCore.
    let max =
        object(throttle, "maxConcurrent", "throttleConfig.maxConcurrent")?.ok_or_else(|| {
            field_error(
                "throttleConfig.maxConcurrent",
                "is required (value or perCore)",
            )
        })?;
    only_keys(max, "throttleConfig.maxConcurrent", &["value", "perCore"])?;
    let max_concurrent = match (max.get("value"), max.get("perCore")) {
        (Some(value), None) => MaxConcurrent::Value(whole_number(
            value,
            "throttleConfig.maxConcurrent.value",
            MAX_MAX_CONCURRENT,
        )?),
        (None, Some(Value::String(text))) => MaxConcurrent::PerCore(
            PerCore::parse(text)
                .map_err(|p| field_error("throttleConfig.maxConcurrent.perCore", p))?,
        ),
        (None, Some(_)) => {
            return Err(field_error(
                "throttleConfig.maxConcurrent.perCore",
                "must be a string such as \"0.5\"",
            ))
        }
        (Some(_), Some(_)) => {
            return Err(field_error(
                "throttleConfig.maxConcurrent",
                "set value or perCore, not both",
            ))
        }
        (None, None) => {
            return Err(field_error(
                "throttleConfig.maxConcurrent",
                "needs value or perCore",
            ))
        }
    };

    // 2. rateLimit: both fields.
    let rate_limit = match object(throttle, "rateLimit", "throttleConfig.rateLimit")? {
        None => None,
        Some(rate) => {
            only_keys(rate, "throttleConfig.rateLimit", &["fillFactor", "burst"])?;
            let fill_factor = match rate.get("fillFactor") {
                Some(Value::String(text)) => parse_fill_factor(text)
                    .map_err(|p| field_error("throttleConfig.rateLimit.fillFactor", p))?,
                Some(_) => {
                    return Err(field_error(
                        "throttleConfig.rateLimit.fillFactor",
                        "must be a duration string such as \"500ms\"",
                    ))
                }
                None => {
                    return Err(field_error(
                        "throttleConfig.rateLimit.fillFactor",
                        "is required",
                    ))
                }
            };
            let burst = match rate.get("burst") {
                Some(value) => whole_number(value, "throttleConfig.rateLimit.burst", MAX_BURST)?,
                None => return Err(field_error("throttleConfig.rateLimit.burst", "is required")),
            };
            Some(RateLimit { fill_factor, burst })
        }
    };
    Ok(ThrottleConfig {
        max_concurrent,
        rate_limit,
    })
}

/// A `fillFactor`: a Go duration above zero. Zero would mean "no limit" in the Go
/// implementation, which accepted it silently (docs/prior-art.md W6); here it is an error.
pub fn parse_fill_factor(text: &str) -> Result<Duration, &'static str> {
    match parse_go_duration(text)? {
        d if d.is_zero() => Err("must be above zero (leave rateLimit out for no rate limit)"),
        d => Ok(d),
    }
}

/// Parses a Go `time.Duration` string (`300ms`, `1.5s`, `2h45m`, `1m30s`, `10us`): one or more
/// decimal numbers, each with an optional fraction and a unit `ns`, `us` (`µs`, `μs`), `ms`, `s`,
/// `m` or `h`; a bare `0` is zero. A sign is not accepted: a negative duration is never
/// meaningful here.
pub fn parse_go_duration(text: &str) -> Result<Duration, &'static str> {
    const PROBLEM: &str = "must be a duration such as 500ms, 1.5s or 1m30s";
    if text == "0" {
        return Ok(Duration::ZERO);
    }
    if text.is_empty() {
        return Err(PROBLEM);
    }
    let mut rest = text;
    let mut total: u128 = 0;
    while !rest.is_empty() {
        // 1. The number: digits, optionally a '.' and more digits; at least one digit in all.
        let whole_len = rest.bytes().take_while(u8::is_ascii_digit).count();
        let (whole, tail) = rest.split_at(whole_len);
        let (fraction, tail) = match tail.strip_prefix('.') {
            Some(after) => {
                let len = after.bytes().take_while(u8::is_ascii_digit).count();
                after.split_at(len)
            }
            None => ("", tail),
        };
        if whole.is_empty() && fraction.is_empty() {
            return Err(PROBLEM);
        }

        // 2. The unit: the letters up to the next digit or '.'.
        let unit_len = tail
            .char_indices()
            .find(|(_, c)| c.is_ascii_digit() || *c == '.')
            .map_or(tail.len(), |(i, _)| i);
        let (unit, tail) = tail.split_at(unit_len);
        let unit_nanos: u128 = match unit {
            "ns" => 1,
            "us" | "\u{b5}s" | "\u{3bc}s" => 1_000,
            "ms" => 1_000_000,
            "s" => 1_000_000_000,
            "m" => 60_000_000_000,
            "h" => 3_600_000_000_000,
            _ => return Err(PROBLEM),
        };

        // 3. Add it up; more than 20 digits or a sum past u64 nanoseconds is not a duration.
        if whole.len() > 20 || fraction.len() > 20 {
            return Err(PROBLEM);
        }
        let whole: u128 = if whole.is_empty() {
            0
        } else {
            whole.parse().map_err(|_| PROBLEM)?
        };
        let mut part = whole.checked_mul(unit_nanos).ok_or(PROBLEM)?;
        if !fraction.is_empty() {
            let scale = 10_u128.pow(u32::try_from(fraction.len()).map_err(|_| PROBLEM)?);
            let digits: u128 = fraction.parse().map_err(|_| PROBLEM)?;
            part = part
                .checked_add(digits.checked_mul(unit_nanos).ok_or(PROBLEM)? / scale)
                .ok_or(PROBLEM)?;
        }
        total = total.checked_add(part).ok_or(PROBLEM)?;
        rest = tail;
    }
    let nanos = u64::try_from(total).map_err(|_| PROBLEM)?;
    Ok(Duration::from_nanos(nanos))
}

/// The node's CPUs: `/sys/devices/system/cpu/online`, else the `processor` lines of
/// `/proc/cpuinfo`. Both describe the machine, not this process's cpuset. `None` if neither can
/// be read or parsed.
pub fn node_cpus() -> Option<u32> {
    let online = fs::read_to_string("/sys/devices/system/cpu/online").ok();
    if let Some(n) = online.as_deref().and_then(count_cpu_list) {
        return Some(n);
    }
    let cpuinfo = fs::read_to_string("/proc/cpuinfo").ok()?;
    count_cpuinfo(&cpuinfo)
}

/// Counts a kernel CPU list such as `0-3,8,10-11` (Documentation/admin-guide/cputopology.rst).
pub fn count_cpu_list(text: &str) -> Option<u32> {
    let text = text.trim();
    if text.is_empty() {
        return None;
    }
    let mut count: u32 = 0;
    for part in text.split(',') {
        let (first, last) = match part.split_once('-') {
            Some((a, b)) => (a.parse::<u32>().ok()?, b.parse::<u32>().ok()?),
            None => {
                let n = part.parse::<u32>().ok()?;
                (n, n)
            }
        };
        if last < first {
            return None;
        }
        count = count.checked_add(last - first + 1)?;
    }
    Some(count)
}

/// Counts the `processor : N` lines of `/proc/cpuinfo`.
pub fn count_cpuinfo(text: &str) -> Option<u32> {
    let n = text
        .lines()
        .filter(|line| {
            line.split_once(':')
                .is_some_and(|(key, _)| key.trim() == "processor")
        })
        .count();
    u32::try_from(n).ok().filter(|n| *n > 0)
}

fn field_error(field: &str, problem: &str) -> ThrottleError {
    ThrottleError::Field {
        field: field.to_owned(),
        problem: problem.to_owned(),
    }
}

fn object<'a>(
    parent: &'a Map<String, Value>,
    key: &str,
    path: &str,
) -> Result<Option<&'a Map<String, Value>>, ThrottleError> {
    match parent.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Object(map)) => Ok(Some(map)),
        Some(_) => Err(field_error(path, "must be an object")),
    }
}

fn only_keys(map: &Map<String, Value>, path: &str, known: &[&str]) -> Result<(), ThrottleError> {
    match map.keys().find(|k| !known.contains(&k.as_str())) {
        Some(key) => Err(ThrottleError::Field {
            field: format!("{path}.{key}"),
            problem: format!(
                "is not supported (this agent knows {})",
                known.join(" and ")
            ),
        }),
        None => Ok(()),
    }
}

fn whole_number(value: &Value, path: &str, max: u32) -> Result<u32, ThrottleError> {
    value
        .as_u64()
        .and_then(|n| u32::try_from(n).ok())
        .filter(|n| (1..=max).contains(n))
        .ok_or_else(|| ThrottleError::Field {
            field: path.to_owned(),
            problem: format!("must be a whole number from 1 to {max}"),
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn go_durations() {
        let cases: &[(&str, u64)] = &[
            ("0", 0),
            ("300ms", 300_000_000),
            ("1.5s", 1_500_000_000),
            ("2h45m", (2 * 3600 + 45 * 60) * 1_000_000_000),
            ("1m30s", 90_000_000_000),
            ("10us", 10_000),
            ("10\u{b5}s", 10_000),
            ("10\u{3bc}s", 10_000),
            ("7ns", 7),
            (".5s", 500_000_000),
            ("1.s", 1_000_000_000),
            ("1h0.5m", 3_630_000_000_000),
        ];
        for (text, nanos) in cases {
            assert_eq!(
                parse_go_duration(text),
                Ok(Duration::from_nanos(*nanos)),
                "{text}"
            );
        }
        for bad in [
            "",
            "5",
            "-1s",
            "+1s",
            "1x",
            "s",
            ".s",
            "1..5s",
            "1 s",
            "1e3ms",
            "99999999999999h",
        ] {
            assert!(parse_go_duration(bad).is_err(), "{bad:?}");
        }
        assert!(parse_fill_factor("0s").is_err());
        assert!(parse_fill_factor("0").is_err());
    }

    #[test]
    fn per_core_is_exact_and_rounds_up() {
        let per = |s: &str| PerCore::parse(s).expect(s);
        assert_eq!(per("0.5").limit(4), 2);
        assert_eq!(per("0.5").limit(3), 2);
        assert_eq!(per("0.1").limit(10), 1);
        assert_eq!(per("0.1").limit(11), 2);
        assert_eq!(per("0.01").limit(1), 1);
        assert_eq!(per("2").limit(64), 128);
        assert_eq!(per("1000").limit(64), MAX_MAX_CONCURRENT);
        assert_eq!(per("0.25").to_string(), "0.25");
        assert_eq!(per("3").to_string(), "3");
        for bad in [
            "0",
            "0.0",
            "",
            ".",
            "-1",
            "1e3",
            "0.1234567",
            "1001",
            "a",
            "1,5",
        ] {
            assert!(PerCore::parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn cpu_counts_come_from_the_node_files() {
        assert_eq!(count_cpu_list("0-3\n"), Some(4));
        assert_eq!(count_cpu_list("0-3,8,10-11"), Some(7));
        assert_eq!(count_cpu_list("0"), Some(1));
        assert_eq!(count_cpu_list(""), None);
        assert_eq!(count_cpu_list("3-1"), None);
        assert_eq!(count_cpu_list("a-b"), None);
        let cpuinfo = "processor\t: 0\nmodel name\t: x\n\nprocessor\t: 1\nflags\t: processor\n";
        assert_eq!(count_cpuinfo(cpuinfo), Some(2));
        assert_eq!(count_cpuinfo("model name : x\n"), None);
        // The machine this runs on has at least one CPU, whatever its cpuset.
        assert!(node_cpus().is_some_and(|n| n >= 1));
    }

    #[test]
    fn config_file_shapes() {
        let value = parse_json(r#"{"throttleConfig":{"maxConcurrent":{"value":3}}}"#).expect("ok");
        assert_eq!(value.max_concurrent, MaxConcurrent::Value(3));
        assert_eq!(value.rate_limit, None);

        let full = parse_json(
            r#"{"nodeSelector":{"a":"b"},"priority":5,"throttleConfig":{
                "maxConcurrent":{"perCore":"0.5"},
                "rateLimit":{"fillFactor":"250ms","burst":2}}}"#,
        )
        .expect("ok");
        assert_eq!(
            full.rate_limit,
            Some(RateLimit {
                fill_factor: Duration::from_millis(250),
                burst: 2
            })
        );
        let limits = full.resolve(Some(6)).expect("resolves");
        assert_eq!(limits.max_concurrent, 3);
        assert_eq!(full.resolve(None), Err(ThrottleError::NodeCpus));
        assert_eq!(
            full.describe(&limits),
            "max_concurrent=3 (per_core=0.5) rate_fill_factor=250ms rate_burst=2"
        );
    }

    #[test]
    fn config_file_errors_name_the_field() {
        let cases: &[(&str, &str)] = &[
            ("[]", "not a JSON object"),
            ("{", "not a JSON object"),
            ("{}", "throttleConfig: is required"),
            (r#"{"throttleConfig":{}}"#, "maxConcurrent: is required"),
            (
                r#"{"throttleConfig":{"maxConcurrent":{}}}"#,
                "needs value or perCore",
            ),
            (
                r#"{"throttleConfig":{"maxConcurrent":{"value":0}}}"#,
                "maxConcurrent.value: must be a whole number",
            ),
            (
                r#"{"throttleConfig":{"maxConcurrent":{"value":"2"}}}"#,
                "maxConcurrent.value",
            ),
            (
                r#"{"throttleConfig":{"maxConcurrent":{"value":2,"perCore":"1"}}}"#,
                "not both",
            ),
            (
                r#"{"throttleConfig":{"maxConcurrent":{"perCore":0.5}}}"#,
                "perCore: must be a string",
            ),
            (
                r#"{"throttleConfig":{"maxConcurrent":{"value":1},"loadAvg":{}}}"#,
                "throttleConfig.loadAvg: is not supported",
            ),
            (
                r#"{"throttleConfig":{"maxConcurrent":{"value":1},"rateLimit":{"burst":1}}}"#,
                "fillFactor: is required",
            ),
            (
                r#"{"throttleConfig":{"maxConcurrent":{"value":1},
                   "rateLimit":{"fillFactor":"0s","burst":1}}}"#,
                "fillFactor: must be above zero",
            ),
            (
                r#"{"throttleConfig":{"maxConcurrent":{"value":1},
                   "rateLimit":{"fillFactor":"1s","burst":0}}}"#,
                "burst: must be a whole number",
            ),
        ];
        for (text, want) in cases {
            let err = parse_json(text).expect_err(text);
            assert!(err.to_string().contains(want), "{text}: {err}");
        }
    }

    #[test]
    fn config_file_is_read_with_a_size_bound() {
        let dir = std::env::temp_dir().join(format!("ppm-throttle-{}", std::process::id()));
        let _ = fs::create_dir_all(&dir);
        let path = dir.join("config.json");
        fs::write(&path, r#"{"throttleConfig":{"maxConcurrent":{"value":4}}}"#).expect("write");
        assert_eq!(
            read_file(&path).map(|c| c.max_concurrent),
            Ok(MaxConcurrent::Value(4))
        );
        fs::write(&path, " ".repeat(100 << 10)).expect("write");
        assert_eq!(read_file(&path), Err(ThrottleError::TooLarge));
        assert!(matches!(
            read_file(&dir.join("missing.json")),
            Err(ThrottleError::Read(_))
        ));
        let _ = fs::remove_dir_all(&dir);
    }
}
