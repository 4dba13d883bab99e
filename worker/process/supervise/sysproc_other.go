//go:build !linux

package supervise

import "syscall"

// taskSysProcAttr puts the task in a process group of its own and runs it
// as cred. Outside Linux there is no parent-death signal: a task outlives a
// SIGKILL-ed supervisor until the agent notices and kills its group.
func taskSysProcAttr(cred *Credential) *syscall.SysProcAttr {
	a := &syscall.SysProcAttr{Setpgid: true}
	if cred != nil {
		a.Credential = &syscall.Credential{Uid: cred.UID, Gid: cred.GID, Groups: cred.Groups}
	}
	return a
}

// setCgroupFD is a no-op: cgroups are Linux-only.
func setCgroupFD(*syscall.SysProcAttr, int) {}
