package tests

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	pb "github.com/shoal-cluster/shoal/proto"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// secretValue is a value no file of the cluster would contain by chance.
func secretValue(t *testing.T) []byte {
	t.Helper()
	b := make([]byte, 16)
	if _, err := rand.Read(b); err != nil {
		t.Fatal(err)
	}
	return []byte("shoal-test-secret-" + hex.EncodeToString(b))
}

func (c *cluster) createSecret(name string, value []byte) *pb.Secret {
	c.t.Helper()
	return c.createSecretVia(c.live()[0], name, value)
}

// createSecretVia creates a secret through manager m (a follower forwards
// the call to the leader).
func (c *cluster) createSecretVia(m *mgr, name string, value []byte) *pb.Secret {
	c.t.Helper()
	ctx, cancel := c.ctx()
	defer cancel()
	resp, err := c.control(m).CreateSecret(ctx, &pb.CreateSecretRequest{Spec: &pb.SecretSpec{Annotations: &pb.Annotations{Name: name}, Data: value}})
	if err != nil {
		c.t.Fatalf("create secret %s: %v", name, err)
	}
	return resp.GetSecret()
}

// secretReaderSpec is a service whose tasks copy their secret file, and
// its mode, to out/<task ID> and then keep running.
func secretReaderSpec(name, out string, replicas uint64, refs ...*pb.SecretReference) *pb.ServiceSpec {
	script := fmt.Sprintf(`f="$SHOAL_SECRETS_DIR/pw"; { stat -c %%a "$f"; cat "$f"; } > %s/"$SHOAL_TASK_ID".tmp && mv %s/"$SHOAL_TASK_ID".tmp %s/"$SHOAL_TASK_ID"; exec sleep 600`, out, out, out)
	return &pb.ServiceSpec{
		Annotations: &pb.Annotations{Name: name},
		Task: &pb.TaskSpec{
			Runtime:   "process",
			Container: &pb.ContainerSpec{Image: "/bin/sh", Args: []string{"-c", script}, StopGracePeriod: int64(time.Second), Secrets: refs},
			Restart:   &pb.RestartPolicy{Condition: pb.RestartCondition_RESTART_CONDITION_ANY, Delay: int64(100 * time.Millisecond)},
			Placement: &pb.Placement{MaxReplicas: 1},
		},
		Mode: &pb.ServiceSpec_Replicated{Replicated: &pb.ReplicatedService{Replicas: replicas}},
	}
}

// readersRead waits until want tasks of a reader service (secretReaderSpec,
// configReaderSpec) run and have written what they read to out, checks
// that each read wantRead, and returns the nodes they run on, which must
// all differ.
func (c *cluster) readersRead(name, out string, want int, wantRead string) map[string]bool {
	c.t.Helper()
	var running []*pb.Task
	c.eventually(45*time.Second, fmt.Sprintf("%d %s tasks running with their file read", want, name), func() (bool, string) {
		running = running[:0]
		for _, tk := range c.serviceTasks(name) {
			if tk.GetStatus().GetState() == pb.TaskState_TASK_STATE_RUNNING && tk.GetDesiredState() == pb.TaskState_TASK_STATE_RUNNING {
				if _, err := os.Stat(filepath.Join(out, tk.GetId())); err == nil {
					running = append(running, tk)
				}
			}
		}
		return len(running) == want, fmt.Sprintf("%d ready", len(running))
	})
	nodes := map[string]bool{}
	for _, tk := range running {
		nodes[tk.GetNodeId()] = true
		got, err := os.ReadFile(filepath.Join(out, tk.GetId()))
		if err != nil {
			c.t.Fatal(err)
		}
		if string(got) != wantRead {
			c.t.Errorf("task %s read %q, want %q", tk.GetId(), got, wantRead)
		}
	}
	if len(nodes) != want {
		c.t.Fatalf("the %d tasks run on %d nodes, want %d (max 1 per node)", want, len(nodes), want)
	}
	return nodes
}

// filesUnder lists the regular files below dir (none when it is missing).
func filesUnder(dir string) []string {
	var out []string
	_ = filepath.WalkDir(dir, func(path string, d fs.DirEntry, err error) error {
		if err == nil && d.Type().IsRegular() {
			out = append(out, path)
		}
		return nil
	})
	return out
}

// grepTree reports the files below dir whose bytes contain needle.
func grepTree(t *testing.T, dir string, needle []byte) (hits []string, scanned int) {
	t.Helper()
	for _, f := range filesUnder(dir) {
		data, err := os.ReadFile(f)
		if err != nil {
			t.Fatalf("read %s: %v", f, err)
		}
		scanned++
		if bytes.Contains(data, needle) {
			hits = append(hits, f)
		}
	}
	return hits, scanned
}

// TestSecretsReachOnlyTheirNodes follows one secret from `secret create`
// to a task's file and back out (another is created through a follower,
// which forwards it): sealed in every manager's Raft log and
// snapshot, sent by a leader that joined later (so the key travelled with
// the join) only to the workers that run a task using it, read by the
// task from a 0400 file, gone from the worker when the task ends, and
// never in a log or the workers' task db.
func TestSecretsReachOnlyTheirNodes(t *testing.T) {
	c := newCluster(t)
	logs := c.captureLogs()
	c.addManagers(3)
	c.addWorkers(3)
	out := filepath.Join(c.base, "out")
	if err := os.Mkdir(out, 0o755); err != nil {
		t.Fatal(err)
	}
	value, unusedValue := secretValue(t), secretValue(t)
	sec := c.createSecret("db-password", value)
	var follower *mgr
	for _, m := range c.live() {
		if m != c.leader() {
			follower = m
		}
	}
	unused := c.createSecretVia(follower, "unused", unusedValue)
	if sec.GetSize() != uint64(len(value)) || len(sec.GetSealedData()) != 0 || len(sec.GetSpec().GetData()) != 0 {
		t.Fatalf("create returned size %d, %d sealed bytes, %d value bytes; want size %d and no value", sec.GetSize(), len(sec.GetSealedData()), len(sec.GetSpec().GetData()), len(value))
	}

	// The first manager (which generated the key) steps down: the next
	// leader opens secrets with the key it received when it joined.
	first := c.managers[0]
	c.stopManager(first)
	leader := c.leader()
	if leader == first {
		t.Fatal("the stopped manager still leads")
	}

	c.createService(secretReaderSpec("reader", out, 2, &pb.SecretReference{SecretName: "db-password", Target: "pw"}))
	users := c.readersRead("reader", out, 2, "400\n"+string(value))

	// Only the nodes that run a task hold the secret, and only the one
	// their tasks use; the third node has neither values nor files.
	for _, w := range c.workers {
		held := w.a.HeldSecrets()
		files := filesUnder(w.a.SecretsDir())
		if users[w.a.ID()] {
			if !slices.Equal(held, []string{sec.GetId()}) {
				t.Errorf("worker %s runs a reader but holds secrets %v, want [%s]", w.cfg.Hostname, held, sec.GetId())
			}
			if len(files) != 1 || filepath.Base(files[0]) != "pw" {
				t.Errorf("worker %s secret files %v, want one pw file", w.cfg.Hostname, files)
			}
			continue
		}
		if len(held) != 0 || len(files) != 0 {
			t.Errorf("worker %s runs no reader but holds secrets %v and files %v", w.cfg.Hostname, held, files)
		}
	}

	// In use: the secret cannot be removed.
	ctx, cancel := c.ctx()
	defer cancel()
	cl := c.control(leader)
	_, err := cl.RemoveSecret(ctx, &pb.RemoveSecretRequest{Ref: "db-password"})
	if status.Code(err) != codes.FailedPrecondition || !strings.Contains(err.Error(), "reader") {
		t.Fatalf("remove a secret in use = %v, want FailedPrecondition naming the service", err)
	}
	got, err := cl.GetSecret(ctx, &pb.GetSecretRequest{Ref: "db-password"})
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(got.GetServices(), []string{"reader"}) || len(got.GetSecret().GetSealedData()) != 0 {
		t.Fatalf("inspect: services %v, %d sealed bytes; want [reader] and no value", got.GetServices(), len(got.GetSecret().GetSealedData()))
	}

	// At rest: snapshot every live manager, then no Raft file holds either
	// value (the stopped first manager's files are checked as they are).
	for _, m := range c.live() {
		if err := m.m.Store().Snapshot(); err != nil {
			t.Fatalf("snapshot %s: %v", m.cfg.Hostname, err)
		}
	}
	for _, m := range c.managers {
		dir := filepath.Join(m.cfg.DataDir, "raft")
		snaps := 0
		for _, f := range filesUnder(dir) {
			if strings.HasSuffix(f, "state.bin") {
				snaps++
			}
		}
		if m.m != nil && snaps == 0 {
			t.Errorf("manager %s has no snapshot file under %s", m.cfg.Hostname, dir)
		}
		for _, v := range [][]byte{value, unusedValue} {
			if hits, n := grepTree(t, dir, v); len(hits) > 0 || n == 0 {
				t.Errorf("manager %s: plaintext found in %v (%d files scanned)", m.cfg.Hostname, hits, n)
			}
		}
		// The sealed form is there: the test would see the value if it were.
		if hits, _ := grepTree(t, dir, []byte("db-password")); len(hits) == 0 {
			t.Errorf("manager %s: the secret's name is in no Raft file: the scan is looking in the wrong place", m.cfg.Hostname)
		}
	}

	// The task ends: its node forgets the value and its file.
	c.scale("reader", 0)
	c.eventually(30*time.Second, "the secret gone from every worker", func() (bool, string) {
		for _, w := range c.workers {
			if held, files := w.a.HeldSecrets(), filesUnder(w.a.SecretsDir()); len(held) > 0 || len(files) > 0 {
				return false, fmt.Sprintf("%s holds %v, files %v", w.cfg.Hostname, held, files)
			}
		}
		return true, ""
	})
	for _, w := range c.workers {
		if hits, _ := grepTree(t, w.cfg.DataDir, value); len(hits) > 0 {
			t.Errorf("worker %s: plaintext in %v", w.cfg.Hostname, hits)
		}
	}

	// Once no service uses it, it can go.
	removeService(t, c, "reader")
	for _, ref := range []string{"db-password", unused.GetId()} {
		if _, err := cl.RemoveSecret(ctx, &pb.RemoveSecretRequest{Ref: ref}); err != nil {
			t.Fatalf("remove secret %s: %v", ref, err)
		}
	}
	list, err := cl.ListSecrets(ctx, &pb.ListSecretsRequest{})
	if err != nil || len(list.GetSecrets()) != 0 {
		t.Fatalf("secrets after rm: %v, %v", list.GetSecrets(), err)
	}
	if bytes.Contains(logs.Bytes(), value) || bytes.Contains(logs.Bytes(), unusedValue) {
		t.Fatal("a secret value appears in the logs")
	}
	if !bytes.Contains(logs.Bytes(), []byte("secret created")) {
		t.Fatal("the logs were not captured: the check above proves nothing")
	}
}

// removeService removes a service and waits until its tasks are gone.
func removeService(t *testing.T, c *cluster, name string) {
	t.Helper()
	ctx, cancel := c.ctx()
	defer cancel()
	if _, err := c.control(c.live()[0]).RemoveService(ctx, &pb.RemoveServiceRequest{Ref: name}); err != nil {
		t.Fatalf("remove service %s: %v", name, err)
	}
}

// TestSecretBadInput: each mistake gets one clear error and changes
// nothing; an oversized secret is logged once on the server.
func TestSecretBadInput(t *testing.T) {
	c := newCluster(t)
	logs := c.captureLogs()
	c.addManagers(1)
	cl := c.control(c.leader())
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	c.createSecret("taken", []byte("v"))

	create := func(name string, data []byte) error {
		_, err := cl.CreateSecret(ctx, &pb.CreateSecretRequest{Spec: &pb.SecretSpec{Annotations: &pb.Annotations{Name: name}, Data: data}})
		return err
	}
	big := bytes.Repeat([]byte("x"), 500*1024+1)
	for _, tc := range []struct {
		name string
		err  error
		code codes.Code
		want string
	}{
		{"too large", create("big", big), codes.InvalidArgument, "more than the limit of 512000 bytes"},
		{"empty", create("empty", nil), codes.InvalidArgument, "is empty"},
		{"duplicate name", create("taken", []byte("w")), codes.AlreadyExists, `a secret named "taken" already exists`},
		{"invalid name", create("no/slash", []byte("w")), codes.InvalidArgument, "invalid secret name"},
		{"no name", create("", []byte("w")), codes.InvalidArgument, "needs a name"},
	} {
		if status.Code(tc.err) != tc.code || !strings.Contains(status.Convert(tc.err).Message(), tc.want) {
			t.Errorf("%s: %v; want %v with %q", tc.name, tc.err, tc.code, tc.want)
		}
	}
	if err := create("exactly-500k", big[:500*1024]); err != nil {
		t.Errorf("a secret of exactly 500 KiB: %v", err)
	}
	if n := bytes.Count(logs.Bytes(), []byte("secret refused: too large")); n != 1 {
		t.Errorf("the oversized secret was logged %d times, want once", n)
	}

	svc := func(refs ...*pb.SecretReference) error {
		spec := secretReaderSpec("svc", c.base, 1, refs...)
		_, err := cl.CreateService(ctx, &pb.CreateServiceRequest{Spec: spec})
		return err
	}
	for _, tc := range []struct {
		name string
		err  error
		code codes.Code
		want string
	}{
		{"unknown secret", svc(&pb.SecretReference{SecretName: "nope"}), codes.NotFound, `no secret "nope"`},
		{"invalid target", svc(&pb.SecretReference{SecretName: "taken", Target: "../etc/passwd"}), codes.InvalidArgument, "invalid secret target"},
		{"duplicate target", svc(&pb.SecretReference{SecretName: "taken", Target: "x"}, &pb.SecretReference{SecretName: "exactly-500k", Target: "x"}), codes.InvalidArgument, `both use the target "x"`},
		{"bad mode", svc(&pb.SecretReference{SecretName: "taken", Mode: 0o7777}), codes.InvalidArgument, "not a permission mode"},
	} {
		if status.Code(tc.err) != tc.code || !strings.Contains(status.Convert(tc.err).Message(), tc.want) {
			t.Errorf("%s: %v; want %v with %q", tc.name, tc.err, tc.code, tc.want)
		}
	}
	_, err := cl.RemoveSecret(ctx, &pb.RemoveSecretRequest{Ref: "nope"})
	if status.Code(err) != codes.NotFound {
		t.Errorf("remove an unknown secret: %v, want NotFound", err)
	}

	// Nothing changed: the two good secrets, no service.
	list, err := cl.ListSecrets(ctx, &pb.ListSecretsRequest{})
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, s := range list.GetSecrets() {
		names = append(names, s.GetSpec().GetAnnotations().GetName())
	}
	if !slices.Equal(names, []string{"exactly-500k", "taken"}) {
		t.Errorf("secrets after the bad input: %v", names)
	}
	services, err := cl.ListServices(ctx, &pb.ListServicesRequest{})
	if err != nil || len(services.GetServices()) != 0 {
		t.Errorf("services after the bad input: %v, %v", services.GetServices(), err)
	}

	// A good reference gets its defaults: target = name, mode 0400.
	if err := svc(&pb.SecretReference{SecretName: "taken"}); err != nil {
		t.Fatal(err)
	}
	got, err := cl.GetService(ctx, &pb.GetServiceRequest{Ref: "svc"})
	if err != nil {
		t.Fatal(err)
	}
	refs := got.GetService().GetSpec().GetTask().GetContainer().GetSecrets()
	if len(refs) != 1 || refs[0].GetTarget() != "taken" || refs[0].GetMode() != 0o400 || refs[0].GetSecretId() == "" {
		t.Errorf("stored reference %v, want target taken, mode 0400 and the secret's ID", refs)
	}
}

// TestSecretFilesAfterAgentRestart: a task that ended while its agent was
// down loses its secret files when the agent comes back, files no task
// claims are removed, and the replacement task gets its own.
func TestSecretFilesAfterAgentRestart(t *testing.T) {
	c := newCluster(t)
	c.addManagers(1)
	c.addWorkers(1)
	w := c.workers[0]
	out := filepath.Join(c.base, "out")
	if err := os.Mkdir(out, 0o755); err != nil {
		t.Fatal(err)
	}
	value := secretValue(t)
	c.createSecret("db-password", value)
	c.createService(secretReaderSpec("reader", out, 1, &pb.SecretReference{SecretName: "db-password", Target: "pw"}))
	var first *pb.Task
	c.eventually(30*time.Second, "the reader running", func() (bool, string) {
		for _, tk := range c.serviceTasks("reader") {
			if tk.GetStatus().GetState() == pb.TaskState_TASK_STATE_RUNNING {
				if _, err := os.Stat(filepath.Join(out, tk.GetId())); err == nil {
					first = tk
					return true, ""
				}
			}
		}
		return false, "not yet"
	})
	root := w.a.SecretsDir()
	if files := filesUnder(filepath.Join(root, first.GetId())); len(files) != 1 {
		t.Fatalf("secret files of the running task: %v", files)
	}

	// The agent stops; the task dies meanwhile; a stray directory appears.
	w.a.Close()
	if err := syscall.Kill(int(first.GetStatus().GetPid()), syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	stray := filepath.Join(root, "no-such-task")
	if err := os.MkdirAll(stray, 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(stray, "pw"), []byte("left over"), 0o400); err != nil {
		t.Fatal(err)
	}
	c.restartWorker(w)

	c.eventually(45*time.Second, "only the replacement's secret files", func() (bool, string) {
		files := filesUnder(root)
		var live *pb.Task
		for _, tk := range c.serviceTasks("reader") {
			if tk.GetId() != first.GetId() && tk.GetStatus().GetState() == pb.TaskState_TASK_STATE_RUNNING && tk.GetDesiredState() == pb.TaskState_TASK_STATE_RUNNING {
				live = tk
			}
		}
		if live == nil {
			return false, fmt.Sprintf("no replacement running yet; files %v", files)
		}
		want := filepath.Join(root, live.GetId(), "pw")
		return len(files) == 1 && files[0] == want, fmt.Sprintf("files %v, want [%s]", files, want)
	})
	if _, err := os.Stat(stray); !os.IsNotExist(err) {
		t.Errorf("the stray secrets directory is still there: %v", err)
	}
}
