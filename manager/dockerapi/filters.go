package dockerapi

import (
	"encoding/json"
	"net/http"
	"slices"
	"sort"
	"strings"
)

// filters are a list request's filters: each key with the values given
// (any of which may match).
type filters map[string][]string

// parseFilters reads the filters query parameter, in the current format
// ({"key":{"value":true}}) or the old one ({"key":["value"]}), refusing a
// key the endpoint does not know, as the Engine does.
func parseFilters(r *http.Request, allowed ...string) (filters, error) {
	raw := r.URL.Query().Get("filters")
	out := filters{}
	if raw == "" {
		return out, nil
	}
	var cur map[string]map[string]bool
	if err := json.Unmarshal([]byte(raw), &cur); err == nil {
		for k, vs := range cur {
			for v, on := range vs {
				if on {
					out[k] = append(out[k], v)
				}
			}
		}
	} else {
		var old map[string][]string
		if err2 := json.Unmarshal([]byte(raw), &old); err2 != nil {
			return nil, badRequest("invalid filters %q: %v", raw, err)
		}
		for k, vs := range old {
			out[k] = append(out[k], vs...)
		}
	}
	for k := range out {
		if !slices.Contains(allowed, k) {
			sort.Strings(allowed)
			return nil, badRequest("invalid filter '%s' (this endpoint takes %s)", k, strings.Join(allowed, ", "))
		}
		sort.Strings(out[k])
	}
	return out, nil
}

// has reports whether the filter key is set.
func (f filters) has(key string) bool { return len(f[key]) > 0 }

// exact reports whether v is one of key's values (true when key is unset).
func (f filters) exact(key, v string) bool {
	return !f.has(key) || slices.Contains(f[key], v)
}

// prefix reports whether one of key's values is a prefix of v (true when
// key is unset).
func (f filters) prefix(key, v string) bool {
	if !f.has(key) {
		return true
	}
	for _, want := range f[key] {
		if strings.HasPrefix(v, want) {
			return true
		}
	}
	return false
}

// contains reports whether one of key's values is in v (true when key is
// unset), as the Engine's name filters match.
func (f filters) contains(key, v string) bool {
	if !f.has(key) {
		return true
	}
	for _, want := range f[key] {
		if strings.Contains(v, want) {
			return true
		}
	}
	return false
}

// labels reports whether labels match every label filter of key
// ("k" or "k=v").
func (f filters) labels(key string, labels map[string]string) bool {
	for _, want := range f[key] {
		k, v, withValue := strings.Cut(want, "=")
		got, ok := labels[k]
		if !ok || (withValue && got != v) {
			return false
		}
	}
	return true
}
