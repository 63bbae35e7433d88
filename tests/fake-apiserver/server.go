// SPDX-License-Identifier: Apache-2.0

// HTTP front end: authentication, fault injection, discovery, and the
// routing of /api/v1 and /apis/GROUP/VERSION paths to the resource handlers
// in handlers.go.

package main

import (
	"crypto/subtle"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"
)

// maxBodyBytes is the request size limit of the real server (3 MiB).
const maxBodyBytes = 3 << 20

type server struct {
	dir              string
	addr             string
	store            *store
	bookmarkInterval time.Duration
	logRequests      bool

	caPEM []byte

	tokenMu sync.Mutex
	token   string // the last non-empty content of DIR/token
	// prevToken stays valid until prevUntil after /fake/rotate-token, like a
	// projected token that the kubelet replaced before it expired.
	prevToken string
	prevUntil time.Time

	// Faults for the next requests (see control): failures, delays, drops.
	// Each applies only to requests whose path starts with its prefix ("" =
	// all), so a test can break the agent's requests and not its own.
	failMu    sync.Mutex
	failCode  int
	failCount int
	failPath  string
	slowDelay time.Duration
	slowCount int
	slowPath  string
	dropCount int
	dropPath  string
}

func (s *server) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	rec := &recorder{ResponseWriter: w}
	if s.logRequests {
		defer func() {
			status := strconv.Itoa(rec.statusOr200())
			p := recover()
			if p != nil {
				status = "aborted"
			}
			log.Printf("%s %s -> %s%s", r.Method, r.URL.RequestURI(), status, rec.note)
			if p != nil {
				panic(p)
			}
		}()
	}
	s.serve(rec, r)
}

func (s *server) serve(w http.ResponseWriter, r *http.Request) {
	path := r.URL.Path

	// Health checks answer without a token, like the real server's.
	switch path {
	case "/healthz", "/livez", "/readyz":
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		_, _ = io.WriteString(w, "ok")
		return
	}

	ok, previous := s.authorized(r)
	if !ok {
		writeError(w, &apiError{code: http.StatusUnauthorized, reason: "Unauthorized", message: "Unauthorized"})
		return
	}
	if rec, isRec := w.(*recorder); isRec && previous {
		rec.note = " (previous token)"
	}

	if strings.HasPrefix(path, "/fake/") {
		s.control(w, r)
		return
	}

	drop, delay, failure := s.takeFaults(path)
	if drop {
		abortStream()
	}
	if delay > 0 {
		timer := time.NewTimer(delay)
		select {
		case <-timer.C:
		case <-r.Context().Done():
			timer.Stop()
			return
		}
	}
	if failure != nil {
		writeError(w, failure)
		return
	}

	switch {
	case path == "/version" || path == "/api" || path == "/apis":
		serveDiscovery(w, r, s.discovery(path))
	case path == "/api/v1" || path == "/api/v1/":
		serveDiscovery(w, r, resourceList("", "v1"))
	case strings.HasPrefix(path, "/api/v1/"):
		s.serveResource(w, r, "", "v1", strings.TrimPrefix(path, "/api/v1/"))
	case strings.HasPrefix(path, "/apis/"):
		s.serveGroup(w, r, strings.TrimPrefix(path, "/apis/"))
	default:
		writeError(w, errNoResource())
	}
}

func errNoResource() *apiError {
	return errorf(http.StatusNotFound, "the server could not find the requested resource")
}

func serveDiscovery(w http.ResponseWriter, r *http.Request, doc any) {
	if r.Method != http.MethodGet {
		writeError(w, errorf(http.StatusMethodNotAllowed, "%s is not supported on %s", r.Method, r.URL.Path))
		return
	}
	writeJSON(w, http.StatusOK, doc)
}

// serveGroup serves /apis/GROUP[/VERSION[/...]] for the API groups in the
// resource table.
func (s *server) serveGroup(w http.ResponseWriter, r *http.Request, rest string) {
	parts := strings.SplitN(strings.TrimSuffix(rest, "/"), "/", 3)
	versions := groupVersionsOf(parts[0])
	if len(versions) == 0 || (len(parts) > 1 && !slices.Contains(versions, parts[1])) {
		writeError(w, errNoResource())
		return
	}
	switch len(parts) {
	case 1:
		serveDiscovery(w, r, apiGroup(parts[0], versions))
	case 2:
		serveDiscovery(w, r, resourceList(parts[0], parts[1]))
	default:
		s.serveResource(w, r, parts[0], parts[1], parts[2])
	}
}

// groupVersionsOf lists the versions the table serves for an API group.
func groupVersionsOf(group string) []string {
	var out []string
	for _, gv := range groupVersions() {
		if g, v, _ := strings.Cut(gv, "/"); g == group {
			out = append(out, v)
		}
	}
	return out
}

func apiGroup(group string, versions []string) map[string]any {
	var vs []any
	for _, v := range versions {
		vs = append(vs, map[string]any{"groupVersion": group + "/" + v, "version": v})
	}
	return map[string]any{
		"kind": "APIGroup", "apiVersion": "v1", "name": group, "versions": vs, "preferredVersion": vs[0],
	}
}

func resourceList(group, version string) map[string]any {
	gv := version
	if group != "" {
		gv = group + "/" + version
	}
	return map[string]any{
		"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": gv,
		"resources": discoveryResources(group, version),
	}
}

// authorized checks the bearer token against DIR/token, read afresh on every
// request so that tests can rotate it (a token written there by the test
// replaces the old one at once). A missing or empty file keeps the last
// token seen. After /fake/rotate-token the previous token is also accepted
// until its grace period ends; previous says that it was that one.
func (s *server) authorized(r *http.Request) (ok, previous bool) {
	scheme, got, found := strings.Cut(r.Header.Get("Authorization"), " ")
	if !found || !strings.EqualFold(scheme, "Bearer") {
		return false, false
	}
	want := s.currentToken()
	got = strings.TrimSpace(got)
	if want != "" && subtle.ConstantTimeCompare([]byte(got), []byte(want)) == 1 {
		return true, false
	}
	s.tokenMu.Lock()
	prev, until := s.prevToken, s.prevUntil
	s.tokenMu.Unlock()
	ok = prev != "" && time.Now().Before(until) && subtle.ConstantTimeCompare([]byte(got), []byte(prev)) == 1
	return ok, ok
}

// rotateToken makes a new random token, writes it to DIR/token and
// DIR/kubeconfig, and keeps the old one valid for grace.
func (s *server) rotateToken(grace time.Duration) error {
	old := s.currentToken()
	var b [32]byte
	mustRandom(b[:])
	token := hex.EncodeToString(b[:])
	s.tokenMu.Lock()
	defer s.tokenMu.Unlock()
	if err := writeFileAtomic(filepath.Join(s.dir, "token"), []byte(token+"\n"), 0o600); err != nil {
		return err
	}
	if err := writeFileAtomic(filepath.Join(s.dir, "kubeconfig"), kubeconfig(s.addr, s.caPEM, token), 0o600); err != nil {
		return err
	}
	s.token, s.prevToken, s.prevUntil = token, old, time.Now().Add(grace)
	return nil
}

func (s *server) currentToken() string {
	data, err := os.ReadFile(filepath.Join(s.dir, "token"))
	s.tokenMu.Lock()
	defer s.tokenMu.Unlock()
	if err == nil {
		if t := strings.TrimSpace(string(data)); t != "" {
			s.token = t
		}
	}
	return s.token
}

// takeFaults consumes the injected faults pending for one request to path:
// whether to drop its connection, how long to delay it, and the failure to
// answer.
func (s *server) takeFaults(path string) (drop bool, delay time.Duration, failure *apiError) {
	s.failMu.Lock()
	defer s.failMu.Unlock()
	if s.dropCount > 0 && strings.HasPrefix(path, s.dropPath) {
		s.dropCount--
		return true, 0, nil
	}
	if s.slowCount > 0 && strings.HasPrefix(path, s.slowPath) {
		s.slowCount--
		delay = s.slowDelay
	}
	if s.failCount <= 0 || !strings.HasPrefix(path, s.failPath) {
		return false, delay, nil
	}
	s.failCount--
	failure = errorf(s.failCode, "injected failure %d (fake-apiserver /fake/fail)", s.failCode)
	if s.failCode == http.StatusTooManyRequests || s.failCode == http.StatusServiceUnavailable {
		failure.retryAfter = 1
	}
	return false, delay, failure
}

// countParam reads a non-negative count query parameter (default 1).
func countParam(q url.Values) (int, *apiError) {
	v := q.Get("count")
	if v == "" {
		return 1, nil
	}
	n, err := strconv.Atoi(v)
	if err != nil || n < 0 {
		return 0, errorf(http.StatusBadRequest, "count must be a non-negative integer, got %q", v)
	}
	return n, nil
}

// secondsParam reads a duration in seconds from name, within (0, max] (or
// [0, max] when zero is allowed).
func secondsParam(q url.Values, name string, zeroOK bool, max float64) (time.Duration, *apiError) {
	secs, err := strconv.ParseFloat(q.Get(name), 64)
	if err != nil || secs < 0 || (secs == 0 && !zeroOK) || secs > max {
		return 0, errorf(http.StatusBadRequest, "%s must be a number of seconds up to %g, got %q", name, max, q.Get(name))
	}
	return time.Duration(secs * float64(time.Second)), nil
}

// control serves the /fake/ endpoints that tests use to inject faults.
func (s *server) control(w http.ResponseWriter, r *http.Request) {
	q := r.URL.Query()
	if r.URL.Path == "/fake/state" {
		if r.Method != http.MethodGet {
			writeError(w, errorf(http.StatusMethodNotAllowed, "use GET for /fake/state"))
			return
		}
		st := s.store.state()
		s.failMu.Lock()
		st["fail"] = map[string]any{"code": s.failCode, "count": s.failCount}
		st["slow"] = map[string]any{"seconds": s.slowDelay.Seconds(), "count": s.slowCount}
		st["drop"] = map[string]any{"count": s.dropCount}
		s.failMu.Unlock()
		s.tokenMu.Lock()
		st["previousTokenValid"] = s.prevToken != "" && time.Now().Before(s.prevUntil)
		s.tokenMu.Unlock()
		writeJSON(w, http.StatusOK, st)
		return
	}
	if r.Method != http.MethodPost {
		writeError(w, errorf(http.StatusMethodNotAllowed, "use POST for %s", r.URL.Path))
		return
	}
	switch r.URL.Path {
	case "/fake/compact":
		rv := s.store.compact()
		writeJSON(w, http.StatusOK, map[string]any{"compactedAt": strconv.FormatInt(rv, 10)})
	case "/fake/drop-watches":
		writeJSON(w, http.StatusOK, map[string]any{"dropped": s.store.closeWatches(true)})
	case "/fake/stall-watches":
		d, e := secondsParam(q, "seconds", false, 3600)
		if e != nil {
			writeError(w, e)
			return
		}
		n := s.store.stallWatches(d)
		writeJSON(w, http.StatusOK, map[string]any{"stalled": n, "seconds": d.Seconds()})
	case "/fake/slow":
		d, e := secondsParam(q, "seconds", true, 600)
		count, ce := countParam(q)
		if e == nil {
			e = ce
		}
		if e != nil {
			writeError(w, e)
			return
		}
		s.failMu.Lock()
		s.slowDelay, s.slowCount, s.slowPath = d, count, q.Get("path")
		s.failMu.Unlock()
		writeJSON(w, http.StatusOK, map[string]any{"seconds": d.Seconds(), "count": count})
	case "/fake/drop-requests":
		count, e := countParam(q)
		if e != nil {
			writeError(w, e)
			return
		}
		s.failMu.Lock()
		s.dropCount, s.dropPath = count, q.Get("path")
		s.failMu.Unlock()
		writeJSON(w, http.StatusOK, map[string]any{"count": count})
	case "/fake/rotate-token":
		grace := time.Duration(0)
		if q.Get("grace") != "" {
			var e *apiError
			if grace, e = secondsParam(q, "grace", true, 86400); e != nil {
				writeError(w, e)
				return
			}
		}
		if err := s.rotateToken(grace); err != nil {
			writeError(w, errorf(http.StatusInternalServerError, "rotating the token: %v", err))
			return
		}
		writeJSON(w, http.StatusOK, map[string]any{"rotated": true, "graceSeconds": grace.Seconds()})
	case "/fake/fail":
		code, err := strconv.Atoi(q.Get("code"))
		if err != nil || code < 400 || code > 599 {
			writeError(w, errorf(http.StatusBadRequest, "code must be an HTTP error code (400-599), got %q", q.Get("code")))
			return
		}
		count, e := countParam(q)
		if e != nil {
			writeError(w, e)
			return
		}
		s.failMu.Lock()
		s.failCode, s.failCount, s.failPath = code, count, q.Get("path")
		s.failMu.Unlock()
		writeJSON(w, http.StatusOK, map[string]any{"code": code, "count": count})
	default:
		writeError(w, errorf(http.StatusNotFound, "no control endpoint %s", r.URL.Path))
	}
}

func (s *server) discovery(path string) any {
	switch path {
	case "/version":
		return map[string]any{
			"major": "1", "minor": "32", "gitVersion": "v1.32.0",
			"gitCommit": "0000000000000000000000000000000000000000", "gitTreeState": "clean",
			"buildDate": "2024-12-11T00:00:00Z", "goVersion": runtime.Version(), "compiler": "gc",
			"platform": runtime.GOOS + "/" + runtime.GOARCH,
		}
	case "/api":
		return map[string]any{
			"kind": "APIVersions", "versions": []string{"v1"},
			"serverAddressByClientCIDRs": []any{map[string]any{"clientCIDR": "0.0.0.0/0", "serverAddress": s.addr}},
		}
	default: // "/apis"
		groups := []any{}
		seen := map[string]bool{}
		for _, gv := range groupVersions() {
			g, _, _ := strings.Cut(gv, "/")
			if !seen[g] {
				seen[g] = true
				groups = append(groups, apiGroup(g, groupVersionsOf(g)))
			}
		}
		return map[string]any{"kind": "APIGroupList", "apiVersion": "v1", "groups": groups}
	}
}

// target is what a resource path names.
type target struct {
	res       *resource
	ns        string // "" for cluster-scoped kinds and for all namespaces
	name      string // "" for a collection
	sub       string // "" or a subresource
	watchPath bool   // the deprecated .../watch/... form
}

// parseTarget reads the part of a path after /api/v1/ or /apis/GROUP/VERSION/.
func parseTarget(group, version, rest string) (target, *apiError) {
	notFound := errNoResource()
	var t target
	segs := strings.Split(strings.TrimSuffix(rest, "/"), "/")
	if segs[0] == "watch" {
		t.watchPath, segs = true, segs[1:]
	}
	if len(segs) >= 3 && segs[0] == "namespaces" {
		t.ns = segs[1]
		if t.res = lookupResource(group, version, segs[2]); t.res == nil || !t.res.namespaced || t.ns == "" {
			return t, notFound
		}
		segs = segs[3:]
	} else {
		if len(segs) == 0 {
			return t, notFound
		}
		if t.res = lookupResource(group, version, segs[0]); t.res == nil || (t.res.namespaced && len(segs) > 1) {
			return t, notFound
		}
		segs = segs[1:]
	}
	switch len(segs) {
	case 0:
	case 1:
		t.name = segs[0]
	case 2:
		t.name, t.sub = segs[0], segs[1]
		if !t.res.hasSubresource(t.sub) || t.watchPath {
			return t, notFound
		}
	default:
		return t, notFound
	}
	if t.name == "" && len(segs) > 0 {
		return t, notFound
	}
	return t, nil
}

func (s *server) serveResource(w http.ResponseWriter, r *http.Request, group, version, rest string) {
	if group == "" && (rest == "namespaces" || strings.HasPrefix(rest, "namespaces/")) {
		if name := strings.TrimPrefix(strings.TrimPrefix(rest, "namespaces"), "/"); !strings.Contains(name, "/") {
			s.serveNamespace(w, r, name)
			return
		}
	}
	t, err := parseTarget(group, version, rest)
	if err != nil {
		writeError(w, err)
		return
	}
	q := r.URL.Query()
	watch := t.watchPath || isTrue(q.Get("watch"))
	if watch && r.Method != http.MethodGet {
		writeError(w, errorf(http.StatusMethodNotAllowed, "watch needs GET"))
		return
	}
	switch {
	case t.name == "" && r.Method == http.MethodGet && watch:
		s.serveWatch(w, r, t)
	case t.name == "" && r.Method == http.MethodGet:
		s.serveList(w, r, t)
	case t.name == "" && r.Method == http.MethodPost:
		s.serveCreate(w, r, t)
	case t.name != "" && r.Method == http.MethodGet && watch && t.sub == "":
		s.serveWatch(w, r, t)
	case t.name != "" && r.Method == http.MethodGet:
		s.serveGet(w, t)
	case t.name != "" && r.Method == http.MethodPut:
		s.serveUpdate(w, r, t)
	case t.name != "" && r.Method == http.MethodPatch:
		s.servePatch(w, r, t)
	case t.name != "" && r.Method == http.MethodDelete && t.sub == "":
		s.serveDelete(w, r, t)
	default:
		writeError(w, errorf(http.StatusMethodNotAllowed, "%s is not supported on %s", r.Method, r.URL.Path))
	}
}

func isTrue(v string) bool { return v == "true" || v == "1" }

// readBody reads the request body up to the size limit.
func readBody(w http.ResponseWriter, r *http.Request) ([]byte, *apiError) {
	data, err := io.ReadAll(http.MaxBytesReader(w, r.Body, maxBodyBytes))
	if err != nil {
		var tooBig *http.MaxBytesError
		if errors.As(err, &tooBig) {
			return nil, errorf(http.StatusRequestEntityTooLarge, "request body larger than %d bytes", maxBodyBytes)
		}
		return nil, errorf(http.StatusBadRequest, "reading the request body: %v", err)
	}
	return data, nil
}

func writeJSON(w http.ResponseWriter, code int, v any) {
	data, err := json.Marshal(v)
	if err != nil {
		code = http.StatusInternalServerError
		data, _ = json.Marshal(errorf(code, "encoding the response: %v", err).status())
	}
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	_, _ = w.Write(append(data, '\n'))
}

func writeError(w http.ResponseWriter, e *apiError) {
	if e.retryAfter > 0 {
		w.Header().Set("Retry-After", strconv.Itoa(e.retryAfter))
	}
	writeJSON(w, e.code, e.status())
}

// recorder remembers the status code for the request log.
type recorder struct {
	http.ResponseWriter
	status int
	note   string // appended to the request log line
}

func (r *recorder) WriteHeader(code int) {
	if r.status == 0 {
		r.status = code
	}
	r.ResponseWriter.WriteHeader(code)
}

func (r *recorder) Write(b []byte) (int, error) {
	if r.status == 0 {
		r.status = http.StatusOK
	}
	return r.ResponseWriter.Write(b)
}

// Unwrap lets http.ResponseController reach the real writer's Flush.
func (r *recorder) Unwrap() http.ResponseWriter { return r.ResponseWriter }

func (r *recorder) statusOr200() int {
	if r.status == 0 {
		return http.StatusOK
	}
	return r.status
}

// abortStream breaks the connection under a response in progress: net/http
// recovers this panic silently and closes the connection (HTTP/1.1) or
// resets the stream (HTTP/2) without ending the body cleanly.
func abortStream() {
	panic(http.ErrAbortHandler)
}

// builtinNamespaces are listed even when they hold nothing.
var builtinNamespaces = []string{"default", "kube-node-lease", "kube-public", "kube-system"}

// serveNamespace answers GET on namespaces. Namespaces are not stored: every
// validly named namespace exists (objects can be created in any of them),
// and the list shows the built-in ones plus those that hold objects. kubectl
// looks a namespace up to word its "not found" errors.
func (s *server) serveNamespace(w http.ResponseWriter, r *http.Request, name string) {
	if r.Method != http.MethodGet || isTrue(r.URL.Query().Get("watch")) {
		writeError(w, errorf(http.StatusMethodNotAllowed, "namespaces support only get and list in the fake API server"))
		return
	}
	namespace := func(n string) map[string]any {
		return map[string]any{
			"kind": "Namespace", "apiVersion": "v1", "metadata": map[string]any{"name": n},
			"spec": map[string]any{"finalizers": []any{"kubernetes"}}, "status": map[string]any{"phase": "Active"},
		}
	}
	if name != "" {
		if !validNamespace(name) {
			writeError(w, &apiError{code: http.StatusNotFound, reason: "NotFound", name: name, kind: "namespaces",
				message: fmt.Sprintf("namespaces %q not found", name)})
			return
		}
		writeJSON(w, http.StatusOK, namespace(name))
		return
	}
	names, rv := s.store.namespaces()
	for _, n := range builtinNamespaces {
		if !slices.Contains(names, n) {
			names = append(names, n)
		}
	}
	slices.Sort(names)
	items := []any{}
	for _, n := range names {
		ns := namespace(n)
		delete(ns, "kind")
		delete(ns, "apiVersion")
		items = append(items, ns)
	}
	writeJSON(w, http.StatusOK, map[string]any{
		"kind": "NamespaceList", "apiVersion": "v1",
		"metadata": map[string]any{"resourceVersion": strconv.FormatInt(rv, 10)}, "items": items,
	})
}
