package controlapi

import "testing"

func TestSplitTimestamp(t *testing.T) {
	for _, tc := range []struct {
		line     string
		wantTime int64
		wantRest string
	}{
		{"2026-12-07T00:30:01.000005Z hello there", 1796603401000005000, "hello there"},
		{"2026-12-07T00:30:01Z", 1796603401000000000, ""},
		{"no time here", 0, "no time here"},
		{"", 0, ""},
	} {
		ts, rest := splitTimestamp([]byte(tc.line))
		if ts != tc.wantTime || string(rest) != tc.wantRest {
			t.Errorf("splitTimestamp(%q) = %d, %q; want %d, %q", tc.line, ts, rest, tc.wantTime, tc.wantRest)
		}
	}
}
