package main

// The jobs journey through the CLI, as a Docker Swarm user runs it: one
// manager and two workers as separate `shoal` processes, short-lived
// /bin/sh tasks on the process runtime.

import (
	"strings"
	"testing"
)

func TestJobJourneyProcesses(t *testing.T) {
	if testing.Short() {
		t.Skip("multi-process cluster test")
	}
	j := startServiceCluster(t)
	contains := func(what, out string, wants ...string) {
		t.Helper()
		for _, want := range wants {
			if !strings.Contains(out, want) {
				t.Fatalf("%s: no %q in:\n%s", what, want, out)
			}
		}
	}
	refused := func(what, want string, out, errOut string, code int) {
		t.Helper()
		// One line saying what is wrong (usage errors add where the help is).
		first, _, _ := strings.Cut(errOut, "\n")
		if code == 0 || !strings.Contains(first, want) {
			t.Fatalf("%s: want a failure whose first line says %q; exit %d\nstdout:\n%s\nstderr:\n%s", what, want, code, out, errOut)
		}
	}

	// A replicated job: create waits until it completes, with its progress.
	out, errOut, code := j.converge("create", "--name", "batch", "--mode", "replicated-job", "--replicas", "4", "--max-concurrent", "2",
		"/bin/sh", "-c", "sleep 0.2")
	j.mustOK("create a replicated job", out, errOut, code)
	contains("create a replicated job", out, "job progress: 4 out of 4 complete", "4/4: complete", "verify: Job complete")

	out, errOut, code = j.svc("ls")
	j.mustOK("service ls", out, errOut, code)
	rows := parseTable(t, out)
	if len(rows) != 1 || rows[0]["MODE"] != "replicated job" || rows[0]["REPLICAS"] != "0/2 (4/4 completed)" {
		t.Fatalf("service ls after the job:\n%s", out)
	}
	out, errOut, code = j.svc("ps", "batch")
	j.mustOK("service ps", out, errOut, code)
	rows = parseTable(t, out)
	if len(rows) != 4 {
		t.Fatalf("service ps: want the 4 completed tasks:\n%s", out)
	}
	for _, r := range rows {
		if r["DESIRED STATE"] != "Complete" || !strings.HasPrefix(r["CURRENT STATE"], "Complete") {
			t.Fatalf("service ps: want every task Complete:\n%s", out)
		}
	}

	// update --force runs it again: a new iteration.
	out, errOut, code = j.converge("update", "--force", "batch")
	j.mustOK("update --force a job", out, errOut, code)
	contains("update --force a job", out, "job progress: 4 out of 4 complete", "verify: Job complete")
	out, _, _ = j.svc("ps", "batch")
	if n := strings.Count(out, "Complete"); n != 16 { // 8 tasks, desired and current
		t.Fatalf("service ps after update --force: want 8 Complete tasks:\n%s", out)
	}

	// A global job: once on each worker.
	out, errOut, code = j.converge("create", "--name", "everywhere", "--mode", "global-job", "/bin/true")
	j.mustOK("create a global job", out, errOut, code)
	contains("create a global job", out, "job progress: 2 out of 2 nodes complete", "verify: Job complete")
	out, _, _ = j.svc("ls")
	contains("service ls", out, "global job", "0/0 (2/2 completed)")

	// A job that cannot succeed: create says so once its retries are spent.
	out, errOut, code = j.converge("create", "--name", "doomed", "--mode", "replicated-job", "--restart-max-attempts", "1",
		"--restart-delay", "100ms", "/bin/sh", "-c", "exit 4")
	if code == 0 || !strings.Contains(errOut, "job doomed failed: 0 out of 1 complete; slot 1 gave up after 2 attempt(s)") {
		t.Fatalf("a failing job: exit %d\nstdout:\n%s\nstderr:\n%s", code, out, errOut)
	}

	// Bad input: one line, nothing changed.
	out, errOut, code = j.svc("scale", "everywhere=3")
	refused("scale a global job", "only replicated services and replicated jobs can be scaled", out, errOut, code)
	out, errOut, code = j.svc("update", "--update-parallelism", "2", "batch")
	refused("rolling update flags on a job", "has no rolling update or rollback", out, errOut, code)
	out, errOut, code = j.svc("create", "--name", "notajob", "--max-concurrent", "2", "/bin/true")
	refused("--max-concurrent on a service", "--max-concurrent is for --mode replicated-job only", out, errOut, code)
	out, _, _ = j.svc("ls")
	if strings.Contains(out, "notajob") {
		t.Fatalf("a refused create made a service:\n%s", out)
	}
}
