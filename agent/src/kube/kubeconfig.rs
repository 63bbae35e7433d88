// SPDX-License-Identifier: Apache-2.0
//! Reads the one kubeconfig shape the agent supports: a server, a CA and a bearer token.
//!
//! A kubeconfig is YAML, and the agent has no YAML crate (docs/decisions.md). Kubeconfigs are
//! written by tools (`kubectl config`, kubeadm, our test scripts) in a small, regular subset of
//! YAML, and [`parse_yaml`] reads exactly that subset into a `serde_json::Value`: block mappings
//! and sequences by indentation, plain, single- and double-quoted scalars, comments, and flow
//! collections written as JSON (`{}`, `[]`). Anything else (anchors, tags, block scalars, multi-line
//! plain scalars) is an error naming the line, never a guess. A file that is JSON is read as JSON.
//!
//! [`Kubeconfig::resolve`] then follows `current-context` to one cluster and one user and checks
//! that they describe what the agent can do safely: an `https` server, a CA to trust (the only
//! root), and `token` or `tokenFile`. Client certificates, exec and auth-provider plugins,
//! `insecure-skip-tls-verify`, `tls-server-name` and `proxy-url` are refused with a message naming
//! the field, rather than half-supported. Relative paths are relative to the kubeconfig's
//! directory, as kubectl reads them.

use std::path::{Path, PathBuf};

use serde::Deserialize;
use serde_json::{Map, Value};

/// What a kubeconfig resolves to.
#[derive(Debug, PartialEq, Eq)]
pub struct Resolved {
    /// `https://host:port`, without a trailing `/`.
    pub server: String,
    pub ca: CaSource,
    pub token: TokenSpec,
    /// The context's namespace, if it names one.
    pub namespace: Option<String>,
}

/// Where the CA bundle comes from.
#[derive(Debug, PartialEq, Eq)]
pub enum CaSource {
    /// `certificate-authority-data`, decoded.
    Pem(Vec<u8>),
    /// `certificate-authority`, resolved against the kubeconfig's directory.
    File(PathBuf),
}

/// Where the bearer token comes from.
pub enum TokenSpec {
    /// `token`: the token itself.
    Inline(String),
    /// `tokenFile`, resolved against the kubeconfig's directory; re-read when it changes.
    File(PathBuf),
}

impl std::fmt::Debug for TokenSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            TokenSpec::Inline(_) => f.write_str("Inline(<redacted>)"),
            TokenSpec::File(path) => f.debug_tuple("File").field(path).finish(),
        }
    }
}

impl PartialEq for TokenSpec {
    fn eq(&self, other: &Self) -> bool {
        match (self, other) {
            (TokenSpec::Inline(a), TokenSpec::Inline(b)) => a == b,
            (TokenSpec::File(a), TokenSpec::File(b)) => a == b,
            _ => false,
        }
    }
}

impl Eq for TokenSpec {}

/// The kubeconfig fields the agent reads; serde ignores the rest.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct Kubeconfig {
    current_context: Option<String>,
    #[serde(default)]
    clusters: Vec<Named<Cluster>>,
    #[serde(default)]
    users: Vec<Named<User>>,
    #[serde(default)]
    contexts: Vec<Named<Context>>,
}

#[derive(Debug, Deserialize)]
struct Named<T> {
    name: String,
    #[serde(alias = "cluster", alias = "user", alias = "context")]
    value: Option<T>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "kebab-case")]
struct Cluster {
    server: Option<String>,
    certificate_authority: Option<String>,
    certificate_authority_data: Option<String>,
    insecure_skip_tls_verify: Option<bool>,
    tls_server_name: Option<String>,
    proxy_url: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "kebab-case")]
struct User {
    token: Option<String>,
    #[serde(rename = "tokenFile")]
    token_file: Option<String>,
    client_certificate: Option<String>,
    client_certificate_data: Option<String>,
    exec: Option<Value>,
    auth_provider: Option<Value>,
    username: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
struct Context {
    cluster: Option<String>,
    user: Option<String>,
    namespace: Option<String>,
}

impl Kubeconfig {
    /// Parses kubeconfig text (YAML subset or JSON).
    pub fn parse(text: &str) -> Result<Self, String> {
        let value = if text.trim_start().starts_with('{') {
            serde_json::from_str(text).map_err(|err| format!("not valid JSON: {err}"))?
        } else {
            parse_yaml(text)?
        };
        serde_json::from_value(value).map_err(|err| format!("unexpected structure: {err}"))
    }

    /// Follows `current-context` to a server, CA and token. `dir` is the kubeconfig's directory.
    pub fn resolve(&self, dir: &Path) -> Result<Resolved, String> {
        // 1. The context.
        let context_name = self
            .current_context
            .as_deref()
            .filter(|c| !c.is_empty())
            .ok_or("current-context is not set")?;
        let context = find(&self.contexts, context_name)
            .ok_or_else(|| format!("context {context_name:?} is not defined"))?;
        let cluster_name = context
            .cluster
            .as_deref()
            .ok_or_else(|| format!("context {context_name:?} names no cluster"))?;
        let user_name = context
            .user
            .as_deref()
            .ok_or_else(|| format!("context {context_name:?} names no user"))?;

        // 2. The cluster: an https server and a CA, and nothing that weakens or bends TLS.
        let cluster = find(&self.clusters, cluster_name)
            .ok_or_else(|| format!("cluster {cluster_name:?} is not defined"))?;
        let refuse = |field: &str| {
            format!("cluster {cluster_name:?}: {field} is not supported by pod-pacemaker-agent")
        };
        if cluster.insecure_skip_tls_verify == Some(true) {
            return Err(refuse("insecure-skip-tls-verify"));
        }
        if cluster.tls_server_name.is_some() {
            return Err(refuse("tls-server-name"));
        }
        if cluster.proxy_url.is_some() {
            return Err(refuse("proxy-url"));
        }
        let server = cluster
            .server
            .as_deref()
            .ok_or_else(|| format!("cluster {cluster_name:?} has no server"))?;
        if !server.starts_with("https://") || server.len() <= "https://".len() {
            return Err(format!(
                "cluster {cluster_name:?}: server {server:?} is not an https:// URL"
            ));
        }
        let ca = match (&cluster.certificate_authority_data, &cluster.certificate_authority) {
            (Some(data), _) => CaSource::Pem(
                decode_base64(data)
                    .ok_or_else(|| format!("cluster {cluster_name:?}: certificate-authority-data is not base64"))?,
            ),
            (None, Some(path)) => CaSource::File(dir.join(path)),
            (None, None) => {
                return Err(format!(
                    "cluster {cluster_name:?} has no certificate-authority or certificate-authority-data; \
                     the agent trusts only the cluster CA"
                ))
            }
        };

        // 3. The user: a bearer token, inline or in a file.
        let user = find(&self.users, user_name)
            .ok_or_else(|| format!("user {user_name:?} is not defined"))?;
        let unsupported = [
            ("client-certificate", user.client_certificate.is_some()),
            (
                "client-certificate-data",
                user.client_certificate_data.is_some(),
            ),
            ("exec", user.exec.is_some()),
            ("auth-provider", user.auth_provider.is_some()),
            ("username", user.username.is_some()),
        ];
        if let Some((field, _)) = unsupported.iter().find(|(_, set)| *set) {
            return Err(format!(
                "user {user_name:?}: {field} is not supported; use token or tokenFile"
            ));
        }
        let token = match (&user.token, &user.token_file) {
            (Some(token), _) if !token.trim().is_empty() => TokenSpec::Inline(token.clone()),
            (_, Some(path)) if !path.is_empty() => TokenSpec::File(dir.join(path)),
            _ => return Err(format!("user {user_name:?} has no token or tokenFile")),
        };

        Ok(Resolved {
            server: server.trim_end_matches('/').to_owned(),
            ca,
            token,
            namespace: context.namespace.clone().filter(|n| !n.is_empty()),
        })
    }
}

fn find<'a, T>(list: &'a [Named<T>], name: &str) -> Option<&'a T> {
    list.iter()
        .find(|n| n.name == name)
        .and_then(|n| n.value.as_ref())
}

/// Decodes standard base64 (RFC 4648 §4), ignoring whitespace; `None` if it is not base64.
pub fn decode_base64(text: &str) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(text.len() / 4 * 3);
    let mut acc: u32 = 0;
    let mut bits = 0;
    let mut padding = 0;
    for byte in text.bytes().filter(|b| !b.is_ascii_whitespace()) {
        let value = match byte {
            b'A'..=b'Z' => byte - b'A',
            b'a'..=b'z' => byte - b'a' + 26,
            b'0'..=b'9' => byte - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            b'=' => {
                padding += 1;
                continue;
            }
            _ => return None,
        };
        if padding > 0 {
            // Data after padding.
            return None;
        }
        acc = (acc << 6) | u32::from(value);
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push(u8::try_from((acc >> bits) & 0xff).ok()?);
        }
    }
    // Leftover bits must be zero padding of the last byte; more than two '=' is not base64.
    if padding > 2 || bits >= 6 || acc & ((1 << bits) - 1) != 0 {
        return None;
    }
    Some(out)
}

/// Parses the YAML subset described in the module docs into a JSON value.
pub fn parse_yaml(text: &str) -> Result<Value, String> {
    let mut lines = Vec::new();
    for (index, raw) in text.lines().enumerate() {
        let number = index + 1;
        if raw.contains('\t') && raw.trim_start().starts_with('\t') {
            return Err(format!(
                "line {number}: tabs are not allowed for indentation"
            ));
        }
        let content = strip_comment(raw);
        let trimmed = content.trim_end();
        if trimmed.trim().is_empty() || trimmed == "---" {
            continue;
        }
        if trimmed == "..." {
            break;
        }
        let indent = trimmed.len() - trimmed.trim_start().len();
        lines.push(Line {
            number,
            indent,
            text: trimmed.trim_start().to_owned(),
        });
    }
    if lines.is_empty() {
        return Ok(Value::Object(Map::new()));
    }
    let mut parser = Parser { lines, pos: 0 };
    let first_indent = parser.lines[0].indent;
    let value = parser.block(first_indent)?;
    if let Some(line) = parser.lines.get(parser.pos) {
        return Err(format!("line {}: unexpected indentation", line.number));
    }
    Ok(value)
}

#[derive(Debug)]
struct Line {
    number: usize,
    indent: usize,
    text: String,
}

struct Parser {
    lines: Vec<Line>,
    pos: usize,
}

/// Nesting deeper than this is not a kubeconfig.
const MAX_DEPTH: usize = 32;

impl Parser {
    /// A block (mapping or sequence) whose lines start at exactly `indent`.
    fn block(&mut self, indent: usize) -> Result<Value, String> {
        self.block_at(indent, 0)
    }

    fn block_at(&mut self, indent: usize, depth: usize) -> Result<Value, String> {
        let Some(first) = self.lines.get(self.pos) else {
            return Ok(Value::Null);
        };
        if depth > MAX_DEPTH {
            return Err(format!("line {}: nested too deeply", first.number));
        }
        if first.text == "-" || first.text.starts_with("- ") {
            self.sequence(indent, depth)
        } else {
            self.mapping(indent, depth)
        }
    }

    fn sequence(&mut self, indent: usize, depth: usize) -> Result<Value, String> {
        let mut items = Vec::new();
        while let Some(line) = self.lines.get(self.pos) {
            if line.indent < indent {
                break;
            }
            let number = line.number;
            if line.indent > indent {
                return Err(format!("line {number}: unexpected indentation"));
            }
            if !(line.text == "-" || line.text.starts_with("- ")) {
                // A mapping key at the sequence's own indentation ends the sequence (YAML allows
                // "key:\n- a" with the dash at the key's column).
                break;
            }
            let rest = line.text[1..].trim_start().to_owned();
            let item_indent = indent + (line.text.len() - rest.len());
            if rest.is_empty() {
                // "-" alone: the item is the block below.
                self.pos += 1;
                let item = match self.lines.get(self.pos) {
                    Some(next) if next.indent > indent => {
                        let next_indent = next.indent;
                        self.block_at(next_indent, depth + 1)?
                    }
                    _ => Value::Null,
                };
                items.push(item);
            } else if split_key(&rest).is_some() {
                // "- key: value": a mapping whose first key sits after the dash. Rewrite the line
                // as that key at the item's indentation and read the mapping from there.
                self.lines[self.pos] = Line {
                    number,
                    indent: item_indent,
                    text: rest,
                };
                items.push(self.mapping(item_indent, depth + 1)?);
            } else {
                self.pos += 1;
                items.push(scalar(&rest, number)?);
            }
        }
        Ok(Value::Array(items))
    }

    fn mapping(&mut self, indent: usize, depth: usize) -> Result<Value, String> {
        let mut map = Map::new();
        while let Some(line) = self.lines.get(self.pos) {
            if line.indent < indent {
                break;
            }
            let number = line.number;
            if line.indent > indent {
                return Err(format!("line {number}: unexpected indentation"));
            }
            let Some((key, rest)) = split_key(&line.text) else {
                return Err(format!("line {number}: expected \"key: value\""));
            };
            let key = match scalar(&key, number)? {
                Value::String(s) => s,
                other => other.to_string(),
            };
            self.pos += 1;
            let value = if rest.is_empty() {
                match self.lines.get(self.pos) {
                    Some(next) if next.indent > indent => {
                        let next_indent = next.indent;
                        self.block_at(next_indent, depth + 1)?
                    }
                    // A sequence may sit at the key's own indentation.
                    Some(next)
                        if next.indent == indent
                            && (next.text == "-" || next.text.starts_with("- ")) =>
                    {
                        self.sequence(indent, depth + 1)?
                    }
                    _ => Value::Null,
                }
            } else {
                scalar(&rest, number)?
            };
            if map.insert(key.clone(), value).is_some() {
                return Err(format!("line {number}: duplicate key {key:?}"));
            }
        }
        Ok(Value::Object(map))
    }
}

/// Splits `key: value` (or `key:`) at the first `: ` / final `:` outside quotes.
fn split_key(text: &str) -> Option<(String, String)> {
    let bytes = text.as_bytes();
    let mut i = 0;
    if let Some(&quote) = bytes.first().filter(|b| **b == b'"' || **b == b'\'') {
        // A quoted key: find its closing quote.
        i = 1;
        while i < bytes.len() {
            if bytes[i] == b'\\' && quote == b'"' {
                i += 2;
                continue;
            }
            if bytes[i] == quote {
                if quote == b'\'' && bytes.get(i + 1) == Some(&b'\'') {
                    i += 2;
                    continue;
                }
                break;
            }
            i += 1;
        }
        i += 1;
    }
    while i < bytes.len() {
        if bytes[i] == b':' && (i + 1 == bytes.len() || bytes[i + 1] == b' ') {
            let key = text[..i].trim_end().to_owned();
            if key.is_empty() || key.starts_with('{') || key.starts_with('[') {
                return None;
            }
            return Some((key, text[i + 1..].trim().to_owned()));
        }
        i += 1;
    }
    None
}

/// Removes a `#` comment: at the start of the content, or after a space, outside quotes.
fn strip_comment(line: &str) -> &str {
    let mut quote: Option<char> = None;
    let mut previous = ' ';
    for (i, c) in line.char_indices() {
        match quote {
            Some(q) if c == q => quote = None,
            Some(_) => {}
            None if (c == '"' || c == '\'') && (previous == ' ' || previous == ':') => {
                quote = Some(c);
            }
            None if c == '#' && previous == ' ' => return &line[..i],
            None if c == '#' && i == 0 => return "",
            None => {}
        }
        previous = c;
    }
    line
}

/// One scalar or JSON-style flow collection on a single line.
fn scalar(text: &str, number: usize) -> Result<Value, String> {
    let text = text.trim();
    let bad = |what: &str| format!("line {number}: {what} are not supported in a kubeconfig");
    match text.chars().next() {
        None => Ok(Value::Null),
        Some('"') => {
            // YAML double-quoted escapes are a superset of JSON's; kubeconfigs use the JSON ones.
            serde_json::from_str::<String>(text)
                .map(Value::String)
                .map_err(|_| format!("line {number}: bad double-quoted string"))
        }
        Some('\'') => {
            let inner = text
                .strip_prefix('\'')
                .and_then(|t| t.strip_suffix('\''))
                .filter(|_| text.len() >= 2)
                .ok_or_else(|| format!("line {number}: unterminated single-quoted string"))?;
            if inner.replace("''", "").contains('\'') {
                return Err(format!("line {number}: bad single-quoted string"));
            }
            Ok(Value::String(inner.replace("''", "'")))
        }
        Some('{' | '[') => serde_json::from_str(text)
            .map_err(|_| format!("line {number}: flow collections must be written as JSON")),
        Some('&' | '*') => Err(bad("anchors and aliases")),
        Some('!') => Err(bad("tags")),
        Some('|' | '>') => Err(bad("block scalars")),
        Some(_) => Ok(match text {
            "true" | "True" | "TRUE" => Value::Bool(true),
            "false" | "False" | "FALSE" => Value::Bool(false),
            "null" | "Null" | "NULL" | "~" => Value::Null,
            // Numbers stay strings: every kubeconfig field the agent reads is a string or a bool.
            _ => Value::String(text.to_owned()),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What tests/fake-apiserver writes (and `kubectl config view --raw` prints, modulo order).
    const FAKE: &str = r#"apiVersion: v1
kind: Config
clusters:
- name: fake
  cluster:
    server: https://127.0.0.1:34567
    certificate-authority-data: LS0tLS1CRUdJTiBDRVJUSUZJQ0FURS0tLS0tCg==
users:
- name: fake
  user:
    token: "abc.def-ghi"
contexts:
- name: default
  context:
    cluster: fake
    user: fake
    namespace: default
current-context: default
"#;

    #[test]
    fn fake_apiserver_kubeconfig_resolves() {
        let config = Kubeconfig::parse(FAKE).expect("parses");
        let resolved = config.resolve(Path::new("/etc/k")).expect("resolves");
        assert_eq!(resolved.server, "https://127.0.0.1:34567");
        assert_eq!(
            resolved.ca,
            CaSource::Pem(b"-----BEGIN CERTIFICATE-----\n".to_vec())
        );
        assert_eq!(resolved.token, TokenSpec::Inline("abc.def-ghi".to_owned()));
        assert_eq!(resolved.namespace.as_deref(), Some("default"));
        assert!(!format!("{:?}", resolved.token).contains("abc"));
    }

    #[test]
    fn kubeadm_style_with_comments_and_indented_sequences() {
        let text = r#"# written by hand
apiVersion: v1
clusters:
  - cluster:
      certificate-authority: pki/ca.crt   # relative to the file
      server: "https://10.0.0.1:6443/"
    name: prod
contexts:
  - context: {"cluster": "prod", "user": "agent"}
    name: agent@prod
current-context: 'agent@prod'
kind: Config
preferences: {}
users:
  - name: agent
    user:
      tokenFile: /var/run/token
"#;
        let resolved = Kubeconfig::parse(text)
            .expect("parses")
            .resolve(Path::new("/etc/k"))
            .expect("resolves");
        assert_eq!(resolved.server, "https://10.0.0.1:6443");
        assert_eq!(
            resolved.ca,
            CaSource::File(PathBuf::from("/etc/k/pki/ca.crt"))
        );
        assert_eq!(
            resolved.token,
            TokenSpec::File(PathBuf::from("/var/run/token"))
        );
        assert_eq!(resolved.namespace, None);
    }

    #[test]
    fn json_kubeconfig_is_read_as_json() {
        let text = r#"{"current-context":"c","contexts":[{"name":"c","context":{"cluster":"k","user":"u"}}],
            "clusters":[{"name":"k","cluster":{"server":"https://h:1","certificate-authority":"/ca"}}],
            "users":[{"name":"u","user":{"token":"t"}}]}"#;
        let resolved = Kubeconfig::parse(text)
            .expect("parses")
            .resolve(Path::new("/"))
            .expect("resolves");
        assert_eq!(resolved.server, "https://h:1");
    }

    #[test]
    fn unsafe_or_unsupported_settings_are_refused_by_name() {
        let refusal = |text: &str, what: &str| {
            Kubeconfig::parse(text)
                .expect("parses")
                .resolve(Path::new("/"))
                .expect_err(what)
        };
        let cases = [
            ("insecure-skip-tls-verify: true", "insecure-skip-tls-verify"),
            ("proxy-url: http://p:3128", "proxy-url"),
            ("tls-server-name: other", "tls-server-name"),
        ];
        for (line, want) in cases {
            let text = FAKE.replace(
                "    server: https",
                &format!("    {line}\n    server: https"),
            );
            let err = refusal(&text, line);
            assert!(err.contains(want), "{line}: {err}");
        }
        let exec = FAKE.replace(
            "    token: \"abc.def-ghi\"",
            "    exec:\n      command: aws",
        );
        let err = refusal(&exec, "exec");
        assert!(err.contains("exec"), "{err}");
        let http = FAKE.replace("https://127", "http://127");
        let err = refusal(&http, "http");
        assert!(err.contains("https"), "{err}");
        let no_ca = FAKE.replace("certificate-authority-data", "x-ca-data");
        let err = refusal(&no_ca, "no CA");
        assert!(err.contains("certificate-authority"), "{err}");
    }

    #[test]
    fn missing_links_are_named() {
        let cases = [
            (
                FAKE.replace("current-context: default", ""),
                "current-context",
            ),
            (
                FAKE.replace("current-context: default", "current-context: nope"),
                "\"nope\"",
            ),
            (FAKE.replace("    user: fake\n", ""), "names no user"),
            (
                FAKE.replace("- name: fake\n  user:", "- name: other\n  user:"),
                "user \"fake\"",
            ),
        ];
        for (text, want) in cases {
            let err = Kubeconfig::parse(&text)
                .expect("parses")
                .resolve(Path::new("/"))
                .expect_err(want);
            assert!(err.contains(want), "{want}: {err}");
        }
    }

    #[test]
    fn yaml_outside_the_subset_is_an_error_with_a_line_number() {
        let cases = [
            "a: |\n  text\n",
            "a: &x 1\n",
            "a: !!str 1\n",
            "a:\n  b: 1\n   c: 2\n",
            "a: 1\na: 2\n",
            "just words\n",
            "a: 'open\n",
            "a: [1, 2\n",
        ];
        for text in cases {
            let err = parse_yaml(text).expect_err(text);
            assert!(err.starts_with("line "), "{text:?}: {err}");
        }
    }

    #[test]
    fn yaml_scalars_and_nesting() {
        let value = parse_yaml(
            "a: 'it''s'\nb: \"q\\\"x\"\nc: ~\nd: false\ne: 10\nf:\n- x\n- y: 1\n  z: 2\n-\n  w: 3\ng: x#y\n",
        )
        .expect("parses");
        assert_eq!(
            value,
            serde_json::json!({"a":"it's","b":"q\"x","c":null,"d":false,"e":"10",
                "f":["x",{"y":"1","z":"2"},{"w":"3"}],"g":"x#y"})
        );
        assert_eq!(
            parse_yaml("# only a comment\n").expect("empty"),
            serde_json::json!({})
        );
    }

    #[test]
    fn deep_nesting_is_refused_not_overflowed() {
        let mut text = String::new();
        for depth in 0..200 {
            text.push_str(&" ".repeat(depth));
            text.push_str("k:\n");
        }
        assert!(parse_yaml(&text).is_err());
    }

    #[test]
    fn base64_round_trips_and_rejects_garbage() {
        assert_eq!(decode_base64("aGVsbG8=").as_deref(), Some(&b"hello"[..]));
        assert_eq!(decode_base64("aGVs\nbG8h").as_deref(), Some(&b"hello!"[..]));
        assert_eq!(decode_base64("").as_deref(), Some(&b""[..]));
        for bad in ["aGVsbG8=x", "a$==", "aGVsbG9=", "a==="] {
            assert_eq!(decode_base64(bad), None, "{bad}");
        }
    }
}
