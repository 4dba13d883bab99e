package main

import (
	"bytes"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"github.com/shoal-cluster/shoal/worker/process/supervise"
)

// machine is what runs on this host on behalf of the suite's cluster.
type machine struct {
	tasks       []procFact       // hello processes started as tasks
	supervisors []supervisorFact // task supervisors (shoal-supervise)
	other       []int            // any other process whose command line names the suite's dir
}

// scanProcesses reads /proc for the suite's task processes (the hello
// binary at helloPath), their supervisors and anything else whose command
// line mentions dir; daemons lists the pids of the node daemons the suite
// itself runs, which are not counted.
func scanProcesses(dir, helloPath string, daemons map[int]bool) machine {
	var m machine
	entries, _ := os.ReadDir("/proc")
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil || daemons[pid] {
			continue
		}
		base := filepath.Join("/proc", e.Name())
		cmdline, err := os.ReadFile(filepath.Join(base, "cmdline"))
		if err != nil || len(cmdline) == 0 {
			continue
		}
		args := strings.Split(strings.TrimRight(string(cmdline), "\x00"), "\x00")
		exe, _ := os.Readlink(filepath.Join(base, "exe"))
		switch {
		case strings.TrimSuffix(exe, " (deleted)") == helloPath:
			env := readEnviron(filepath.Join(base, "environ"))
			slot, _ := strconv.ParseUint(env["SHOAL_TASK_SLOT"], 10, 64)
			m.tasks = append(m.tasks, procFact{PID: pid, TaskID: env["SHOAL_TASK_ID"], Service: env["SHOAL_SERVICE_NAME"],
				Slot: slot, Version: env["HELLO_VERSION"]})
		case isSupervisor(args) && strings.Contains(string(cmdline), dir):
			m.supervisors = append(m.supervisors, supervisorFact{PID: pid, TaskID: filepath.Base(args[len(args)-1])})
		case bytes.Contains(cmdline, []byte(dir)):
			m.other = append(m.other, pid)
		}
	}
	return m
}

// isSupervisor tells a task supervisor's command line: shoal-supervise, or
// shoal __supervise where it is not installed.
func isSupervisor(args []string) bool {
	return filepath.Base(args[0]) == supervise.Binary || (len(args) > 1 && args[1] == supervise.SupervisorSubcommand)
}

// readEnviron reads a process's environment.
func readEnviron(path string) map[string]string {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil
	}
	env := map[string]string{}
	for _, kv := range strings.Split(string(data), "\x00") {
		if k, v, ok := strings.Cut(kv, "="); ok {
			env[k] = v
		}
	}
	return env
}
