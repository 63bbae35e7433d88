// SPDX-License-Identifier: Apache-2.0

// The object store: every object of every kind, one global resourceVersion
// counter, the log of changes since the compaction point, and the open
// watches.
//
// One mutex guards all of it. Stored objects are never changed in place: a
// write stores a fresh map, so a reader may encode an object it got from the
// store after the lock is released. Writers hand each change to the matching
// watches through buffered channels without blocking; a watch whose buffer is
// full is closed (as the real server's watch cache does with a watcher that
// cannot keep up), and its client is expected to relist and watch again.

package main

import (
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"net/http"
	"os"
	"sort"
	"strconv"
	"sync"
	"sync/atomic"
	"time"
)

// storedEvent is one change, as kept in the log for watch replay.
type storedEvent struct {
	typ  string // ADDED, MODIFIED or DELETED
	res  *resource
	key  string
	obj  map[string]any // the new state; for DELETED the last state, stamped with the deletion's rv
	prev map[string]any // the state before; nil for ADDED
	rv   int64
}

// watchEvent is one line of a watch stream.
type watchEvent struct {
	Type   string         `json:"type"`
	Object map[string]any `json:"object"`
}

// watcher is one open watch stream.
type watcher struct {
	res    *resource
	filter *filter
	query  string // the request's query string, for /fake/state
	ch     chan watchEvent
	done   chan struct{} // closed when the store ends the watch
	once   sync.Once
	// abrupt tells the stream to break the connection instead of ending it
	// cleanly (set by /fake/drop-watches before done is closed).
	abrupt atomic.Bool
	// stallUntil holds back everything the stream would send until this
	// time (Unix nanoseconds; set by /fake/stall-watches).
	stallUntil atomic.Int64
}

func (w *watcher) stop(abrupt bool) {
	w.once.Do(func() {
		w.abrupt.Store(abrupt)
		close(w.done)
	})
}

type store struct {
	mu        sync.Mutex
	rv        int64
	compacted int64
	objects   map[*resource]map[string]map[string]any
	log       []storedEvent
	watchers  map[*watcher]struct{}
	bufSize   int
}

func newStore(bufSize int) *store {
	s := &store{
		objects:  map[*resource]map[string]map[string]any{},
		watchers: map[*watcher]struct{}{},
		bufSize:  bufSize,
	}
	for _, r := range resources {
		s.objects[r] = map[string]map[string]any{}
	}
	return s
}

func objectKey(res *resource, ns, name string) string {
	if res.namespaced {
		return ns + "/" + name
	}
	return name
}

func (s *store) get(res *resource, ns, name string) (map[string]any, *apiError) {
	s.mu.Lock()
	defer s.mu.Unlock()
	obj, ok := s.objects[res][objectKey(res, ns, name)]
	if !ok {
		return nil, errNotFound(res, name)
	}
	return obj, nil
}

// keyedObject is a list entry: the store key orders lists and pages.
type keyedObject struct {
	key string
	obj map[string]any
}

// list returns the matching objects, sorted by key, as they were at
// resourceVersion at (0 = now), and the resourceVersion of the result.
func (s *store) list(res *resource, f *filter, at int64) ([]keyedObject, int64, *apiError) {
	s.mu.Lock()
	defer s.mu.Unlock()
	objs := s.objects[res]
	rv := s.rv
	if at != 0 {
		if at < s.compacted {
			return nil, 0, errExpired(fmt.Sprintf("too old resource version: %d (%d)", at, s.compacted))
		}
		if at > s.rv {
			return nil, 0, &apiError{code: http.StatusGatewayTimeout, reason: "Timeout", retryAfter: 1,
				message: fmt.Sprintf("Too large resource version: %d, current: %d", at, s.rv)}
		}
		objs, rv = s.snapshot(res, at), at
	}
	var out []keyedObject
	for k, obj := range objs {
		if f.matches(obj) {
			out = append(out, keyedObject{k, obj})
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].key < out[j].key })
	return out, rv, nil
}

// snapshot rebuilds the objects of res as they were at resourceVersion at by
// undoing the logged changes made after it. at must not be older than the
// compaction point. Caller holds s.mu.
func (s *store) snapshot(res *resource, at int64) map[string]map[string]any {
	snap := maps.Clone(s.objects[res])
	for i := len(s.log) - 1; i >= 0 && s.log[i].rv > at; i-- {
		ev := s.log[i]
		if ev.res != res {
			continue
		}
		if ev.prev == nil {
			delete(snap, ev.key)
		} else {
			snap[ev.key] = ev.prev
		}
	}
	return snap
}

// create stores obj, which must carry its name (and namespace if the kind
// is namespaced). The store owns obj afterwards.
func (s *store) create(res *resource, obj map[string]any) (map[string]any, *apiError) {
	s.mu.Lock()
	defer s.mu.Unlock()
	name := stringAt(obj, "metadata.name")
	key := objectKey(res, stringAt(obj, "metadata.namespace"), name)
	if _, exists := s.objects[res][key]; exists {
		return nil, errAlreadyExists(res, name)
	}
	s.commit("ADDED", res, key, obj, nil)
	return obj, nil
}

// update replaces an object with what fn makes of a copy of it. When the
// result equals the stored object nothing is written: no new
// resourceVersion, no event (like the real server's no-op updates). With
// dryRun the result is returned but not stored.
func (s *store) update(res *resource, ns, name string, dryRun bool,
	fn func(cur map[string]any) (map[string]any, *apiError)) (map[string]any, *apiError) {
	s.mu.Lock()
	defer s.mu.Unlock()
	key := objectKey(res, ns, name)
	cur, ok := s.objects[res][key]
	if !ok {
		return nil, errNotFound(res, name)
	}
	next, err := fn(copyObject(cur))
	if err != nil {
		return nil, err
	}
	if jsonEqual(next, cur) {
		return cur, nil
	}
	if dryRun {
		return next, nil
	}
	s.commit("MODIFIED", res, key, next, cur)
	return next, nil
}

// delete removes an object at once (there are no finalizers or grace
// periods) and returns its last state. check, when set, may refuse. With
// dryRun nothing is deleted.
func (s *store) delete(res *resource, ns, name string, dryRun bool,
	check func(cur map[string]any) *apiError) (map[string]any, *apiError) {
	s.mu.Lock()
	defer s.mu.Unlock()
	key := objectKey(res, ns, name)
	cur, ok := s.objects[res][key]
	if !ok {
		return nil, errNotFound(res, name)
	}
	if check != nil {
		if err := check(cur); err != nil {
			return nil, err
		}
	}
	if dryRun {
		return cur, nil
	}
	final := copyObject(cur)
	s.commit("DELETED", res, key, final, cur)
	return final, nil
}

// commit bumps the resourceVersion, stamps obj with it, applies the change,
// logs it and tells the watches. Caller holds s.mu.
func (s *store) commit(typ string, res *resource, key string, obj, prev map[string]any) {
	s.rv++
	metadata(obj)["resourceVersion"] = strconv.FormatInt(s.rv, 10)
	if typ == "DELETED" {
		delete(s.objects[res], key)
	} else {
		s.objects[res][key] = obj
	}
	ev := storedEvent{typ: typ, res: res, key: key, obj: obj, prev: prev, rv: s.rv}
	s.log = append(s.log, ev)
	for w := range s.watchers {
		if w.res != res {
			continue
		}
		if we, ok := translate(ev, w.filter); ok {
			s.deliver(w, we)
		}
	}
}

// deliver queues an event without blocking; a watch that cannot take it is
// closed. Caller holds s.mu.
func (s *store) deliver(w *watcher, we watchEvent) {
	select {
	case w.ch <- we:
	default:
		delete(s.watchers, w)
		w.stop(false)
	}
}

// translate turns a stored change into what a watch with filter f sees: an
// object that starts matching is ADDED, one that stops matching is DELETED
// (with its previous state), as with the real server's watch cache.
func translate(ev storedEvent, f *filter) (watchEvent, bool) {
	newOK := ev.typ != "DELETED" && f.matches(ev.obj)
	oldOK := ev.prev != nil && f.matches(ev.prev)
	switch {
	case ev.typ == "ADDED" && newOK:
		return watchEvent{"ADDED", ev.obj}, true
	case ev.typ == "DELETED" && oldOK:
		return watchEvent{"DELETED", ev.obj}, true
	case ev.typ != "MODIFIED":
		return watchEvent{}, false
	case newOK && oldOK:
		return watchEvent{"MODIFIED", ev.obj}, true
	case newOK:
		return watchEvent{"ADDED", ev.obj}, true
	case oldOK:
		last := copyObject(ev.prev)
		metadata(last)["resourceVersion"] = strconv.FormatInt(ev.rv, 10)
		return watchEvent{"DELETED", last}, true
	default:
		return watchEvent{}, false
	}
}

// watch registers a watch and returns the events it must send first: with
// rv "" or "0" (or sendInitial) an ADDED for every matching object, else the
// logged changes after rv. Registering and collecting happen under one lock,
// so no change falls between the two.
func (s *store) watch(res *resource, f *filter, rv string, sendInitial bool, query string) (*watcher, []watchEvent, *apiError) {
	s.mu.Lock()
	defer s.mu.Unlock()
	var initial []watchEvent
	if sendInitial || rv == "" || rv == "0" {
		var keys []string
		for k, obj := range s.objects[res] {
			if f.matches(obj) {
				keys = append(keys, k)
			}
		}
		sort.Strings(keys)
		for _, k := range keys {
			initial = append(initial, watchEvent{"ADDED", s.objects[res][k]})
		}
		if sendInitial {
			bm := s.bookmark(res)
			metadata(bm.Object)["annotations"] = map[string]any{"k8s.io/initial-events-end": "true"}
			initial = append(initial, bm)
		}
	} else {
		from, err := strconv.ParseInt(rv, 10, 64)
		if err != nil || from < 0 {
			return nil, nil, errorf(http.StatusBadRequest, "invalid resourceVersion %q: must be a non-negative integer", rv)
		}
		if from < s.compacted {
			return nil, nil, errExpired(fmt.Sprintf("too old resource version: %d (%d)", from, s.compacted))
		}
		for _, ev := range s.log {
			if ev.rv <= from || ev.res != res {
				continue
			}
			if we, ok := translate(ev, f); ok {
				initial = append(initial, we)
			}
		}
	}
	w := &watcher{res: res, filter: f, query: query, ch: make(chan watchEvent, s.bufSize), done: make(chan struct{})}
	s.watchers[w] = struct{}{}
	return w, initial, nil
}

// bookmark builds a BOOKMARK event at the current resourceVersion. Caller
// holds s.mu.
func (s *store) bookmark(res *resource) watchEvent {
	return watchEvent{"BOOKMARK", map[string]any{
		"kind": res.kind, "apiVersion": res.apiVersion(),
		"metadata": map[string]any{"resourceVersion": strconv.FormatInt(s.rv, 10)},
	}}
}

// queueBookmark puts a BOOKMARK in the watch's queue. Going through the queue
// under the lock keeps it behind every event it vouches for.
func (s *store) queueBookmark(w *watcher) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if _, open := s.watchers[w]; open {
		s.deliver(w, s.bookmark(w.res))
	}
}

func (s *store) unwatch(w *watcher) {
	s.mu.Lock()
	defer s.mu.Unlock()
	delete(s.watchers, w)
	w.stop(false)
}

// namespaces lists the namespaces that hold objects, and the current
// resourceVersion.
func (s *store) namespaces() ([]string, int64) {
	s.mu.Lock()
	defer s.mu.Unlock()
	seen := map[string]bool{}
	var out []string
	for res, objs := range s.objects {
		if !res.namespaced {
			continue
		}
		for _, obj := range objs {
			if ns := stringAt(obj, "metadata.namespace"); !seen[ns] {
				seen[ns] = true
				out = append(out, ns)
			}
		}
	}
	return out, s.rv
}

// compact moves the compaction point to the current resourceVersion and
// forgets the log up to it.
func (s *store) compact() int64 {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.compacted = s.rv
	// Every logged change is at or before the new compaction point, so no
	// watch or continued list can ask for any of them again.
	s.log = nil
	return s.compacted
}

// closeWatches ends every open watch, abruptly or cleanly, and says how many.
func (s *store) closeWatches(abrupt bool) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	n := len(s.watchers)
	for w := range s.watchers {
		w.stop(abrupt)
	}
	clear(s.watchers)
	return n
}

// stallWatches holds back the output of every open watch for d.
func (s *store) stallWatches(d time.Duration) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	until := time.Now().Add(d).UnixNano()
	for w := range s.watchers {
		w.stallUntil.Store(until)
	}
	return len(s.watchers)
}

// state describes the store for /fake/state.
func (s *store) state() map[string]any {
	s.mu.Lock()
	defer s.mu.Unlock()
	watches := []any{}
	for w := range s.watchers {
		watches = append(watches, map[string]any{
			"resource": w.res.name, "namespace": w.filter.namespace, "query": w.query,
		})
	}
	sort.Slice(watches, func(i, j int) bool {
		a, b := watches[i].(map[string]any), watches[j].(map[string]any)
		return fmt.Sprint(a["resource"], a["namespace"], a["query"]) < fmt.Sprint(b["resource"], b["namespace"], b["query"])
	})
	counts := map[string]any{}
	for r, objs := range s.objects {
		counts[r.name] = len(objs)
	}
	return map[string]any{
		"resourceVersion": strconv.FormatInt(s.rv, 10),
		"compactedAt":     strconv.FormatInt(s.compacted, 10),
		"loggedEvents":    len(s.log),
		"objects":         counts,
		"watches":         watches,
	}
}

// savedStore is DIR/store.json: the objects of every kind, keyed by
// "GROUP/VERSION/RESOURCE" (core kinds: "v1/RESOURCE"), and the
// resourceVersion they are at.
type savedStore struct {
	ResourceVersion string                      `json:"resourceVersion"`
	Objects         map[string][]map[string]any `json:"objects"`
}

func savedKey(r *resource) string { return r.apiVersion() + "/" + r.name }

// save writes every object and the resourceVersion to path (--keep-state).
func (s *store) save(path string) error {
	s.mu.Lock()
	out := savedStore{ResourceVersion: strconv.FormatInt(s.rv, 10), Objects: map[string][]map[string]any{}}
	for res, objs := range s.objects {
		list := []map[string]any{}
		for _, obj := range objs {
			list = append(list, obj)
		}
		out.Objects[savedKey(res)] = list
	}
	data, err := json.Marshal(out)
	s.mu.Unlock()
	if err != nil {
		return err
	}
	return writeFileAtomic(path, data, 0o600)
}

// load reads what save wrote, if the file exists. The change log starts
// empty at the loaded resourceVersion, which becomes the compaction point: a
// watch or continued list from before the restart gets 410.
func (s *store) load(path string) error {
	data, err := os.ReadFile(path)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return err
	}
	var in savedStore
	if err := json.Unmarshal(data, &in); err != nil {
		return err
	}
	rv, err := strconv.ParseInt(in.ResourceVersion, 10, 64)
	if err != nil || rv < 0 {
		return fmt.Errorf("bad resourceVersion %q", in.ResourceVersion)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, res := range resources {
		for _, obj := range in.Objects[savedKey(res)] {
			s.objects[res][objectKey(res, stringAt(obj, "metadata.namespace"), stringAt(obj, "metadata.name"))] = obj
		}
	}
	s.rv, s.compacted, s.log = rv, rv, nil
	return nil
}
