package worker

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"

	pb "github.com/shoal-cluster/shoal/proto"
)

// tmpfsCandidates are where the agent looks for an in-memory filesystem
// to put secret files on, in order.
var tmpfsCandidates = []string{"/run", "/dev/shm"}

// defaultSecretsRoot picks the directory under which this node writes its
// tasks' secret files: one of its own on the first tmpfs found, or "" when
// there is none (tasks that use secrets are then rejected).
func defaultSecretsRoot(nodeID string) string {
	for _, dir := range tmpfsCandidates {
		if isTmpfs(dir) && writable(dir) {
			return filepath.Join(dir, "shoal-secrets-"+nodeID)
		}
	}
	return ""
}

// writable reports whether the agent may create entries in dir.
func writable(dir string) bool {
	f, err := os.CreateTemp(dir, ".shoal-probe-*")
	if err != nil {
		return false
	}
	f.Close()
	os.Remove(f.Name())
	return true
}

// secretFiles writes tasks' secrets as files under root: root/<task ID>/
// (0700) holds one file per reference (its mode, default 0400). Values come
// from memory only; nothing here is ever logged or kept in the task db.
type secretFiles struct {
	root string
}

// errNoSecretsDir is why a task using secrets cannot run on this node.
var errNoSecretsDir = errors.New("this node has no in-memory filesystem (tmpfs) for secret files: mount one at /run or /dev/shm")

func (s *secretFiles) dir(taskID string) string { return filepath.Join(s.root, taskID) }

// safeTarget reports whether target is a plain file name (the managers
// check this too; the worker does not trust a path from the wire).
func safeTarget(target string) bool {
	return target != "" && target != "." && target != ".." && !strings.ContainsAny(target, `/\`) && filepath.Base(target) == target
}

// write materialises a task's secrets from values (by secret ID). It
// returns ok=false, writing nothing, when a value has not arrived yet.
func (s *secretFiles) write(t *pb.Task, values map[string][]byte) (TaskSecrets, bool, error) {
	refs := t.GetSpec().GetContainer().GetSecrets()
	if len(refs) == 0 {
		return TaskSecrets{}, true, nil
	}
	if s.root == "" {
		return TaskSecrets{}, false, &PermanentError{Err: errNoSecretsDir}
	}
	// The task ID names a directory under root: like the targets, it must
	// be a plain file name ("..", say, would reset root's parent).
	if !safeTarget(t.GetId()) {
		return TaskSecrets{}, false, &PermanentError{Err: fmt.Errorf("task ID %q cannot name a secrets directory: a plain file name is required", t.GetId())}
	}
	for _, r := range refs {
		if _, ok := values[r.GetSecretId()]; !ok {
			return TaskSecrets{}, false, nil
		}
		if !safeTarget(r.GetTarget()) {
			return TaskSecrets{}, false, &PermanentError{Err: fmt.Errorf("secret %q has an unsafe target %q: a plain file name is required", r.GetSecretName(), r.GetTarget())}
		}
	}
	if err := os.MkdirAll(s.root, 0o711); err != nil {
		return TaskSecrets{}, false, fmt.Errorf("create the secrets directory: %w", err)
	}
	// 0711: task users may reach their own directory but not list others.
	if err := os.Chmod(s.root, 0o711); err != nil {
		return TaskSecrets{}, false, fmt.Errorf("create the secrets directory: %w", err)
	}
	dir := s.dir(t.GetId())
	if err := os.RemoveAll(dir); err != nil {
		return TaskSecrets{}, false, fmt.Errorf("reset the secrets of task %s: %w", t.GetId(), err)
	}
	if err := os.Mkdir(dir, 0o700); err != nil {
		return TaskSecrets{}, false, fmt.Errorf("create the secrets of task %s: %w", t.GetId(), err)
	}
	out := TaskSecrets{Dir: dir}
	for _, r := range refs {
		path := filepath.Join(dir, r.GetTarget())
		mode := fs.FileMode(r.GetMode()) & fs.ModePerm
		if r.GetMode() == 0 {
			mode = 0o400
		}
		if err := writeSecretFile(path, values[r.GetSecretId()], mode); err != nil {
			os.RemoveAll(dir)
			return TaskSecrets{}, false, fmt.Errorf("write secret %q of task %s: %w", r.GetSecretName(), t.GetId(), err)
		}
		out.Files = append(out.Files, SecretFile{Target: r.GetTarget(), Path: path})
	}
	return out, true, nil
}

func writeSecretFile(path string, data []byte, mode fs.FileMode) error {
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return err
	}
	if _, err := f.Write(data); err != nil {
		f.Close()
		return err
	}
	if err := f.Close(); err != nil {
		return err
	}
	return os.Chmod(path, mode)
}

// present reports whether a task's secret files are all in place (they
// are lost when the node restarts: tmpfs does not survive a reboot).
func (s *secretFiles) present(t *pb.Task) bool {
	for _, r := range t.GetSpec().GetContainer().GetSecrets() {
		if _, err := os.Lstat(filepath.Join(s.dir(t.GetId()), r.GetTarget())); err != nil {
			return false
		}
	}
	return true
}

// remove deletes a task's secret files; it is idempotent.
func (s *secretFiles) remove(taskID string) error {
	if s.root == "" || taskID == "" || !safeTarget(taskID) {
		return nil
	}
	return os.RemoveAll(s.dir(taskID))
}

// tasks lists the task IDs that have a secrets directory.
func (s *secretFiles) tasks() ([]string, error) {
	if s.root == "" {
		return nil, nil
	}
	entries, err := os.ReadDir(s.root)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("list the secrets directory: %w", err)
	}
	var out []string
	for _, e := range entries {
		if e.IsDir() {
			out = append(out, e.Name())
		}
	}
	return out, nil
}
