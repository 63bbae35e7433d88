// Command workload simulates a container with a heavy start: it burns CPU for a while, then
// declares itself ready (a file, and optionally an HTTP port), and then idles until SIGTERM.
//
// Settings, from flags or the environment (flags win):
//
//	-work-seconds / WORK_SECONDS   seconds of CPU work before ready (default 3; 0 = ready at once)
//	-ready-file   / READY_FILE     file created when ready (default /tmp/ready)
//	-port         / PORT           if set, serve GET /healthz (200 once ready, 503 before)
//	-workers      / WORKERS        goroutines burning CPU in parallel (default 1)
//
// The image has no shell and no cat: an exec readiness probe runs `/workload -check`, which exits 0
// when the ready file exists and 1 otherwise. An httpGet probe on /healthz works when -port is set.
package main

import (
	"crypto/sha256"
	"flag"
	"fmt"
	"net/http"
	"os"
	"os/signal"
	"strconv"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
)

func envOr(name, def string) string {
	if v, ok := os.LookupEnv(name); ok && v != "" {
		return v
	}
	return def
}

func envInt(name string, def int) int {
	v, err := strconv.Atoi(envOr(name, strconv.Itoa(def)))
	if err != nil {
		fmt.Fprintf(os.Stderr, "workload: %s is not an integer, using %d\n", name, def)
		return def
	}
	return v
}

// burn keeps one core busy until the deadline, hashing a buffer so the work cannot be optimised out.
func burn(deadline time.Time) [32]byte {
	var sum [32]byte
	for time.Now().Before(deadline) {
		for i := 0; i < 1000; i++ {
			sum = sha256.Sum256(sum[:])
		}
	}
	return sum
}

func main() {
	workSeconds := flag.Float64("work-seconds", float64(envInt("WORK_SECONDS", 3)), "seconds of CPU work before ready")
	readyFile := flag.String("ready-file", envOr("READY_FILE", "/tmp/ready"), "file created when ready")
	port := flag.Int("port", envInt("PORT", 0), "serve /healthz on this port (0 = no server)")
	workers := flag.Int("workers", envInt("WORKERS", 1), "goroutines burning CPU")
	check := flag.Bool("check", false, "probe mode: exit 0 if the ready file exists, 1 if not")
	flag.Parse()

	if *check {
		if _, err := os.Stat(*readyFile); err != nil {
			fmt.Fprintf(os.Stderr, "not ready: %v\n", err)
			os.Exit(1)
		}
		os.Exit(0)
	}

	var ready atomic.Bool
	if *port > 0 {
		mux := http.NewServeMux()
		mux.HandleFunc("/healthz", func(w http.ResponseWriter, _ *http.Request) {
			if ready.Load() {
				fmt.Fprintln(w, "ok")
				return
			}
			http.Error(w, "starting", http.StatusServiceUnavailable)
		})
		go func() {
			if err := http.ListenAndServe(fmt.Sprintf(":%d", *port), mux); err != nil {
				fmt.Fprintf(os.Stderr, "workload: serve: %v\n", err)
				os.Exit(1)
			}
		}()
	}

	sigs := make(chan os.Signal, 2)
	signal.Notify(sigs, syscall.SIGTERM, syscall.SIGINT)

	start := time.Now()
	deadline := start.Add(time.Duration(*workSeconds * float64(time.Second)))
	var wg sync.WaitGroup
	for i := 0; i < *workers; i++ {
		wg.Add(1)
		go func() { defer wg.Done(); burn(deadline) }()
	}
	done := make(chan struct{})
	go func() { wg.Wait(); close(done) }()
	select {
	case <-done:
	case sig := <-sigs:
		fmt.Printf("workload: %v during start, exiting\n", sig)
		os.Exit(0)
	}

	if err := os.WriteFile(*readyFile, []byte(time.Now().UTC().Format(time.RFC3339Nano)+"\n"), 0o644); err != nil {
		fmt.Fprintf(os.Stderr, "workload: write %s: %v\n", *readyFile, err)
		os.Exit(1)
	}
	ready.Store(true)
	fmt.Printf("workload: ready after %.2fs of work (%d workers)\n", time.Since(start).Seconds(), *workers)

	sig := <-sigs
	fmt.Printf("workload: %v, exiting\n", sig)
}
