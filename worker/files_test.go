package worker

import (
	"errors"
	"os"
	"path/filepath"
	"slices"
	"syscall"
	"testing"

	pb "github.com/shoal-cluster/shoal/proto"
)

func secretTask(id string, refs ...*pb.SecretReference) *pb.Task {
	return &pb.Task{Id: id, Spec: &pb.TaskSpec{Container: &pb.ContainerSpec{Secrets: refs}}}
}

func TestSecretFilesWriteAndRemove(t *testing.T) {
	s := newSecretFiles(filepath.Join(t.TempDir(), "secrets"))
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
		s := newSecretFiles(t.TempDir())
		_, _, err := s.write(secretTask("t1", &pb.SecretReference{SecretId: "s1", SecretName: "x", Target: target}), values)
		if !errors.As(err, &perm) {
			t.Errorf("target %q: %v, want a permanent error", target, err)
		}
	}
	noTmpfs := newSecretFiles("")
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

func configTask(id string, refs ...*pb.ConfigReference) *pb.Task {
	return &pb.Task{Id: id, Spec: &pb.TaskSpec{Container: &pb.ContainerSpec{Configs: refs}}}
}

// TestConfigFilesWrite: each config lands at its target below the task's
// directory, with its mode (default 0444) and, when named, its owner.
func TestConfigFilesWrite(t *testing.T) {
	s := newConfigFiles(filepath.Join(t.TempDir(), "configs"))
	task := configTask("t1",
		&pb.ConfigReference{ConfigId: "c1", ConfigName: "app", Target: "/app.conf"},
		&pb.ConfigReference{ConfigId: "c2", ConfigName: "nginx", Target: "/etc/nginx/nginx.conf", Mode: 0o440, Uid: "65534", Gid: "65533"},
	)
	values := map[string][]byte{"c1": []byte("port=80")}
	if _, ok, err := s.write(task, values); ok || err != nil {
		t.Fatalf("write with a config missing = ok %v, err %v; want not ready", ok, err)
	}
	values["c2"] = []byte("worker_processes 1;")
	got, ok, err := s.write(task, values)
	if err != nil || !ok {
		t.Fatalf("write = ok %v, err %v", ok, err)
	}
	if got.Dir != s.dir("t1") || len(got.Files) != 2 || got.Files[1].Path != filepath.Join(got.Dir, "etc", "nginx", "nginx.conf") || got.Files[1].Target != "/etc/nginx/nginx.conf" {
		t.Fatalf("write returned %+v", got)
	}
	for _, c := range []struct {
		path     string
		mode     os.FileMode
		data     string
		uid, gid int
	}{
		{filepath.Join(got.Dir, "app.conf"), 0o444, "port=80", os.Geteuid(), os.Getegid()},
		{filepath.Join(got.Dir, "etc/nginx/nginx.conf"), 0o440, "worker_processes 1;", 65534, 65533},
	} {
		if c.uid == 65534 && os.Geteuid() != 0 {
			continue // only root gives files away
		}
		fi, err := os.Stat(c.path)
		if err != nil {
			t.Fatal(err)
		}
		data, _ := os.ReadFile(c.path)
		st := fi.Sys().(*syscall.Stat_t)
		if fi.Mode().Perm() != c.mode || string(data) != c.data || int(st.Uid) != c.uid || int(st.Gid) != c.gid {
			t.Errorf("%s: mode %v data %q owner %d:%d; want %v %q %d:%d", c.path, fi.Mode().Perm(), data, st.Uid, st.Gid, c.mode, c.data, c.uid, c.gid)
		}
	}
	if u, g := got.Files[0].Owner(7, 8); u != 7 || g != 8 {
		t.Errorf("a config without an owner is given to %d:%d, want the task's user 7:8", u, g)
	}
	if u, g := got.Files[1].Owner(7, 8); u != 65534 || g != 65533 {
		t.Errorf("a config with an owner is given to %d:%d, want 65534:65533", u, g)
	}
	if !s.present(task) {
		t.Error("present = false after write")
	}
	if err := s.remove("t1"); err != nil || s.present(task) {
		t.Errorf("remove: %v, present after: %v", err, s.present(task))
	}
}

func TestConfigFilesRefuse(t *testing.T) {
	values := map[string][]byte{"c1": []byte("v")}
	var perm *PermanentError
	for _, ref := range []*pb.ConfigReference{
		{Target: "relative"}, {Target: "/"}, {Target: "/../x"}, {Target: "/a/../../b"}, {Target: "/a/"}, {Target: ""},
		{Target: "/ok", Uid: "root"}, {Target: "/ok", Gid: "-1"},
	} {
		ref.ConfigId, ref.ConfigName = "c1", "x"
		root := filepath.Join(t.TempDir(), "configs")
		s := newConfigFiles(root)
		if _, _, err := s.write(configTask("t1", ref), values); !errors.As(err, &perm) {
			t.Errorf("target %q uid %q gid %q: %v, want a permanent error", ref.GetTarget(), ref.GetUid(), ref.GetGid(), err)
		}
		if files := filesBelow(t, filepath.Dir(root)); len(files) != 0 {
			t.Errorf("target %q: a refused write left %v", ref.GetTarget(), files)
		}
	}
}

// filesBelow lists the regular files under dir.
func filesBelow(t *testing.T, dir string) []string {
	t.Helper()
	var out []string
	err := filepath.WalkDir(dir, func(p string, d os.DirEntry, err error) error {
		if err == nil && d.Type().IsRegular() {
			out = append(out, p)
		}
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	return out
}
