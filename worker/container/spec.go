package container

import (
	"bufio"
	"fmt"
	"os"
	"path"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"

	specs "github.com/opencontainers/runtime-spec/specs-go"
	pb "github.com/shoal-cluster/shoal/proto"
	"github.com/shoal-cluster/shoal/worker"
	"github.com/shoal-cluster/shoal/worker/docker"
)

// defaultPath is a container's PATH when neither its image nor its task
// sets one (Docker's default).
const defaultPath = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

// defaultCaps is Docker's default capability set.
var defaultCaps = []string{
	"CAP_CHOWN", "CAP_DAC_OVERRIDE", "CAP_FSETID", "CAP_FOWNER", "CAP_MKNOD",
	"CAP_NET_RAW", "CAP_SETGID", "CAP_SETUID", "CAP_SETFCAP", "CAP_SETPCAP",
	"CAP_NET_BIND_SERVICE", "CAP_SYS_CHROOT", "CAP_KILL", "CAP_AUDIT_WRITE",
}

// maskedPaths and readonlyPaths are those Docker sets for a container
// that is not privileged.
var (
	maskedPaths = []string{
		"/proc/asound", "/proc/acpi", "/proc/interrupts", "/proc/kcore", "/proc/keys",
		"/proc/latency_stats", "/proc/timer_list", "/proc/timer_stats", "/proc/sched_debug",
		"/proc/scsi", "/sys/firmware", "/sys/devices/virtual/powercap",
	}
	readonlyPaths = []string{
		"/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger",
	}
)

func permanent(format string, args ...any) error {
	return &worker.PermanentError{Err: fmt.Errorf(format, args...)}
}

// specInput is what the OCI spec of a task is made from.
type specInput struct {
	task     *pb.Task
	image    Image
	rootfs   string
	bundle   string // the directory of config.json, hosts, hostname, resolv.conf
	hostname string
	netns    string // "" shares the node's network namespace
	extraEnv []string
	files    worker.TaskFiles
	cgroup   string // cgroupsPath
	volumes  string // where named volumes live on the node
}

// argv is the task's command line: its command (entrypoint) and args,
// each taken from the image unless the task sets it; a task that sets its
// command and no args drops the image's cmd, as Docker does.
func argv(c *pb.ContainerSpec, cfg Image) []string {
	entry := cfg.Config.Entrypoint
	cmd := cfg.Config.Cmd
	if len(c.GetCommand()) > 0 {
		entry, cmd = c.GetCommand(), nil
	}
	if len(c.GetArgs()) > 0 {
		cmd = c.GetArgs()
	}
	return append(append([]string{}, entry...), cmd...)
}

// mergeEnv sets each KEY=VALUE of over in base, replacing an earlier value
// of the same key in place.
func mergeEnv(base []string, over ...[]string) []string {
	out := append([]string{}, base...)
	idx := map[string]int{}
	for i, kv := range out {
		k, _, _ := strings.Cut(kv, "=")
		idx[k] = i
	}
	for _, list := range over {
		for _, kv := range list {
			k, _, _ := strings.Cut(kv, "=")
			if i, ok := idx[k]; ok {
				out[i] = kv
				continue
			}
			idx[k] = len(out)
			out = append(out, kv)
		}
	}
	return out
}

func lookupEnv(env []string, key string) (string, bool) {
	for i := len(env) - 1; i >= 0; i-- {
		if k, v, _ := strings.Cut(env[i], "="); k == key {
			return v, true
		}
	}
	return "", false
}

var hostnameUnsafe = regexp.MustCompile(`[^a-zA-Z0-9-]`)

// hostnameFor is a task's hostname: its ID, cut to Docker's 12 characters
// of a container ID, in hostname characters.
func hostnameFor(taskID string) string {
	h := hostnameUnsafe.ReplaceAllString(taskID, "-")
	if len(h) > 12 {
		h = h[:12]
	}
	h = strings.Trim(h, "-")
	if h == "" {
		h = "task"
	}
	return h
}

// buildSpec makes the task's OCI runtime spec.
func buildSpec(in specInput) (*specs.Spec, error) {
	t := in.task
	c := t.GetSpec().GetContainer()
	args := argv(c, in.image)
	if len(args) == 0 || args[0] == "" {
		return nil, permanent("task %s has no command: its image %s sets no entrypoint or cmd, and the task sets neither", t.GetId(), c.GetImage())
	}
	for _, kv := range c.GetEnv() {
		if k, _, ok := strings.Cut(kv, "="); !ok || k == "" {
			return nil, permanent("task %s: invalid environment entry %q: want KEY=VALUE", t.GetId(), kv)
		}
	}
	env := mergeEnv([]string{"PATH=" + defaultPath}, in.image.Config.Env, []string{
		"HOSTNAME=" + in.hostname,
		"SHOAL_TASK_ID=" + t.GetId(),
		// The name the docker runtime gives the task's container.
		"SHOAL_TASK_NAME=" + docker.ContainerName(t),
		"SHOAL_SERVICE_ID=" + t.GetServiceId(),
		"SHOAL_SERVICE_NAME=" + t.GetServiceName(),
		"SHOAL_TASK_SLOT=" + strconv.FormatUint(t.GetSlot(), 10),
	}, in.extraEnv, c.GetEnv())
	if t.GetNodeId() != "" {
		env = mergeEnv(env, []string{"SHOAL_NODE_ID=" + t.GetNodeId()})
	}

	userSpec := c.GetUser()
	if userSpec == "" {
		userSpec = in.image.Config.User
	}
	user, home, err := resolveUser(in.rootfs, userSpec)
	if err != nil {
		return nil, permanent("task %s: %v", t.GetId(), err)
	}
	if _, ok := lookupEnv(env, "HOME"); !ok {
		env = append(env, "HOME="+home)
	}

	pathEnv, _ := lookupEnv(env, "PATH")
	if err := checkProgram(in.rootfs, args[0], pathEnv); err != nil {
		return nil, permanent("task %s: %v", t.GetId(), err)
	}

	cwd := c.GetDir()
	if cwd == "" {
		cwd = in.image.Config.WorkingDir
	}
	if cwd == "" {
		cwd = "/"
	}
	if !path.IsAbs(cwd) {
		return nil, permanent("task %s: working directory %q is not an absolute path", t.GetId(), cwd)
	}

	caps := append([]string{}, defaultCaps...)
	var rlimits []specs.POSIXRlimit
	var nofile syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &nofile); err == nil {
		rlimits = append(rlimits, specs.POSIXRlimit{Type: "RLIMIT_NOFILE", Hard: nofile.Max, Soft: nofile.Max})
	}

	spec := &specs.Spec{
		Version: specs.Version,
		Process: &specs.Process{
			Args:            args,
			Env:             env,
			Cwd:             path.Clean(cwd),
			User:            user,
			Capabilities:    &specs.LinuxCapabilities{Bounding: caps, Effective: caps, Permitted: caps},
			NoNewPrivileges: true,
			Rlimits:         rlimits,
		},
		Root:     &specs.Root{Path: in.rootfs, Readonly: c.GetReadOnly()},
		Hostname: in.hostname,
		Mounts:   defaultMounts(),
		Linux: &specs.Linux{
			CgroupsPath: in.cgroup,
			Namespaces: []specs.LinuxNamespace{
				{Type: specs.PIDNamespace}, {Type: specs.IPCNamespace}, {Type: specs.UTSNamespace},
				{Type: specs.MountNamespace},
			},
			MaskedPaths:   maskedPaths,
			ReadonlyPaths: readonlyPaths,
			Resources: &specs.LinuxResources{
				Devices: []specs.LinuxDeviceCgroup{{Allow: false, Access: "rwm"}},
			},
		},
	}
	if in.netns != "" {
		spec.Linux.Namespaces = append(spec.Linux.Namespaces, specs.LinuxNamespace{Type: specs.NetworkNamespace, Path: in.netns})
	}
	if l := t.GetSpec().GetResources().GetLimits(); l != nil {
		if m := l.GetMemoryBytes(); m > 0 {
			// No swap: the task is held to its limit.
			swap := m
			spec.Linux.Resources.Memory = &specs.LinuxMemory{Limit: &m}
			if fileExistsAt("/sys/fs/cgroup/memory/memory.memsw.limit_in_bytes") || fileExistsAt("/sys/fs/cgroup/cgroup.controllers") {
				spec.Linux.Resources.Memory.Swap = &swap
			}
		}
		if n := l.GetNanoCpus(); n > 0 {
			period := uint64(100000)
			quota := n * int64(period) / 1e9
			spec.Linux.Resources.CPU = &specs.LinuxCPU{Period: &period, Quota: &quota}
		}
	}

	// The node's view of the task's name and resolver.
	for _, f := range []string{"hosts", "hostname", "resolv.conf"} {
		spec.Mounts = append(spec.Mounts, specs.Mount{
			Destination: "/etc/" + f, Type: "bind", Source: filepath.Join(in.bundle, f),
			Options: []string{"rbind", "rprivate"},
		})
	}
	taskMounts, err := mounts(t, in.volumes, filepath.Join(in.bundle, "volumes"))
	if err != nil {
		return nil, err
	}
	spec.Mounts = append(spec.Mounts, taskMounts...)
	for _, set := range []struct {
		noun  string
		files []worker.TaskFile
		dir   string
	}{{"secret", in.files.Secrets.Files, worker.ContainerSecretsDir}, {"config", in.files.Configs.Files, "/"}} {
		for _, f := range set.files {
			target := path.Join(set.dir, f.Target)
			for _, m := range spec.Mounts {
				if m.Destination == target {
					return nil, permanent("task %s: a mount and the %s %q both use %s", t.GetId(), set.noun, f.Target, target)
				}
			}
			spec.Mounts = append(spec.Mounts, specs.Mount{
				Destination: target, Type: "bind", Source: f.Path,
				Options: []string{"rbind", "ro", "nosuid", "nodev", "noexec", "rprivate"},
			})
		}
	}
	return spec, nil
}

// defaultMounts are Docker's: /proc, /dev, /dev/pts, /dev/shm, /dev/mqueue,
// /sys and its cgroups, read-only.
func defaultMounts() []specs.Mount {
	return []specs.Mount{
		{Destination: "/proc", Type: "proc", Source: "proc", Options: []string{"nosuid", "noexec", "nodev"}},
		{Destination: "/dev", Type: "tmpfs", Source: "tmpfs", Options: []string{"nosuid", "strictatime", "mode=755", "size=65536k"}},
		{Destination: "/dev/pts", Type: "devpts", Source: "devpts", Options: []string{"nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620", "gid=5"}},
		{Destination: "/sys", Type: "sysfs", Source: "sysfs", Options: []string{"nosuid", "noexec", "nodev", "ro"}},
		{Destination: "/sys/fs/cgroup", Type: "cgroup", Source: "cgroup", Options: []string{"ro", "nosuid", "noexec", "nodev", "relatime"}},
		{Destination: "/dev/mqueue", Type: "mqueue", Source: "mqueue", Options: []string{"nosuid", "noexec", "nodev"}},
		{Destination: "/dev/shm", Type: "tmpfs", Source: "shm", Options: []string{"nosuid", "noexec", "nodev", "mode=1777", "size=65536k"}},
	}
}

var volumeName = regexp.MustCompile(`^[a-zA-Z0-9][a-zA-Z0-9_.-]+$`)

// mounts maps the task's own mounts: binds of node paths, named volumes
// (directories below volumes, shared by the tasks that name them),
// anonymous volumes (below anon, removed with the task) and tmpfs.
func mounts(t *pb.Task, volumes, anon string) ([]specs.Mount, error) {
	var out []specs.Mount
	targets := map[string]bool{}
	for i, m := range t.GetSpec().GetContainer().GetMounts() {
		target := m.GetTarget()
		if !path.IsAbs(target) {
			return nil, permanent("task %s: mount target %q is not an absolute path", t.GetId(), target)
		}
		target = path.Clean(target)
		if targets[target] {
			return nil, permanent("task %s: two mounts on %s", t.GetId(), target)
		}
		targets[target] = true
		opts := []string{"rbind", "rprivate"}
		if m.GetReadOnly() {
			opts = append(opts, "ro")
		}
		switch m.GetType() {
		case pb.MountType_MOUNT_TYPE_BIND:
			src := m.GetSource()
			if !path.IsAbs(src) {
				return nil, permanent("task %s: bind mount source %q is not an absolute path", t.GetId(), src)
			}
			if _, err := os.Stat(src); err != nil {
				return nil, permanent("task %s: bind mount source %s does not exist on this node: %v", t.GetId(), src, err)
			}
			out = append(out, specs.Mount{Destination: target, Type: "bind", Source: src, Options: opts})
		case pb.MountType_MOUNT_TYPE_VOLUME:
			src := m.GetSource()
			var dir string
			switch {
			case src == "":
				dir = filepath.Join(anon, strconv.Itoa(i))
			case volumeName.MatchString(src):
				dir = filepath.Join(volumes, src)
			default:
				return nil, permanent("task %s: invalid volume name %q (letters, digits, _ . -)", t.GetId(), src)
			}
			if err := os.MkdirAll(dir, 0o755); err != nil {
				return nil, fmt.Errorf("task %s: create volume %s: %w", t.GetId(), dir, err)
			}
			out = append(out, specs.Mount{Destination: target, Type: "bind", Source: dir, Options: opts})
		case pb.MountType_MOUNT_TYPE_TMPFS:
			if m.GetSource() != "" {
				return nil, permanent("task %s: a tmpfs mount takes no source (got %q)", t.GetId(), m.GetSource())
			}
			o := []string{"nosuid", "nodev", "mode=1777"}
			if m.GetReadOnly() {
				o = append(o, "ro")
			}
			out = append(out, specs.Mount{Destination: target, Type: "tmpfs", Source: "tmpfs", Options: o})
		default:
			return nil, permanent("task %s: unknown mount type %v", t.GetId(), m.GetType())
		}
	}
	return out, nil
}

func fileExistsAt(p string) bool {
	_, err := os.Lstat(p)
	return err == nil
}

// inRoot is p inside rootfs, following no symlink out of it: a symlink
// met on the way is resolved against rootfs.
func inRoot(rootfs, p string) string {
	cur := "/"
	parts := strings.Split(strings.Trim(path.Clean("/"+p), "/"), "/")
	for hops := 0; len(parts) > 0 && hops < 40; {
		part := parts[0]
		parts = parts[1:]
		if part == "" {
			continue
		}
		next := path.Join(cur, part)
		target, err := os.Readlink(filepath.Join(rootfs, next))
		if err != nil {
			cur = next
			continue
		}
		hops++
		if path.IsAbs(target) {
			cur = "/"
		}
		parts = append(strings.Split(strings.Trim(target, "/"), "/"), parts...)
	}
	return filepath.Join(rootfs, cur)
}

// checkProgram checks that the program exists in the root filesystem: a
// path, or a name found in the container's PATH.
func checkProgram(rootfs, prog, pathEnv string) error {
	isExec := func(p string) bool {
		fi, err := os.Stat(inRoot(rootfs, p))
		return err == nil && !fi.IsDir() && fi.Mode().Perm()&0o111 != 0
	}
	if strings.Contains(prog, "/") {
		if !path.IsAbs(prog) {
			return nil // relative to the working directory: runc finds it or says so
		}
		if !isExec(prog) {
			return fmt.Errorf("executable %s not found in the image (or not executable)", prog)
		}
		return nil
	}
	for _, d := range strings.Split(pathEnv, ":") {
		if path.IsAbs(d) && isExec(path.Join(d, prog)) {
			return nil
		}
	}
	return fmt.Errorf("executable %s not found in the image's PATH %s", prog, pathEnv)
}

// resolveUser turns "", "user", "uid", "user:group" or "uid:gid" into the
// user the process runs as, reading the image's /etc/passwd and
// /etc/group, and returns the user's home directory.
func resolveUser(rootfs, spec string) (specs.User, string, error) {
	if spec == "" {
		spec = "0"
	}
	name, group, hasGroup := strings.Cut(spec, ":")
	if name == "" || (hasGroup && group == "") {
		return specs.User{}, "", fmt.Errorf("invalid user %q: want user, uid, user:group or uid:gid", spec)
	}
	passwd := readColonFile(inRoot(rootfs, "/etc/passwd"))
	groups := readColonFile(inRoot(rootfs, "/etc/group"))
	var u specs.User
	home := "/"
	userName := ""
	found := false
	if n, err := strconv.ParseUint(name, 10, 32); err == nil {
		u.UID, u.GID = uint32(n), uint32(n)
		if n == 0 {
			u.GID, home = 0, "/root"
		}
		for _, e := range passwd {
			if len(e) >= 6 && e[2] == name {
				userName, found = e[0], true
				if g, err := strconv.ParseUint(e[3], 10, 32); err == nil {
					u.GID = uint32(g)
				}
				home = e[5]
				break
			}
		}
	} else {
		for _, e := range passwd {
			if len(e) >= 6 && e[0] == name {
				uid, err1 := strconv.ParseUint(e[2], 10, 32)
				gid, err2 := strconv.ParseUint(e[3], 10, 32)
				if err1 != nil || err2 != nil {
					return u, "", fmt.Errorf("user %q has a non-numeric uid or gid in the image's /etc/passwd", name)
				}
				u.UID, u.GID, home, userName, found = uint32(uid), uint32(gid), e[5], name, true
				break
			}
		}
		if !found {
			return u, "", fmt.Errorf("unknown user %q: the image's /etc/passwd has no such user", name)
		}
	}
	if hasGroup {
		if n, err := strconv.ParseUint(group, 10, 32); err == nil {
			u.GID = uint32(n)
		} else {
			ok := false
			for _, e := range groups {
				if len(e) >= 3 && e[0] == group {
					if n, err := strconv.ParseUint(e[2], 10, 32); err == nil {
						u.GID, ok = uint32(n), true
					}
					break
				}
			}
			if !ok {
				return u, "", fmt.Errorf("unknown group %q: the image's /etc/group has no such group", group)
			}
		}
	}
	if userName != "" {
		for _, e := range groups {
			if len(e) < 4 {
				continue
			}
			for _, m := range strings.Split(e[3], ",") {
				if m == userName {
					if n, err := strconv.ParseUint(e[2], 10, 32); err == nil && uint32(n) != u.GID {
						u.AdditionalGids = append(u.AdditionalGids, uint32(n))
					}
				}
			}
		}
	}
	if home == "" {
		home = "/"
	}
	return u, home, nil
}

// readColonFile reads a passwd- or group-style file's entries; a missing
// file has none.
func readColonFile(p string) [][]string {
	f, err := os.Open(p)
	if err != nil {
		return nil
	}
	defer f.Close()
	var out [][]string
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		out = append(out, strings.Split(line, ":"))
	}
	return out
}
