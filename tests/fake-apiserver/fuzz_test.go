// SPDX-License-Identifier: Apache-2.0

package main

import "testing"

// FuzzPatches feeds arbitrary documents and patches to the three patch
// formats: whatever the input, they must return a value or an error, never
// panic, and never change their input.
func FuzzPatches(f *testing.F) {
	f.Add(`{"status":{"conditions":[{"type":"Ready"}]}}`, `{"status":{"conditions":[{"type":"Ready","status":"True"}]}}`)
	f.Add(`{"a":[1,2]}`, `[{"op":"move","from":"/a/0","path":"/a/-"}]`)
	f.Add(`{"metadata":{"finalizers":["x"]}}`, `{"metadata":{"$patch":"replace"},"status":{"$setElementOrder/conditions":[{"type":"A"}]}}`)
	f.Fuzz(func(t *testing.T, doc, patch string) {
		d, err1 := decodeJSON([]byte(doc))
		p, err2 := decodeJSON([]byte(patch))
		if err1 != nil || err2 != nil {
			return
		}
		before := deepCopy(d)
		_ = mergePatch(d, p)
		_, _ = jsonPatch(d, p)
		dm, ok1 := d.(map[string]any)
		pm, ok2 := p.(map[string]any)
		if ok1 && ok2 {
			_, _ = strategicMerge(podResource, dm, pm, "")
		}
		if !jsonEqual(d, before) {
			t.Fatalf("a patch changed its input document")
		}
	})
}

// FuzzSelectors checks that no selector text makes the parsers or the
// matcher panic.
func FuzzSelectors(f *testing.F) {
	f.Add("spec.nodeName=a,metadata.name!=b", "app in (a, b),!x,y")
	f.Add(`metadata.name=a\,b`, "a notin ()")
	obj := pod("a", "n", map[string]any{"app": "a"})
	f.Fuzz(func(t *testing.T, fields, labels string) {
		fr, err1 := parseFieldSelector(podResource, fields)
		lr, err2 := parseLabelSelector(labels)
		if err1 == nil && err2 == nil {
			(&filter{fields: fr, labels: lr}).matches(obj)
		}
	})
}
