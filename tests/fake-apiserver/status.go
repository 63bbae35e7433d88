// SPDX-License-Identifier: Apache-2.0

// Errors as the API server reports them: every failure leaves the fake as a
// metav1.Status object with the HTTP code, a machine-readable reason and a
// human-readable message, so clients can branch on the code and reason the
// way they do against a real cluster.

package main

import (
	"fmt"
	"net/http"
)

// apiError is a failure that becomes a Status response.
type apiError struct {
	code    int
	reason  string
	message string
	// name and kind fill Status.details when known (kind is the resource's
	// plural name, as the real server reports it).
	name string
	kind string
	// retryAfter, when positive, sets Retry-After and details.retryAfterSeconds.
	retryAfter int
}

func (e *apiError) Error() string { return fmt.Sprintf("%d %s: %s", e.code, e.reason, e.message) }

// status renders the error as a Status object.
func (e *apiError) status() map[string]any {
	st := map[string]any{
		"kind":       "Status",
		"apiVersion": "v1",
		"metadata":   map[string]any{},
		"status":     "Failure",
		"message":    e.message,
		"reason":     e.reason,
		"code":       e.code,
	}
	details := map[string]any{}
	if e.name != "" {
		details["name"] = e.name
	}
	if e.kind != "" {
		details["kind"] = e.kind
	}
	if e.retryAfter > 0 {
		details["retryAfterSeconds"] = e.retryAfter
	}
	if len(details) > 0 {
		st["details"] = details
	}
	return st
}

// errorf builds an apiError with the reason that belongs to code.
func errorf(code int, format string, args ...any) *apiError {
	return &apiError{code: code, reason: reasonFor(code), message: fmt.Sprintf(format, args...)}
}

func errNotFound(res *resource, name string) *apiError {
	return &apiError{
		code: http.StatusNotFound, reason: "NotFound", name: name, kind: res.name,
		message: fmt.Sprintf("%s %q not found", res.name, name),
	}
}

func errAlreadyExists(res *resource, name string) *apiError {
	return &apiError{
		code: http.StatusConflict, reason: "AlreadyExists", name: name, kind: res.name,
		message: fmt.Sprintf("%s %q already exists", res.name, name),
	}
}

func errConflict(res *resource, name string) *apiError {
	return &apiError{
		code: http.StatusConflict, reason: "Conflict", name: name, kind: res.name,
		message: fmt.Sprintf("Operation cannot be fulfilled on %s %q: the object has been "+
			"modified; please apply your changes to the latest version and try again", res.name, name),
	}
}

func errInvalid(res *resource, name, field, detail string) *apiError {
	return &apiError{
		code: http.StatusUnprocessableEntity, reason: "Invalid", name: name, kind: res.name,
		message: fmt.Sprintf("%s %q is invalid: %s: %s", res.kind, name, field, detail),
	}
}

// errExpired is what a watch or a continued list from before the compaction
// point gets (HTTP 410, reason Expired).
func errExpired(message string) *apiError {
	return &apiError{code: http.StatusGone, reason: "Expired", message: message}
}

// reasonFor maps an HTTP code to the StatusReason the real server uses with it.
func reasonFor(code int) string {
	switch code {
	case http.StatusBadRequest:
		return "BadRequest"
	case http.StatusUnauthorized:
		return "Unauthorized"
	case http.StatusForbidden:
		return "Forbidden"
	case http.StatusNotFound:
		return "NotFound"
	case http.StatusMethodNotAllowed:
		return "MethodNotAllowed"
	case http.StatusNotAcceptable:
		return "NotAcceptable"
	case http.StatusConflict:
		return "Conflict"
	case http.StatusGone:
		return "Gone"
	case http.StatusRequestEntityTooLarge:
		return "RequestEntityTooLarge"
	case http.StatusUnsupportedMediaType:
		return "UnsupportedMediaType"
	case http.StatusUnprocessableEntity:
		return "Invalid"
	case http.StatusTooManyRequests:
		return "TooManyRequests"
	case http.StatusInternalServerError:
		return "InternalError"
	case http.StatusServiceUnavailable:
		return "ServiceUnavailable"
	case http.StatusGatewayTimeout:
		return "Timeout"
	default:
		return "Unknown"
	}
}
