// SPDX-License-Identifier: Apache-2.0

// The resource verbs: list (with pagination), watch, get, create, update
// (PUT), patch and delete, generic over the resource table. The status
// subresource changes only .status; the main resource ignores changes to
// .status, as the real server does for kinds that have the subresource.

package main

import (
	"encoding/base64"
	"encoding/json"
	"fmt"
	"mime"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"
)

// buildFilter parses the selectors of a list or watch request. A request on
// a named object (a watch of one object) also filters on its name.
func buildFilter(t target, q url.Values) (*filter, *apiError) {
	f := &filter{namespace: t.ns}
	var err error
	if f.fields, err = parseFieldSelector(t.res, q.Get("fieldSelector")); err != nil {
		return nil, errorf(http.StatusBadRequest, "invalid fieldSelector: %v", err)
	}
	if f.labels, err = parseLabelSelector(q.Get("labelSelector")); err != nil {
		return nil, errorf(http.StatusBadRequest, "invalid labelSelector: %v", err)
	}
	if t.name != "" {
		f.fields = append(f.fields, fieldReq{key: "metadata.name", value: t.name})
	}
	return f, nil
}

// continueToken is the opaque state behind a list's metadata.continue: the
// resourceVersion of the first page (later pages show the same snapshot) and
// the key of the last object returned.
type continueToken struct {
	Version string `json:"v"`
	RV      int64  `json:"rv"`
	Start   string `json:"start"`
}

const continueVersion = "fake-apiserver/1"

func encodeContinue(rv int64, start string) string {
	data, _ := json.Marshal(continueToken{Version: continueVersion, RV: rv, Start: start})
	return base64.RawURLEncoding.EncodeToString(data)
}

func decodeContinue(s string) (continueToken, error) {
	var tok continueToken
	data, err := base64.RawURLEncoding.DecodeString(s)
	if err == nil {
		err = json.Unmarshal(data, &tok)
	}
	if err == nil && (tok.Version != continueVersion || tok.RV <= 0) {
		err = fmt.Errorf("unknown token version")
	}
	return tok, err
}

func (s *server) serveList(w http.ResponseWriter, r *http.Request, t target) {
	q := r.URL.Query()
	f, apiErr := buildFilter(t, q)
	if apiErr != nil {
		writeError(w, apiErr)
		return
	}
	limit := 0
	if v := q.Get("limit"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n < 0 {
			writeError(w, errorf(http.StatusBadRequest, "limit must be a non-negative integer, got %q", v))
			return
		}
		limit = n
	}

	// 1. Which snapshot: a continued list keeps the first page's, an exact
	//    resourceVersion asks for an old one, anything else gets the latest.
	var at int64
	var start string
	cont := q.Get("continue")
	switch rv, match := q.Get("resourceVersion"), q.Get("resourceVersionMatch"); {
	case cont != "":
		if rv != "" {
			writeError(w, errorf(http.StatusBadRequest, "specifying resourceVersion is not allowed when using continue"))
			return
		}
		tok, err := decodeContinue(cont)
		if err != nil {
			writeError(w, errorf(http.StatusBadRequest, "continue key is not valid: %v", err))
			return
		}
		at, start = tok.RV, tok.Start
	case match == "Exact":
		n, err := strconv.ParseInt(rv, 10, 64)
		if err != nil || n <= 0 {
			writeError(w, errorf(http.StatusBadRequest, "resourceVersionMatch=Exact needs a positive resourceVersion, got %q", rv))
			return
		}
		at = n
	case match != "" && match != "NotOlderThan":
		writeError(w, errorf(http.StatusBadRequest, "unsupported resourceVersionMatch %q", match))
		return
	}
	items, rv, apiErr := s.store.list(t.res, f, at)
	if apiErr != nil {
		if cont != "" && apiErr.code == http.StatusGone {
			apiErr.message = "The provided continue parameter is too old to display a consistent list " +
				"result. You can start a new list without the continue parameter."
		}
		writeError(w, apiErr)
		return
	}

	// 2. The page: the objects after the continue key, up to limit.
	if start != "" {
		i := 0
		for i < len(items) && items[i].key <= start {
			i++
		}
		items = items[i:]
	}
	meta := map[string]any{"resourceVersion": strconv.FormatInt(rv, 10)}
	if limit > 0 && len(items) > limit {
		meta["continue"] = encodeContinue(rv, items[limit-1].key)
		if len(f.fields) == 0 && len(f.labels) == 0 {
			meta["remainingItemCount"] = len(items) - limit
		}
		items = items[:limit]
	}

	// 3. List items carry no kind or apiVersion, as in the real server's lists.
	out := make([]any, 0, len(items))
	for _, it := range items {
		item := make(map[string]any, len(it.obj))
		for k, v := range it.obj {
			if k != "kind" && k != "apiVersion" {
				item[k] = v
			}
		}
		out = append(out, item)
	}
	writeJSON(w, http.StatusOK, map[string]any{
		"kind": t.res.kind + "List", "apiVersion": t.res.apiVersion(), "metadata": meta, "items": out,
	})
}

// serveWatch streams watch events as JSON lines, flushing after each.
func (s *server) serveWatch(w http.ResponseWriter, r *http.Request, t target) {
	q := r.URL.Query()
	f, apiErr := buildFilter(t, q)
	if apiErr != nil {
		writeError(w, apiErr)
		return
	}
	var timeout time.Duration
	if v := q.Get("timeoutSeconds"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n < 0 {
			writeError(w, errorf(http.StatusBadRequest, "timeoutSeconds must be a non-negative integer, got %q", v))
			return
		}
		timeout = time.Duration(n) * time.Second
	}
	bookmarks := isTrue(q.Get("allowWatchBookmarks"))
	sendInitial := isTrue(q.Get("sendInitialEvents"))
	if sendInitial && (!bookmarks || q.Get("resourceVersionMatch") != "NotOlderThan") {
		writeError(w, errorf(http.StatusBadRequest,
			"sendInitialEvents needs allowWatchBookmarks=true and resourceVersionMatch=NotOlderThan"))
		return
	}

	// 1. Register, and learn what to replay. A resourceVersion from before
	//    the compaction point is answered like the real server does it:
	//    HTTP 200, then a single ERROR event holding a 410 Status.
	wt, initial, apiErr := s.store.watch(t.res, f, q.Get("resourceVersion"), sendInitial, r.URL.RawQuery)
	if apiErr != nil && apiErr.code != http.StatusGone {
		writeError(w, apiErr)
		return
	}
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(http.StatusOK)
	rc := http.NewResponseController(w)
	send := func(ev watchEvent) error {
		data, err := json.Marshal(ev)
		if err != nil {
			return err
		}
		if _, err := w.Write(append(data, '\n')); err != nil {
			return err
		}
		return rc.Flush()
	}
	if apiErr != nil {
		_ = send(watchEvent{Type: "ERROR", Object: apiErr.status()})
		return
	}
	defer s.store.unwatch(wt)
	if err := rc.Flush(); err != nil {
		return
	}

	// 2. Replay.
	for _, ev := range initial {
		if send(ev) != nil {
			return
		}
	}

	// 3. Live events, bookmarks, and the end of the stream.
	var ticks <-chan time.Time
	if bookmarks && s.bookmarkInterval > 0 {
		ticker := time.NewTicker(s.bookmarkInterval)
		defer ticker.Stop()
		ticks = ticker.C
	}
	var deadline <-chan time.Time
	if timeout > 0 {
		timer := time.NewTimer(timeout)
		defer timer.Stop()
		deadline = timer.C
	}
	ctx := r.Context()
	var pending *watchEvent
	for {
		if !holdWhileStalled(r, wt) {
			return
		}
		if pending != nil {
			if send(*pending) != nil {
				return
			}
			pending = nil
			continue
		}
		select {
		case ev := <-wt.ch:
			pending = &ev
		case <-ticks:
			s.store.queueBookmark(wt)
		case <-deadline:
			return
		case <-ctx.Done():
			return
		case <-wt.done:
			if wt.abrupt.Load() {
				abortStream()
			}
			return
		}
	}
}

// holdWhileStalled waits out a /fake/stall-watches period, during which the
// stream sends nothing at all, not even its end. /fake/drop-watches still
// breaks it. It returns false if the client went away.
func holdWhileStalled(r *http.Request, wt *watcher) bool {
	done := wt.done
	for {
		d := time.Until(time.Unix(0, wt.stallUntil.Load()))
		if d <= 0 {
			return true
		}
		timer := time.NewTimer(d)
		select {
		case <-timer.C:
		case <-r.Context().Done():
			timer.Stop()
			return false
		case <-done:
			timer.Stop()
			if wt.abrupt.Load() {
				abortStream()
			}
			done = nil // closed cleanly: finish the stall first
		}
	}
}

func (s *server) serveGet(w http.ResponseWriter, t target) {
	obj, err := s.store.get(t.res, t.ns, t.name)
	if err != nil {
		writeError(w, err)
		return
	}
	writeJSON(w, http.StatusOK, obj)
}

// dryRun reports whether the request asks for a dry run (only "All" exists).
func dryRun(q url.Values) (bool, *apiError) {
	for _, v := range q["dryRun"] {
		if v != "All" {
			return false, errorf(http.StatusBadRequest, "unsupported dryRun value %q (only All)", v)
		}
	}
	return len(q["dryRun"]) > 0, nil
}

// readObject reads a request body holding an object of the target's kind.
func readObject(w http.ResponseWriter, r *http.Request, res *resource) (map[string]any, *apiError) {
	data, apiErr := readBody(w, r)
	if apiErr != nil {
		return nil, apiErr
	}
	obj, err := decodeObject(data)
	if err != nil {
		return nil, errorf(http.StatusBadRequest, "%v", err)
	}
	if k, ok := obj["kind"]; ok && k != res.kind {
		return nil, errorf(http.StatusBadRequest, "the object's kind %v does not match the resource %s (kind %s)", k, res.name, res.kind)
	}
	if v, ok := obj["apiVersion"]; ok && v != res.apiVersion() {
		return nil, errorf(http.StatusBadRequest, "the object's apiVersion %v does not match the resource %s (%s)", v, res.name, res.apiVersion())
	}
	if md, ok := obj["metadata"]; ok {
		if _, isObj := md.(map[string]any); !isObj {
			return nil, errorf(http.StatusBadRequest, "metadata must be an object, got %s", jsonType(md))
		}
		for _, k := range []string{"name", "namespace", "generateName", "resourceVersion", "uid"} {
			if v, ok := md.(map[string]any)[k]; ok && v != nil {
				if _, isStr := v.(string); !isStr {
					return nil, errorf(http.StatusBadRequest, "metadata.%s must be a string, got %s", k, jsonType(v))
				}
			}
		}
	}
	return obj, nil
}

func (s *server) serveCreate(w http.ResponseWriter, r *http.Request, t target) {
	res := t.res
	if res.namespaced && t.ns == "" {
		writeError(w, errorf(http.StatusMethodNotAllowed, "create %s under namespaces/{namespace}/%s", res.name, res.name))
		return
	}
	dry, apiErr := dryRun(r.URL.Query())
	if apiErr != nil {
		writeError(w, apiErr)
		return
	}
	obj, apiErr := readObject(w, r, res)
	if apiErr != nil {
		writeError(w, apiErr)
		return
	}

	// 1. Name and namespace.
	md := metadata(obj)
	name := stringAt(obj, "metadata.name")
	if name == "" {
		gen := stringAt(obj, "metadata.generateName")
		if gen == "" {
			writeError(w, errInvalid(res, "", "metadata.name", "Required value: name or generateName is required"))
			return
		}
		name = gen + randomSuffix()
	}
	if !validName(name) {
		writeError(w, errInvalid(res, name, "metadata.name", fmt.Sprintf("Invalid value: %q: %s", name, invalidNameDetail)))
		return
	}
	if res.namespaced {
		if ns := stringAt(obj, "metadata.namespace"); ns != "" && ns != t.ns {
			writeError(w, errorf(http.StatusBadRequest,
				"the namespace of the provided object (%s) does not match the namespace sent on the request (%s)", ns, t.ns))
			return
		}
		if !validNamespace(t.ns) {
			writeError(w, errInvalid(res, name, "metadata.namespace", fmt.Sprintf("Invalid value: %q: not a valid namespace name", t.ns)))
			return
		}
		md["namespace"] = t.ns
	} else {
		delete(md, "namespace")
	}

	// 2. What the server fills in.
	md["name"] = name
	md["uid"] = newUUID()
	md["creationTimestamp"] = time.Now().UTC().Format(time.RFC3339)
	delete(md, "resourceVersion")
	obj["kind"], obj["apiVersion"] = res.kind, res.apiVersion()
	if res.defaults != nil {
		res.defaults(obj)
	}

	// 3. Store.
	if dry {
		writeJSON(w, http.StatusCreated, obj)
		return
	}
	stored, apiErr := s.store.create(res, obj)
	if apiErr != nil {
		writeError(w, apiErr)
		return
	}
	writeJSON(w, http.StatusCreated, stored)
}

// serveUpdate replaces an object (PUT). On the main resource the status is
// kept; on /status only the status is taken. A resourceVersion in the body
// must match the stored one.
func (s *server) serveUpdate(w http.ResponseWriter, r *http.Request, t target) {
	dry, apiErr := dryRun(r.URL.Query())
	if apiErr != nil {
		writeError(w, apiErr)
		return
	}
	obj, apiErr := readObject(w, r, t.res)
	if apiErr != nil {
		writeError(w, apiErr)
		return
	}
	if n := stringAt(obj, "metadata.name"); n != "" && n != t.name {
		writeError(w, errorf(http.StatusBadRequest, "the name of the object (%s) does not match the name on the URL (%s)", n, t.name))
		return
	}
	if ns := stringAt(obj, "metadata.namespace"); t.res.namespaced && ns != "" && ns != t.ns {
		writeError(w, errorf(http.StatusBadRequest,
			"the namespace of the provided object (%s) does not match the namespace sent on the request (%s)", ns, t.ns))
		return
	}
	wantRV := stringAt(obj, "metadata.resourceVersion")
	updated, apiErr := s.store.update(t.res, t.ns, t.name, dry, func(cur map[string]any) (map[string]any, *apiError) {
		if wantRV != "" && wantRV != stringAt(cur, "metadata.resourceVersion") {
			return nil, errConflict(t.res, t.name)
		}
		return s.finish(t, cur, obj), nil
	})
	if apiErr != nil {
		writeError(w, apiErr)
		return
	}
	writeJSON(w, http.StatusOK, updated)
}

// finish builds the object to store from the current one and the one the
// client asked for: only the status on /status, everything but the status
// otherwise; identity fields always come from the current object.
func (s *server) finish(t target, cur, asked map[string]any) map[string]any {
	var next map[string]any
	if t.sub == "status" {
		next = cur
		if st, ok := asked["status"]; ok {
			next["status"] = st
		} else {
			delete(next, "status")
		}
	} else {
		// Kinds without a status subresource change their status here.
		next = asked
		if t.res.hasSubresource("status") {
			if st, ok := cur["status"]; ok {
				next["status"] = st
			} else {
				delete(next, "status")
			}
		}
	}
	next["kind"], next["apiVersion"] = t.res.kind, t.res.apiVersion()
	md, curMD := metadata(next), child(cur, "metadata")
	for _, k := range []string{"name", "namespace", "uid", "creationTimestamp", "resourceVersion"} {
		if v, ok := curMD[k]; ok {
			md[k] = v
		} else {
			delete(md, k)
		}
	}
	return next
}

const (
	mergePatchType     = "application/merge-patch+json"
	strategicPatchType = "application/strategic-merge-patch+json"
	jsonPatchType      = "application/json-patch+json"
	applyPatchType     = "application/apply-patch+yaml"
)

func (s *server) servePatch(w http.ResponseWriter, r *http.Request, t target) {
	// 1. The patch format, from the Content-Type.
	ct, _, _ := mime.ParseMediaType(r.Header.Get("Content-Type"))
	switch ct {
	case mergePatchType, strategicPatchType, jsonPatchType:
	case applyPatchType:
		writeError(w, errorf(http.StatusUnsupportedMediaType, "server-side apply (%s) is not supported by the fake API server", ct))
		return
	default:
		writeError(w, errorf(http.StatusUnsupportedMediaType,
			"the body of the request was in an unknown format (%q) - accepted media types include: %s, %s, %s",
			ct, jsonPatchType, mergePatchType, strategicPatchType))
		return
	}
	dry, apiErr := dryRun(r.URL.Query())
	if apiErr != nil {
		writeError(w, apiErr)
		return
	}

	// 2. The patch document.
	data, apiErr := readBody(w, r)
	if apiErr != nil {
		writeError(w, apiErr)
		return
	}
	patch, err := decodeJSON(data)
	if err != nil {
		writeError(w, errorf(http.StatusBadRequest, "invalid patch: %v", err))
		return
	}
	patchObj, isObj := patch.(map[string]any)
	if ct != jsonPatchType && !isObj {
		writeError(w, errorf(http.StatusBadRequest, "invalid patch: a %s patch must be a JSON object, got %s", ct, jsonType(patch)))
		return
	}

	// 3. Apply it to the current object, under the store's lock.
	updated, apiErr := s.store.update(t.res, t.ns, t.name, dry, func(cur map[string]any) (map[string]any, *apiError) {
		var patched any
		var err error
		switch ct {
		case mergePatchType:
			patched = mergePatch(cur, patchObj)
		case strategicPatchType:
			patched, err = strategicMerge(t.res, cur, patchObj, "")
			if m, _ := patched.(map[string]any); m == nil && err == nil {
				err = notApplicable("a patch cannot delete the whole object")
			}
		default:
			patched, err = jsonPatch(cur, patch)
		}
		if err != nil {
			if pe, ok := err.(*patchError); ok && pe.badRequest {
				return nil, errorf(http.StatusBadRequest, "invalid patch: %v", err)
			}
			return nil, errInvalid(t.res, t.name, "patch", err.Error())
		}
		next, ok := patched.(map[string]any)
		if !ok {
			return nil, errInvalid(t.res, t.name, "patch", "the patched document is not an object")
		}
		// A patch may carry the resourceVersion it was made from (optimistic
		// concurrency); a stale one is a conflict.
		if rv := stringAt(next, "metadata.resourceVersion"); rv != "" && rv != stringAt(cur, "metadata.resourceVersion") {
			return nil, errConflict(t.res, t.name)
		}
		return s.finish(t, cur, next), nil
	})
	if apiErr != nil {
		writeError(w, apiErr)
		return
	}
	writeJSON(w, http.StatusOK, updated)
}

// serveDelete removes an object at once. A DeleteOptions body is accepted;
// its preconditions are honoured, everything else in it is ignored.
func (s *server) serveDelete(w http.ResponseWriter, r *http.Request, t target) {
	dry, apiErr := dryRun(r.URL.Query())
	if apiErr != nil {
		writeError(w, apiErr)
		return
	}
	if v := r.URL.Query().Get("gracePeriodSeconds"); v != "" {
		if _, err := strconv.ParseInt(v, 10, 64); err != nil {
			writeError(w, errorf(http.StatusBadRequest, "gracePeriodSeconds must be an integer, got %q", v))
			return
		}
	}
	data, apiErr := readBody(w, r)
	if apiErr != nil {
		writeError(w, apiErr)
		return
	}
	var wantUID, wantRV string
	if strings.TrimSpace(string(data)) != "" {
		opts, err := decodeObject(data)
		if err != nil {
			writeError(w, errorf(http.StatusBadRequest, "invalid DeleteOptions: %v", err))
			return
		}
		wantUID, wantRV = stringAt(opts, "preconditions.uid"), stringAt(opts, "preconditions.resourceVersion")
	}
	deleted, apiErr := s.store.delete(t.res, t.ns, t.name, dry, func(cur map[string]any) *apiError {
		if uid := stringAt(cur, "metadata.uid"); wantUID != "" && wantUID != uid {
			e := errConflict(t.res, t.name)
			e.message = fmt.Sprintf("Precondition failed: UID in precondition: %s, UID in object meta: %s", wantUID, uid)
			return e
		}
		if rv := stringAt(cur, "metadata.resourceVersion"); wantRV != "" && wantRV != rv {
			e := errConflict(t.res, t.name)
			e.message = fmt.Sprintf("Precondition failed: ResourceVersion in precondition: %s, ResourceVersion in object meta: %s", wantRV, rv)
			return e
		}
		return nil
	})
	if apiErr != nil {
		writeError(w, apiErr)
		return
	}
	writeJSON(w, http.StatusOK, deleted)
}
