// SPDX-License-Identifier: Apache-2.0

package main

import (
	"bufio"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// testServer runs the handler over plain HTTP with token "t0ken".
func testServer(t *testing.T) (*httptest.Server, *server) {
	t.Helper()
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "token"), []byte("t0ken\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	srv := &server{dir: dir, store: newStore(64), bookmarkInterval: 50 * time.Millisecond}
	ts := httptest.NewServer(srv)
	t.Cleanup(func() {
		srv.store.closeWatches(false)
		ts.Close()
	})
	return ts, srv
}

func call(t *testing.T, ts *httptest.Server, method, path, ctype, body string) (int, map[string]any) {
	t.Helper()
	req, err := http.NewRequest(method, ts.URL+path, strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Authorization", "Bearer t0ken")
	if ctype != "" {
		req.Header.Set("Content-Type", ctype)
	}
	resp, err := ts.Client().Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	data, _ := io.ReadAll(resp.Body)
	var out map[string]any
	if err := json.Unmarshal(data, &out); err != nil {
		t.Fatalf("%s %s: not JSON: %s", method, path, data)
	}
	return resp.StatusCode, out
}

// TestCustomResource shows that a table entry with an API group is all a
// custom resource needs: discovery, create, list, patch and watch work.
func TestCustomResource(t *testing.T) {
	cr := &resource{
		group: "pacemaker.example", version: "v1alpha1", name: "pacemakerconfigs",
		singular: "pacemakerconfig", kind: "PacemakerConfig",
		verbs:     []string{"create", "delete", "get", "list", "patch", "update", "watch"},
		mergeKeys: map[string]string{},
	}
	saved := resources
	resources = append(append([]*resource(nil), resources...), cr)
	t.Cleanup(func() { resources = saved })
	ts, _ := testServer(t)

	code, groups := call(t, ts, "GET", "/apis", "", "")
	if code != 200 || groups["groups"].([]any)[0].(map[string]any)["name"] != "pacemaker.example" {
		t.Fatalf("/apis: %d %v", code, groups)
	}
	code, list := call(t, ts, "GET", "/apis/pacemaker.example/v1alpha1", "", "")
	if code != 200 || list["groupVersion"] != "pacemaker.example/v1alpha1" || len(list["resources"].([]any)) != 1 {
		t.Fatalf("resource list: %d %v", code, list)
	}

	base := "/apis/pacemaker.example/v1alpha1/pacemakerconfigs"
	code, obj := call(t, ts, "POST", base, "application/json",
		`{"apiVersion":"pacemaker.example/v1alpha1","kind":"PacemakerConfig","metadata":{"name":"default"},"spec":{"priority":1}}`)
	if code != 201 || obj["apiVersion"] != "pacemaker.example/v1alpha1" {
		t.Fatalf("create: %d %v", code, obj)
	}
	code, obj = call(t, ts, "PATCH", base+"/default", mergePatchType, `{"spec":{"priority":2}}`)
	if code != 200 || stringAt(obj, "metadata.resourceVersion") != "2" {
		t.Fatalf("patch: %d %v", code, obj)
	}
	code, list = call(t, ts, "GET", base, "", "")
	if code != 200 || list["kind"] != "PacemakerConfigList" || len(list["items"].([]any)) != 1 {
		t.Fatalf("list: %d %v", code, list)
	}
	if code, _ := call(t, ts, "GET", "/apis/pacemaker.example/v2/pacemakerconfigs", "", ""); code != 404 {
		t.Fatalf("unknown version: %d", code)
	}
	if code, _ := call(t, ts, "GET", "/api/v1/pacemakerconfigs", "", ""); code != 404 {
		t.Fatalf("the custom resource leaked into the core API: %d", code)
	}
}

// TestWatchStream reads a real watch stream: replay, a live event, a
// bookmark, and the end at timeoutSeconds.
func TestWatchStream(t *testing.T) {
	ts, _ := testServer(t)
	call(t, ts, "POST", "/api/v1/namespaces/ns/pods", "application/json", `{"metadata":{"name":"a"},"spec":{"nodeName":"n1"}}`)

	req, _ := http.NewRequest("GET", ts.URL+"/api/v1/pods?watch=1&resourceVersion=0&allowWatchBookmarks=true&timeoutSeconds=1&fieldSelector=spec.nodeName%3Dn1", nil)
	req.Header.Set("Authorization", "Bearer t0ken")
	resp, err := ts.Client().Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	lines := bufio.NewScanner(resp.Body)
	next := func() watchEvent {
		t.Helper()
		if !lines.Scan() {
			t.Fatalf("stream ended early: %v", lines.Err())
		}
		var ev watchEvent
		if err := json.Unmarshal(lines.Bytes(), &ev); err != nil {
			t.Fatalf("bad line %s: %v", lines.Bytes(), err)
		}
		return ev
	}
	if ev := next(); ev.Type != "ADDED" {
		t.Fatalf("first event %v", ev)
	}
	call(t, ts, "PATCH", "/api/v1/namespaces/ns/pods/a/status", strategicPatchType, `{"status":{"phase":"Running"}}`)
	call(t, ts, "POST", "/api/v1/namespaces/ns/pods", "application/json", `{"metadata":{"name":"b"},"spec":{"nodeName":"n2"}}`)
	sawModified, sawBookmark := false, false
	for lines.Scan() {
		var ev watchEvent
		if err := json.Unmarshal(lines.Bytes(), &ev); err != nil {
			t.Fatal(err)
		}
		switch ev.Type {
		case "MODIFIED":
			sawModified = stringAt(ev.Object, "status.phase") == "Running"
		case "BOOKMARK":
			sawBookmark = true
		default:
			t.Fatalf("unexpected event %v (pod b is on another node)", ev)
		}
	}
	if !sawModified || !sawBookmark {
		t.Fatalf("modified=%v bookmark=%v", sawModified, sawBookmark)
	}
}

func TestStatusSubresourceSeparation(t *testing.T) {
	ts, _ := testServer(t)
	call(t, ts, "POST", "/api/v1/namespaces/ns/pods", "application/json", `{"metadata":{"name":"a"}}`)
	_, obj := call(t, ts, "PATCH", "/api/v1/namespaces/ns/pods/a", mergePatchType,
		`{"metadata":{"labels":{"l":"1"}},"status":{"phase":"Running"}}`)
	if stringAt(obj, "status.phase") != "Pending" || stringAt(obj, "metadata.labels.l") != "1" {
		t.Fatalf("main resource patch: %v", obj)
	}
	_, obj = call(t, ts, "PATCH", "/api/v1/namespaces/ns/pods/a/status", jsonPatchType,
		`[{"op":"replace","path":"/status/phase","value":"Running"},{"op":"add","path":"/metadata/labels/m","value":"2"}]`)
	if stringAt(obj, "status.phase") != "Running" || stringAt(obj, "metadata.labels.m") != "" {
		t.Fatalf("status patch: %v", obj)
	}
	code, st := call(t, ts, "PUT", "/api/v1/namespaces/ns/pods/a/status", "application/json",
		`{"metadata":{"resourceVersion":"1"},"status":{"phase":"Failed"}}`)
	if code != 409 || st["reason"] != "Conflict" {
		t.Fatalf("stale PUT: %d %v", code, st)
	}
}
