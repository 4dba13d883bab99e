package process

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"net"
	"os"
	"os/user"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"

	pb "github.com/shoal-cluster/shoal/proto"
	"github.com/shoal-cluster/shoal/worker"
	"github.com/shoal-cluster/shoal/worker/process/supervise"
)

// defaultPath is the PATH a task gets unless its env sets one; bare
// program names are looked up in the task's PATH.
const defaultPath = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

func permanent(format string, args ...any) error {
	return &worker.PermanentError{Err: fmt.Errorf(format, args...)}
}

// Prepare checks the task's program, resolves its user, allocates its
// ports and writes its spec. A task with secrets finds their directory in
// $SHOAL_SECRETS_DIR, one with configs theirs in $SHOAL_CONFIGS_DIR; the
// directories and files are given to the task's user (a config's file to
// the uid and gid its reference names, if any).
// Preparing a prepared task does nothing, so its ports stay the same across
// retries and agent restarts. Problems the task cannot recover from (no
// such executable, unknown user, bad env) are *worker.PermanentError.
func (r *Runtime) Prepare(ctx context.Context, t *pb.Task, files worker.TaskFiles) error {
	id := t.GetId()
	dir, ok := r.taskDir(id)
	if !ok {
		return permanent("invalid task ID %q", id)
	}
	unlock, err := r.locks.Lock(ctx, id)
	if err != nil {
		return err
	}
	defer unlock()
	if supervise.FileExists(filepath.Join(dir, supervise.SpecFile)) {
		return nil
	}

	spec, err := r.buildSpec(t, dir)
	if err != nil {
		return err
	}
	for env, set := range map[string]worker.FileSet{worker.SecretsDirEnv: files.Secrets, worker.ConfigsDirEnv: files.Configs} {
		if set.Dir == "" {
			continue
		}
		spec.Env = mergeEnv(spec.Env, []string{env + "=" + set.Dir})
		if err := giveFiles(set, spec.Credential); err != nil {
			return fmt.Errorf("prepare task %s: %w", id, err)
		}
	}
	if err := os.MkdirAll(dir, 0o711); err != nil {
		return fmt.Errorf("prepare task %s: %w", id, err)
	}
	fail := func(err error) error {
		os.RemoveAll(dir)
		return err
	}
	home := filepath.Join(dir, supervise.WorkDir)
	if err := os.MkdirAll(home, 0o700); err != nil {
		return fail(fmt.Errorf("prepare task %s: %w", id, err))
	}
	if c := spec.Credential; c != nil {
		if err := os.Chown(home, int(c.UID), int(c.GID)); err != nil {
			return fail(fmt.Errorf("prepare task %s: give the work directory to its user: %w", id, err))
		}
	}
	// The lock file exists before any supervisor, which only opens it.
	lf, err := os.OpenFile(filepath.Join(dir, supervise.LockFile), os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return fail(fmt.Errorf("prepare task %s: %w", id, err))
	}
	lf.Close()

	// Ports last, under the port lock until the spec that records them is
	// written, so two tasks never get the same one.
	r.portMu.Lock()
	defer r.portMu.Unlock()
	ports, err := r.allocatePorts(t)
	if err != nil {
		return fail(fmt.Errorf("prepare task %s: %w", id, err))
	}
	spec.Ports = ports
	spec.Env = portEnv(spec.Env, ports, t.GetSpec().GetContainer().GetEnv())
	if err := supervise.WriteJSONAtomic(dir, supervise.SpecFile, spec, 0o600); err != nil {
		return fail(fmt.Errorf("prepare task %s: %w", id, err))
	}
	r.log.Debug("task prepared", "task_id", id, "argv", spec.Argv, "ports", len(ports))
	return nil
}

// buildSpec resolves everything about a task but its ports.
func (r *Runtime) buildSpec(t *pb.Task, dir string) (*supervise.Spec, error) {
	c := t.GetSpec().GetContainer()
	if c == nil {
		return nil, permanent("task %s has no container spec", t.GetId())
	}
	var argv []string
	if len(c.GetCommand()) > 0 {
		argv = append(argv, c.GetCommand()...)
	} else if c.GetImage() != "" {
		argv = append(argv, c.GetImage())
	}
	if len(argv) == 0 || argv[0] == "" {
		return nil, permanent("task %s has no program: set its command or image to an executable", t.GetId())
	}
	argv = append(argv, c.GetArgs()...)
	if len(c.GetMounts()) > 0 {
		r.log.Warn("the process runtime ignores mounts", "task_id", t.GetId())
	}

	home := filepath.Join(dir, supervise.WorkDir)
	env := []string{
		"PATH=" + defaultPath,
		"HOME=" + home,
		"SHOAL_TASK_ID=" + t.GetId(),
		"SHOAL_SERVICE_ID=" + t.GetServiceId(),
		"SHOAL_SERVICE_NAME=" + t.GetServiceName(),
		"SHOAL_TASK_SLOT=" + strconv.FormatUint(t.GetSlot(), 10),
	}
	if t.GetNodeId() != "" {
		env = append(env, "SHOAL_NODE_ID="+t.GetNodeId())
	}
	if r.advertiseIP != "" {
		env = append(env, "SHOAL_HOST_IP="+r.advertiseIP)
	}
	if r.dnsAddr != "" {
		env = append(env, "SHOAL_DNS="+r.dnsAddr)
	}
	for _, kv := range c.GetEnv() {
		if k, _, ok := strings.Cut(kv, "="); !ok || k == "" {
			return nil, permanent("task %s: invalid environment entry %q: want KEY=VALUE", t.GetId(), kv)
		}
	}
	env = mergeEnv(env, c.GetEnv())

	prog, err := resolveProgram(argv[0], lookupEnv(env, "PATH"))
	if err != nil {
		return nil, err
	}
	argv[0] = prog

	workingDir := home
	if d := c.GetDir(); d != "" {
		if !filepath.IsAbs(d) {
			return nil, permanent("task %s: working directory %q is not an absolute path", t.GetId(), d)
		}
		fi, err := os.Stat(d)
		if err != nil || !fi.IsDir() {
			return nil, permanent("task %s: working directory %s does not exist on node", t.GetId(), d)
		}
		workingDir = d
	}

	cred, err := resolveUser(c.GetUser())
	if err != nil {
		return nil, err
	}
	if cred != nil {
		// The kernel would refuse with a bare "permission denied" at start.
		// The default work directory will be the user's own: only its
		// parents need to be searchable.
		wdCheck := workingDir
		if workingDir == home {
			wdCheck = dir
		}
		for _, chk := range []struct{ what, path, check string }{
			{"program", prog, prog},
			{"working directory", workingDir, wdCheck},
		} {
			if blocked := blockedFor(chk.check, cred); blocked != "" {
				return nil, permanent("task %s: user %q (uid %d) cannot reach its %s %s: %s is not searchable or executable by it",
					t.GetId(), c.GetUser(), cred.UID, chk.what, chk.path, blocked)
			}
		}
	}
	var memory, cpus int64
	if l := t.GetSpec().GetResources().GetLimits(); l != nil {
		memory, cpus = l.GetMemoryBytes(), l.GetNanoCpus()
	}
	return &supervise.Spec{
		Version:     supervise.SpecVersion,
		TaskID:      t.GetId(),
		ServiceID:   t.GetServiceId(),
		ServiceName: t.GetServiceName(),
		Slot:        t.GetSlot(),
		Argv:        argv,
		Env:         env,
		Dir:         workingDir,
		User:        c.GetUser(),
		Credential:  cred,
		MemoryBytes: memory,
		NanoCPUs:    cpus,
		StopGrace:   time.Duration(c.GetStopGracePeriod()),
		MaxLogBytes: r.maxLogBytes,
		CreatedAt:   time.Now(),
	}, nil
}

// blockedFor returns the first existing path component, from / down to
// path itself, that cred may not search (directories) or execute (path),
// or "" when none. Mode bits only: ACLs are not consulted.
func blockedFor(path string, cred *supervise.Credential) string {
	if cred.UID == 0 {
		return ""
	}
	parts := strings.Split(strings.Trim(filepath.Clean(path), "/"), "/")
	cur := "/"
	for i := -1; i < len(parts); i++ {
		if i >= 0 {
			cur = filepath.Join(cur, parts[i])
		}
		fi, err := os.Stat(cur)
		if err != nil {
			return "" // not there yet: created reachable
		}
		st, ok := fi.Sys().(*syscall.Stat_t)
		if !ok {
			return ""
		}
		mode := uint32(fi.Mode().Perm())
		var bit uint32
		switch {
		case st.Uid == cred.UID:
			bit = 0o100
		case st.Gid == cred.GID || slices.Contains(cred.Groups, st.Gid):
			bit = 0o010
		default:
			bit = 0o001
		}
		if mode&bit == 0 {
			return cur
		}
	}
	return ""
}

// mergeEnv sets each KEY=VALUE of over in base, replacing an earlier
// value of the same key in place.
func mergeEnv(base, over []string) []string {
	out := append([]string{}, base...)
	idx := map[string]int{}
	for i, kv := range out {
		k, _, _ := strings.Cut(kv, "=")
		idx[k] = i
	}
	for _, kv := range over {
		k, _, _ := strings.Cut(kv, "=")
		if i, ok := idx[k]; ok {
			out[i] = kv
			continue
		}
		idx[k] = len(out)
		out = append(out, kv)
	}
	return out
}

func lookupEnv(env []string, key string) string {
	for i := len(env) - 1; i >= 0; i-- {
		if k, v, _ := strings.Cut(env[i], "="); k == key {
			return v
		}
	}
	return ""
}

// portEnv adds PORT (the first port) and PORT_<target> (each) to env,
// under the task's own env, which may override them.
func portEnv(env []string, ports []supervise.PortBinding, taskEnv []string) []string {
	if len(ports) == 0 {
		return env
	}
	vars := []string{"PORT=" + strconv.Itoa(int(ports[0].HostPort))}
	for _, p := range ports {
		if p.TargetPort != 0 {
			vars = append(vars, fmt.Sprintf("PORT_%d=%d", p.TargetPort, p.HostPort))
		}
	}
	return mergeEnv(mergeEnv(env, vars), taskEnv)
}

// resolveProgram finds the task's executable: an absolute path, or a bare
// name looked up in the task's PATH.
func resolveProgram(prog, path string) (string, error) {
	if strings.Contains(prog, "/") {
		if !filepath.IsAbs(prog) {
			return "", permanent("program %q must be an absolute path or a name looked up in PATH", prog)
		}
		return prog, checkExecutable(prog)
	}
	var firstErr error
	for _, d := range filepath.SplitList(path) {
		if d == "" || !filepath.IsAbs(d) {
			continue
		}
		cand := filepath.Join(d, prog)
		err := checkExecutable(cand)
		if err == nil {
			return cand, nil
		}
		var perm *worker.PermanentError
		if firstErr == nil && errors.As(err, &perm) && !strings.Contains(err.Error(), "not found") {
			firstErr = err
		}
	}
	if firstErr != nil {
		return "", firstErr
	}
	return "", permanent("executable %s not found on node (searched PATH=%s)", prog, path)
}

func checkExecutable(path string) error {
	fi, err := os.Stat(path)
	if errors.Is(err, fs.ErrNotExist) || errors.Is(err, syscall.ENOTDIR) {
		return permanent("executable %s not found on node", path)
	}
	if err != nil {
		return fmt.Errorf("check executable %s: %w", path, err)
	}
	if fi.IsDir() {
		return permanent("executable %s is not executable: it is a directory", path)
	}
	if fi.Mode().Perm()&0o111 == 0 {
		return permanent("executable %s is not executable", path)
	}
	return nil
}

// resolveUser turns "user", "uid", "user:group" or "uid:gid" into a
// credential. Switching user needs root; asking for the agent's own user
// is allowed (and switches nothing).
func resolveUser(spec string) (*supervise.Credential, error) {
	if spec == "" {
		return nil, nil
	}
	name, group, hasGroup := strings.Cut(spec, ":")
	if name == "" || (hasGroup && group == "") {
		return nil, permanent("invalid user %q: want user, uid, user:group or uid:gid", spec)
	}
	var cred supervise.Credential
	var u *user.User
	if n, err := strconv.ParseUint(name, 10, 32); err == nil {
		cred.UID = uint32(n)
		cred.GID = uint32(n) // unless the passwd entry says otherwise
		u, _ = user.LookupId(name)
	} else {
		if u, err = user.Lookup(name); err != nil {
			return nil, permanent("unknown user %q on node", name)
		}
		n, err := strconv.ParseUint(u.Uid, 10, 32)
		if err != nil {
			return nil, permanent("user %q has a non-numeric uid %q", name, u.Uid)
		}
		cred.UID = uint32(n)
	}
	if u != nil {
		if n, err := strconv.ParseUint(u.Gid, 10, 32); err == nil {
			cred.GID = uint32(n)
		}
		if gids, err := u.GroupIds(); err == nil {
			for _, g := range gids {
				if n, err := strconv.ParseUint(g, 10, 32); err == nil {
					cred.Groups = append(cred.Groups, uint32(n))
				}
			}
		}
	}
	if hasGroup {
		if n, err := strconv.ParseUint(group, 10, 32); err == nil {
			cred.GID = uint32(n)
		} else {
			g, err := user.LookupGroup(group)
			if err != nil {
				return nil, permanent("unknown group %q on node", group)
			}
			n, err := strconv.ParseUint(g.Gid, 10, 32)
			if err != nil {
				return nil, permanent("group %q has a non-numeric gid %q", group, g.Gid)
			}
			cred.GID = uint32(n)
		}
	}
	if os.Geteuid() != 0 {
		if int(cred.UID) == os.Geteuid() && (!hasGroup || int(cred.GID) == os.Getegid()) {
			return nil, nil
		}
		return nil, permanent("cannot run the task as user %q: the agent does not run as root", spec)
	}
	return &cred, nil
}

// allocatePorts picks a free host port on the advertise IP for each of the
// task's ports, avoiding ports already given to other tasks of this
// runtime. A host-mode port with a published port keeps that port. The
// caller holds portMu.
func (r *Runtime) allocatePorts(t *pb.Task) ([]supervise.PortBinding, error) {
	configs := t.GetEndpoint().GetPorts()
	if len(configs) == 0 {
		configs = t.GetEndpoint().GetSpec().GetPorts()
	}
	if len(configs) == 0 {
		return nil, nil
	}
	used := r.portsInUse()
	hostIP := r.advertiseIP
	if hostIP == "" {
		hostIP = "0.0.0.0"
	}
	var out []supervise.PortBinding
	for _, pc := range configs {
		proto := "tcp"
		if pc.GetProtocol() == pb.PortProtocol_PORT_PROTOCOL_UDP {
			proto = "udp"
		}
		var port uint32
		if pc.GetPublishMode() == pb.PublishMode_PUBLISH_MODE_HOST && pc.GetPublishedPort() != 0 {
			port = pc.GetPublishedPort()
		} else {
			for attempt := 0; ; attempt++ {
				p, err := freePort(proto, hostIP)
				if err != nil {
					return nil, fmt.Errorf("allocate a %s port on %s: %w", proto, hostIP, err)
				}
				if !used[proto+"/"+strconv.Itoa(int(p))] {
					port = p
					break
				}
				if attempt == 50 {
					return nil, fmt.Errorf("allocate a %s port on %s: every free port offered is taken by another task", proto, hostIP)
				}
			}
		}
		used[proto+"/"+strconv.Itoa(int(port))] = true
		out = append(out, supervise.PortBinding{TargetPort: pc.GetTargetPort(), HostIP: hostIP, HostPort: port, Protocol: proto})
	}
	return out, nil
}

// portsInUse are the ports recorded in the specs of this runtime's tasks.
func (r *Runtime) portsInUse() map[string]bool {
	used := map[string]bool{}
	entries, _ := os.ReadDir(r.dir)
	for _, e := range entries {
		if !e.IsDir() {
			continue
		}
		var spec supervise.Spec
		if ok, _ := supervise.ReadJSON(filepath.Join(r.dir, e.Name()), supervise.SpecFile, &spec); !ok {
			continue
		}
		for _, p := range spec.Ports {
			used[p.Protocol+"/"+strconv.Itoa(int(p.HostPort))] = true
		}
	}
	return used
}

// freePort asks the kernel for a free port by binding port 0.
func freePort(proto, ip string) (uint32, error) {
	addr := net.JoinHostPort(ip, "0")
	if proto == "udp" {
		c, err := net.ListenPacket("udp", addr)
		if err != nil {
			return 0, err
		}
		defer c.Close()
		return uint32(c.LocalAddr().(*net.UDPAddr).Port), nil
	}
	l, err := net.Listen("tcp", addr)
	if err != nil {
		return 0, err
	}
	defer l.Close()
	return uint32(l.Addr().(*net.TCPAddr).Port), nil
}

// giveFiles hands a task's secrets or configs directory, the directories
// below it and its files to the user the task runs as (nil: the agent's
// own user, who owns them already); a file whose reference named an owner
// keeps that owner.
func giveFiles(set worker.FileSet, cred *supervise.Credential) error {
	if cred == nil {
		return nil
	}
	uid, gid := int(cred.UID), int(cred.GID)
	dirs := map[string]bool{set.Dir: true}
	for _, f := range set.Files {
		for d := filepath.Dir(f.Path); strings.HasPrefix(d, set.Dir+string(filepath.Separator)); d = filepath.Dir(d) {
			dirs[d] = true
		}
	}
	for d := range dirs {
		if err := os.Chown(d, uid, gid); err != nil {
			return fmt.Errorf("give the task's files to its user: %w", err)
		}
	}
	for _, f := range set.Files {
		fu, fg := f.Owner(uid, gid)
		if err := os.Chown(f.Path, fu, fg); err != nil {
			return fmt.Errorf("give the task's files to its user: %w", err)
		}
	}
	return nil
}
