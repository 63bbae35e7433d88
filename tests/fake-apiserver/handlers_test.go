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
	"slices"
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

// TestCustomResource drives the config CRD the table serves
// (pacemakerconfigs.woehrl.net/v1alpha): discovery, create, patch, the status
// subresource, list and watch.
func TestCustomResource(t *testing.T) {
	ts, _ := testServer(t)

	code, groups := call(t, ts, "GET", "/apis", "", "")
	names := []string{}
	for _, g := range groups["groups"].([]any) {
		names = append(names, g.(map[string]any)["name"].(string))
	}
	if code != 200 || !slices.Contains(names, "woehrl.net") {
		t.Fatalf("/apis: %d %v", code, groups)
	}
	code, list := call(t, ts, "GET", "/apis/woehrl.net/v1alpha", "", "")
	if code != 200 || list["groupVersion"] != "woehrl.net/v1alpha" || len(list["resources"].([]any)) != 2 {
		t.Fatalf("resource list: %d %v", code, list)
	}

	base := "/apis/woehrl.net/v1alpha/pacemakerconfigs"
	code, obj := call(t, ts, "POST", base, "application/json",
		`{"apiVersion":"woehrl.net/v1alpha","kind":"PacemakerConfig","metadata":{"name":"default"},
		"spec":{"nodeSelector":{},"priority":1,"throttleConfig":{"maxConcurrent":{"value":2}}}}`)
	if code != 201 || obj["apiVersion"] != "woehrl.net/v1alpha" || stringAt(obj, "metadata.namespace") != "" {
		t.Fatalf("create: %d %v", code, obj)
	}
	code, obj = call(t, ts, "PATCH", base+"/default", mergePatchType, `{"spec":{"priority":2},"status":{"x":1}}`)
	if code != 200 || stringAt(obj, "metadata.resourceVersion") != "2" || obj["status"] != nil {
		t.Fatalf("patch: %d %v", code, obj)
	}
	code, obj = call(t, ts, "PATCH", base+"/default/status", mergePatchType, `{"status":{"applied":true}}`)
	if code != 200 || child(obj, "status")["applied"] != true {
		t.Fatalf("status patch: %d %v", code, obj)
	}
	code, list = call(t, ts, "GET", base, "", "")
	if code != 200 || list["kind"] != "PacemakerConfigList" || len(list["items"].([]any)) != 1 {
		t.Fatalf("list: %d %v", code, list)
	}
	resp, err := authGet(ts, base+"?watch=1&resourceVersion=1&timeoutSeconds=1")
	if err != nil {
		t.Fatal(err)
	}
	data, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if got := strings.Count(string(data), `"type":"MODIFIED"`); got != 2 {
		t.Fatalf("watch replay: %d MODIFIED in %s", got, data)
	}
	if code, _ := call(t, ts, "GET", "/apis/woehrl.net/v2/pacemakerconfigs", "", ""); code != 404 {
		t.Fatalf("unknown version: %d", code)
	}
	if code, _ := call(t, ts, "GET", "/api/v1/pacemakerconfigs", "", ""); code != 404 {
		t.Fatalf("the custom resource leaked into the core API: %d", code)
	}
}

func authGet(ts *httptest.Server, path string) (*http.Response, error) {
	req, err := http.NewRequest("GET", ts.URL+path, nil)
	if err != nil {
		return nil, err
	}
	req.Header.Set("Authorization", "Bearer t0ken")
	return ts.Client().Do(req)
}

// TestFaultKnobs: /fake/slow delays, /fake/drop-requests breaks the
// connection, /fake/fail answers an error, each for the next requests only.
func TestFaultKnobs(t *testing.T) {
	ts, _ := testServer(t)
	post := func(path string) {
		t.Helper()
		if code, out := call(t, ts, "POST", path, "", ""); code != 200 {
			t.Fatalf("%s: %d %v", path, code, out)
		}
	}

	post("/fake/slow?seconds=0.3&count=1")
	start := time.Now()
	if code, _ := call(t, ts, "GET", "/api/v1/nodes", "", ""); code != 200 || time.Since(start) < 300*time.Millisecond {
		t.Fatalf("slow: %d after %v", code, time.Since(start))
	}

	post("/fake/drop-requests?count=1")
	// A fresh connection: Go's client retries a GET whose reused connection closes first.
	req, _ := http.NewRequest("GET", ts.URL+"/api/v1/nodes", nil)
	req.Header.Set("Authorization", "Bearer t0ken")
	fresh := &http.Client{Transport: &http.Transport{DisableKeepAlives: true}}
	if resp, err := fresh.Do(req); err == nil {
		resp.Body.Close()
		t.Fatalf("a dropped request got an answer: %d", resp.StatusCode)
	}
	if code, _ := call(t, ts, "GET", "/api/v1/nodes", "", ""); code != 200 {
		t.Fatalf("after the drop: %d", code)
	}

	post("/fake/fail?code=429&count=1")
	resp, err := authGet(ts, "/api/v1/nodes")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != 429 || resp.Header.Get("Retry-After") != "1" {
		t.Fatalf("fail: %d %q", resp.StatusCode, resp.Header.Get("Retry-After"))
	}
	if code, _ := call(t, ts, "POST", "/fake/slow?seconds=-1", "", ""); code != 400 {
		t.Fatalf("negative delay accepted: %d", code)
	}
}

// TestRotateToken: after /fake/rotate-token the new token (in DIR/token and
// DIR/kubeconfig) works, and the old one only for its grace period.
func TestRotateToken(t *testing.T) {
	ts, srv := testServer(t)
	srv.addr = "127.0.0.1:1"
	withToken := func(token string) int {
		req, _ := http.NewRequest("GET", ts.URL+"/api/v1/nodes", nil)
		req.Header.Set("Authorization", "Bearer "+token)
		resp, err := ts.Client().Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		return resp.StatusCode
	}
	if code, out := call(t, ts, "POST", "/fake/rotate-token?grace=0.4", "", ""); code != 200 {
		t.Fatalf("rotate: %d %v", code, out)
	}
	data, err := os.ReadFile(filepath.Join(srv.dir, "token"))
	if err != nil {
		t.Fatal(err)
	}
	fresh := strings.TrimSpace(string(data))
	if fresh == "t0ken" || withToken(fresh) != 200 || withToken("t0ken") != 200 {
		t.Fatalf("during the grace period both tokens must work")
	}
	if kc, _ := os.ReadFile(filepath.Join(srv.dir, "kubeconfig")); !strings.Contains(string(kc), fresh) {
		t.Fatalf("kubeconfig not rewritten")
	}
	time.Sleep(500 * time.Millisecond)
	if withToken("t0ken") != 401 || withToken(fresh) != 200 {
		t.Fatalf("after the grace period only the new token works")
	}
}

// TestKeepStateRestart: objects and the resourceVersion survive save and
// load, and the loaded version is the compaction point.
func TestKeepStateRestart(t *testing.T) {
	before := newStore(8)
	f := &filter{}
	before.create(podResource, map[string]any{"metadata": map[string]any{"name": "a", "namespace": "ns"}})
	before.create(nodeResource, map[string]any{"metadata": map[string]any{"name": "n1"}})
	path := filepath.Join(t.TempDir(), "store.json")
	if err := before.save(path); err != nil {
		t.Fatal(err)
	}
	after := newStore(8)
	if err := after.load(path); err != nil {
		t.Fatal(err)
	}
	items, rv, e := after.list(podResource, f, 0)
	if e != nil || len(items) != 1 || rv != 2 {
		t.Fatalf("pods after load: %v rv=%d %v", items, rv, e)
	}
	if _, _, e := after.watch(podResource, f, "1", false, ""); e == nil || e.code != 410 {
		t.Fatalf("a watch from before the restart must get 410, got %v", e)
	}
	if err := newStore(8).load(filepath.Join(t.TempDir(), "missing.json")); err != nil {
		t.Fatalf("a missing file is a fresh start: %v", err)
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
