package supervise

import "syscall"

// taskSysProcAttr puts the task in a process group of its own, kills it
// when its supervisor dies (the kernel sets Pdeathsig after switching
// credentials, so it survives the user switch) and runs it as cred.
func taskSysProcAttr(cred *Credential) *syscall.SysProcAttr {
	a := &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	if cred != nil {
		a.Credential = &syscall.Credential{Uid: cred.UID, Gid: cred.GID, Groups: cred.Groups}
	}
	return a
}

// setCgroupFD makes the child start in the cgroup v2 directory fd.
func setCgroupFD(a *syscall.SysProcAttr, fd int) {
	a.UseCgroupFD = true
	a.CgroupFD = fd
}
