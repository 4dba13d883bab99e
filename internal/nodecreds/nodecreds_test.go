package nodecreds_test

import (
	"strings"
	"testing"
	"time"

	"github.com/shoal-cluster/shoal/internal/nodecreds"
	"github.com/shoal-cluster/shoal/internal/pki"
	"github.com/shoal-cluster/shoal/internal/pki/pkitest"
)

func TestRenewalDueAndInstall(t *testing.T) {
	ca := pkitest.NewCA(t, "c1")
	dir := t.TempDir()
	root, err := pki.ParseCert(ca.RootPEM)
	if err != nil {
		t.Fatal(err)
	}
	digest := pki.Digest(root)
	n := nodecreds.Pending(dir, digest)
	certPEM, keyPEM := ca.Issue(t, pki.RoleWorker, "w1", time.Hour)
	if err := n.Install(certPEM, keyPEM, ca.RootPEM); err != nil {
		t.Fatal(err)
	}
	leaf := n.Creds().Leaf()
	cases := []struct {
		name    string
		now     time.Time
		signing string
		role    string
		want    string
	}{
		{"fresh", time.Now(), digest, pki.RoleWorker, ""},
		{"two thirds through", leaf.NotBefore.Add(41 * time.Minute), digest, pki.RoleWorker, "two thirds"},
		{"another root signs", time.Now(), "otherdigest", pki.RoleWorker, "rotated"},
		{"promoted", time.Now(), digest, pki.RoleManager, "manager"},
	}
	for _, tc := range cases {
		got := n.RenewalDue(tc.now, tc.signing, tc.role)
		if (tc.want == "") != (got == "") || !strings.Contains(got, tc.want) {
			t.Errorf("%s: RenewalDue = %q, want %q", tc.name, got, tc.want)
		}
	}
	// What was installed is what a restart loads.
	again, err := nodecreds.Load(dir)
	if err != nil {
		t.Fatal(err)
	}
	if again.Creds().Identity() != n.Creds().Identity() || again.Creds().Leaf().SerialNumber.Cmp(leaf.SerialNumber) != 0 {
		t.Fatal("the certificate on disk differs from the one installed")
	}
}
