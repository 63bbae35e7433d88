// SPDX-License-Identifier: Apache-2.0

// The three patch formats of the API server:
//
//   - JSON merge patch (RFC 7386);
//   - strategic merge patch, reduced to what our clients send: a merge patch in
//     which the lists named in the resource's mergeKeys are merged element by
//     element (by key, or as a set for lists of scalars), with the `$patch`
//     (replace, merge, delete) and `$setElementOrder/<list>` directives; any
//     other `$` directive is refused;
//   - JSON patch (RFC 6902): add, remove, replace, move, copy and test.
//
// Each function returns a new document and leaves its inputs alone.

package main

import (
	"fmt"
	"strconv"
	"strings"
)

// patchError is a patch that could not be applied; badRequest separates a
// malformed patch (400) from a well-formed one that does not apply (422).
type patchError struct {
	msg        string
	badRequest bool
}

func (e *patchError) Error() string { return e.msg }

func malformed(format string, args ...any) error {
	return &patchError{msg: fmt.Sprintf(format, args...), badRequest: true}
}

func notApplicable(format string, args ...any) error {
	return &patchError{msg: fmt.Sprintf(format, args...)}
}

// mergePatch applies an RFC 7386 merge patch.
func mergePatch(target, patch any) any {
	pm, ok := patch.(map[string]any)
	if !ok {
		return deepCopy(patch)
	}
	out := map[string]any{}
	if tm, ok := target.(map[string]any); ok {
		for k, v := range tm {
			out[k] = deepCopy(v)
		}
	}
	for k, pv := range pm {
		if pv == nil {
			delete(out, k)
			continue
		}
		out[k] = mergePatch(out[k], pv)
	}
	return out
}

// strategicMerge applies a strategic merge patch to target (an object). path
// is the dotted location of target inside the resource ("" at the top), used
// to look up list merge keys.
func strategicMerge(res *resource, target map[string]any, patch map[string]any, path string) (map[string]any, error) {
	if d, ok := patch["$patch"]; ok {
		switch d {
		case "replace":
			return stripDirectives(patch).(map[string]any), nil
		case "merge":
		case "delete":
			return nil, nil
		default:
			return nil, malformed("unknown $patch directive %v at %q", d, displayPath(path))
		}
	}
	out := map[string]any{}
	for k, v := range target {
		out[k] = deepCopy(v)
	}
	orders := map[string][]any{}
	for k, pv := range patch {
		if strings.HasPrefix(k, "$") {
			if k == "$patch" {
				continue
			}
			field, ok := strings.CutPrefix(k, "$setElementOrder/")
			list, isList := pv.([]any)
			if !ok || !isList {
				return nil, malformed("unsupported strategic merge patch directive %q at %q", k, displayPath(path))
			}
			orders[field] = list
			continue
		}
		at := joinPath(path, k)
		switch p := pv.(type) {
		case nil:
			delete(out, k)
		case []any:
			key, keyed := res.mergeKeys[at]
			if !keyed {
				out[k] = stripDirectives(p)
				continue
			}
			cur, _ := out[k].([]any)
			merged, err := mergeList(res, cur, p, key, at)
			if err != nil {
				return nil, err
			}
			out[k] = merged
		case map[string]any:
			cur, _ := out[k].(map[string]any)
			merged, err := strategicMerge(res, cur, p, at)
			if err != nil {
				return nil, err
			}
			if merged == nil {
				delete(out, k)
			} else {
				out[k] = merged
			}
		default:
			out[k] = pv
		}
	}
	for field, order := range orders {
		at := joinPath(path, field)
		key, keyed := res.mergeKeys[at]
		list, isList := out[field].([]any)
		if !keyed || !isList {
			continue
		}
		out[field] = reorder(list, order, key)
	}
	return out, nil
}

// mergeList merges the patch elements into cur: elements with the same key
// (or, for scalar lists, the same value) are merged, new ones are appended,
// `{"$patch":"delete", key: ...}` removes one and `{"$patch":"replace"}`
// makes the patch's other elements the whole list.
func mergeList(res *resource, cur, patch []any, key, path string) ([]any, error) {
	for _, pe := range patch {
		if m, ok := pe.(map[string]any); ok && m["$patch"] == "replace" {
			var out []any
			for _, e := range patch {
				if em, ok := e.(map[string]any); !ok || em["$patch"] != "replace" {
					out = append(out, stripDirectives(e))
				}
			}
			if out == nil {
				out = []any{}
			}
			return out, nil
		}
	}
	out := make([]any, 0, len(cur)+len(patch))
	for _, e := range cur {
		out = append(out, deepCopy(e))
	}
	if key == "" {
		for _, pe := range patch {
			if !containsValue(out, pe) {
				out = append(out, deepCopy(pe))
			}
		}
		return out, nil
	}
	for _, pe := range patch {
		pm, ok := pe.(map[string]any)
		if !ok {
			return nil, malformed("%q: list elements must be objects with the merge key %q", path, key)
		}
		kv, ok := pm[key]
		if !ok {
			return nil, malformed("%q: list element does not contain the merge key %q", path, key)
		}
		idx := -1
		for i, e := range out {
			if em, ok := e.(map[string]any); ok && jsonEqual(em[key], kv) {
				idx = i
				break
			}
		}
		if pm["$patch"] == "delete" {
			if idx >= 0 {
				out = append(out[:idx], out[idx+1:]...)
			}
			continue
		}
		var base map[string]any
		if idx >= 0 {
			base, _ = out[idx].(map[string]any)
		}
		merged, err := strategicMerge(res, base, pm, path)
		if err != nil {
			return nil, err
		}
		switch {
		case merged == nil && idx >= 0:
			out = append(out[:idx], out[idx+1:]...)
		case merged == nil:
		case idx >= 0:
			out[idx] = merged
		default:
			out = append(out, merged)
		}
	}
	return out, nil
}

// reorder puts the elements named in order first, in that order, followed by
// the rest in their current order.
func reorder(list, order []any, key string) []any {
	out := make([]any, 0, len(list))
	used := make([]bool, len(list))
	for _, o := range order {
		om, _ := o.(map[string]any)
		for i, e := range list {
			em, _ := e.(map[string]any)
			if !used[i] && om != nil && em != nil && jsonEqual(em[key], om[key]) {
				out = append(out, e)
				used[i] = true
				break
			}
		}
	}
	for i, e := range list {
		if !used[i] {
			out = append(out, e)
		}
	}
	return out
}

// stripDirectives removes `$`-prefixed keys from every object in v.
func stripDirectives(v any) any {
	switch t := v.(type) {
	case map[string]any:
		out := map[string]any{}
		for k, e := range t {
			if !strings.HasPrefix(k, "$") {
				out[k] = stripDirectives(e)
			}
		}
		return out
	case []any:
		out := make([]any, len(t))
		for i, e := range t {
			out[i] = stripDirectives(e)
		}
		return out
	default:
		return v
	}
}

func containsValue(list []any, v any) bool {
	for _, e := range list {
		if jsonEqual(e, v) {
			return true
		}
	}
	return false
}

func joinPath(path, k string) string {
	if path == "" {
		return k
	}
	return path + "." + k
}

func displayPath(path string) string {
	if path == "" {
		return "."
	}
	return path
}

// jsonPatch applies an RFC 6902 patch (a list of operations) to doc.
func jsonPatch(doc any, patch any) (any, error) {
	ops, ok := patch.([]any)
	if !ok {
		return nil, malformed("a JSON patch must be an array of operations, got %s", jsonType(patch))
	}
	doc = deepCopy(doc)
	for i, raw := range ops {
		op, ok := raw.(map[string]any)
		if !ok {
			return nil, malformed("operation %d is not an object", i)
		}
		name, _ := op["op"].(string)
		path, err := pointerField(op, "path", i)
		if err != nil {
			return nil, err
		}
		value, hasValue := op["value"]
		needsValue := name == "add" || name == "replace" || name == "test"
		if needsValue && !hasValue {
			return nil, malformed("operation %d (%s) has no \"value\"", i, name)
		}
		switch name {
		case "add":
			doc, err = pointerAdd(doc, path, deepCopy(value))
		case "remove":
			doc, _, err = pointerRemove(doc, path)
		case "replace":
			if _, err = pointerGet(doc, path); err == nil {
				if len(path) == 0 {
					doc = deepCopy(value)
				} else {
					doc, _, err = pointerRemove(doc, path)
					if err == nil {
						doc, err = pointerAdd(doc, path, deepCopy(value))
					}
				}
			}
		case "move", "copy":
			var from []string
			if from, err = pointerField(op, "from", i); err != nil {
				return nil, err
			}
			if name == "move" && len(from) < len(path) && isPrefix(from, path) {
				return nil, malformed("operation %d: cannot move a value into one of its children", i)
			}
			var v any
			if v, err = pointerGet(doc, from); err == nil {
				v = deepCopy(v)
				if name == "move" {
					doc, _, err = pointerRemove(doc, from)
				}
				if err == nil {
					doc, err = pointerAdd(doc, path, v)
				}
			}
		case "test":
			var cur any
			if cur, err = pointerGet(doc, path); err == nil && !jsonEqual(cur, value) {
				err = notApplicable("test operation %d failed: the value at %q differs", i, op["path"])
			}
		default:
			return nil, malformed("operation %d: unsupported op %q", i, name)
		}
		if err != nil {
			if pe, ok := err.(*patchError); ok && (pe.badRequest || strings.HasPrefix(pe.msg, "test operation")) {
				return nil, err
			}
			return nil, notApplicable("operation %d (%s %v): %v", i, name, op["path"], err)
		}
	}
	return doc, nil
}

func isPrefix(prefix, path []string) bool {
	for i := range prefix {
		if prefix[i] != path[i] {
			return false
		}
	}
	return true
}

// pointerField parses the JSON pointer in op[field] into reference tokens.
func pointerField(op map[string]any, field string, i int) ([]string, error) {
	s, ok := op[field].(string)
	if !ok {
		return nil, malformed("operation %d has no string %q", i, field)
	}
	if s == "" {
		return []string{}, nil
	}
	if !strings.HasPrefix(s, "/") {
		return nil, malformed("operation %d: %s %q is not a JSON pointer (must start with '/')", i, field, s)
	}
	toks := strings.Split(s[1:], "/")
	for j, t := range toks {
		toks[j] = strings.ReplaceAll(strings.ReplaceAll(t, "~1", "/"), "~0", "~")
	}
	return toks, nil
}

func pointerGet(doc any, toks []string) (any, error) {
	cur := doc
	for _, t := range toks {
		switch c := cur.(type) {
		case map[string]any:
			v, ok := c[t]
			if !ok {
				return nil, notApplicable("no member %q", t)
			}
			cur = v
		case []any:
			i, err := arrayIndex(t, len(c)-1)
			if err != nil {
				return nil, err
			}
			cur = c[i]
		default:
			return nil, notApplicable("cannot descend into %s with %q", jsonType(cur), t)
		}
	}
	return cur, nil
}

// pointerAdd inserts v at toks: a member of an object is set, an array gets v
// inserted before the index (or appended for "-").
func pointerAdd(doc any, toks []string, v any) (any, error) {
	if len(toks) == 0 {
		return v, nil
	}
	parent, err := pointerGet(doc, toks[:len(toks)-1])
	if err != nil {
		return nil, err
	}
	last := toks[len(toks)-1]
	switch c := parent.(type) {
	case map[string]any:
		c[last] = v
		return doc, nil
	case []any:
		i := len(c)
		if last != "-" {
			if i, err = arrayIndex(last, len(c)); err != nil {
				return nil, err
			}
		}
		grown := make([]any, 0, len(c)+1)
		grown = append(append(append(grown, c[:i]...), v), c[i:]...)
		return replaceAt(doc, toks[:len(toks)-1], grown)
	default:
		return nil, notApplicable("cannot add a member to %s", jsonType(parent))
	}
}

// pointerRemove deletes the value at toks and returns it.
func pointerRemove(doc any, toks []string) (any, any, error) {
	if len(toks) == 0 {
		return nil, nil, notApplicable("cannot remove the whole document")
	}
	parent, err := pointerGet(doc, toks[:len(toks)-1])
	if err != nil {
		return nil, nil, err
	}
	last := toks[len(toks)-1]
	switch c := parent.(type) {
	case map[string]any:
		v, ok := c[last]
		if !ok {
			return nil, nil, notApplicable("no member %q to remove", last)
		}
		delete(c, last)
		return doc, v, nil
	case []any:
		i, err := arrayIndex(last, len(c)-1)
		if err != nil {
			return nil, nil, err
		}
		v := c[i]
		shrunk := append(append(make([]any, 0, len(c)-1), c[:i]...), c[i+1:]...)
		doc, err = replaceAt(doc, toks[:len(toks)-1], shrunk)
		return doc, v, err
	default:
		return nil, nil, notApplicable("cannot remove from %s", jsonType(parent))
	}
}

// replaceAt stores v at toks (which must exist) and returns the document.
func replaceAt(doc any, toks []string, v any) (any, error) {
	if len(toks) == 0 {
		return v, nil
	}
	parent, err := pointerGet(doc, toks[:len(toks)-1])
	if err != nil {
		return nil, err
	}
	last := toks[len(toks)-1]
	switch c := parent.(type) {
	case map[string]any:
		c[last] = v
	case []any:
		i, err := arrayIndex(last, len(c)-1)
		if err != nil {
			return nil, err
		}
		c[i] = v
	}
	return doc, nil
}

// arrayIndex parses an array index token that must lie in [0, max].
func arrayIndex(t string, max int) (int, error) {
	if t == "" || (len(t) > 1 && t[0] == '0') {
		return 0, notApplicable("invalid array index %q", t)
	}
	i, err := strconv.Atoi(t)
	if err != nil || i < 0 || i > max {
		return 0, notApplicable("array index %q out of range", t)
	}
	return i, nil
}
