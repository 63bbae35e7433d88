// SPDX-License-Identifier: Apache-2.0

package main

import (
	"testing"
)

func pod(name, node string, labels map[string]any) map[string]any {
	return map[string]any{
		"kind": "Pod", "apiVersion": "v1",
		"metadata": map[string]any{"name": name, "namespace": "ns", "labels": labels},
		"spec":     map[string]any{"nodeName": node},
	}
}

func TestSelectors(t *testing.T) {
	p := pod("a", "node-1", map[string]any{"app": "web", "tier": "front"})
	cases := []struct {
		fields, labels string
		want           bool
	}{
		{"spec.nodeName=node-1", "", true},
		{"spec.nodeName==node-2", "", false},
		{"spec.nodeName!=node-2,metadata.name=a", "", true},
		{"metadata.namespace=ns,metadata.name=b", "", false},
		{"status.phase=", "", true}, // absent fields read as ""
		{"", "app=web,tier=front", true},
		{"", "app==web,tier!=front", false},
		{"", "app in (db, web)", true},
		{"", "app notin (web),tier", false},
		{"", "!missing,missing!=x", true},
		{"", "missing", false},
	}
	for _, c := range cases {
		f := &filter{}
		var err error
		if f.fields, err = parseFieldSelector(podResource, c.fields); err != nil {
			t.Fatalf("%q: %v", c.fields, err)
		}
		if f.labels, err = parseLabelSelector(c.labels); err != nil {
			t.Fatalf("%q: %v", c.labels, err)
		}
		if got := f.matches(p); got != c.want {
			t.Errorf("fields %q labels %q: got %v, want %v", c.fields, c.labels, got, c.want)
		}
	}
	for _, bad := range []string{"spec.hostname=x", "nodeName", "spec.nodeName>1"} {
		if _, err := parseFieldSelector(podResource, bad); err == nil {
			t.Errorf("field selector %q: want an error", bad)
		}
	}
	for _, bad := range []string{"a=b c", "a in b", "a in (b", "=b", "a/b/c=d", "a>1"} {
		if _, err := parseLabelSelector(bad); err == nil {
			t.Errorf("label selector %q: want an error", bad)
		}
	}
}

func TestWatchTranslatesSelectorTransitions(t *testing.T) {
	s := newStore(16)
	f := &filter{fields: []fieldReq{{key: "spec.nodeName", value: "node-1"}}}
	w, initial, err := s.watch(podResource, f, "0", false, "")
	if err != nil || len(initial) != 0 {
		t.Fatalf("watch: %v %v", initial, err)
	}
	if _, err := s.create(podResource, pod("a", "", nil)); err != nil {
		t.Fatal(err)
	}
	// Scheduling onto node-1 makes the pod appear, moving it away makes it vanish.
	for _, node := range []string{"node-1", "node-1", "node-2"} {
		_, err := s.update(podResource, "ns", "a", false, func(cur map[string]any) (map[string]any, *apiError) {
			cur["spec"] = map[string]any{"nodeName": node}
			return cur, nil
		})
		if err != nil {
			t.Fatal(err)
		}
	}
	var types []string
	for len(w.ch) > 0 {
		ev := <-w.ch
		types = append(types, ev.Type+"@"+stringAt(ev.Object, "metadata.resourceVersion"))
	}
	// The second update changes nothing: no resourceVersion, no event.
	want := []string{"ADDED@2", "DELETED@3"}
	if len(types) != len(want) || types[0] != want[0] || types[1] != want[1] {
		t.Fatalf("got %v, want %v", types, want)
	}
}

func TestReplayCompactionAndSnapshots(t *testing.T) {
	s := newStore(16)
	for _, n := range []string{"a", "b", "c"} {
		if _, err := s.create(podResource, pod(n, "node-1", nil)); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := s.delete(podResource, "ns", "b", false, nil); err != nil {
		t.Fatal(err)
	}
	_, initial, err := s.watch(podResource, &filter{}, "2", false, "")
	if err != nil || len(initial) != 2 || initial[0].Type != "ADDED" || initial[1].Type != "DELETED" {
		t.Fatalf("replay from 2: %v %v", initial, err)
	}
	if got := stringAt(initial[1].Object, "metadata.resourceVersion"); got != "4" {
		t.Fatalf("DELETED carries rv %s, want 4", got)
	}

	items, rv, err := s.list(podResource, &filter{}, 2)
	if err != nil || rv != 2 || len(items) != 2 || items[1].key != "ns/b" {
		t.Fatalf("list at 2: %v rv=%d %v", items, rv, err)
	}

	s.compact()
	if _, _, err := s.watch(podResource, &filter{}, "3", false, ""); err == nil || err.code != 410 {
		t.Fatalf("watch from before the compaction point: %v", err)
	}
	if _, _, err := s.list(podResource, &filter{}, 3); err == nil || err.code != 410 {
		t.Fatalf("list from before the compaction point: %v", err)
	}
	if _, initial, err := s.watch(podResource, &filter{}, "4", false, ""); err != nil || len(initial) != 0 {
		t.Fatalf("watch from the compaction point: %v %v", initial, err)
	}
}

func TestSlowWatcherIsClosedNotWaitedFor(t *testing.T) {
	s := newStore(2)
	w, _, err := s.watch(podResource, &filter{}, "0", false, "")
	if err != nil {
		t.Fatal(err)
	}
	for _, n := range []string{"a", "b", "c", "d"} {
		if _, err := s.create(podResource, pod(n, "", nil)); err != nil {
			t.Fatal(err)
		}
	}
	select {
	case <-w.done:
	default:
		t.Fatal("a watcher with a full buffer should have been closed")
	}
	if w.abrupt.Load() {
		t.Fatal("an overflowing watcher ends cleanly")
	}
	if n := s.closeWatches(true); n != 0 {
		t.Fatalf("the closed watcher is still registered (%d)", n)
	}
}
