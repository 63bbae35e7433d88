// SPDX-License-Identifier: Apache-2.0

// Field and label selectors, parsed from the query string once per request and
// then matched against stored objects.
//
// Field selectors: comma-joined `key=value`, `key==value` or `key!=value`
// terms over the resource's field labels (a backslash escapes `,`, `=`, `!`
// and itself in a value). Label selectors: `k=v`, `k==v`, `k!=v`, `k`, `!k`,
// `k in (a,b)` and `k notin (a,b)`, comma-joined. Neither supports the numeric
// `>`/`<` operators.

package main

import (
	"encoding/json"
	"fmt"
	"strings"
)

type fieldReq struct {
	key, value string
	negate     bool
}

type labelReq struct {
	key    string
	op     string // "=", "!=", "in", "notin", "exists", "!"
	values []string
}

// filter is the selector part of a list or watch request.
type filter struct {
	namespace string // "" = every namespace
	fields    []fieldReq
	labels    []labelReq
}

func parseFieldSelector(res *resource, s string) ([]fieldReq, error) {
	var out []fieldReq
	for _, term := range splitEscaped(s, ',') {
		if strings.TrimSpace(term) == "" {
			continue
		}
		var req fieldReq
		var key, value string
		switch {
		case indexUnescaped(term, "!=") >= 0:
			i := indexUnescaped(term, "!=")
			key, value, req.negate = term[:i], term[i+2:], true
		case indexUnescaped(term, "==") >= 0:
			i := indexUnescaped(term, "==")
			key, value = term[:i], term[i+2:]
		case indexUnescaped(term, "=") >= 0:
			i := indexUnescaped(term, "=")
			key, value = term[:i], term[i+1:]
		default:
			return nil, fmt.Errorf("invalid field selector term %q: expected key=value, key==value or key!=value", term)
		}
		req.key = strings.TrimSpace(key)
		req.value = unescape(value)
		if !res.supportsField(req.key) {
			return nil, fmt.Errorf("field label not supported: %s", req.key)
		}
		out = append(out, req)
	}
	return out, nil
}

func parseLabelSelector(s string) ([]labelReq, error) {
	var out []labelReq
	for _, term := range splitOutsideParens(s) {
		term = strings.TrimSpace(term)
		if term == "" {
			continue
		}
		req, err := parseLabelTerm(term)
		if err != nil {
			return nil, err
		}
		out = append(out, req)
	}
	return out, nil
}

func parseLabelTerm(term string) (labelReq, error) {
	bad := func(why string) (labelReq, error) {
		return labelReq{}, fmt.Errorf("invalid label selector term %q: %s", term, why)
	}
	if strings.HasPrefix(term, "!") {
		key := strings.TrimSpace(term[1:])
		if !validLabelKey(key) {
			return bad("invalid label key")
		}
		return labelReq{key: key, op: "!"}, nil
	}
	for _, op := range []string{"!=", "==", "="} {
		if i := strings.Index(term, op); i >= 0 {
			key, value := strings.TrimSpace(term[:i]), strings.TrimSpace(term[i+len(op):])
			if !validLabelKey(key) || !validLabelValue(value) {
				return bad("invalid label key or value")
			}
			if op == "==" {
				op = "="
			}
			return labelReq{key: key, op: op, values: []string{value}}, nil
		}
	}
	fields := strings.Fields(term)
	if len(fields) == 1 {
		if !validLabelKey(fields[0]) {
			return bad("invalid label key")
		}
		return labelReq{key: fields[0], op: "exists"}, nil
	}
	if len(fields) < 2 || (fields[1] != "in" && fields[1] != "notin") {
		return bad("expected =, ==, !=, in, notin, a bare key or !key")
	}
	rest := strings.TrimSpace(strings.TrimPrefix(strings.TrimSpace(term[len(fields[0]):]), fields[1]))
	if !strings.HasPrefix(rest, "(") || !strings.HasSuffix(rest, ")") {
		return bad("the value set must be in parentheses")
	}
	var values []string
	for _, v := range strings.Split(rest[1:len(rest)-1], ",") {
		v = strings.TrimSpace(v)
		if !validLabelValue(v) {
			return bad("invalid label value")
		}
		values = append(values, v)
	}
	if !validLabelKey(fields[0]) {
		return bad("invalid label key")
	}
	return labelReq{key: fields[0], op: fields[1], values: values}, nil
}

// validLabelKey accepts an optional DNS-subdomain prefix and a name of
// alphanumerics, '-', '_' and '.'.
func validLabelKey(k string) bool {
	if i := strings.LastIndex(k, "/"); i >= 0 {
		if !validName(k[:i]) {
			return false
		}
		k = k[i+1:]
	}
	return k != "" && len(k) <= 63 && validLabelValue(k)
}

func validLabelValue(v string) bool {
	if len(v) > 63 {
		return false
	}
	for i := 0; i < len(v); i++ {
		c := v[i]
		ok := c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' ||
			c == '-' || c == '_' || c == '.'
		if !ok {
			return false
		}
	}
	return true
}

// matches reports whether obj passes every requirement of the filter.
func (f *filter) matches(obj map[string]any) bool {
	if obj == nil {
		return false
	}
	if f.namespace != "" && stringAt(obj, "metadata.namespace") != f.namespace {
		return false
	}
	for _, req := range f.fields {
		if (fieldValue(obj, req.key) == req.value) == req.negate {
			return false
		}
	}
	labels := child(child(obj, "metadata"), "labels")
	for _, req := range f.labels {
		raw, has := labels[req.key]
		value, _ := raw.(string)
		var ok bool
		switch req.op {
		case "=":
			ok = has && value == req.values[0]
		case "!=":
			ok = !has || value != req.values[0]
		case "in":
			ok = has && contains(req.values, value)
		case "notin":
			ok = !has || !contains(req.values, value)
		case "exists":
			ok = has
		case "!":
			ok = !has
		}
		if !ok {
			return false
		}
	}
	return true
}

// fieldValue renders the field at a dotted path the way field selectors see
// it: strings as they are, booleans and numbers as text, anything absent as "".
func fieldValue(obj map[string]any, path string) string {
	v, _ := getPath(obj, path)
	switch t := v.(type) {
	case string:
		return t
	case bool:
		if t {
			return "true"
		}
		return "false"
	case json.Number:
		return string(t)
	default:
		return ""
	}
}

func contains(list []string, s string) bool {
	for _, e := range list {
		if e == s {
			return true
		}
	}
	return false
}

// splitEscaped splits s at sep where sep is not preceded by a backslash.
func splitEscaped(s string, sep byte) []string {
	var out []string
	start := 0
	for i := 0; i < len(s); i++ {
		switch s[i] {
		case '\\':
			i++
		case sep:
			out = append(out, s[start:i])
			start = i + 1
		}
	}
	return append(out, s[start:])
}

// indexUnescaped finds op in s outside backslash escapes.
func indexUnescaped(s, op string) int {
	for i := 0; i < len(s); i++ {
		if s[i] == '\\' {
			i++
			continue
		}
		if strings.HasPrefix(s[i:], op) {
			return i
		}
	}
	return -1
}

func unescape(s string) string {
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == '\\' && i+1 < len(s) {
			i++
		}
		b.WriteByte(s[i])
	}
	return b.String()
}

// splitOutsideParens splits a label selector at commas outside `( )`.
func splitOutsideParens(s string) []string {
	var out []string
	depth, start := 0, 0
	for i := 0; i < len(s); i++ {
		switch s[i] {
		case '(':
			depth++
		case ')':
			depth--
		case ',':
			if depth == 0 {
				out = append(out, s[start:i])
				start = i + 1
			}
		}
	}
	return append(out, s[start:])
}
