// SPDX-License-Identifier: Apache-2.0

// The resource table: everything the server knows about a kind lives in one
// entry here, and the storage, routing, discovery, selector and patch code are
// generic over it. Adding a kind, a custom resource say, means adding an
// entry: one with a group is served under /apis/GROUP/VERSION and listed in
// /apis discovery.

package main

import (
	"slices"
	"strings"
)

// resource describes one kind.
type resource struct {
	group      string // "" for the core API (/api/v1)
	version    string
	name       string // plural, as in the URL: "pods"
	singular   string
	kind       string
	namespaced bool
	shortNames []string
	verbs      []string
	// subresources lists the subresources served (only "status" is known).
	subresources []string
	// fieldLabels are the field selector keys accepted besides metadata.name
	// and metadata.namespace, as dotted paths into the object.
	fieldLabels []string
	// mergeKeys drives strategic merge patch: for a dotted path to a list, the
	// field that identifies an element ("" means a list of scalars merged as a
	// set). Lists not named here are replaced whole, like in a merge patch.
	mergeKeys map[string]string
	// defaults fills fields on create; it may change obj in place.
	defaults func(obj map[string]any)
}

var podResource = &resource{
	version: "v1",
	name:    "pods", singular: "pod", kind: "Pod", namespaced: true,
	shortNames:   []string{"po"},
	verbs:        []string{"create", "delete", "get", "list", "patch", "update", "watch"},
	subresources: []string{"status"},
	fieldLabels: []string{
		"spec.nodeName", "spec.restartPolicy", "spec.schedulerName", "spec.serviceAccountName",
		"status.phase", "status.podIP", "status.nominatedNodeName",
	},
	mergeKeys: map[string]string{
		"metadata.finalizers":               "",
		"spec.containers":                   "name",
		"spec.containers.env":               "name",
		"spec.initContainers":               "name",
		"spec.volumes":                      "name",
		"status.conditions":                 "type",
		"status.containerStatuses":          "name",
		"status.initContainerStatuses":      "name",
		"status.ephemeralContainerStatuses": "name",
	},
	defaults: func(obj map[string]any) {
		if _, ok := obj["status"]; !ok {
			obj["status"] = map[string]any{"phase": "Pending"}
		}
	},
}

var nodeResource = &resource{
	version: "v1",
	name:    "nodes", singular: "node", kind: "Node", namespaced: false,
	shortNames:   []string{"no"},
	verbs:        []string{"create", "delete", "get", "list", "patch", "update", "watch"},
	subresources: []string{"status"},
	mergeKeys: map[string]string{
		"metadata.finalizers": "",
		"status.conditions":   "type",
		"status.addresses":    "type",
	},
}

var eventResource = &resource{
	version: "v1",
	name:    "events", singular: "event", kind: "Event", namespaced: true,
	shortNames: []string{"ev"},
	verbs:      []string{"create", "delete", "get", "list", "patch", "update", "watch"},
	fieldLabels: []string{
		"involvedObject.kind", "involvedObject.namespace", "involvedObject.name",
		"involvedObject.uid", "involvedObject.apiVersion", "involvedObject.resourceVersion",
		"involvedObject.fieldPath", "reason", "reportingComponent", "type",
	},
	mergeKeys: map[string]string{},
}

// pacemakerConfigResource is the configuration CRD of woehrl01/pod-pacemaker
// (PacemakerConfig, woehrl.net/v1alpha, cluster-scoped, with a status
// subresource), which pod-pacemaker keeps for drop-in compatibility. The
// fake serves it as if the CRD were installed; CRD objects themselves are not
// served.
var pacemakerConfigResource = &resource{
	group: "woehrl.net", version: "v1alpha",
	name: "pacemakerconfigs", singular: "pacemakerconfig", kind: "PacemakerConfig", namespaced: false,
	verbs:        []string{"create", "delete", "get", "list", "patch", "update", "watch"},
	subresources: []string{"status"},
	mergeKeys:    map[string]string{"metadata.finalizers": ""},
}

// resources is every kind served, in discovery order.
var resources = []*resource{podResource, nodeResource, eventResource, pacemakerConfigResource}

func lookupResource(group, version, name string) *resource {
	for _, r := range resources {
		if r.group == group && r.version == version && r.name == name {
			return r
		}
	}
	return nil
}

// apiVersion is the value of the kind's apiVersion field.
func (r *resource) apiVersion() string {
	if r.group == "" {
		return r.version
	}
	return r.group + "/" + r.version
}

// groupVersions lists the group/versions of the API groups in the table
// (not the core API), in table order.
func groupVersions() []string {
	var out []string
	for _, r := range resources {
		if r.group != "" && !slices.Contains(out, r.apiVersion()) {
			out = append(out, r.apiVersion())
		}
	}
	return out
}

func (r *resource) hasSubresource(sub string) bool {
	for _, s := range r.subresources {
		if s == sub {
			return true
		}
	}
	return false
}

func (r *resource) supportsField(key string) bool {
	if key == "metadata.name" || key == "metadata.namespace" {
		return true
	}
	for _, f := range r.fieldLabels {
		if f == key {
			return true
		}
	}
	return false
}

// discoveryResources is the APIResourceList entry set for one group and
// version: the table's kinds and their subresources, plus, for the core API,
// the namespaces that serveNamespace makes up.
func discoveryResources(group, version string) []any {
	out := []any{}
	if group == "" {
		out = append(out, map[string]any{
			"name": "namespaces", "singularName": "namespace", "namespaced": false, "kind": "Namespace",
			"verbs": []string{"get", "list"}, "shortNames": []string{"ns"},
		})
	}
	for _, r := range resources {
		if r.group != group || r.version != version {
			continue
		}
		entry := map[string]any{
			"name": r.name, "singularName": r.singular, "namespaced": r.namespaced,
			"kind": r.kind, "verbs": r.verbs,
		}
		if len(r.shortNames) > 0 {
			entry["shortNames"] = r.shortNames
		}
		if r == podResource {
			entry["categories"] = []string{"all"}
		}
		out = append(out, entry)
		for _, sub := range r.subresources {
			out = append(out, map[string]any{
				"name": r.name + "/" + sub, "singularName": "", "namespaced": r.namespaced,
				"kind": r.kind, "verbs": []string{"get", "patch", "update"},
			})
		}
	}
	return out
}

// validName reports whether s is an RFC 1123 subdomain, the rule for the names
// of every kind in the table.
func validName(s string) bool {
	if len(s) == 0 || len(s) > 253 {
		return false
	}
	for _, label := range strings.Split(s, ".") {
		if len(label) == 0 || len(label) > 63 {
			return false
		}
		for i := 0; i < len(label); i++ {
			c := label[i]
			alnum := c >= 'a' && c <= 'z' || c >= '0' && c <= '9'
			if !alnum && (c != '-' || i == 0 || i == len(label)-1) {
				return false
			}
		}
	}
	return true
}

// validNamespace reports whether s is an RFC 1123 label, the rule for
// namespace names.
func validNamespace(s string) bool {
	return len(s) <= 63 && !strings.Contains(s, ".") && validName(s)
}

const invalidNameDetail = "a lowercase RFC 1123 subdomain must consist of lower case alphanumeric " +
	"characters, '-' or '.', and must start and end with an alphanumeric character"
