// SPDX-License-Identifier: Apache-2.0
//! Property test: random bytes and random JSON fed to the config parser, the result conversion
//! and the protocol decoders never panic, and whatever parses satisfies the validated types'
//! promises. The generator is a small deterministic PRNG, so a failure names a seed that
//! reproduces it.

use pod_pacemaker::cni::{NetConf, MAX_WAIT_LIMIT_SECONDS, SUPPORTED_VERSIONS};
use pod_pacemaker::protocol::{Reply, Request, MAX_VALUE_BYTES};
use serde_json::{json, Map, Value};

/// xorshift64*: tiny, fast and good enough to explore input shapes.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: usize) -> usize {
        usize::try_from(self.next() % u64::try_from(n).unwrap_or(1)).unwrap_or(0)
    }

    fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len())]
    }

    fn bytes(&mut self, max: usize) -> Vec<u8> {
        let len = self.below(max + 1);
        (0..len).map(|_| self.next().to_le_bytes()[0]).collect()
    }

    fn string(&mut self) -> String {
        let pieces = [
            "a",
            "kube-system",
            "1.0.0",
            "/tmp/x",
            "",
            " ",
            "é",
            "\u{0}",
            "true",
            "-1",
        ];
        (0..self.below(4)).map(|_| *self.pick(&pieces)).collect()
    }

    fn value(&mut self, depth: usize) -> Value {
        let kind = if depth > 3 {
            self.below(5)
        } else {
            self.below(7)
        };
        match kind {
            0 => Value::Null,
            1 => Value::Bool(self.below(2) == 0),
            2 => json!(i64::try_from(self.next() % 500).unwrap_or(0) - 50),
            3 => json!(f64::from(u32::try_from(self.next() % 1000).unwrap_or(0)) / 7.0),
            4 => Value::String(self.string()),
            5 => Value::Array((0..self.below(4)).map(|_| self.value(depth + 1)).collect()),
            _ => Value::Object(self.object(depth + 1)),
        }
    }

    fn object(&mut self, depth: usize) -> Map<String, Value> {
        const KEYS: &[&str] = &[
            "cniVersion",
            "name",
            "type",
            "prevResult",
            "runtimeConfig",
            "io.kubernetes.cri.pod-annotations",
            "pod-pacemaker/skip",
            "daemonSocketPath",
            "maxWaitTimeInSeconds",
            "namespaceExclusions",
            "successOnConnectionTimeout",
            "disableThrottling",
            "onDeadline",
            "agentRestartGraceSeconds",
            "logFile",
            "ips",
            "address",
            "version",
            "unknownKey",
        ];
        let mut map = Map::new();
        for _ in 0..self.below(8) {
            let key = (*self.pick(KEYS)).to_owned();
            let value = match key.as_str() {
                // Bias towards values that get past the first checks.
                "cniVersion" if self.below(3) > 0 => json!(*self.pick(SUPPORTED_VERSIONS)),
                "prevResult" if self.below(2) > 0 => Value::Object(self.object(depth + 1)),
                _ => self.value(depth),
            };
            map.insert(key, value);
        }
        map
    }
}

#[test]
fn random_bytes_never_panic_the_parsers() {
    for seed in 1..=3000u64 {
        let mut rng = Rng(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1);
        let bytes = rng.bytes(200);
        let _ = NetConf::parse(&bytes);
        let text = String::from_utf8_lossy(&bytes);
        let _ = Request::decode(&text);
        let _ = Reply::decode(&text);
    }
}

#[test]
fn random_json_configs_parse_into_valid_types_or_fail_cleanly() {
    let (mut parsed, mut converted) = (0, 0);
    for seed in 1..=20_000u64 {
        let mut rng = Rng(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1);
        let text = Value::Object(rng.object(0)).to_string();
        match NetConf::parse(text.as_bytes()) {
            Ok(conf) => {
                assert!(
                    SUPPORTED_VERSIONS.contains(&conf.cni_version.as_str()),
                    "seed {seed}: {text}"
                );
                assert!(conf.socket_path.starts_with('/'), "seed {seed}: {text}");
                assert!(
                    conf.max_wait.as_secs() <= MAX_WAIT_LIMIT_SECONDS,
                    "seed {seed}: {text}"
                );
                parsed += 1;
                if let Ok(output) = conf.prev_result_output() {
                    converted += 1;
                    let result: Value = serde_json::from_str(&output)
                        .unwrap_or_else(|e| panic!("seed {seed}: output not JSON ({e}): {text}"));
                    assert!(result.is_object(), "seed {seed}: {text}");
                }
            }
            Err(err) => {
                assert!(
                    [1, 6, 7].contains(&err.code()),
                    "seed {seed}: code {}",
                    err.code()
                );
                assert!(!err.to_string().is_empty());
            }
        }
    }
    // The generator must reach the interesting paths, or the test proves little.
    assert!(parsed > 300, "only {parsed} configs parsed");
    assert!(
        converted > 50,
        "only {converted} prevResults were handed on"
    );
}

#[test]
fn random_protocol_lines_decode_into_valid_tokens_or_fail_cleanly() {
    const WORDS: &[&str] = &[
        "WAIT",
        "PING",
        "GRANTED",
        "QUEUED",
        "ERROR",
        "PONG",
        "namespace=",
        "name=",
        "uid=",
        "timeout_ms=",
        "reason=",
        "position=",
        "holders=",
        "limit=",
        "code=",
        "msg=",
        "slot",
        "skip",
        "a",
        "1",
        "99999999999999999999",
        "=",
        " ",
        "-",
        "é",
        "x=y",
    ];
    for seed in 1..=20_000u64 {
        let mut rng = Rng(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1);
        let line: String = (0..rng.below(8)).map(|_| *rng.pick(WORDS)).collect();
        if let Ok(Request::Wait(wait)) = Request::decode(&line) {
            for token in [&wait.namespace, &wait.name] {
                assert!(!token.as_str().is_empty(), "seed {seed}: {line:?}");
                assert!(token.as_str().len() <= MAX_VALUE_BYTES);
                assert!(
                    !token.as_str().contains([' ', '=']),
                    "seed {seed}: {line:?}"
                );
            }
        }
        if let Ok(reply) = Reply::decode(&line) {
            // Whatever decodes encodes back to a line that decodes to the same reply.
            let again = reply.encode();
            let again = Reply::decode(again.trim_end_matches('\n')).expect("re-decodes");
            assert_eq!(again, reply, "seed {seed}: {line:?}");
        }
    }
}
