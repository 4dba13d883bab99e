package worker

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path"
	"path/filepath"
	"strconv"
	"strings"

	pb "github.com/shoal-cluster/shoal/proto"
)

// tmpfsCandidates are where the agent looks for an in-memory filesystem
// to put secret and config files on, in order.
var tmpfsCandidates = []string{"/run", "/dev/shm"}

// defaultSecretsRoot picks the directory under which this node writes its
// tasks' secret files: one of its own on the first tmpfs found, or "" when
// there is none (tasks that use secrets are then rejected).
func defaultSecretsRoot(nodeID string) string { return defaultTmpfsRoot("shoal-secrets-" + nodeID) }

// defaultConfigsRoot picks the directory under which this node writes its
// tasks' config files: on a tmpfs as Docker does, or else in the data dir
// (configs are not sensitive).
func defaultConfigsRoot(nodeID, dataDir string) string {
	if root := defaultTmpfsRoot("shoal-configs-" + nodeID); root != "" {
		return root
	}
	return filepath.Join(dataDir, "worker", "configs")
}

func defaultTmpfsRoot(name string) string {
	for _, dir := range tmpfsCandidates {
		if isTmpfs(dir) && writable(dir) {
			return filepath.Join(dir, name)
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

// taskFiles writes one kind of file (secrets or configs) for tasks under
// root: root/<task ID>/ (0700) holds one file per reference (its mode, and
// owner when the reference names one). Values come from memory only;
// nothing here is ever logged or kept in the task db.
type taskFiles struct {
	root string
	kind fileKind
}

// fileKind is what differs between secret and config files.
type fileKind struct {
	noun string
	// noRoot is why a task using this kind cannot run when root is "".
	noRoot error
	// refs are a task's references of this kind.
	refs func(t *pb.Task) []fileRef
	// rel is a target's path below the task's directory; false when the
	// target is unsafe (the managers check targets too; the worker does
	// not trust a path from the wire).
	rel func(target string) (string, bool)
}

// fileRef is one reference to a secret or config, as a file to write.
type fileRef struct {
	id, name, target string
	mode             fs.FileMode
	uid, gid         string // numeric; "" leaves the default owner
}

// errNoSecretsDir is why a task using secrets cannot run on this node.
var errNoSecretsDir = errors.New("this node has no in-memory filesystem (tmpfs) for secret files: mount one at /run or /dev/shm")

// newSecretFiles writes secrets: plain file names, default mode 0400.
func newSecretFiles(root string) *taskFiles {
	return &taskFiles{root: root, kind: fileKind{
		noun:   "secret",
		noRoot: errNoSecretsDir,
		refs: func(t *pb.Task) []fileRef {
			var out []fileRef
			for _, r := range t.GetSpec().GetContainer().GetSecrets() {
				out = append(out, fileRef{id: r.GetSecretId(), name: r.GetSecretName(), target: r.GetTarget(), mode: fileMode(r.GetMode(), 0o400)})
			}
			return out
		},
		rel: func(target string) (string, bool) { return target, safeName(target) },
	}}
}

// newConfigFiles writes configs: absolute targets, kept as a path below
// the task's directory, default mode 0444.
func newConfigFiles(root string) *taskFiles {
	return &taskFiles{root: root, kind: fileKind{
		noun:   "config",
		noRoot: errors.New("this node has no directory for config files"),
		refs: func(t *pb.Task) []fileRef {
			var out []fileRef
			for _, r := range t.GetSpec().GetContainer().GetConfigs() {
				out = append(out, fileRef{id: r.GetConfigId(), name: r.GetConfigName(), target: r.GetTarget(), mode: fileMode(r.GetMode(), 0o444), uid: r.GetUid(), gid: r.GetGid()})
			}
			return out
		},
		rel: func(target string) (string, bool) {
			rel := strings.TrimPrefix(target, "/")
			return rel, path.IsAbs(target) && path.Clean(target) == target && !strings.Contains(target, `\`) && filepath.IsLocal(rel)
		},
	}}
}

func fileMode(m uint32, def fs.FileMode) fs.FileMode {
	if m == 0 {
		return def
	}
	return fs.FileMode(m) & fs.ModePerm
}

func (s *taskFiles) dir(taskID string) string { return filepath.Join(s.root, taskID) }

// safeName reports whether name is a plain file name.
func safeName(name string) bool {
	return name != "" && name != "." && name != ".." && !strings.ContainsAny(name, `/\`) && filepath.Base(name) == name
}

// ownerID parses a reference's numeric uid or gid; "" is -1 (unchanged).
func ownerID(what, id string) (int, error) {
	if id == "" {
		return -1, nil
	}
	n, err := strconv.ParseUint(id, 10, 31)
	if err != nil {
		return 0, &PermanentError{Err: fmt.Errorf("%s %q is not a numeric ID", what, id)}
	}
	return int(n), nil
}

// write materialises a task's files of this kind from values (by ID). It
// returns ok=false, writing nothing, when a value has not arrived yet.
func (s *taskFiles) write(t *pb.Task, values map[string][]byte) (FileSet, bool, error) {
	refs := s.kind.refs(t)
	if len(refs) == 0 {
		return FileSet{}, true, nil
	}
	if s.root == "" {
		return FileSet{}, false, &PermanentError{Err: s.kind.noRoot}
	}
	// The task ID names a directory under root: like the targets, it must
	// be a plain file name ("..", say, would reset root's parent).
	if !safeName(t.GetId()) {
		return FileSet{}, false, &PermanentError{Err: fmt.Errorf("task ID %q cannot name a %ss directory: a plain file name is required", t.GetId(), s.kind.noun)}
	}
	for _, r := range refs {
		if _, ok := values[r.id]; !ok {
			return FileSet{}, false, nil
		}
		if _, ok := s.kind.rel(r.target); !ok {
			return FileSet{}, false, &PermanentError{Err: fmt.Errorf("%s %q has an unsafe target %q", s.kind.noun, r.name, r.target)}
		}
	}
	if err := os.MkdirAll(s.root, 0o711); err != nil {
		return FileSet{}, false, fmt.Errorf("create the %ss directory: %w", s.kind.noun, err)
	}
	// 0711: task users may reach their own directory but not list others.
	if err := os.Chmod(s.root, 0o711); err != nil {
		return FileSet{}, false, fmt.Errorf("create the %ss directory: %w", s.kind.noun, err)
	}
	dir := s.dir(t.GetId())
	if err := os.RemoveAll(dir); err != nil {
		return FileSet{}, false, fmt.Errorf("reset the %ss of task %s: %w", s.kind.noun, t.GetId(), err)
	}
	if err := os.Mkdir(dir, 0o700); err != nil {
		return FileSet{}, false, fmt.Errorf("create the %ss of task %s: %w", s.kind.noun, t.GetId(), err)
	}
	out := FileSet{Dir: dir}
	for _, r := range refs {
		rel, _ := s.kind.rel(r.target)
		f, err := writeTaskFile(dir, rel, values[r.id], r)
		if err != nil {
			os.RemoveAll(dir)
			var perm *PermanentError
			if errors.As(err, &perm) {
				return FileSet{}, false, &PermanentError{Err: fmt.Errorf("%s %q of task %s: %w", s.kind.noun, r.name, t.GetId(), perm.Err)}
			}
			return FileSet{}, false, fmt.Errorf("write %s %q of task %s: %w", s.kind.noun, r.name, t.GetId(), err)
		}
		out.Files = append(out.Files, f)
	}
	return out, true, nil
}

// writeTaskFile writes one file at dir/rel (its directories 0700, owned
// like dir) with the reference's mode and owner.
func writeTaskFile(dir, rel string, data []byte, r fileRef) (TaskFile, error) {
	uid, err := ownerID("uid", r.uid)
	if err != nil {
		return TaskFile{}, err
	}
	gid, err := ownerID("gid", r.gid)
	if err != nil {
		return TaskFile{}, err
	}
	p := filepath.Join(dir, rel)
	if err := os.MkdirAll(filepath.Dir(p), 0o700); err != nil {
		return TaskFile{}, err
	}
	f, err := os.OpenFile(p, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return TaskFile{}, err
	}
	if _, err := f.Write(data); err != nil {
		f.Close()
		return TaskFile{}, err
	}
	if err := f.Close(); err != nil {
		return TaskFile{}, err
	}
	if uid >= 0 || gid >= 0 {
		if err := os.Chown(p, uid, gid); err != nil {
			return TaskFile{}, fmt.Errorf("give the file to uid %s gid %s: %w", r.uid, r.gid, err)
		}
	}
	return TaskFile{Target: r.target, Path: p, UID: r.uid, GID: r.gid}, os.Chmod(p, r.mode)
}

// present reports whether a task's files are all in place (on a tmpfs
// they are lost when the node restarts).
func (s *taskFiles) present(t *pb.Task) bool {
	for _, r := range s.kind.refs(t) {
		rel, ok := s.kind.rel(r.target)
		if !ok {
			return false
		}
		if _, err := os.Lstat(filepath.Join(s.dir(t.GetId()), rel)); err != nil {
			return false
		}
	}
	return true
}

// remove deletes a task's files; it is idempotent.
func (s *taskFiles) remove(taskID string) error {
	if s.root == "" || taskID == "" || !safeName(taskID) {
		return nil
	}
	return os.RemoveAll(s.dir(taskID))
}

// tasks lists the task IDs that have a directory here.
func (s *taskFiles) tasks() ([]string, error) {
	if s.root == "" {
		return nil, nil
	}
	entries, err := os.ReadDir(s.root)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("list the %ss directory: %w", s.kind.noun, err)
	}
	var out []string
	for _, e := range entries {
		if e.IsDir() {
			out = append(out, e.Name())
		}
	}
	return out, nil
}
