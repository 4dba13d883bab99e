package registrytest

import (
	"context"
	"os"
	"path/filepath"
	"testing"
	"time"
)

// RequireEnv makes tests fail, rather than skip, when the registry is not
// installed (CI sets it, with the Docker Engine's tests).
const RequireEnv = "SHOAL_REQUIRE_DOCKER"

// Need skips t when docker-registry is not installed, or fails it when
// SHOAL_REQUIRE_DOCKER=1, saying how to install it.
func Need(t testing.TB) {
	t.Helper()
	if _, err := Binary(); err != nil {
		if os.Getenv(RequireEnv) == "1" {
			t.Fatalf("%s=1 but %v", RequireEnv, err)
		}
		t.Skipf("%v (set %s=1 to fail instead)", err, RequireEnv)
	}
}

// StartT starts a registry for t (see Need and Start) and stops it when t
// ends; its log is shown when t failed.
func StartT(t testing.TB, opts Options) *Registry {
	t.Helper()
	Need(t)
	dir := t.TempDir()
	logPath := filepath.Join(dir, "registry.log")
	f, err := os.Create(logPath)
	if err != nil {
		t.Fatal(err)
	}
	opts.Log = f
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	r, err := Start(ctx, dir, opts)
	if err != nil {
		f.Close()
		data, _ := os.ReadFile(logPath)
		t.Fatalf("start a registry: %v\n%s", err, data)
	}
	t.Cleanup(func() {
		r.Stop()
		f.Close()
		if t.Failed() {
			data, _ := os.ReadFile(logPath)
			t.Logf("registry %s log:\n%s", r.Host, data)
		}
	})
	return r
}
