package process

import (
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"syscall"
	"testing"
	"time"

	"github.com/shoal-cluster/shoal/worker/process/supervise"
	"github.com/shoal-cluster/shoal/worker/runtimetest/taskprog"
	"go.uber.org/goleak"
)

// The test binary doubles as the supervisor (SHOAL_SUPERVISE=1, the way
// cmd/shoal runs "shoal __supervise"), as a memory hog task
// (SHOAL_TEST_HOG=<bytes>) and as the conformance suite's task program
// (SHOAL_CONFORMANCE_TASK=1).
var (
	testMarker       string // in the env of every process the tests start
	testCgroupParent string
)

func TestMain(m *testing.M) {
	if os.Getenv("SHOAL_SUPERVISE") == "1" {
		os.Exit(supervise.Supervise(os.Args[1:]))
	}
	if n := os.Getenv("SHOAL_TEST_HOG"); n != "" {
		hog(n)
	}
	if os.Getenv(conformanceTaskEnv) == "1" {
		os.Exit(taskprog.Main(os.Args[1:]))
	}
	testMarker = fmt.Sprintf("process-test-%d", os.Getpid())
	testCgroupParent = "shoal-test-" + strconv.Itoa(os.Getpid())

	code := m.Run()

	// Supervisors release their task before they exit, so give the last
	// ones a moment.
	pids := markedProcesses()
	for deadline := time.Now().Add(3 * time.Second); len(pids) > 0 && time.Now().Before(deadline); pids = markedProcesses() {
		time.Sleep(50 * time.Millisecond)
	}
	if len(pids) > 0 {
		fmt.Fprintf(os.Stderr, "FAIL: processes left behind by the tests:\n")
		for _, pid := range pids {
			cmdline, _ := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
			fmt.Fprintf(os.Stderr, "  %d: %s\n", pid, bytes.ReplaceAll(cmdline, []byte{0}, []byte{' '}))
			_ = syscall.Kill(pid, syscall.SIGKILL)
		}
		code = 1
	}
	removeTestCgroupParents()
	if code == 0 {
		if err := goleak.Find(); err != nil {
			fmt.Fprintf(os.Stderr, "FAIL: leaked goroutines: %v\n", err)
			code = 1
		}
	}
	os.Exit(code)
}

// hog allocates and touches n bytes, and exits 0 if it was not killed.
func hog(n string) {
	size, err := strconv.Atoi(n)
	if err != nil {
		os.Exit(2)
	}
	var keep [][]byte
	for done := 0; done < size; done += 1 << 20 {
		b := make([]byte, 1<<20)
		for i := 0; i < len(b); i += 4096 {
			b[i] = 1
		}
		keep = append(keep, b)
	}
	fmt.Println("allocated", len(keep), "MiB")
	os.Exit(0)
}

// markedProcesses are live processes carrying this test run's marker.
func markedProcesses() []int {
	want := []byte("SHOAL_TEST_MARKER=" + testMarker + "\x00")
	var pids []int
	ents, _ := os.ReadDir("/proc")
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil || pid == os.Getpid() {
			continue
		}
		env, err := os.ReadFile(filepath.Join("/proc", e.Name(), "environ"))
		if err == nil && bytes.Contains(env, want) && !processGone(pid) {
			pids = append(pids, pid)
		}
	}
	return pids
}

func removeTestCgroupParents() {
	mounts, err := supervise.ReadCgroupMounts()
	if err != nil {
		return
	}
	for _, m := range mounts {
		dir := filepath.Join(m.Mount, testCgroupParent)
		if supervise.FileExists(dir) {
			// Task cgroups are removed by the tests; only the parent is left.
			deadline := time.Now().Add(2 * time.Second)
			subs, _ := os.ReadDir(dir)
			for _, s := range subs {
				if s.IsDir() {
					_ = supervise.RemoveCgroups([]string{filepath.Join(dir, s.Name())}, deadline)
				}
			}
			_ = syscall.Rmdir(dir)
		}
	}
}

// processGone reports whether pid has exited (a zombie counts as exited).
func processGone(pid int) bool {
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return true
	}
	// pid (comm) state ...; comm may contain spaces and parentheses.
	i := bytes.LastIndexByte(data, ')')
	return i < 0 || i+2 >= len(data) || data[i+2] == 'Z' || data[i+2] == 'X'
}
