package docker

import (
	"context"
	"errors"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/shoal-cluster/shoal/internal/registrytest"
	pb "github.com/shoal-cluster/shoal/proto"
	"github.com/shoal-cluster/shoal/worker"
)

// certsDir is where the Engine looks for a registry's CA.
const certsDir = "/etc/docker/certs.d"

// TestPullFromRegistry: Prepare pulls an image the node lacks from a real
// registry, reporting its progress, and fails with the registry's reason
// when it cannot (not rejected: the restart policy decides), through
// plain HTTP and through TLS with htpasswd users.
func TestPullFromRegistry(t *testing.T) {
	cli := engine(t)
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	plain := registrytest.StartT(t, registrytest.Options{})
	private := registrytest.StartT(t, registrytest.Options{TLS: true, Users: map[string]string{"alice": "right"}})
	if err := private.Trust(certsDir); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		cctx, ccancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer ccancel()
		for _, reg := range []*registrytest.Registry{plain, private} {
			if err := reg.RemoveFromEngine(cctx, cli); err != nil {
				t.Logf("remove pulled images: %v", err)
			}
		}
	})
	ref, _, err := plain.Push(ctx, cli, "shoal/hello:v1", "shoal/hello:v1", "", "")
	if err != nil {
		t.Fatal(err)
	}
	pref, _, err := private.Push(ctx, cli, "shoal/hello:v1", "shoal/hello:v1", "alice", "right")
	if err != nil {
		t.Fatal(err)
	}
	// Users without TLS: the Engine's answer to no credentials there is
	// the registry's (through TLS it falls back to plain HTTP, allowed on
	// loopback, and reports that failure instead).
	guarded := registrytest.StartT(t, registrytest.Options{Users: map[string]string{"alice": "right"}})
	gref, _, err := guarded.Push(ctx, cli, "shoal/hello:v1", "shoal/hello:v1", "alice", "right")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		cctx, ccancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer ccancel()
		if err := guarded.RemoveFromEngine(cctx, cli); err != nil {
			t.Logf("remove pulled images: %v", err)
		}
	})
	r := newRuntime(t, cli, "node-"+randomID())

	// An image the Engine lacks: pulled, the progress reported as it goes.
	if _, err := cli.ImageInspect(ctx, ref); err == nil {
		t.Fatalf("%s is on the Engine before the test pulled it", ref)
	}
	var (
		mu   sync.Mutex
		msgs []string
	)
	pctx := worker.WithProgress(ctx, func(m string) {
		mu.Lock()
		msgs = append(msgs, m)
		mu.Unlock()
	})
	id := "t" + randomID()
	if err := r.Prepare(pctx, helloTask(id, ref), worker.TaskFiles{}); err != nil {
		t.Fatalf("prepare %s: %v", ref, err)
	}
	mu.Lock()
	got := slices.Clone(msgs)
	mu.Unlock()
	// The base layer is shoal/hello:v1's, on the Engine already; the push
	// added one of its own.
	if len(got) < 2 || got[0] != "pulling "+ref || got[len(got)-1] != "pulling 2/2 layers" {
		t.Errorf("progress %q, want \"pulling %s\" first and \"pulling 2/2 layers\" last", got, ref)
	}
	if info, err := r.Inspect(ctx, id); err != nil || info.State != worker.RunCreated {
		t.Errorf("the task's container after the pull: %+v, %v", info, err)
	}

	for _, c := range []struct {
		name  string
		image string
		auth  *pb.RegistryAuth
		why   string // words of the registry's reason; "" means it pulls
	}{
		{"no such tag", plain.Host + "/shoal/hello:v9", nil, "manifest unknown"},
		{"no such image", plain.Host + "/shoal/nothing:v1", nil, "unknown"},
		{"registry down", "127.0.0.1:1/shoal/hello:v1", nil, "connection refused"},
		{"access denied", gref, nil, "no basic auth credentials"},
		{"access denied through TLS", pref, nil, "update the service with --with-registry-auth"},
		{"wrong password", pref, &pb.RegistryAuth{Server: private.Host, Username: "alice", Password: "wrong"}, "unauthorized"},
		{"with credentials", pref, &pb.RegistryAuth{Server: private.Host, Username: "alice", Password: "right"}, ""},
	} {
		t.Run(c.name, func(t *testing.T) {
			err := r.Prepare(ctx, helloTask("t"+randomID(), c.image), worker.TaskFiles{RegistryAuth: c.auth})
			if c.why == "" {
				if err != nil {
					t.Fatalf("prepare: %v", err)
				}
				return
			}
			var perm *worker.PermanentError
			switch {
			case err == nil:
				t.Fatal("prepared: want a failed pull")
			case errors.As(err, &perm):
				t.Fatalf("rejected (%v): a failed pull fails the task, the restart policy decides", err)
			case !strings.HasPrefix(err.Error(), "pull "+c.image+" on node test-node: ") || !strings.Contains(strings.ToLower(err.Error()), c.why):
				t.Fatalf("error %q, want \"pull %s on node test-node: ...%s...\"", err, c.image, c.why)
			}
			t.Logf("%s", err)
		})
	}
}
