// SPDX-License-Identifier: Apache-2.0

package main

import (
	"encoding/json"
	"testing"
)

func mustJSON(t *testing.T, s string) any {
	t.Helper()
	v, err := decodeJSON([]byte(s))
	if err != nil {
		t.Fatalf("bad test JSON %s: %v", s, err)
	}
	return v
}

func assertJSON(t *testing.T, got any, want string) {
	t.Helper()
	if !jsonEqual(got, mustJSON(t, want)) {
		g, _ := json.Marshal(got)
		t.Fatalf("got  %s\nwant %s", g, want)
	}
}

func TestMergePatchRFC7386Examples(t *testing.T) {
	cases := []struct{ target, patch, want string }{
		{`{"a":"b"}`, `{"a":"c"}`, `{"a":"c"}`},
		{`{"a":"b"}`, `{"b":"c"}`, `{"a":"b","b":"c"}`},
		{`{"a":"b"}`, `{"a":null}`, `{}`},
		{`{"a":"b","b":"c"}`, `{"a":null}`, `{"b":"c"}`},
		{`{"a":["b"]}`, `{"a":"c"}`, `{"a":"c"}`},
		{`{"a":"c"}`, `{"a":["b"]}`, `{"a":["b"]}`},
		{`{"a":{"b":"c"}}`, `{"a":{"b":"d","c":null}}`, `{"a":{"b":"d"}}`},
		{`{"a":[{"b":"c"}]}`, `{"a":[1]}`, `{"a":[1]}`},
		{`{"e":null}`, `{"a":1}`, `{"e":null,"a":1}`},
		{`[1,2]`, `{"a":"b","c":null}`, `{"a":"b"}`},
		{`{}`, `{"a":{"bb":{"ccc":null}}}`, `{"a":{"bb":{}}}`},
	}
	for _, c := range cases {
		target := mustJSON(t, c.target)
		before := deepCopy(target)
		assertJSON(t, mergePatch(target, mustJSON(t, c.patch)), c.want)
		if !jsonEqual(target, before) {
			t.Fatalf("mergePatch changed its target")
		}
	}
}

func TestStrategicMergeConditionsByType(t *testing.T) {
	cur := mustJSON(t, `{"status":{"phase":"Pending","conditions":[
		{"type":"PodScheduled","status":"True"},{"type":"Ready","status":"False","reason":"x"}]}}`).(map[string]any)
	patch := mustJSON(t, `{"status":{"conditions":[{"type":"Ready","status":"True"},{"type":"Initialized","status":"True"}]}}`).(map[string]any)
	got, err := strategicMerge(podResource, cur, patch, "")
	if err != nil {
		t.Fatal(err)
	}
	assertJSON(t, got, `{"status":{"phase":"Pending","conditions":[
		{"type":"PodScheduled","status":"True"},{"type":"Ready","status":"True","reason":"x"},
		{"type":"Initialized","status":"True"}]}}`)
}

func TestStrategicMergeDirectives(t *testing.T) {
	cur := mustJSON(t, `{"metadata":{"finalizers":["a"],"ownerReferences":[{"uid":"1"},{"uid":"2"}]},
		"status":{"containerStatuses":[{"name":"a","ready":false},{"name":"b","ready":false}]}}`).(map[string]any)
	patch := mustJSON(t, `{"metadata":{"finalizers":["b","a"],"ownerReferences":[{"uid":"3"}]},
		"status":{"$setElementOrder/containerStatuses":[{"name":"b"},{"name":"a"}],
		"containerStatuses":[{"name":"a","$patch":"delete"},{"name":"b","ready":true}]}}`).(map[string]any)
	got, err := strategicMerge(podResource, cur, patch, "")
	if err != nil {
		t.Fatal(err)
	}
	assertJSON(t, got, `{"metadata":{"finalizers":["a","b"],"ownerReferences":[{"uid":"3"}]},
		"status":{"containerStatuses":[{"name":"b","ready":true}]}}`)

	replace := mustJSON(t, `{"status":{"$patch":"replace","phase":"Running"}}`).(map[string]any)
	got, err = strategicMerge(podResource, cur, replace, "")
	if err != nil {
		t.Fatal(err)
	}
	assertJSON(t, got["status"], `{"phase":"Running"}`)

	for _, bad := range []string{
		`{"status":{"$retainKeys":["phase"]}}`,
		`{"status":{"conditions":[{"status":"True"}]}}`,
		`{"status":{"conditions":["Ready"]}}`,
	} {
		if _, err := strategicMerge(podResource, cur, mustJSON(t, bad).(map[string]any), ""); err == nil {
			t.Errorf("%s: want an error", bad)
		} else if pe, ok := err.(*patchError); !ok || !pe.badRequest {
			t.Errorf("%s: want a malformed-patch error, got %v", bad, err)
		}
	}
}

func TestJSONPatchOperations(t *testing.T) {
	doc := `{"a":{"b":[1,2,3]},"c":"x"}`
	cases := []struct{ patch, want string }{
		{`[{"op":"add","path":"/a/b/1","value":9}]`, `{"a":{"b":[1,9,2,3]},"c":"x"}`},
		{`[{"op":"add","path":"/a/b/-","value":4}]`, `{"a":{"b":[1,2,3,4]},"c":"x"}`},
		{`[{"op":"add","path":"/d~1e","value":true}]`, `{"a":{"b":[1,2,3]},"c":"x","d/e":true}`},
		{`[{"op":"remove","path":"/a/b/0"}]`, `{"a":{"b":[2,3]},"c":"x"}`},
		{`[{"op":"replace","path":"/c","value":"y"}]`, `{"a":{"b":[1,2,3]},"c":"y"}`},
		{`[{"op":"replace","path":"/a/b/2","value":0}]`, `{"a":{"b":[1,2,0]},"c":"x"}`},
		{`[{"op":"move","from":"/c","path":"/a/c"}]`, `{"a":{"b":[1,2,3],"c":"x"}}`},
		{`[{"op":"copy","from":"/a/b","path":"/e"}]`, `{"a":{"b":[1,2,3]},"c":"x","e":[1,2,3]}`},
		{`[{"op":"test","path":"/a/b/1","value":2.0},{"op":"remove","path":"/c"}]`, `{"a":{"b":[1,2,3]}}`},
		{`[{"op":"replace","path":"","value":{"z":1}}]`, `{"z":1}`},
	}
	for _, c := range cases {
		target := mustJSON(t, doc)
		got, err := jsonPatch(target, mustJSON(t, c.patch))
		if err != nil {
			t.Fatalf("%s: %v", c.patch, err)
		}
		assertJSON(t, got, c.want)
		assertJSON(t, target, doc) // the input is left alone
	}

	failures := []struct {
		patch      string
		badRequest bool
	}{
		{`{"op":"add"}`, true},
		{`[{"op":"frobnicate","path":"/c"}]`, true},
		{`[{"op":"add","path":"c","value":1}]`, true},
		{`[{"op":"add","path":"/c"}]`, true},
		{`[{"op":"test","path":"/c","value":"nope"}]`, false},
		{`[{"op":"remove","path":"/zz"}]`, false},
		{`[{"op":"replace","path":"/zz","value":1}]`, false},
		{`[{"op":"add","path":"/a/b/7","value":1}]`, false},
		{`[{"op":"add","path":"/a/b/01","value":1}]`, false},
		{`[{"op":"move","from":"/a","path":"/a/b/x"}]`, true},
	}
	for _, f := range failures {
		_, err := jsonPatch(mustJSON(t, doc), mustJSON(t, f.patch))
		pe, ok := err.(*patchError)
		if !ok || pe.badRequest != f.badRequest {
			t.Errorf("%s: got %v, want a patchError with badRequest=%v", f.patch, err, f.badRequest)
		}
	}
}

func TestDecodeJSONNamesTheProblem(t *testing.T) {
	for _, c := range []struct{ in, want string }{
		{``, "empty request body, expected a JSON document"},
		{`{"a":`, "invalid JSON: unexpected end of input"},
		{`{"a":1}x`, "invalid JSON: unexpected data after the document at byte 7"},
		{`{"a" 1}`, "invalid JSON at byte 6: invalid character '1' after object key"},
	} {
		_, err := decodeJSON([]byte(c.in))
		if err == nil || err.Error() != c.want {
			t.Errorf("%q: got %v, want %q", c.in, err, c.want)
		}
	}
	if _, err := decodeObject([]byte(`[1]`)); err == nil || err.Error() != "expected a JSON object, got an array" {
		t.Errorf("array: got %v", err)
	}
}
