// SPDX-License-Identifier: Apache-2.0

// Generic JSON values: objects are stored as map[string]any decoded with
// UseNumber, so numbers keep their exact text and unknown fields survive a
// round trip. Values held by the store are never changed in place; whoever
// wants to change one works on a deepCopy.

package main

import (
	"bytes"
	"crypto/rand"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math/big"
	"strings"
)

// decodeJSON parses exactly one JSON value and says what is wrong if it can't.
func decodeJSON(data []byte) (any, error) {
	if len(bytes.TrimSpace(data)) == 0 {
		return nil, errors.New("empty request body, expected a JSON document")
	}
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.UseNumber()
	var v any
	if err := dec.Decode(&v); err != nil {
		var syn *json.SyntaxError
		switch {
		case errors.As(err, &syn):
			return nil, fmt.Errorf("invalid JSON at byte %d: %v", syn.Offset, err)
		case errors.Is(err, io.ErrUnexpectedEOF):
			return nil, errors.New("invalid JSON: unexpected end of input")
		default:
			return nil, fmt.Errorf("invalid JSON: %v", err)
		}
	}
	if _, err := dec.Token(); err != io.EOF {
		return nil, fmt.Errorf("invalid JSON: unexpected data after the document at byte %d", dec.InputOffset())
	}
	return v, nil
}

// decodeObject parses a JSON object (not an array or a scalar).
func decodeObject(data []byte) (map[string]any, error) {
	v, err := decodeJSON(data)
	if err != nil {
		return nil, err
	}
	obj, ok := v.(map[string]any)
	if !ok {
		return nil, fmt.Errorf("expected a JSON object, got %s", jsonType(v))
	}
	return obj, nil
}

func jsonType(v any) string {
	switch v.(type) {
	case nil:
		return "null"
	case map[string]any:
		return "an object"
	case []any:
		return "an array"
	case string:
		return "a string"
	case bool:
		return "a boolean"
	default:
		return "a number"
	}
}

func deepCopy(v any) any {
	switch t := v.(type) {
	case map[string]any:
		out := make(map[string]any, len(t))
		for k, e := range t {
			out[k] = deepCopy(e)
		}
		return out
	case []any:
		out := make([]any, len(t))
		for i, e := range t {
			out[i] = deepCopy(e)
		}
		return out
	default:
		return v
	}
}

func copyObject(obj map[string]any) map[string]any {
	if obj == nil {
		return nil
	}
	return deepCopy(obj).(map[string]any)
}

// jsonEqual compares two decoded values; numbers compare by value, so 1 and
// 1.0 are equal.
func jsonEqual(a, b any) bool {
	switch x := a.(type) {
	case map[string]any:
		y, ok := b.(map[string]any)
		if !ok || len(x) != len(y) {
			return false
		}
		for k, xv := range x {
			yv, ok := y[k]
			if !ok || !jsonEqual(xv, yv) {
				return false
			}
		}
		return true
	case []any:
		y, ok := b.([]any)
		if !ok || len(x) != len(y) {
			return false
		}
		for i := range x {
			if !jsonEqual(x[i], y[i]) {
				return false
			}
		}
		return true
	case json.Number:
		return numbersEqual(string(x), b)
	case float64, int, int64:
		return numbersEqual(fmt.Sprint(x), b)
	default:
		return a == b
	}
}

func numbersEqual(x string, b any) bool {
	var y string
	switch t := b.(type) {
	case json.Number:
		y = string(t)
	case float64, int, int64:
		y = fmt.Sprint(t)
	default:
		return false
	}
	if x == y {
		return true
	}
	fx, ok1 := new(big.Float).SetString(x)
	fy, ok2 := new(big.Float).SetString(y)
	return ok1 && ok2 && fx.Cmp(fy) == 0
}

// child returns obj[key] as an object, or nil.
func child(obj map[string]any, key string) map[string]any {
	m, _ := obj[key].(map[string]any)
	return m
}

// getPath follows a dotted path through nested objects.
func getPath(obj map[string]any, path string) (any, bool) {
	var cur any = obj
	for _, part := range strings.Split(path, ".") {
		m, ok := cur.(map[string]any)
		if !ok {
			return nil, false
		}
		if cur, ok = m[part]; !ok {
			return nil, false
		}
	}
	return cur, true
}

// stringAt returns the string at a dotted path, or "" when absent or not a string.
func stringAt(obj map[string]any, path string) string {
	v, _ := getPath(obj, path)
	s, _ := v.(string)
	return s
}

// metadata returns obj.metadata, creating it if absent or not an object.
func metadata(obj map[string]any) map[string]any {
	m, ok := obj["metadata"].(map[string]any)
	if !ok {
		m = map[string]any{}
		obj["metadata"] = m
	}
	return m
}

func newUUID() string {
	var b [16]byte
	mustRandom(b[:])
	b[6] = b[6]&0x0f | 0x40 // version 4
	b[8] = b[8]&0x3f | 0x80 // RFC 4122 variant
	return fmt.Sprintf("%x-%x-%x-%x-%x", b[0:4], b[4:6], b[6:8], b[8:10], b[10:16])
}

// randomSuffix imitates the five characters the server appends to generateName.
func randomSuffix() string {
	const alphabet = "bcdfghjklmnpqrstvwxz2456789"
	var b [5]byte
	mustRandom(b[:])
	for i := range b {
		b[i] = alphabet[int(b[i])%len(alphabet)]
	}
	return string(b[:])
}

// mustRandom fills b from the system's random source. crypto/rand.Read never
// returns an error on Linux (it blocks or crashes the program instead), so the
// check below only guards against a future change.
func mustRandom(b []byte) {
	if _, err := rand.Read(b); err != nil {
		panic("crypto/rand failed: " + err.Error())
	}
}
