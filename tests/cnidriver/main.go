// SPDX-License-Identifier: Apache-2.0

// Command cnidriver runs a CNI chain the way containerd's CRI plugin does,
// through libcni, so that tests can drive our chained plugin with a real
// runtime-side library instead of hand-made environment variables.
//
// Usage:
//
//	cnidriver add|check|del|status|gc --conflist FILE --bin-dir DIR[:DIR...]
//	          [--netns PATH] [--container-id ID] [--ifname eth0]
//	          [--args 'K=V;K=V'] [--capability-args JSON] [--cache-dir DIR]
//	          [--valid-attachments JSON] [--timeout DURATION]
//
// add prints the chain's final result (in the conflist's cniVersion) on
// stdout; the other commands print nothing on success. Every command exits 0
// on success, 1 when the chain fails (the error, with the CNI code if the
// plugin returned one, goes to stderr) and 2 on a usage error.
//
// The plugins' stderr is passed through to ours as they write it, whether
// they succeed or fail (libcni's own executor forwards it only on success).
// The result cache defaults to a directory under $TMPDIR rather than
// /var/lib/cni, so a test never touches the host's cache by accident.
package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"

	"github.com/containernetworking/cni/libcni"
	"github.com/containernetworking/cni/pkg/invoke"
	"github.com/containernetworking/cni/pkg/types"
	"github.com/containernetworking/cni/pkg/version"
)

const usage = `usage: cnidriver add|check|del|status|gc --conflist FILE --bin-dir DIR[:DIR...]
         [--netns PATH] [--container-id ID] [--ifname eth0] [--args 'K=V;K=V']
         [--capability-args JSON] [--cache-dir DIR] [--valid-attachments JSON]
         [--timeout DURATION]`

// errUsage marks errors in the command line (exit status 2).
var errUsage = errors.New("usage error")

func main() {
	err := run(os.Args[1:], os.Stdout)
	switch {
	case err == nil:
	case errors.Is(err, flag.ErrHelp):
	case errors.Is(err, errUsage):
		fmt.Fprintf(os.Stderr, "cnidriver: %v\n%s\n", err, usage)
		os.Exit(2)
	default:
		fmt.Fprintf(os.Stderr, "cnidriver: %s\n", describe(err))
		os.Exit(1)
	}
}

// options is the parsed command line.
type options struct {
	command          string
	conflist         string
	binDirs          []string
	netns            string
	containerID      string
	ifname           string
	args             [][2]string
	capabilityArgs   map[string]any
	cacheDir         string
	validAttachments []types.GCAttachment
	timeout          time.Duration
}

func parseArgs(argv []string) (*options, error) {
	if len(argv) == 0 {
		return nil, fmt.Errorf("%w: no command", errUsage)
	}
	o := &options{command: argv[0]}
	switch o.command {
	case "add", "check", "del", "status", "gc":
	case "-h", "--help", "help":
		fmt.Println(usage)
		return nil, flag.ErrHelp
	default:
		return nil, fmt.Errorf("%w: unknown command %q", errUsage, o.command)
	}

	fs := flag.NewFlagSet("cnidriver "+o.command, flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	fs.StringVar(&o.conflist, "conflist", "", "network configuration list file")
	binDir := fs.String("bin-dir", "", "plugin directories, colon-separated")
	fs.StringVar(&o.netns, "netns", "", "network namespace path (CNI_NETNS)")
	fs.StringVar(&o.containerID, "container-id", "", "container (sandbox) ID (CNI_CONTAINERID)")
	fs.StringVar(&o.ifname, "ifname", "eth0", "interface name (CNI_IFNAME)")
	cniArgs := fs.String("args", "", "CNI_ARGS as K=V;K=V")
	capArgs := fs.String("capability-args", "", "capability arguments as a JSON object (become runtimeConfig)")
	fs.StringVar(&o.cacheDir, "cache-dir", filepath.Join(os.TempDir(), "cnidriver-cache"), "libcni result cache directory")
	valid := fs.String("valid-attachments", "", `for gc: JSON list of {"containerID":..,"ifname":..}`)
	fs.DurationVar(&o.timeout, "timeout", 0, "give up (and kill the plugin) after this long; 0 = never")
	if err := fs.Parse(argv[1:]); err != nil {
		return nil, fmt.Errorf("%w: %v", errUsage, err)
	}
	if fs.NArg() > 0 {
		return nil, fmt.Errorf("%w: unexpected argument %q", errUsage, fs.Arg(0))
	}
	if o.conflist == "" || *binDir == "" {
		return nil, fmt.Errorf("%w: --conflist and --bin-dir are required", errUsage)
	}
	for _, d := range strings.Split(*binDir, ":") {
		if d != "" {
			o.binDirs = append(o.binDirs, d)
		}
	}

	var err error
	if o.args, err = parseCNIArgs(*cniArgs); err != nil {
		return nil, fmt.Errorf("%w: --args: %v", errUsage, err)
	}
	if *capArgs != "" {
		if err := strictJSON(*capArgs, &o.capabilityArgs); err != nil || o.capabilityArgs == nil {
			return nil, fmt.Errorf("%w: --capability-args must be a JSON object: %v", errUsage, err)
		}
	}
	o.validAttachments = []types.GCAttachment{}
	if *valid != "" {
		if err := strictJSON(*valid, &o.validAttachments); err != nil || o.validAttachments == nil {
			return nil, fmt.Errorf("%w: --valid-attachments must be a JSON list of {containerID, ifname}: %v", errUsage, err)
		}
	}
	return o, nil
}

// parseCNIArgs splits "K=V;K=V" into pairs, in order, as containerd passes
// them in CNI_ARGS.
func parseCNIArgs(s string) ([][2]string, error) {
	var out [][2]string
	for _, pair := range strings.Split(s, ";") {
		if pair == "" {
			continue
		}
		k, v, ok := strings.Cut(pair, "=")
		if !ok || k == "" {
			return nil, fmt.Errorf("%q is not KEY=VALUE", pair)
		}
		out = append(out, [2]string{k, v})
	}
	return out, nil
}

// strictJSON decodes s into v, refusing unknown fields and trailing data.
func strictJSON(s string, v any) error {
	dec := json.NewDecoder(strings.NewReader(s))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		return err
	}
	if dec.More() {
		return errors.New("unexpected data after the JSON value")
	}
	return nil
}

func run(argv []string, stdout io.Writer) error {
	o, err := parseArgs(argv)
	if err != nil {
		return err
	}
	list, err := libcni.ConfListFromFile(o.conflist)
	if err != nil {
		return fmt.Errorf("loading %s: %w", o.conflist, err)
	}
	cni := libcni.NewCNIConfigWithCacheDir(o.binDirs, o.cacheDir, &passthroughExec{stderr: os.Stderr})
	rt := &libcni.RuntimeConf{
		ContainerID:    o.containerID,
		NetNS:          o.netns,
		IfName:         o.ifname,
		Args:           o.args,
		CapabilityArgs: o.capabilityArgs,
	}
	ctx := context.Background()
	if o.timeout > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, o.timeout)
		defer cancel()
	}

	switch o.command {
	case "add":
		result, err := cni.AddNetworkList(ctx, list, rt)
		if err != nil {
			return err
		}
		return printResult(stdout, result, list.CNIVersion)
	case "check":
		return cni.CheckNetworkList(ctx, list, rt)
	case "del":
		return cni.DelNetworkList(ctx, list, rt)
	case "status":
		return cni.GetStatusNetworkList(ctx, list)
	default: // gc
		return cni.GCNetworkList(ctx, list, &libcni.GCArgs{ValidAttachments: o.validAttachments})
	}
}

// printResult writes the result converted to the list's cniVersion.
func printResult(w io.Writer, result types.Result, cniVersion string) error {
	if result == nil {
		return errors.New("the chain succeeded but returned no result")
	}
	if cniVersion != "" {
		converted, err := result.GetAsVersion(cniVersion)
		if err != nil {
			return fmt.Errorf("converting the result to version %s: %w", cniVersion, err)
		}
		result = converted
	}
	if err := result.PrintTo(w); err != nil {
		return err
	}
	_, err := io.WriteString(w, "\n")
	return err
}

// describe renders an error, leading with the CNI code and message when a
// plugin returned a CNI error.
func describe(err error) string {
	var cniErr *types.Error
	if errors.As(err, &cniErr) {
		msg := fmt.Sprintf("CNI error code %d: %s", cniErr.Code, cniErr.Msg)
		if cniErr.Details != "" {
			msg += " (details: " + cniErr.Details + ")"
		}
		return msg + "\n  " + err.Error()
	}
	return err.Error()
}

// passthroughExec runs plugins like libcni's default executor (same
// environment, stdin, error decoding and "text file busy" retries) but
// copies the plugin's stderr to ours as it is written, also when the plugin
// fails.
type passthroughExec struct {
	stderr io.Writer
}

var _ invoke.Exec = (*passthroughExec)(nil)

func (e *passthroughExec) ExecPlugin(ctx context.Context, pluginPath string, stdin []byte, environ []string) ([]byte, error) {
	for attempt := 0; ; attempt++ {
		var stdout, stderr bytes.Buffer
		cmd := exec.CommandContext(ctx, pluginPath)
		cmd.Env = environ
		cmd.Stdin = bytes.NewReader(stdin)
		cmd.Stdout = &stdout
		cmd.Stderr = io.MultiWriter(e.stderr, &stderr)
		// When the timeout kills the plugin, children it left holding its
		// stdout or stderr must not keep us waiting.
		cmd.WaitDelay = time.Second
		err := cmd.Run()
		if err == nil {
			return stdout.Bytes(), nil
		}
		// A plugin binary being replaced right now: wait and retry, as
		// libcni does.
		if strings.Contains(err.Error(), "text file busy") && attempt < 5 {
			time.Sleep(time.Second)
			continue
		}
		return nil, pluginError(err, stdout.Bytes(), stderr.Bytes())
	}
}

// pluginError turns a failed plugin run into the error a runtime reports: the
// CNI error object the plugin printed on stdout, or a message built from its
// stderr when it printed none.
func pluginError(runErr error, stdout, stderr []byte) error {
	e := &types.Error{}
	switch {
	case len(stdout) > 0:
		if err := json.Unmarshal(stdout, e); err != nil {
			e.Msg = fmt.Sprintf("netplugin failed but its error output %q is not a CNI error: %v", stdout, err)
		}
	case len(stderr) > 0:
		e.Msg = fmt.Sprintf("netplugin failed: %q: %v", stderr, runErr)
	default:
		e.Msg = fmt.Sprintf("netplugin failed with no error message: %v", runErr)
	}
	return e
}

func (e *passthroughExec) FindInPath(plugin string, paths []string) (string, error) {
	return invoke.FindInPath(plugin, paths)
}

func (e *passthroughExec) Decode(jsonBytes []byte) (version.PluginInfo, error) {
	return (&version.PluginDecoder{}).Decode(jsonBytes)
}
