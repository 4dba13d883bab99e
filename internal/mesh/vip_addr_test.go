package mesh

import (
	"context"
	"os"
	"os/exec"
	"testing"
)

func TestAddrExists(t *testing.T) {
	for _, tc := range []struct {
		out  string
		want bool
	}{
		{"RTNETLINK answers: File exists\n", true},         // older iproute2 and kernels
		{"Error: ipv4: Address already assigned.\n", true}, // newer ones
		{"RTNETLINK answers: Operation not permitted\n", false},
		{"Cannot find device \"lo\"\n", false},
		{"", false},
	} {
		if got := addrExists(tc.out); got != tc.want {
			t.Errorf("addrExists(%q) = %v, want %v", tc.out, got, tc.want)
		}
	}
}

// TestAddLocalAddrTwice: another node of the cluster on the same host, or
// one that was killed, may have added the address already; adding it again
// is no error.
func TestAddLocalAddrTwice(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("adding an address to lo needs root")
	}
	const ip = "100.127.254.253" // in the twin range; removed again at the end
	ctx := context.Background()
	t.Cleanup(func() { delLocalAddr(ctx, ip) })
	for i := range 2 {
		if err := addLocalAddr(ctx, ip); err != nil {
			t.Fatalf("add %d: %v", i+1, err)
		}
	}
	out, err := exec.Command("ip", "-4", "addr", "show", "dev", "lo", "to", ip+"/32").CombinedOutput()
	if err != nil || len(out) == 0 {
		t.Fatalf("%s is not on lo after adding it: %v %s", ip, err, out)
	}
}
