// SPDX-License-Identifier: Apache-2.0
//! The plugin–agent socket protocol, version 1 (docs/protocol.md).
//!
//! Every line either side sends or receives is built and parsed here, into the typed [`Request`],
//! [`Reply`] (the answers to `PING` and `WAIT`) and [`StatusReply`] (the answer to `STATUS`), and
//! the version line ([`version_line`], [`check_version`]). Nothing else in the workspace formats
//! or splits protocol lines. This module does no I/O beyond reading one bounded line from a
//! [`BufRead`].

use std::fmt;
use std::io::{self, BufRead, Read};

/// The version line each side sends first.
pub const VERSION_LINE: &str = "pod-pacemaker/1";

/// The longest line either side accepts, including the trailing `\n`.
pub const MAX_LINE_BYTES: usize = 1024;

/// The longest field value: a Kubernetes DNS subdomain name.
pub const MAX_VALUE_BYTES: usize = 253;

/// A field value: 1 to [`MAX_VALUE_BYTES`] bytes of `A-Z a-z 0-9 . _ : / -`.
///
/// Every Kubernetes name, namespace and UID is a valid token, and no token can contain a space,
/// `=` or a line break, so encoding needs no escaping.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Token(String);

impl Token {
    /// Checks `value` and wraps it.
    pub fn new(value: &str) -> Result<Self, DecodeError> {
        if value.is_empty() {
            return Err(DecodeError::EmptyValue);
        }
        if value.len() > MAX_VALUE_BYTES {
            return Err(DecodeError::ValueTooLong(value.len()));
        }
        if let Some(c) = value.chars().find(|c| !is_token_char(*c)) {
            return Err(DecodeError::BadValueChar(c));
        }
        Ok(Self(value.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A client's request; one per connection.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Request {
    /// Is the agent alive?
    Ping,
    /// Block until the pod may start its sandbox.
    Wait(WaitRequest),
    /// What the agent holds and who waits: answered with [`StatusReply`] lines.
    Status,
}

/// The pod a `WAIT` is for, and how long the plugin will wait.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WaitRequest {
    pub namespace: Token,
    pub name: Token,
    /// The pod UID from `K8S_POD_UID`, when the runtime passes it.
    pub uid: Option<Token>,
    /// How long the plugin waits at most, in milliseconds.
    pub timeout_ms: Option<u64>,
}

/// An agent's reply line.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Reply {
    /// Final: the request failed.
    Error { code: ErrorCode, message: String },
    /// Final: the pod may start.
    Granted { reason: GrantReason },
    /// Final: answer to [`Request::Ping`].
    Pong,
    /// Not final: the request waits at `position` (1 = next).
    Queued {
        position: u32,
        holders: u32,
        limit: u32,
    },
}

impl Reply {
    /// Whether the connection ends after this reply.
    pub fn is_final(&self) -> bool {
        !matches!(self, Reply::Queued { .. })
    }
}

/// Why a pod was let through.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GrantReason {
    /// The pod holds a slot until it is released.
    Slot,
    /// The agent does not pace this pod.
    Skip,
}

/// One line of the agent's answer to [`Request::Status`]: a `HOLDER` line per held slot and a
/// `WAITER` line per queued pod, in queue order, then the final `STATUS` summary; or an `ERROR`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StatusReply {
    /// Not final: a pod that holds a slot.
    Holder(HolderLine),
    /// Not final: a pod in the queue.
    Waiter(WaiterLine),
    /// Final: the counts.
    Summary(StatusSummary),
    /// Final: the request failed.
    Error { code: ErrorCode, message: String },
}

/// `HOLDER namespace=<ns> name=<name> [uid=<uid>] held_ms=<n>`
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HolderLine {
    pub namespace: Token,
    pub name: Token,
    pub uid: Option<Token>,
    /// Milliseconds since the grant (or since the agent adopted the holder).
    pub held_ms: u64,
}

/// `WAITER position=<n> namespace=<ns> name=<name> [uid=<uid>] priority=<i> waited_ms=<n>
/// state=<state>`
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WaiterLine {
    pub position: u32,
    pub namespace: Token,
    pub name: Token,
    pub uid: Option<Token>,
    /// `spec.priority` of the pod; 0 while the pod is unknown.
    pub priority: i32,
    /// Milliseconds since the agent first saw a request for this pod.
    pub waited_ms: u64,
    pub state: WaiterState,
}

/// Where a queued pod stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WaiterState {
    /// Connected and eligible for the next free slot at its position.
    Queued,
    /// Connected, but the agent has not seen the pod yet; it keeps its position meanwhile.
    UnknownPod,
    /// Waiting at the time of an agent restart and not reconnected yet: the pods behind it wait
    /// for it for a short grace time.
    Absent,
}

/// `STATUS holders=<n> limit=<n> waiting=<n> remembered=<n> [rate_tokens=<n> rate_burst=<n>]`
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StatusSummary {
    pub holders: u32,
    pub limit: u32,
    /// Queued pods (the `WAITER` lines).
    pub waiting: u32,
    /// Pods whose client left the queue and whose position is kept for a retry.
    pub remembered: u32,
    /// Whole tokens in the rate-limit bucket, when a rate limit is set.
    pub rate_tokens: Option<u32>,
    /// The bucket's size, when a rate limit is set.
    pub rate_burst: Option<u32>,
}

/// The error codes of an `ERROR` reply.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ErrorCode {
    BadRequest,
    /// The agent serves too many connections; retry on a new connection later.
    Busy,
    Internal,
    LineTooLong,
    ShuttingDown,
    /// A newer WAIT for the same pod took this one's place in the queue.
    Superseded,
    /// The WAIT's `timeout_ms` passed before a slot was free; the pod keeps its place for a
    /// retry.
    Timeout,
    UnsupportedVersion,
    /// A code this version does not know (sent by a newer agent).
    Other(Token),
}

/// Why a line could not be read or decoded.
#[derive(Debug)]
pub enum DecodeError {
    BadKey(String),
    BadNumber { key: &'static str, value: String },
    BadValueChar(char),
    DuplicateField(String),
    EmptyLine,
    EmptyValue,
    Io(io::Error),
    LineTooLong,
    MissingEquals(String),
    MissingField(&'static str),
    MissingNewline,
    NotUtf8,
    UnknownGrantReason(String),
    UnknownState(String),
    UnknownVerb(String),
    ValueTooLong(usize),
    ControlChar,
}

impl fmt::Display for DecodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DecodeError::BadKey(key) => write!(f, "bad field key {key:?}"),
            DecodeError::BadNumber { key, value } => {
                write!(f, "field {key} is not a number: {value:?}")
            }
            DecodeError::BadValueChar(c) => write!(f, "character {c:?} not allowed in a value"),
            DecodeError::DuplicateField(key) => write!(f, "field {key} given twice"),
            DecodeError::EmptyLine => f.write_str("empty line"),
            DecodeError::EmptyValue => f.write_str("empty value"),
            DecodeError::Io(err) => write!(f, "read failed: {err}"),
            DecodeError::LineTooLong => write!(f, "line longer than {MAX_LINE_BYTES} bytes"),
            DecodeError::MissingEquals(field) => write!(f, "field {field:?} has no '='"),
            DecodeError::MissingField(key) => write!(f, "missing field {key}"),
            DecodeError::MissingNewline => f.write_str("connection closed inside a line"),
            DecodeError::NotUtf8 => f.write_str("line is not UTF-8"),
            DecodeError::UnknownGrantReason(r) => write!(f, "unknown grant reason {r:?}"),
            DecodeError::UnknownState(s) => write!(f, "unknown waiter state {s:?}"),
            DecodeError::UnknownVerb(v) => write!(f, "unknown verb {v:?}"),
            DecodeError::ValueTooLong(n) => {
                write!(f, "value of {n} bytes is longer than {MAX_VALUE_BYTES}")
            }
            DecodeError::ControlChar => f.write_str("control character in line"),
        }
    }
}

impl std::error::Error for DecodeError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            DecodeError::Io(err) => Some(err),
            _ => None,
        }
    }
}

/// Reads one line of at most [`MAX_LINE_BYTES`] and returns it without its `\n`.
///
/// `Ok(None)` means the peer closed the connection cleanly between lines. The line is not
/// decoded; pass it to [`Request::decode`], [`Reply::decode`], [`StatusReply::decode`] or
/// [`check_version`].
pub fn read_line(reader: &mut impl BufRead) -> Result<Option<String>, DecodeError> {
    let mut buf = Vec::with_capacity(128);
    // One byte more than the limit, to tell "exactly at the limit" from "too long".
    let limit = u64::try_from(MAX_LINE_BYTES + 1).unwrap_or(u64::MAX);
    reader
        .take(limit)
        .read_until(b'\n', &mut buf)
        .map_err(DecodeError::Io)?;
    if buf.is_empty() {
        return Ok(None);
    }
    if buf.last() != Some(&b'\n') {
        return Err(if buf.len() > MAX_LINE_BYTES {
            DecodeError::LineTooLong
        } else {
            DecodeError::MissingNewline
        });
    }
    if buf.len() > MAX_LINE_BYTES {
        return Err(DecodeError::LineTooLong);
    }
    buf.pop();
    let line = String::from_utf8(buf).map_err(|_| DecodeError::NotUtf8)?;
    if line.chars().any(char::is_control) {
        return Err(DecodeError::ControlChar);
    }
    Ok(Some(line))
}

/// The version line as sent, with its `\n`.
pub fn version_line() -> String {
    format!("{VERSION_LINE}\n")
}

/// Whether `line` is the version line of a version this side speaks.
pub fn check_version(line: &str) -> bool {
    line == VERSION_LINE
}

impl Request {
    /// The request as one line, with its `\n`.
    pub fn encode(&self) -> String {
        match self {
            Request::Ping => "PING\n".to_owned(),
            Request::Status => "STATUS\n".to_owned(),
            Request::Wait(wait) => {
                let mut line = format!("WAIT namespace={} name={}", wait.namespace, wait.name);
                if let Some(uid) = &wait.uid {
                    line.push_str(&format!(" uid={uid}"));
                }
                if let Some(ms) = wait.timeout_ms {
                    line.push_str(&format!(" timeout_ms={ms}"));
                }
                line.push('\n');
                line
            }
        }
    }

    /// Parses a line read by [`read_line`].
    pub fn decode(line: &str) -> Result<Self, DecodeError> {
        let (verb, fields) = split_verb(line)?;
        match verb {
            "PING" => Ok(Request::Ping),
            "STATUS" => Ok(Request::Status),
            "WAIT" => {
                let fields = Fields::parse(fields, false)?;
                Ok(Request::Wait(WaitRequest {
                    namespace: fields.required_token("namespace")?,
                    name: fields.required_token("name")?,
                    uid: fields.token("uid")?,
                    timeout_ms: fields.number("timeout_ms")?,
                }))
            }
            other => Err(DecodeError::UnknownVerb(other.to_owned())),
        }
    }
}

impl Reply {
    /// The reply as one line, with its `\n`. An error message is cut to fit the line limit and
    /// stripped of control characters.
    pub fn encode(&self) -> String {
        match self {
            Reply::Error { code, message } => encode_error(code, message),
            Reply::Granted { reason } => format!("GRANTED reason={}\n", reason.as_str()),
            Reply::Pong => "PONG\n".to_owned(),
            Reply::Queued {
                position,
                holders,
                limit,
            } => format!("QUEUED position={position} holders={holders} limit={limit}\n"),
        }
    }

    /// Parses a line read by [`read_line`].
    pub fn decode(line: &str) -> Result<Self, DecodeError> {
        let (verb, fields) = split_verb(line)?;
        match verb {
            "ERROR" => {
                let (code, message) = decode_error(fields)?;
                Ok(Reply::Error { code, message })
            }
            "GRANTED" => {
                let fields = Fields::parse(fields, false)?;
                let reason = fields.required_token("reason")?;
                let reason = match reason.as_str() {
                    "slot" => GrantReason::Slot,
                    "skip" => GrantReason::Skip,
                    other => return Err(DecodeError::UnknownGrantReason(other.to_owned())),
                };
                Ok(Reply::Granted { reason })
            }
            "PONG" => Ok(Reply::Pong),
            "QUEUED" => {
                let fields = Fields::parse(fields, false)?;
                Ok(Reply::Queued {
                    position: fields.required_number("position")?,
                    holders: fields.required_number("holders")?,
                    limit: fields.required_number("limit")?,
                })
            }
            other => Err(DecodeError::UnknownVerb(other.to_owned())),
        }
    }
}

impl StatusReply {
    /// The line, with its `\n`.
    pub fn encode(&self) -> String {
        match self {
            StatusReply::Holder(h) => {
                let mut line = format!("HOLDER namespace={} name={}", h.namespace, h.name);
                if let Some(uid) = &h.uid {
                    line.push_str(&format!(" uid={uid}"));
                }
                line.push_str(&format!(" held_ms={}\n", h.held_ms));
                line
            }
            StatusReply::Waiter(w) => {
                let mut line = format!(
                    "WAITER position={} namespace={} name={}",
                    w.position, w.namespace, w.name
                );
                if let Some(uid) = &w.uid {
                    line.push_str(&format!(" uid={uid}"));
                }
                line.push_str(&format!(
                    " priority={} waited_ms={} state={}\n",
                    w.priority,
                    w.waited_ms,
                    w.state.as_str()
                ));
                line
            }
            StatusReply::Summary(s) => {
                let mut line = format!(
                    "STATUS holders={} limit={} waiting={} remembered={}",
                    s.holders, s.limit, s.waiting, s.remembered
                );
                if let Some(tokens) = s.rate_tokens {
                    line.push_str(&format!(" rate_tokens={tokens}"));
                }
                if let Some(burst) = s.rate_burst {
                    line.push_str(&format!(" rate_burst={burst}"));
                }
                line.push('\n');
                line
            }
            StatusReply::Error { code, message } => encode_error(code, message),
        }
    }

    /// Parses a line read by [`read_line`].
    pub fn decode(line: &str) -> Result<Self, DecodeError> {
        let (verb, fields) = split_verb(line)?;
        match verb {
            "HOLDER" => {
                let fields = Fields::parse(fields, false)?;
                Ok(StatusReply::Holder(HolderLine {
                    namespace: fields.required_token("namespace")?,
                    name: fields.required_token("name")?,
                    uid: fields.token("uid")?,
                    held_ms: fields.required_number("held_ms")?,
                }))
            }
            "WAITER" => {
                let fields = Fields::parse(fields, false)?;
                let state = fields.required_token("state")?;
                Ok(StatusReply::Waiter(WaiterLine {
                    position: fields.required_number("position")?,
                    namespace: fields.required_token("namespace")?,
                    name: fields.required_token("name")?,
                    uid: fields.token("uid")?,
                    priority: fields.required_signed("priority")?,
                    waited_ms: fields.required_number("waited_ms")?,
                    state: WaiterState::from_str(state.as_str())
                        .ok_or_else(|| DecodeError::UnknownState(state.as_str().to_owned()))?,
                }))
            }
            "STATUS" => {
                let fields = Fields::parse(fields, false)?;
                Ok(StatusReply::Summary(StatusSummary {
                    holders: fields.required_number("holders")?,
                    limit: fields.required_number("limit")?,
                    waiting: fields.required_number("waiting")?,
                    remembered: fields.required_number("remembered")?,
                    rate_tokens: fields.number("rate_tokens")?,
                    rate_burst: fields.number("rate_burst")?,
                }))
            }
            "ERROR" => {
                let (code, message) = decode_error(fields)?;
                Ok(StatusReply::Error { code, message })
            }
            other => Err(DecodeError::UnknownVerb(other.to_owned())),
        }
    }

    /// Whether the answer ends after this line.
    pub fn is_final(&self) -> bool {
        matches!(self, StatusReply::Summary(_) | StatusReply::Error { .. })
    }
}

impl WaiterState {
    fn as_str(self) -> &'static str {
        match self {
            WaiterState::Queued => "queued",
            WaiterState::UnknownPod => "unknown-pod",
            WaiterState::Absent => "absent",
        }
    }

    fn from_str(s: &str) -> Option<Self> {
        match s {
            "queued" => Some(WaiterState::Queued),
            "unknown-pod" => Some(WaiterState::UnknownPod),
            "absent" => Some(WaiterState::Absent),
            _ => None,
        }
    }
}

/// `ERROR code=<code> msg=<text>`, the message cut to fit the line limit and stripped of control
/// characters.
fn encode_error(code: &ErrorCode, message: &str) -> String {
    let mut line = format!("ERROR code={} msg=", code.as_str());
    for c in message.chars().filter(|c| !c.is_control()) {
        // Keep one byte for the '\n'.
        if line.len() + c.len_utf8() > MAX_LINE_BYTES - 1 {
            break;
        }
        line.push(c);
    }
    line.push('\n');
    line
}

fn decode_error(fields: &str) -> Result<(ErrorCode, String), DecodeError> {
    let fields = Fields::parse(fields, true)?;
    let code = fields.required_token("code")?;
    Ok((
        ErrorCode::from_token(code),
        fields.message.unwrap_or_default(),
    ))
}

impl GrantReason {
    fn as_str(self) -> &'static str {
        match self {
            GrantReason::Slot => "slot",
            GrantReason::Skip => "skip",
        }
    }
}

impl ErrorCode {
    fn as_str(&self) -> &str {
        match self {
            ErrorCode::BadRequest => "bad-request",
            ErrorCode::Busy => "busy",
            ErrorCode::Internal => "internal",
            ErrorCode::LineTooLong => "line-too-long",
            ErrorCode::ShuttingDown => "shutting-down",
            ErrorCode::Superseded => "superseded",
            ErrorCode::Timeout => "timeout",
            ErrorCode::UnsupportedVersion => "unsupported-version",
            ErrorCode::Other(token) => token.as_str(),
        }
    }

    fn from_token(token: Token) -> Self {
        match token.as_str() {
            "bad-request" => ErrorCode::BadRequest,
            "busy" => ErrorCode::Busy,
            "internal" => ErrorCode::Internal,
            "line-too-long" => ErrorCode::LineTooLong,
            "shutting-down" => ErrorCode::ShuttingDown,
            "superseded" => ErrorCode::Superseded,
            "timeout" => ErrorCode::Timeout,
            "unsupported-version" => ErrorCode::UnsupportedVersion,
            _ => ErrorCode::Other(token),
        }
    }
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

fn is_token_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | ':' | '/' | '-')
}

fn split_verb(line: &str) -> Result<(&str, &str), DecodeError> {
    if line.is_empty() {
        return Err(DecodeError::EmptyLine);
    }
    Ok(line.split_once(' ').unwrap_or((line, "")))
}

/// The `key=value` fields of one line, checked for syntax and duplicates.
struct Fields<'a> {
    pairs: Vec<(&'a str, &'a str)>,
    message: Option<String>,
}

impl<'a> Fields<'a> {
    fn parse(text: &'a str, allow_message: bool) -> Result<Self, DecodeError> {
        let mut pairs: Vec<(&str, &str)> = Vec::new();
        let mut message = None;
        let mut rest = text;
        while !rest.is_empty() {
            if allow_message {
                if let Some(msg) = rest.strip_prefix("msg=") {
                    message = Some(msg.to_owned());
                    break;
                }
            }
            let (field, tail) = rest.split_once(' ').unwrap_or((rest, ""));
            rest = tail;
            let (key, value) = field
                .split_once('=')
                .ok_or_else(|| DecodeError::MissingEquals(field.to_owned()))?;
            if key.is_empty()
                || !key
                    .chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
            {
                return Err(DecodeError::BadKey(key.to_owned()));
            }
            if pairs.iter().any(|(k, _)| *k == key) {
                return Err(DecodeError::DuplicateField(key.to_owned()));
            }
            pairs.push((key, value));
        }
        Ok(Self { pairs, message })
    }

    fn raw(&self, key: &str) -> Option<&'a str> {
        self.pairs.iter().find(|(k, _)| *k == key).map(|(_, v)| *v)
    }

    fn token(&self, key: &'static str) -> Result<Option<Token>, DecodeError> {
        self.raw(key).map(Token::new).transpose()
    }

    fn required_token(&self, key: &'static str) -> Result<Token, DecodeError> {
        self.token(key)?.ok_or(DecodeError::MissingField(key))
    }

    fn number<N: std::str::FromStr>(&self, key: &'static str) -> Result<Option<N>, DecodeError> {
        let Some(value) = self.raw(key) else {
            return Ok(None);
        };
        // `FromStr` for integers accepts a leading '+'; the protocol does not.
        if value.is_empty() || !value.bytes().all(|b| b.is_ascii_digit()) {
            return Err(DecodeError::BadNumber {
                key,
                value: value.to_owned(),
            });
        }
        value.parse().map(Some).map_err(|_| DecodeError::BadNumber {
            key,
            value: value.to_owned(),
        })
    }

    fn required_number<N: std::str::FromStr>(&self, key: &'static str) -> Result<N, DecodeError> {
        self.number(key)?.ok_or(DecodeError::MissingField(key))
    }

    /// A whole number with an optional leading `-`.
    fn required_signed(&self, key: &'static str) -> Result<i32, DecodeError> {
        let value = self.raw(key).ok_or(DecodeError::MissingField(key))?;
        let digits = value.strip_prefix('-').unwrap_or(value);
        let bad = || DecodeError::BadNumber {
            key,
            value: value.to_owned(),
        };
        if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
            return Err(bad());
        }
        value.parse().map_err(|_| bad())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn token(s: &str) -> Token {
        Token::new(s).expect("valid token in test")
    }

    fn wait() -> Request {
        Request::Wait(WaitRequest {
            namespace: token("shop"),
            name: token("cart-7d9f-x2"),
            uid: Some(token("0b6c5e1e-3f0b-4a59-9d1e-6a2f3b0c9d11")),
            timeout_ms: Some(120_000),
        })
    }

    fn decode_line<T>(encoded: &str, decode: fn(&str) -> Result<T, DecodeError>) -> T {
        let line = encoded
            .strip_suffix('\n')
            .expect("encoded lines end in \\n");
        decode(line).expect("round trip")
    }

    #[test]
    fn requests_round_trip() {
        for request in [
            Request::Ping,
            wait(),
            Request::Wait(WaitRequest {
                namespace: token("a"),
                name: token("b"),
                uid: None,
                timeout_ms: None,
            }),
        ] {
            assert_eq!(decode_line(&request.encode(), Request::decode), request);
        }
    }

    #[test]
    fn replies_round_trip() {
        for reply in [
            Reply::Pong,
            Reply::Granted {
                reason: GrantReason::Slot,
            },
            Reply::Granted {
                reason: GrantReason::Skip,
            },
            Reply::Queued {
                position: 3,
                holders: 2,
                limit: 2,
            },
            Reply::Error {
                code: ErrorCode::BadRequest,
                message: "unknown verb \"HELLO\" = bad".to_owned(),
            },
            Reply::Error {
                code: ErrorCode::Other(token("from-the-future")),
                message: String::new(),
            },
        ] {
            assert_eq!(decode_line(&reply.encode(), Reply::decode), reply);
        }
    }

    #[test]
    fn status_lines_round_trip() {
        let holder = |uid: Option<&str>| {
            StatusReply::Holder(HolderLine {
                namespace: token("shop"),
                name: token("cart-0"),
                uid: uid.map(token),
                held_ms: 1234,
            })
        };
        let waiter = |priority: i32, state: WaiterState| {
            StatusReply::Waiter(WaiterLine {
                position: 7,
                namespace: token("shop"),
                name: token("cart-1"),
                uid: Some(token("u-1")),
                priority,
                waited_ms: 0,
                state,
            })
        };
        for line in [
            holder(Some("u-0")),
            holder(None),
            waiter(0, WaiterState::Queued),
            waiter(-2_147_483_648, WaiterState::UnknownPod),
            waiter(1_000_000_000, WaiterState::Absent),
            StatusReply::Summary(StatusSummary {
                holders: 3,
                limit: 2,
                waiting: 10,
                remembered: 1,
                rate_tokens: None,
                rate_burst: None,
            }),
            StatusReply::Summary(StatusSummary {
                holders: 0,
                limit: 5,
                waiting: 0,
                remembered: 0,
                rate_tokens: Some(0),
                rate_burst: Some(4),
            }),
            StatusReply::Error {
                code: ErrorCode::Busy,
                message: "too many".to_owned(),
            },
        ] {
            assert_eq!(decode_line(&line.encode(), StatusReply::decode), line);
        }
        assert_eq!(
            decode_line(&Request::Status.encode(), Request::decode),
            Request::Status
        );
        assert_eq!(version_line(), "pod-pacemaker/1\n");
        assert!(check_version(version_line().trim_end()));
    }

    #[test]
    fn every_error_code_round_trips() {
        for code in [
            ErrorCode::BadRequest,
            ErrorCode::Busy,
            ErrorCode::Internal,
            ErrorCode::LineTooLong,
            ErrorCode::ShuttingDown,
            ErrorCode::Superseded,
            ErrorCode::Timeout,
            ErrorCode::UnsupportedVersion,
        ] {
            let reply = Reply::Error {
                code: code.clone(),
                message: format!("about {code}"),
            };
            assert_eq!(decode_line(&reply.encode(), Reply::decode), reply);
            // A known code never decodes as `Other`.
            assert!(!matches!(
                decode_line(&reply.encode(), Reply::decode),
                Reply::Error {
                    code: ErrorCode::Other(_),
                    ..
                }
            ));
        }
    }

    #[test]
    fn malformed_status_lines_are_rejected() {
        for line in [
            "WAITER position=1 namespace=a name=b priority=+1 waited_ms=0 state=queued",
            "WAITER position=1 namespace=a name=b priority=- waited_ms=0 state=queued",
            "WAITER position=1 namespace=a name=b priority=99999999999 waited_ms=0 state=queued",
            "WAITER position=1 namespace=a name=b priority=1 waited_ms=0 state=sleeping",
            "WAITER position=1 namespace=a name=b priority=1 waited_ms=0",
            "HOLDER namespace=a name=b",
            "STATUS holders=1 limit=1 waiting=0",
            "GRANTED reason=slot",
        ] {
            assert!(StatusReply::decode(line).is_err(), "{line}");
        }
        // A WAIT client never takes status lines for replies.
        assert!(Reply::decode("STATUS holders=1 limit=1 waiting=0 remembered=0").is_err());
    }

    /// A small deterministic PRNG (xorshift64*), so the randomized test needs no crate and every
    /// failure names a seed that reproduces it.
    struct Rng(u64);

    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
        }

        fn below(&mut self, n: u64) -> u64 {
            self.next() % n
        }

        fn index(&mut self, len: usize) -> usize {
            let len = u64::try_from(len).expect("small length");
            usize::try_from(self.below(len)).expect("below a usize")
        }

        fn u32(&mut self) -> u32 {
            u32::try_from(self.next() >> 32).expect("32 bits")
        }

        fn i32(&mut self) -> i32 {
            i32::from_le_bytes(self.u32().to_le_bytes())
        }

        fn token(&mut self) -> Token {
            const CHARS: &[u8] =
                b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._:/-";
            let len = 1 + self.index(MAX_VALUE_BYTES);
            let value: String = (0..len)
                .map(|_| char::from(CHARS[self.index(CHARS.len())]))
                .collect();
            Token::new(&value).expect("generated token is valid")
        }

        fn maybe_token(&mut self) -> Option<Token> {
            (self.below(2) == 0).then(|| self.token())
        }
    }

    #[test]
    fn random_lines_round_trip_through_the_bounded_reader() {
        for seed in 1..=300_u64 {
            let mut rng = Rng(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1);
            let request = match rng.below(3) {
                0 => Request::Ping,
                1 => Request::Status,
                _ => Request::Wait(WaitRequest {
                    namespace: rng.token(),
                    name: rng.token(),
                    uid: rng.maybe_token(),
                    timeout_ms: (rng.below(2) == 0).then(|| rng.next()),
                }),
            };
            let waiter = StatusReply::Waiter(WaiterLine {
                position: rng.u32(),
                namespace: rng.token(),
                name: rng.token(),
                uid: rng.maybe_token(),
                priority: rng.i32(),
                waited_ms: rng.next(),
                state: [
                    WaiterState::Queued,
                    WaiterState::UnknownPod,
                    WaiterState::Absent,
                ][rng.index(3)],
            });
            let reply = Reply::Queued {
                position: rng.u32(),
                holders: rng.u32(),
                limit: rng.u32(),
            };
            // Every encoded line fits the limit and reads back through `read_line` unchanged.
            let wire = [request.encode(), waiter.encode(), reply.encode()].concat();
            let mut input = wire.as_bytes();
            let mut next = || {
                read_line(&mut input)
                    .expect("fits the limit")
                    .expect("a line")
            };
            assert_eq!(
                Request::decode(&next()).expect("request"),
                request,
                "seed {seed}"
            );
            assert_eq!(
                StatusReply::decode(&next()).expect("status"),
                waiter,
                "seed {seed}"
            );
            assert_eq!(Reply::decode(&next()).expect("reply"), reply, "seed {seed}");
        }
    }

    #[test]
    fn encoded_error_fits_the_line_limit() {
        let reply = Reply::Error {
            code: ErrorCode::Internal,
            message: "é\n".repeat(2000),
        };
        let line = reply.encode();
        assert!(line.len() <= MAX_LINE_BYTES, "{} bytes", line.len());
        assert!(line.ends_with('\n'));
        assert_eq!(line.matches('\n').count(), 1);
        assert!(matches!(
            decode_line(&line, Reply::decode),
            Reply::Error { .. }
        ));
    }

    #[test]
    fn unknown_fields_are_ignored() {
        let request = Request::decode("WAIT namespace=a name=b priority=7").expect("decodes");
        assert!(matches!(request, Request::Wait(w) if w.name.as_str() == "b"));
    }

    #[test]
    fn malformed_lines_are_rejected_with_a_reason() {
        let cases: &[(&str, &str)] = &[
            ("", "empty line"),
            ("HELLO", "unknown verb"),
            ("WAIT name=b", "missing field namespace"),
            ("WAIT namespace=a name=b name=c", "given twice"),
            ("WAIT namespace=a name=b uid", "has no '='"),
            ("WAIT namespace= name=b", "empty value"),
            ("WAIT namespace=a name=b;rm", "not allowed"),
            ("WAIT namespace=a name=b timeout_ms=+5", "not a number"),
            (
                "WAIT namespace=a name=b timeout_ms=99999999999999999999999",
                "not a number",
            ),
            ("WAIT Namespace=a name=b", "bad field key"),
        ];
        for (line, want) in cases {
            let err = Request::decode(line).expect_err(line);
            assert!(err.to_string().contains(want), "{line:?}: {err}");
        }
        assert!(Reply::decode("GRANTED reason=maybe").is_err());
        assert!(Reply::decode("QUEUED position=1 holders=1").is_err());
    }

    #[test]
    fn read_line_bounds_the_length() {
        let exact = format!("{}\n", "a".repeat(MAX_LINE_BYTES - 1));
        let line = read_line(&mut exact.as_bytes()).expect("fits");
        assert_eq!(line.map(|l| l.len()), Some(MAX_LINE_BYTES - 1));

        let long = format!("{}\n", "a".repeat(MAX_LINE_BYTES));
        assert!(matches!(
            read_line(&mut long.as_bytes()),
            Err(DecodeError::LineTooLong)
        ));
        let endless = vec![b'a'; 10 * MAX_LINE_BYTES];
        assert!(matches!(
            read_line(&mut endless.as_slice()),
            Err(DecodeError::LineTooLong)
        ));
    }

    #[test]
    fn read_line_rejects_bad_bytes() {
        assert!(matches!(read_line(&mut &b""[..]), Ok(None)));
        assert!(matches!(
            read_line(&mut &b"PING"[..]),
            Err(DecodeError::MissingNewline)
        ));
        assert!(matches!(
            read_line(&mut &b"PI\xffNG\n"[..]),
            Err(DecodeError::NotUtf8)
        ));
        assert!(matches!(
            read_line(&mut &b"PING\r\n"[..]),
            Err(DecodeError::ControlChar)
        ));
    }

    #[test]
    fn reads_consecutive_lines() {
        let mut input = &b"pod-pacemaker/1\nPING\n"[..];
        let first = read_line(&mut input).expect("line").expect("some");
        assert!(check_version(&first));
        let second = read_line(&mut input).expect("line").expect("some");
        assert_eq!(Request::decode(&second).expect("ping"), Request::Ping);
        assert!(read_line(&mut input).expect("eof").is_none());
    }
}
