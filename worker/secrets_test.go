package worker

import (
	"errors"
	"os"
	"path/filepath"
	"slices"
	"testing"

	pb "github.com/shoal-cluster/shoal/proto"
)

func secretTask(id string, refs ...*pb.SecretReference) *pb.Task {
	return &pb.Task{Id: id, Spec: &pb.TaskSpec{Container: &pb.ContainerSpec{Secrets: refs}}}
}

func TestSecretFilesWriteAndRemove(t *testing.T) {
	s := &secretFiles{root: filepath.Join(t.TempDir(), "secrets")}
	task := secretTask("t1",
		&pb.SecretReference{SecretId: "s1", SecretName: "db", Target: "pw", Mode: 0o400},
		&pb.SecretReference{SecretId: "s2", SecretName: "tls", Target: "tls.key", Mode: 0o440},
	)
	values := map[string][]byte{"s1": []byte("hunter2")}

	// A value has not arrived: nothing is written, no error.
	if _, ok, err := s.write(task, values); ok || err != nil {
		t.Fatalf("write with a value missing = ok %v, err %v; want not ready", ok, err)
	}
	if _, err := os.Stat(s.dir("t1")); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("a task dir exists before its values arrived: %v", err)
	}

	values["s2"] = []byte("key")
	got, ok, err := s.write(task, values)
	if err != nil || !ok {
		t.Fatalf("write = ok %v, err %v", ok, err)
	}
	if got.Dir != s.dir("t1") || len(got.Files) != 2 || got.Files[0].Path != filepath.Join(got.Dir, "pw") || got.Files[1].Target != "tls.key" {
		t.Fatalf("write returned %+v", got)
	}
	for _, c := range []struct {
		path string
		mode os.FileMode
		data string
	}{
		{filepath.Join(got.Dir, "pw"), 0o400, "hunter2"},
		{filepath.Join(got.Dir, "tls.key"), 0o440, "key"},
	} {
		fi, err := os.Stat(c.path)
		if err != nil {
			t.Fatal(err)
		}
		data, _ := os.ReadFile(c.path)
		if fi.Mode().Perm() != c.mode || string(data) != c.data {
			t.Errorf("%s: mode %v data %q; want %v %q", c.path, fi.Mode().Perm(), data, c.mode, c.data)
		}
	}
	for dir, mode := range map[string]os.FileMode{s.root: 0o711, got.Dir: 0o700} {
		if fi, err := os.Stat(dir); err != nil || fi.Mode().Perm() != mode {
			t.Errorf("%s: %v, %v; want mode %v", dir, fi.Mode().Perm(), err, mode)
		}
	}
	if !s.present(task) {
		t.Error("present = false after write")
	}
	// Writing again (a retried prepare) replaces the files.
	if _, ok, err := s.write(task, values); !ok || err != nil {
		t.Fatalf("second write = ok %v, err %v", ok, err)
	}
	if ids, err := s.tasks(); err != nil || !slices.Equal(ids, []string{"t1"}) {
		t.Errorf("tasks = %v, %v", ids, err)
	}

	if err := s.remove("t1"); err != nil {
		t.Fatal(err)
	}
	if s.present(task) {
		t.Error("present = true after remove")
	}
	if err := s.remove("t1"); err != nil {
		t.Errorf("second remove: %v", err)
	}
	if ids, _ := s.tasks(); len(ids) != 0 {
		t.Errorf("tasks after remove = %v", ids)
	}
}

func TestSecretFilesRefuse(t *testing.T) {
	values := map[string][]byte{"s1": []byte("v")}
	var perm *PermanentError
	for _, target := range []string{"../escape", "a/b", "..", ".", ""} {
		s := &secretFiles{root: t.TempDir()}
		_, _, err := s.write(secretTask("t1", &pb.SecretReference{SecretId: "s1", SecretName: "x", Target: target}), values)
		if !errors.As(err, &perm) {
			t.Errorf("target %q: %v, want a permanent error", target, err)
		}
	}
	noTmpfs := &secretFiles{}
	if _, _, err := noTmpfs.write(secretTask("t1", &pb.SecretReference{SecretId: "s1", Target: "x"}), values); !errors.As(err, &perm) || !errors.Is(err, errNoSecretsDir) {
		t.Errorf("no secrets dir: %v, want a permanent error about tmpfs", err)
	}
	// A task without secrets needs no directory at all.
	if got, ok, err := noTmpfs.write(secretTask("t2"), nil); !ok || err != nil || got.Dir != "" {
		t.Errorf("no secrets: %+v, %v, %v", got, ok, err)
	}
}

func TestDefaultSecretsRootIsTmpfs(t *testing.T) {
	root := defaultSecretsRoot("node1")
	if root == "" {
		t.Skip("no tmpfs at /run or /dev/shm on this machine")
	}
	if !isTmpfs(filepath.Dir(root)) || filepath.Base(root) != "shoal-secrets-node1" {
		t.Errorf("default secrets root %s is not a node directory on a tmpfs", root)
	}
}
