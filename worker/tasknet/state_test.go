package tasknet

import (
	"net/netip"
	"strings"
	"testing"
)

// TestAllocate checks addresses come from the hosts of the subnet past
// the gateway, never the network, gateway or broadcast address, round
// robin after the last one handed out, and that a full subnet says so.
func TestAllocate(t *testing.T) {
	for _, tc := range []struct {
		subnet string
		want   []string // in order, until full
	}{
		{"10.1.2.0/30", []string{"10.1.2.2"}},
		{"10.1.2.0/29", []string{"10.1.2.2", "10.1.2.3", "10.1.2.4", "10.1.2.5", "10.1.2.6"}},
		{"10.1.2.8/29", []string{"10.1.2.10", "10.1.2.11", "10.1.2.12", "10.1.2.13", "10.1.2.14"}},
	} {
		t.Run(tc.subnet, func(t *testing.T) {
			p := netip.MustParsePrefix(tc.subnet)
			st := &state{Tasks: map[string]netip.Addr{}}
			for i, want := range tc.want {
				ip, err := st.allocate(p)
				if err != nil || ip.String() != want {
					t.Fatalf("allocation %d: %s, %v; want %s", i, ip, err, want)
				}
				st.Tasks[want] = ip
			}
			if _, err := st.allocate(p); err == nil || !strings.Contains(err.Error(), "full") {
				t.Fatalf("allocation in a full subnet: %v", err)
			}
			// Freeing the first: it comes back (the only free one).
			delete(st.Tasks, tc.want[0])
			if ip, err := st.allocate(p); err != nil || ip.String() != tc.want[0] {
				t.Fatalf("after a free: %s, %v", ip, err)
			}
		})
	}
	// Round robin: a freed address is not reused while others are free.
	p := netip.MustParsePrefix("10.1.3.0/24")
	st := &state{Tasks: map[string]netip.Addr{}}
	a, _ := st.allocate(p)
	st.Tasks["a"] = a
	delete(st.Tasks, "a")
	if b, _ := st.allocate(p); b == a {
		t.Fatalf("freed %s handed out again at once", a)
	}
}

func TestNames(t *testing.T) {
	p := netip.MustParsePrefix("10.201.3.0/24")
	if got := BridgeName(p); got != "shoal0ac90300" || len(got) > maxIfName {
		t.Fatalf("BridgeName %q", got)
	}
	if got := TableName("shoal0ac90300"); got != "shoal_tasknet_shoal0ac90300" {
		t.Fatalf("TableName %q", got)
	}
	if got := Gateway(p); got.String() != "10.201.3.1" {
		t.Fatalf("Gateway %s", got)
	}
	h1, p1 := vethNames("b1", "task")
	h2, _ := vethNames("b2", "task")
	if h1 == h2 || len(h1) > maxIfName || len(p1) > maxIfName || h1 == p1 {
		t.Fatalf("veth names %q %q %q", h1, p1, h2)
	}
}
