package supervise

import (
	"bufio"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// Tasks get one cgroup each, <mount>/<CgroupParent>/<task-id>, in the
// memory and cpu hierarchies (cgroup v1) or in the unified hierarchy
// (cgroup v2). Limits come from the task's Resources.Limits: MemoryBytes
// becomes memory.limit_in_bytes + memory.memsw.limit_in_bytes (v1) or
// memory.max + memory.swap.max=0 (v2), so a task cannot swap its way past
// its limit; NanoCPUs becomes a CFS quota over a 100ms period.

const cpuPeriodMicros = 100000

// cgroupEntry is one task cgroup directory.
type CgroupEntry struct {
	// Controller is "memory" or "cpu" (v1) or "" (v2).
	Controller string `json:"controller,omitempty"`
	// Mount is the hierarchy's mount point and MountRoot the cgroup path
	// mounted there (from /proc/self/mountinfo).
	Mount     string `json:"mount"`
	MountRoot string `json:"mount_root"`
	// Dir is the task's cgroup directory.
	Dir string `json:"dir"`
}

// cgroupPlan is cgroup.json: where a task's processes go.
type CgroupPlan struct {
	Version     int           `json:"version"`
	Entries     []CgroupEntry `json:"entries"`
	MemoryBytes int64         `json:"memory_bytes,omitempty"`
	NanoCPUs    int64         `json:"nano_cpus,omitempty"`
}

// cgroupManager creates and removes task cgroups.
type CgroupManager struct {
	version int
	// v1: the memory and cpu hierarchies (cpu may be absent), and the
	// cpuacct hierarchy where it is mounted apart from cpu (it measures a
	// task's CPU use); v2: unified.
	memory, cpu, cpuacct *cgroupMount
	unified              *cgroupMount
	parent               string
}

type cgroupMount struct {
	mount, root string
}

func (m *cgroupMount) parentDir(parent string) string { return filepath.Join(m.mount, parent) }

// NewCgroupV2Manager uses only the cgroup v2 hierarchy mounted at mount
// (whose root in this namespace is root), with tasks' cgroups under
// parent, which must exist.
func NewCgroupV2Manager(mount, root, parent string) *CgroupManager {
	return &CgroupManager{version: 2, unified: &cgroupMount{mount, root}, parent: parent}
}

// DetectCgroups finds writable cgroup hierarchies and creates the parent
// cgroup(s). It returns why cgroups cannot be used when they cannot.
func DetectCgroups(parent string) (*CgroupManager, error) {
	if os.Geteuid() != 0 {
		return nil, errors.New("the agent is not running as root")
	}
	mounts, err := ReadCgroupMounts()
	if err != nil {
		return nil, err
	}
	// cgroup v2 with the controllers we need: unified (or a v2 mount that
	// actually holds the memory controller; in hybrid mode the v2 mount has
	// no controllers and v1 is used).
	for _, m := range mounts {
		if m.FSType != "cgroup2" {
			continue
		}
		ctrls, err := os.ReadFile(filepath.Join(m.Mount, "cgroup.controllers"))
		if err != nil || !slices.Contains(strings.Fields(string(ctrls)), "memory") {
			continue
		}
		cm := &CgroupManager{version: 2, unified: &cgroupMount{m.Mount, m.Root}, parent: parent}
		if err := cm.setupV2(); err != nil {
			return nil, err
		}
		return cm, nil
	}
	cm := &CgroupManager{version: 1, parent: parent}
	for _, m := range mounts {
		if m.FSType != "cgroup" {
			continue
		}
		opts := strings.Split(m.SuperOpts, ",")
		if slices.Contains(opts, "memory") && cm.memory == nil {
			cm.memory = &cgroupMount{m.Mount, m.Root}
		}
		if slices.Contains(opts, "cpu") && cm.cpu == nil {
			cm.cpu = &cgroupMount{m.Mount, m.Root}
		}
		if slices.Contains(opts, "cpuacct") && !slices.Contains(opts, "cpu") && cm.cpuacct == nil {
			cm.cpuacct = &cgroupMount{m.Mount, m.Root}
		}
	}
	if cm.memory == nil {
		return nil, errors.New("no cgroup v1 memory hierarchy or cgroup v2 memory controller is mounted")
	}
	if err := os.MkdirAll(cm.memory.parentDir(parent), 0o755); err != nil {
		return nil, fmt.Errorf("create parent memory cgroup: %w", err)
	}
	if cm.cpu != nil {
		dir := cm.cpu.parentDir(parent)
		if err := os.MkdirAll(dir, 0o755); err != nil || !FileExists(filepath.Join(dir, "cpu.cfs_quota_us")) {
			cm.cpu = nil // no CPU limits, memory still works
		}
	}
	if cm.cpuacct != nil {
		if err := os.MkdirAll(cm.cpuacct.parentDir(parent), 0o755); err != nil {
			cm.cpuacct = nil // no CPU figures, limits still work
		}
	}
	return cm, nil
}

func (c *CgroupManager) setupV2() error {
	dir := c.unified.parentDir(c.parent)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return fmt.Errorf("create parent cgroup: %w", err)
	}
	// Delegate memory and cpu down to the task cgroups. The mount root
	// usually has them already; writing is harmless when it does.
	for _, d := range []string{c.unified.mount, dir} {
		enabled, _ := os.ReadFile(filepath.Join(d, "cgroup.subtree_control"))
		var want []string
		for _, ctl := range []string{"memory", "cpu"} {
			if !slices.Contains(strings.Fields(string(enabled)), ctl) {
				want = append(want, "+"+ctl)
			}
		}
		if len(want) == 0 {
			continue
		}
		for _, w := range want { // one by one: cpu may be missing
			_ = writeCgroupFile(d, "cgroup.subtree_control", w)
		}
	}
	enabled, err := os.ReadFile(filepath.Join(dir, "cgroup.subtree_control"))
	if err != nil {
		return fmt.Errorf("read %s: %w", filepath.Join(dir, "cgroup.subtree_control"), err)
	}
	if !slices.Contains(strings.Fields(string(enabled)), "memory") {
		return fmt.Errorf("cannot enable the memory controller for %s", dir)
	}
	return nil
}

// hasCPU reports whether CPU quotas are enforced.
func (c *CgroupManager) HasCPU() bool {
	if c.version == 1 {
		return c.cpu != nil
	}
	enabled, _ := os.ReadFile(filepath.Join(c.unified.parentDir(c.parent), "cgroup.subtree_control"))
	return slices.Contains(strings.Fields(string(enabled)), "cpu")
}

func (c *CgroupManager) Describe() string {
	ctrls := "memory"
	if c.HasCPU() {
		ctrls += ", cpu"
	}
	return fmt.Sprintf("cgroup v%d (%s)", c.version, ctrls)
}

// create makes a task's cgroup(s) and writes its limits. The plan is
// usable even with an error: the error says which limit is not enforced.
func (c *CgroupManager) Create(taskID string, memoryBytes, nanoCPUs int64) (*CgroupPlan, error) {
	plan := &CgroupPlan{Version: c.version, MemoryBytes: memoryBytes, NanoCPUs: nanoCPUs}
	var errs []error
	quota := int64(0)
	if nanoCPUs > 0 {
		quota = max(nanoCPUs*cpuPeriodMicros/1e9, 1000)
	}
	if c.version == 2 {
		dir := filepath.Join(c.unified.parentDir(c.parent), taskID)
		if err := os.Mkdir(dir, 0o755); err != nil && !errors.Is(err, fs.ErrExist) {
			return nil, fmt.Errorf("create cgroup %s: %w", dir, err)
		}
		plan.Entries = append(plan.Entries, CgroupEntry{Mount: c.unified.mount, MountRoot: c.unified.root, Dir: dir})
		if memoryBytes > 0 {
			if err := writeCgroupFile(dir, "memory.max", strconv.FormatInt(memoryBytes, 10)); err != nil {
				errs = append(errs, fmt.Errorf("memory limit: %w", err))
			}
			if FileExists(filepath.Join(dir, "memory.swap.max")) {
				_ = writeCgroupFile(dir, "memory.swap.max", "0")
			}
		}
		if quota > 0 {
			if err := writeCgroupFile(dir, "cpu.max", fmt.Sprintf("%d %d", quota, cpuPeriodMicros)); err != nil {
				errs = append(errs, fmt.Errorf("cpu limit: %w", err))
			}
		}
		return plan, errors.Join(errs...)
	}

	dir := filepath.Join(c.memory.parentDir(c.parent), taskID)
	if err := os.Mkdir(dir, 0o755); err != nil && !errors.Is(err, fs.ErrExist) {
		return nil, fmt.Errorf("create cgroup %s: %w", dir, err)
	}
	plan.Entries = append(plan.Entries, CgroupEntry{Controller: "memory", Mount: c.memory.mount, MountRoot: c.memory.root, Dir: dir})
	if memoryBytes > 0 {
		if err := writeCgroupFile(dir, "memory.limit_in_bytes", strconv.FormatInt(memoryBytes, 10)); err != nil {
			errs = append(errs, fmt.Errorf("memory limit: %w", err))
		} else if FileExists(filepath.Join(dir, "memory.memsw.limit_in_bytes")) {
			// memory+swap; must not be below the memory limit, which it
			// never is here.
			_ = writeCgroupFile(dir, "memory.memsw.limit_in_bytes", strconv.FormatInt(memoryBytes, 10))
		}
	}
	if c.cpu != nil {
		cdir := filepath.Join(c.cpu.parentDir(c.parent), taskID)
		if err := os.Mkdir(cdir, 0o755); err != nil && !errors.Is(err, fs.ErrExist) {
			errs = append(errs, fmt.Errorf("create cgroup %s: %w", cdir, err))
		} else {
			plan.Entries = append(plan.Entries, CgroupEntry{Controller: "cpu", Mount: c.cpu.mount, MountRoot: c.cpu.root, Dir: cdir})
			if quota > 0 {
				if err := writeCgroupFile(cdir, "cpu.cfs_period_us", strconv.Itoa(cpuPeriodMicros)); err != nil {
					errs = append(errs, fmt.Errorf("cpu limit: %w", err))
				} else if err := writeCgroupFile(cdir, "cpu.cfs_quota_us", strconv.FormatInt(quota, 10)); err != nil {
					errs = append(errs, fmt.Errorf("cpu limit: %w", err))
				}
			}
		}
	} else if quota > 0 {
		errs = append(errs, errors.New("cpu limit: no cpu cgroup controller with CFS bandwidth control"))
	}
	if c.cpuacct != nil {
		adir := filepath.Join(c.cpuacct.parentDir(c.parent), taskID)
		if err := os.Mkdir(adir, 0o755); err != nil && !errors.Is(err, fs.ErrExist) {
			errs = append(errs, fmt.Errorf("create cgroup %s (CPU use will not be measured): %w", adir, err))
		} else {
			plan.Entries = append(plan.Entries, CgroupEntry{Controller: "cpuacct", Mount: c.cpuacct.mount, MountRoot: c.cpuacct.root, Dir: adir})
		}
	}
	return plan, errors.Join(errs...)
}

// planDirs are the task cgroup directories a manager would create, for
// cleaning up when cgroup.json is gone.
func (c *CgroupManager) PlanDirs(taskID string) []string {
	if c == nil {
		return nil
	}
	if c.version == 2 {
		return []string{filepath.Join(c.unified.parentDir(c.parent), taskID)}
	}
	dirs := []string{filepath.Join(c.memory.parentDir(c.parent), taskID)}
	if c.cpu != nil {
		dirs = append(dirs, filepath.Join(c.cpu.parentDir(c.parent), taskID))
	}
	if c.cpuacct != nil {
		dirs = append(dirs, filepath.Join(c.cpuacct.parentDir(c.parent), taskID))
	}
	return dirs
}

func writeCgroupFile(dir, name, value string) error {
	path := filepath.Join(dir, name)
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_TRUNC, 0)
	if err != nil {
		return err
	}
	_, err = f.WriteString(value)
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return fmt.Errorf("write %q to %s: %w", value, path, err)
	}
	return nil
}

// cgroupPids lists the processes in a cgroup directory.
func CgroupPids(dir string) ([]int, error) {
	data, err := os.ReadFile(filepath.Join(dir, "cgroup.procs"))
	if err != nil {
		return nil, err
	}
	var pids []int
	for _, f := range strings.Fields(string(data)) {
		if pid, err := strconv.Atoi(f); err == nil {
			pids = append(pids, pid)
		}
	}
	return pids, nil
}

// killCgroup SIGKILLs every process in the task's cgroups (except the
// caller), through cgroup.kill where the kernel has it.
func KillCgroup(dirs []string) {
	self := os.Getpid()
	for _, dir := range dirs {
		if FileExists(filepath.Join(dir, "cgroup.kill")) {
			_ = writeCgroupFile(dir, "cgroup.kill", "1")
		}
		pids, _ := CgroupPids(dir)
		for _, pid := range pids {
			if pid != self && pid > 0 {
				_ = syscall.Kill(pid, syscall.SIGKILL)
			}
		}
	}
}

// removeCgroups kills what is left in the task's cgroups and removes them,
// retrying while the killed processes exit, until the deadline.
func RemoveCgroups(dirs []string, deadline time.Time) error {
	var errs []error
	for _, dir := range dirs {
		for {
			err := syscall.Rmdir(dir)
			if err == nil || errors.Is(err, syscall.ENOENT) {
				break
			}
			if !errors.Is(err, syscall.EBUSY) || time.Now().After(deadline) {
				errs = append(errs, fmt.Errorf("remove cgroup %s: %w", dir, err))
				break
			}
			KillCgroup([]string{dir})
			time.Sleep(20 * time.Millisecond)
		}
	}
	return errors.Join(errs...)
}

// oomKills reads how many processes of the task the kernel OOM-killed.
func (p *CgroupPlan) OOMKills() int {
	if p == nil {
		return 0
	}
	for _, e := range p.Entries {
		var file string
		switch {
		case p.Version == 2:
			file = "memory.events"
		case e.Controller == "memory":
			file = "memory.oom_control"
		default:
			continue
		}
		f, err := os.Open(filepath.Join(e.Dir, file))
		if err != nil {
			return 0
		}
		defer f.Close()
		sc := bufio.NewScanner(f)
		for sc.Scan() {
			k, v, ok := strings.Cut(sc.Text(), " ")
			if ok && k == "oom_kill" {
				n, _ := strconv.Atoi(strings.TrimSpace(v))
				return n
			}
		}
	}
	return 0
}

func (p *CgroupPlan) Dirs() []string {
	if p == nil {
		return nil
	}
	var dirs []string
	for _, e := range p.Entries {
		dirs = append(dirs, e.Dir)
	}
	return dirs
}

// join moves the calling process into the task's cgroups and returns a
// function that moves it back where it was. The supervisor joins before it
// forks the task, so the task and everything it ever forks start inside
// the cgroup, with no window in which a child could escape; it leaves right
// after the fork. Only the supervisor's own allocations during that window
// are charged to the task.
func (p *CgroupPlan) Join() (leave func(), err error) {
	own, err := readOwnCgroups()
	if err != nil {
		return nil, err
	}
	self := strconv.Itoa(os.Getpid())
	var back []string
	leave = func() {
		for _, dir := range back {
			_ = writeCgroupFile(dir, "cgroup.procs", self)
		}
	}
	for _, e := range p.Entries {
		rel, ok := own[e.Controller]
		if !ok {
			leave()
			return nil, fmt.Errorf("cannot find the supervisor's own %q cgroup", e.Controller)
		}
		if e.MountRoot != "/" {
			rel = strings.TrimPrefix(rel, e.MountRoot)
		}
		orig := filepath.Join(e.Mount, rel)
		if err := writeCgroupFile(e.Dir, "cgroup.procs", self); err != nil {
			leave()
			return nil, err
		}
		back = append(back, orig)
	}
	return leave, nil
}

// readOwnCgroups maps each v1 controller (and "" for v2) to the calling
// process's cgroup path.
func readOwnCgroups() (map[string]string, error) {
	data, err := os.ReadFile("/proc/self/cgroup")
	if err != nil {
		return nil, fmt.Errorf("read own cgroups: %w", err)
	}
	own := map[string]string{}
	for _, line := range strings.Split(strings.TrimSpace(string(data)), "\n") {
		parts := strings.SplitN(line, ":", 3)
		if len(parts) != 3 {
			continue
		}
		if parts[1] == "" {
			own[""] = parts[2]
			continue
		}
		for _, ctl := range strings.Split(parts[1], ",") {
			own[ctl] = parts[2]
		}
	}
	return own, nil
}

type MountInfo struct {
	Root, Mount, FSType, SuperOpts string
}

// readCgroupMounts lists cgroup and cgroup2 mounts from mountinfo.
func ReadCgroupMounts() ([]MountInfo, error) {
	f, err := os.Open("/proc/self/mountinfo")
	if err != nil {
		return nil, fmt.Errorf("read mounts: %w", err)
	}
	defer f.Close()
	var out []MountInfo
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		// id parent major:minor root mountpoint opts [optional...] - fstype source superopts
		pre, post, ok := strings.Cut(sc.Text(), " - ")
		if !ok {
			continue
		}
		pf, qf := strings.Fields(pre), strings.Fields(post)
		if len(pf) < 5 || len(qf) < 3 {
			continue
		}
		if qf[0] != "cgroup" && qf[0] != "cgroup2" {
			continue
		}
		out = append(out, MountInfo{Root: unescapeMount(pf[3]), Mount: unescapeMount(pf[4]), FSType: qf[0], SuperOpts: qf[2]})
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("read mounts: %w", err)
	}
	return out, nil
}

// unescapeMount undoes mountinfo's octal escapes (\040 for a space).
func unescapeMount(s string) string {
	if !strings.Contains(s, `\`) {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == '\\' && i+3 < len(s) {
			if n, err := strconv.ParseUint(s[i+1:i+4], 8, 8); err == nil {
				b.WriteByte(byte(n))
				i += 3
				continue
			}
		}
		b.WriteByte(s[i])
	}
	return b.String()
}
