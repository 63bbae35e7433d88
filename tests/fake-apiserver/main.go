// SPDX-License-Identifier: Apache-2.0

// Command fake-apiserver is an in-memory imitation of the Kubernetes API
// server for pod-pacemaker's tests, in which the tests play the kubelet.
//
// It serves enough of core/v1 over HTTPS (discovery; pods, nodes and events
// with list, watch, get, create, update, patch and delete) for the real
// kubectl and for our agent's raw list+watch client, and a few /fake/
// endpoints through which tests break things on purpose (see control in
// server.go). It is not a conformant API server: no admission, no defaulting
// beyond a few fields, validation of object names only, no finalizers or
// grace periods (a delete removes the object at once), and nothing persists.
//
// Usage:
//
//	fake-apiserver --dir DIR [--listen 127.0.0.1:0] [--bookmark-interval 5s]
//	               [--watch-buffer 1024] [--log-requests] [--keep-state]
//
// At start it makes a throw-away CA and server certificate and writes
// DIR/ca.crt, DIR/token (unless it exists, then it is reused) and
// DIR/kubeconfig; once it accepts connections it writes DIR/addr
// ("127.0.0.1:PORT"). Every file is written to a temporary name and renamed,
// so a reader never sees part of one; DIR/addr appearing means the server is
// ready. On SIGTERM or SIGINT it ends the open watches, removes DIR/addr and
// exits 0.
//
// With --keep-state a restart is a restart, not a new cluster: the CA (and
// its key, DIR/ca.key) is reused, the objects and the resourceVersion are
// saved to DIR/store.json on SIGTERM/SIGINT and loaded at start. The change
// log is not kept, so a watch from before the restart gets 410, as from a
// real API server whose watch cache starts over.
package main

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"encoding/pem"
	"errors"
	"flag"
	"fmt"
	"log"
	"math/big"
	"net"
	"net/http"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"time"
)

func main() {
	if err := run(os.Args[1:]); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return
		}
		fmt.Fprintf(os.Stderr, "fake-apiserver: %v\n", err)
		os.Exit(1)
	}
}

func run(args []string) error {
	// 1. Flags.
	fs := flag.NewFlagSet("fake-apiserver", flag.ContinueOnError)
	dir := fs.String("dir", "", "directory for ca.crt, token, kubeconfig and addr (required)")
	listen := fs.String("listen", "127.0.0.1:0", "address to listen on (port 0 picks a free port)")
	bookmarks := fs.Duration("bookmark-interval", 5*time.Second, "interval between BOOKMARK events on watches that allow them")
	watchBuffer := fs.Int("watch-buffer", 1024, "events queued per watch before a slow watch is closed")
	logRequests := fs.Bool("log-requests", false, "log every request as 'METHOD path?query -> status' to stderr")
	keepState := fs.Bool("keep-state", false, "reuse the CA, and save and load the objects across restarts (DIR/ca.key, DIR/store.json)")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if *dir == "" {
		return errors.New("--dir is required")
	}
	if fs.NArg() > 0 {
		return fmt.Errorf("unexpected argument %q", fs.Arg(0))
	}
	if *watchBuffer < 1 {
		return errors.New("--watch-buffer must be at least 1")
	}
	log.SetFlags(log.Ltime | log.Lmicroseconds)
	log.SetPrefix("fake-apiserver: ")
	if err := os.MkdirAll(*dir, 0o700); err != nil {
		return err
	}

	// 2. Listen first: the kubeconfig needs the port.
	ln, err := net.Listen("tcp", *listen)
	if err != nil {
		return err
	}
	addr := ln.Addr().String()

	// 3. Credentials and the files clients read.
	caPEM, cert, err := certificates(*dir, *keepState)
	if err != nil {
		return err
	}
	token, err := loadOrCreateToken(filepath.Join(*dir, "token"))
	if err != nil {
		return err
	}
	if err := writeFileAtomic(filepath.Join(*dir, "ca.crt"), caPEM, 0o644); err != nil {
		return err
	}
	if err := writeFileAtomic(filepath.Join(*dir, "kubeconfig"), kubeconfig(addr, caPEM, token), 0o600); err != nil {
		return err
	}

	// 4. Serve, then announce the address.
	srv := &server{
		dir: *dir, addr: addr, store: newStore(*watchBuffer), caPEM: caPEM,
		bookmarkInterval: *bookmarks, logRequests: *logRequests, token: token,
	}
	storeFile := filepath.Join(*dir, "store.json")
	if *keepState {
		if err := srv.store.load(storeFile); err != nil {
			return fmt.Errorf("loading %s: %w", storeFile, err)
		}
	}
	httpSrv := &http.Server{
		Handler:           srv,
		TLSConfig:         &tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS12},
		ReadHeaderTimeout: 10 * time.Second,
		IdleTimeout:       90 * time.Second,
	}
	served := make(chan error, 1)
	go func() { served <- httpSrv.ServeTLS(ln, "", "") }()
	addrFile := filepath.Join(*dir, "addr")
	if err := writeFileAtomic(addrFile, []byte(addr+"\n"), 0o644); err != nil {
		return err
	}
	log.Printf("serving on https://%s (files in %s)", addr, *dir)

	// 5. Run until told to stop.
	sigs := make(chan os.Signal, 1)
	signal.Notify(sigs, syscall.SIGTERM, syscall.SIGINT)
	select {
	case err := <-served:
		_ = os.Remove(addrFile)
		return err
	case sig := <-sigs:
		log.Printf("%v: shutting down", sig)
	}
	_ = os.Remove(addrFile)
	srv.store.closeWatches(false)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	if err := httpSrv.Shutdown(ctx); err != nil {
		_ = httpSrv.Close()
	}
	if *keepState {
		return srv.store.save(storeFile)
	}
	return nil
}

// certificates returns the CA in PEM and the server's key pair. With keep,
// the CA in DIR/ca.crt and DIR/ca.key is reused when both exist, and a new
// one is saved there otherwise; without, the CA lives only in memory.
func certificates(dir string, keep bool) ([]byte, tls.Certificate, error) {
	certFile, keyFile := filepath.Join(dir, "ca.crt"), filepath.Join(dir, "ca.key")
	if keep {
		certPEM, certErr := os.ReadFile(certFile)
		keyPEM, keyErr := os.ReadFile(keyFile)
		if certErr == nil && keyErr == nil {
			caCert, caKey, err := parseCA(certPEM, keyPEM)
			if err != nil {
				return nil, tls.Certificate{}, fmt.Errorf("reusing the CA in %s: %w", dir, err)
			}
			cert, err := serverCertificate(caCert, caKey)
			return certPEM, cert, err
		}
	}
	caPEM, caKey, cert, err := newCertificates()
	if err != nil {
		return nil, tls.Certificate{}, err
	}
	if keep {
		der, err := x509.MarshalECPrivateKey(caKey)
		if err != nil {
			return nil, tls.Certificate{}, err
		}
		keyPEM := pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: der})
		if err := writeFileAtomic(keyFile, keyPEM, 0o600); err != nil {
			return nil, tls.Certificate{}, err
		}
	}
	return caPEM, cert, nil
}

func parseCA(certPEM, keyPEM []byte) (*x509.Certificate, *ecdsa.PrivateKey, error) {
	certBlock, _ := pem.Decode(certPEM)
	keyBlock, _ := pem.Decode(keyPEM)
	if certBlock == nil || keyBlock == nil {
		return nil, nil, errors.New("not PEM")
	}
	caCert, err := x509.ParseCertificate(certBlock.Bytes)
	if err != nil {
		return nil, nil, err
	}
	caKey, err := x509.ParseECPrivateKey(keyBlock.Bytes)
	if err != nil {
		return nil, nil, err
	}
	return caCert, caKey, nil
}

// newCertificates makes a CA and a server certificate it signs, both ECDSA
// P-256, the server's valid for 127.0.0.1 and localhost. It returns the CA in
// PEM, the CA's key and the server's key pair.
func newCertificates() ([]byte, *ecdsa.PrivateKey, tls.Certificate, error) {
	caKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, nil, tls.Certificate{}, err
	}
	now := time.Now()
	caTmpl := &x509.Certificate{
		SerialNumber:          randomSerial(),
		Subject:               pkix.Name{CommonName: "fake-apiserver test CA"},
		NotBefore:             now.Add(-time.Hour),
		NotAfter:              now.Add(365 * 24 * time.Hour),
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign | x509.KeyUsageDigitalSignature,
		BasicConstraintsValid: true,
		IsCA:                  true,
		MaxPathLenZero:        true,
	}
	caDER, err := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, &caKey.PublicKey, caKey)
	if err != nil {
		return nil, nil, tls.Certificate{}, err
	}
	caCert, err := x509.ParseCertificate(caDER)
	if err != nil {
		return nil, nil, tls.Certificate{}, err
	}
	cert, err := serverCertificate(caCert, caKey)
	if err != nil {
		return nil, nil, tls.Certificate{}, err
	}
	caPEM := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: caDER})
	return caPEM, caKey, cert, nil
}

// serverCertificate makes a fresh server key pair for 127.0.0.1 and
// localhost, signed by the CA.
func serverCertificate(caCert *x509.Certificate, caKey *ecdsa.PrivateKey) (tls.Certificate, error) {
	now := time.Now()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return tls.Certificate{}, err
	}
	tmpl := &x509.Certificate{
		SerialNumber: randomSerial(),
		Subject:      pkix.Name{CommonName: "fake-apiserver"},
		NotBefore:    now.Add(-time.Hour),
		NotAfter:     now.Add(365 * 24 * time.Hour),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		IPAddresses:  []net.IP{net.IPv4(127, 0, 0, 1)},
		DNSNames:     []string{"localhost"},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, caCert, &key.PublicKey, caKey)
	if err != nil {
		return tls.Certificate{}, err
	}
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key}, nil
}

func randomSerial() *big.Int {
	var b [16]byte
	mustRandom(b[:])
	return new(big.Int).SetBytes(b[:])
}

// loadOrCreateToken reuses the token in path, or writes a new random one.
func loadOrCreateToken(path string) (string, error) {
	data, err := os.ReadFile(path)
	switch {
	case err == nil:
		token := strings.TrimSpace(string(data))
		if token == "" {
			return "", fmt.Errorf("%s is empty", path)
		}
		for _, c := range token {
			if c <= ' ' || c == 0x7f {
				return "", fmt.Errorf("%s holds whitespace or control characters", path)
			}
		}
		return token, nil
	case errors.Is(err, os.ErrNotExist):
		var b [32]byte
		mustRandom(b[:])
		token := hex.EncodeToString(b[:])
		return token, writeFileAtomic(path, []byte(token+"\n"), 0o600)
	default:
		return "", err
	}
}

// kubeconfig renders a kubeconfig with one cluster, user and context
// ("default"). The token is written as a JSON string, which YAML reads as a
// double-quoted scalar.
func kubeconfig(addr string, caPEM []byte, token string) []byte {
	quoted, _ := json.Marshal(token)
	return []byte(fmt.Sprintf(`apiVersion: v1
kind: Config
clusters:
- name: fake
  cluster:
    server: https://%s
    certificate-authority-data: %s
users:
- name: fake
  user:
    token: %s
contexts:
- name: default
  context:
    cluster: fake
    user: fake
    namespace: default
current-context: default
`, addr, base64.StdEncoding.EncodeToString(caPEM), quoted))
}

// writeFileAtomic writes data to a temporary file beside path and renames
// it over path.
func writeFileAtomic(path string, data []byte, mode os.FileMode) error {
	f, err := os.CreateTemp(filepath.Dir(path), "."+filepath.Base(path)+".*")
	if err != nil {
		return err
	}
	tmp := f.Name()
	_, werr := f.Write(data)
	if werr == nil {
		werr = f.Chmod(mode)
	}
	if werr == nil {
		werr = f.Sync()
	}
	if cerr := f.Close(); werr == nil {
		werr = cerr
	}
	if werr == nil {
		werr = os.Rename(tmp, path)
	}
	if werr != nil {
		_ = os.Remove(tmp)
	}
	return werr
}
