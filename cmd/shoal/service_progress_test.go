package main

import (
	"bytes"
	"fmt"
	"strings"
	"testing"
	"time"

	pb "github.com/shoal-cluster/shoal/proto"
	"google.golang.org/protobuf/proto"
)

// progressService is a replicated service at spec version 2.
func progressService(replicas uint64) *pb.Service {
	spec := existingSpec()
	spec.Task.Container.Healthcheck = nil
	spec.Mode = &pb.ServiceSpec_Replicated{Replicated: &pb.ReplicatedService{Replicas: replicas}}
	return &pb.Service{Id: "svc1", Spec: spec, SpecVersion: 2}
}

// ptask is a task of progressService; version 2 is current.
func ptask(id string, slot uint64, version uint64, desired, state pb.TaskState) *pb.Task {
	t := task(id, slot, "n1aaaaaaaaaaaaaaaaaaaaaaa", desired, state, time.Minute)
	t.SpecVersion = version
	t.Spec = &pb.TaskSpec{Container: &pb.ContainerSpec{Image: fmt.Sprintf("v%d", version)}}
	return t
}

func frameText(lines []progressLine) string {
	var b strings.Builder
	for _, l := range lines {
		b.WriteString(strings.TrimRight(l.text, " ") + "\n")
	}
	return b.String()
}

func bar(n int) string { return "[" + strings.Repeat("=", n) + ">" + strings.Repeat(" ", 50-n) + "]" }

func TestRenderProgressReplicated(t *testing.T) {
	svc := progressService(3)
	pendingTask := ptask("t3", 3, 2, running, pending)
	pendingTask.PendingReason = "no node has 2 CPUs free"
	tasks := []*pb.Task{
		ptask("t1", 1, 2, running, running),
		ptask("t2", 2, 2, running, pb.TaskState_TASK_STATE_PREPARING),
		pendingTask,
	}
	f := evalProgress(svc, tasks, nil, progressOpts{})
	want := "overall progress: 1 out of 3 tasks\n" +
		"1/3: running   " + bar(50) + "\n" +
		"2/3: preparing " + bar(27) + "\n" +
		"3/3: pending   " + bar(11) + " no node has 2 CPUs free\n"
	if got := frameText(f.lines); got != want {
		t.Errorf("frame:\n%s\nwant:\n%s", got, want)
	}
	if f.done || f.running != 1 || f.desired != 3 {
		t.Errorf("done %v, %d/%d; want not done, 1/3", f.done, f.running, f.desired)
	}

	// All running: done.
	for _, tk := range tasks {
		tk.Status.State = running
	}
	if f := evalProgress(svc, tasks, nil, progressOpts{}); !f.done || f.running != 3 {
		t.Errorf("all running: done %v, running %d", f.done, f.running)
	}
}

func TestRenderProgressUpdate(t *testing.T) {
	svc := progressService(3)
	tasks := []*pb.Task{
		ptask("new1", 1, 2, running, running),
		ptask("old1", 1, 1, shutdown, shutdown),
		ptask("old2", 2, 1, running, running),
		ptask("new3", 3, 2, running, pb.TaskState_TASK_STATE_STARTING),
		ptask("old3", 3, 1, shutdown, running), // stop-first: still stopping
	}
	f := evalProgress(svc, tasks, nil, progressOpts{update: true})
	want := "overall progress: 1 out of 3 tasks\n" +
		"1/3: running   " + bar(50) + "\n" +
		"2/3: waiting   " + bar(0) + " previous version running\n" +
		"3/3: starting  " + bar(38) + "\n"
	if got := frameText(f.lines); got != want {
		t.Errorf("frame:\n%s\nwant:\n%s", got, want)
	}

	// Everything on the new version, but an old task is still running: not
	// done until it stops.
	tasks[2] = ptask("new2", 2, 2, running, running)
	tasks[3].Status.State = running
	if f := evalProgress(svc, tasks, nil, progressOpts{}); f.done || f.running != 3 {
		t.Errorf("old task still running: done %v, running %d; want not done, 3", f.done, f.running)
	}
	tasks[4].Status.State = shutdown
	if f := evalProgress(svc, tasks, nil, progressOpts{}); !f.done {
		t.Errorf("converged update: not done")
	}

	// A task of an older version whose spec equals the current one counts:
	// a change that left the task spec alone replaces nothing.
	same := ptask("same", 1, 1, running, running)
	same.Spec = proto.Clone(svc.Spec.Task).(*pb.TaskSpec)
	svc1 := progressService(1)
	if f := evalProgress(svc1, []*pb.Task{same}, nil, progressOpts{}); !f.done {
		t.Errorf("task with the current spec at an old version: not done")
	}

	// Rollback says so.
	f = evalProgress(svc, tasks, nil, progressOpts{update: true, rollback: true})
	if !strings.HasPrefix(f.lines[0].text, "overall progress: rolling back update: 3 out of 3 tasks") {
		t.Errorf("rollback overall line %q", f.lines[0].text)
	}
}

func TestRenderProgressScaleDown(t *testing.T) {
	svc := progressService(2)
	tasks := []*pb.Task{
		ptask("t1", 1, 2, running, running),
		ptask("t2", 2, 2, running, running),
		ptask("t3", 3, 2, shutdown, running),
	}
	f := evalProgress(svc, tasks, nil, progressOpts{})
	if f.done || f.running != 2 || f.desired != 2 || len(f.lines) != 3 {
		t.Errorf("slot 3 still running: done %v, %d/%d, %d lines; want not done, 2/2, 3 lines", f.done, f.running, f.desired, len(f.lines))
	}
	tasks[2].Status.State = shutdown
	if f := evalProgress(svc, tasks, nil, progressOpts{}); !f.done {
		t.Errorf("scaled down: not done")
	}
	// Scaled to zero.
	svc0 := progressService(0)
	if f := evalProgress(svc0, tasks[2:], nil, progressOpts{}); !f.done || f.desired != 0 || f.stable != emptyVerifyPeriod {
		t.Errorf("scaled to 0: done %v, desired %d, stable %v", f.done, f.desired, f.stable)
	}
}

func TestRenderProgressHealth(t *testing.T) {
	svc := progressService(2)
	svc.Spec.Task.Container.Healthcheck = &pb.HealthCheck{HttpGet: "/healthz"}
	t1 := ptask("t1", 1, 2, running, running)
	t1.Status.Health = pb.HealthState_HEALTH_STATE_HEALTHY
	t2 := ptask("t2", 2, 2, running, running)
	t2.Status.Health = pb.HealthState_HEALTH_STATE_STARTING
	f := evalProgress(svc, []*pb.Task{t1, t2}, nil, progressOpts{})
	want := "overall progress: 1 out of 2 tasks\n" +
		"1/2: running   " + bar(50) + "\n" +
		"2/2: running   " + bar(44) + " health: starting\n"
	if got := frameText(f.lines); got != want || f.done {
		t.Errorf("frame (done %v):\n%s\nwant:\n%s", f.done, got, want)
	}
	t2.Status.Health = pb.HealthState_HEALTH_STATE_NONE
	if f := evalProgress(svc, []*pb.Task{t1, t2}, nil, progressOpts{}); f.done || !strings.Contains(f.lines[2].text, "waiting for the first health check") {
		t.Errorf("no health report yet: done %v, line %q", f.done, f.lines[2].text)
	}
	t2.Status.Health = pb.HealthState_HEALTH_STATE_HEALTHY
	if f := evalProgress(svc, []*pb.Task{t1, t2}, nil, progressOpts{}); !f.done {
		t.Errorf("both healthy: not done")
	}
	// Without a check of the service's own, an unhealthy report (the
	// image's check) still holds a task back.
	svc.Spec.Task.Container.Healthcheck = nil
	t2.Status.Health = pb.HealthState_HEALTH_STATE_UNHEALTHY
	if f := evalProgress(svc, []*pb.Task{t1, t2}, nil, progressOpts{}); f.done {
		t.Errorf("image check unhealthy: done")
	}
}

func TestRenderProgressFailures(t *testing.T) {
	svc := progressService(1)
	failedTask := ptask("old", 1, 2, shutdown, failed)
	failedTask.Status.Err = "task: non-zero exit (127)"
	failedTask.Meta.CreatedAt = ago_(2 * time.Minute)
	replacement := ptask("new", 1, 2, pb.TaskState_TASK_STATE_READY, pending)
	f := evalProgress(svc, []*pb.Task{failedTask, replacement}, nil, progressOpts{})
	if got, want := f.lines[1].text, "1/1: pending   "+bar(11)+" previous attempt: task: non-zero exit (127)"; got != want {
		t.Errorf("line %q, want %q", got, want)
	}
	// Only the failed task known, nothing meant to run yet.
	f = evalProgress(svc, []*pb.Task{failedTask}, nil, progressOpts{})
	if got, want := f.lines[1].text, "1/1: failed    "+bar(0)+" task: non-zero exit (127)"; got != want {
		t.Errorf("line %q, want %q", got, want)
	}
	// Nothing at all yet.
	f = evalProgress(svc, nil, nil, progressOpts{})
	if !f.lines[1].blank || f.lines[1].text != "1/1:" {
		t.Errorf("no task: line %+v", f.lines[1])
	}
}

func TestRenderProgressManyReplicas(t *testing.T) {
	svc := progressService(25)
	var tasks []*pb.Task
	for i := 1; i <= 25; i++ {
		tasks = append(tasks, ptask(fmt.Sprint("t", i), uint64(i), 2, running, running))
	}
	f := evalProgress(svc, tasks, nil, progressOpts{})
	if len(f.lines) != 1 || f.lines[0].text != "overall progress: 25 out of 25 tasks" || !f.done {
		t.Errorf("25 replicas: %d lines, %q, done %v", len(f.lines), f.lines[0].text, f.done)
	}
	// Labels are aligned when replicas have two digits.
	svc = progressService(10)
	f = evalProgress(svc, tasks[:10], nil, progressOpts{})
	if !strings.HasPrefix(f.lines[1].text, "1/10:  running ") || !strings.HasPrefix(f.lines[10].text, "10/10: running ") {
		t.Errorf("labels not aligned: %q, %q", f.lines[1].text, f.lines[10].text)
	}
}

func TestRenderProgressGlobal(t *testing.T) {
	svc := progressService(1)
	svc.Spec.Mode = &pb.ServiceSpec_Global{Global: &pb.GlobalService{}}
	a := ptask("a", 0, 2, running, running)
	b := ptask("b", 0, 2, running, pb.TaskState_TASK_STATE_ASSIGNED)
	b.NodeId = "n2bbbbbbbbbbbbbbbbbbbbbbb"
	c := ptask("c", 0, 2, running, pending)
	c.NodeId = "nXunknownnodeidxxxxxxxxxx"
	c.PendingReason = "constraint node.labels.zone==a not met"
	d := ptask("d", 0, 2, shutdown, shutdown) // a drained node: not eligible
	d.NodeId = "nDdrained"
	f := evalProgress(svc, []*pb.Task{c, b, a, d}, nodeMap, progressOpts{})
	want := "overall progress: 1 out of 3 tasks\n" +
		"nXunknownnod: pending   " + bar(11) + " constraint node.labels.zone==a not met\n" +
		"w1:           running   " + bar(50) + "\n" +
		"w2:           assigned  " + bar(16) + "\n"
	if got := frameText(f.lines); got != want || f.done {
		t.Errorf("frame (done %v):\n%s\nwant:\n%s", f.done, got, want)
	}
	// No eligible node: converged, but only after a longer wait.
	f = evalProgress(svc, []*pb.Task{d}, nodeMap, progressOpts{})
	if !f.done || f.desired != 0 || f.stable != emptyVerifyPeriod {
		t.Errorf("no eligible node: done %v, desired %d, stable %v", f.done, f.desired, f.stable)
	}
}

// jtask is a task of iteration iter of a job.
func jtask(id string, slot, iter uint64, desired, state pb.TaskState, err string) *pb.Task {
	t := ptask(id, slot, 2, desired, state)
	t.JobIteration = iter
	t.Status.Err = err
	return t
}

func TestRenderProgressJobs(t *testing.T) {
	complete, shutdownDesired := pb.TaskState_TASK_STATE_COMPLETE, pb.TaskState_TASK_STATE_SHUTDOWN
	replicated := &pb.ServiceSpec_ReplicatedJob{ReplicatedJob: &pb.ReplicatedJob{MaxConcurrent: 2, TotalCompletions: 3}}
	globalJob := &pb.ServiceSpec_GlobalJob{GlobalJob: &pb.GlobalJob{}}
	onNode := func(t *pb.Task, node string) *pb.Task { t.NodeId = node; return t }
	cases := []struct {
		name    string
		mode    any
		tasks   []*pb.Task
		want    string // the frame
		done    bool
		wantErr string
	}{
		{name: "running, with a retry", mode: replicated, tasks: []*pb.Task{
			jtask("t1", 1, 2, complete, complete, ""),
			jtask("t2", 2, 2, running, running, ""),
			jtask("t3", 3, 2, shutdownDesired, failed, "exit status 1"),
			jtask("t4", 3, 2, running, pending, ""),
			jtask("old", 1, 1, complete, complete, ""), // an earlier iteration: does not count
		}, want: "job progress: 1 out of 3 complete " + bar(16) + "\nactive tasks: 2 out of 2 tasks\n" +
			"1/3: complete  " + bar(50) + "\n2/3: running   " + bar(50) + "\n3/3: pending   " + bar(11) + " previous attempt: exit status 1\n"},
		{name: "complete", mode: replicated, tasks: []*pb.Task{
			jtask("t1", 1, 2, complete, complete, ""), jtask("t2", 2, 2, complete, complete, ""), jtask("t3", 3, 2, complete, complete, ""),
		}, done: true, want: "job progress: 3 out of 3 complete " + bar(50) + "\nactive tasks: 0 out of 2 tasks\n" +
			"1/3: complete  " + bar(50) + "\n2/3: complete  " + bar(50) + "\n3/3: complete  " + bar(50) + "\n"},
		{name: "a slot given up, the others done", mode: replicated, tasks: []*pb.Task{
			jtask("t1", 1, 2, complete, complete, ""), jtask("t2", 2, 2, complete, complete, ""),
			jtask("t3", 3, 2, shutdownDesired, failed, "exit status 3"),
		}, wantErr: "job svc1 failed: 2 out of 3 complete; slot 3 gave up after 1 attempt(s): exit status 3",
			want: "job progress: 2 out of 3 complete " + bar(33) + "\nactive tasks: 0 out of 2 tasks\n" +
				"1/3: complete  " + bar(50) + "\n2/3: complete  " + bar(50) + "\n3/3: failed    " + bar(0) + " exit status 3\n"},
		{name: "global, one node to go", mode: globalJob, tasks: []*pb.Task{
			onNode(jtask("g1", 0, 2, complete, complete, ""), "n1"), onNode(jtask("g2", 0, 2, running, running, ""), "n2"),
		}, want: "job progress: 1 out of 2 nodes complete " + bar(25) + "\nnode1: complete  " + bar(50) + "\nnode2: running   " + bar(50) + "\n"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			svc := progressService(1)
			svc.Spec.Annotations.Name = "svc1"
			svc.JobStatus = &pb.JobStatus{JobIteration: 2}
			switch m := tc.mode.(type) {
			case *pb.ServiceSpec_ReplicatedJob:
				svc.Spec.Mode = m
			case *pb.ServiceSpec_GlobalJob:
				svc.Spec.Mode = m
			}
			f := evalProgress(svc, tc.tasks, map[string]string{"n1": "node1", "n2": "node2"}, progressOpts{})
			if got := frameText(f.lines); got != tc.want || f.done != tc.done || !f.job {
				t.Errorf("frame (done %v):\n%s\nwant (done %v):\n%s", f.done, got, tc.done, tc.want)
			}
			if gotErr := fmt.Sprint(f.err); (tc.wantErr == "") != (f.err == nil) || !strings.Contains(gotErr, tc.wantErr) {
				t.Errorf("err %v, want %q", f.err, tc.wantErr)
			}
			var c convergence
			lines, done := c.observe(f, updateVerdict{}, testNow)
			if done != tc.done || done && lines[len(lines)-1].text != "verify: Job complete" {
				t.Errorf("observe: done %v, last line %q", done, lines[len(lines)-1].text)
			}
		})
	}
}

func TestRenderProgressVerify(t *testing.T) {
	svc := progressService(1)
	tasks := []*pb.Task{ptask("t1", 1, 2, running, running)}
	var c convergence
	now := testNow
	lines, done := c.observe(evalProgress(svc, tasks, nil, progressOpts{}), updateVerdict{}, now)
	if done || lines[len(lines)-1].text != "verify: Waiting 1 second to verify that tasks are stable..." {
		t.Fatalf("first converged poll: done %v, %q", done, lines[len(lines)-1].text)
	}
	// A task fails meanwhile: the wait starts over.
	tasks[0].Status.State = failed
	lines, done = c.observe(evalProgress(svc, tasks, nil, progressOpts{}), updateVerdict{}, now.Add(500*time.Millisecond))
	if done || strings.HasPrefix(lines[len(lines)-1].text, "verify:") {
		t.Fatalf("after a failure: done %v, last line %q", done, lines[len(lines)-1].text)
	}
	tasks[0] = ptask("t2", 1, 2, running, running)
	_, done = c.observe(evalProgress(svc, tasks, nil, progressOpts{}), updateVerdict{}, now.Add(time.Second))
	if done {
		t.Fatalf("converged again only just now: done")
	}
	lines, done = c.observe(evalProgress(svc, tasks, nil, progressOpts{}), updateVerdict{}, now.Add(2*time.Second))
	if !done || lines[len(lines)-1].text != "verify: Service converged" {
		t.Fatalf("stable for 1s: done %v, %q", done, lines[len(lines)-1].text)
	}
	// An update still going holds convergence back.
	var c2 convergence
	v := updateVerdict{wait: true, line: "update: updating"}
	lines, done = c2.observe(evalProgress(svc, tasks, nil, progressOpts{}), v, now)
	if done || lines[len(lines)-1].text != "update: updating" {
		t.Errorf("updating: done %v, last line %q", done, lines[len(lines)-1].text)
	}
}

func TestRenderProgressUpdateStatus(t *testing.T) {
	at := func(state pb.UpdateState, started int64, msg string) *pb.UpdateStatus {
		return &pb.UpdateStatus{State: state, StartedAt: started, Message: msg}
	}
	completedBefore := at(pb.UpdateState_UPDATE_STATE_COMPLETED, 100, "")
	tests := []struct {
		name    string
		opts    progressOpts
		now     *pb.UpdateStatus
		wait    bool
		line    string
		errPart string
	}{
		{"create ignores status", progressOpts{}, at(pb.UpdateState_UPDATE_STATE_PAUSED, 1, "x"), false, "", ""},
		{"no status", progressOpts{update: true}, nil, false, "", ""},
		{"old status is not ours", progressOpts{update: true, before: completedBefore}, completedBefore, false, "", ""},
		{"old paused status is not ours", progressOpts{update: true, before: at(pb.UpdateState_UPDATE_STATE_PAUSED, 100, "x")},
			at(pb.UpdateState_UPDATE_STATE_PAUSED, 100, "x"), false, "", ""},
		{"updating", progressOpts{update: true, before: completedBefore}, at(pb.UpdateState_UPDATE_STATE_UPDATING, 200, ""), true, "update: updating", ""},
		{"first update", progressOpts{update: true}, at(pb.UpdateState_UPDATE_STATE_UPDATING, 200, "1 of 3 tasks updated"), true, "update: updating: 1 of 3 tasks updated", ""},
		{"completed", progressOpts{update: true, before: completedBefore}, at(pb.UpdateState_UPDATE_STATE_COMPLETED, 200, "update completed"), false, "update: completed: update completed", ""},
		{"paused", progressOpts{update: true, before: completedBefore}, at(pb.UpdateState_UPDATE_STATE_PAUSED, 200, "task t1 failed: exit 1"), false,
			"update: paused: task t1 failed: exit 1",
			"the update of service web is paused: task t1 failed: exit 1; see `shoal service ps web`, then fix it with `shoal service update` or undo it with `shoal service rollback web`"},
		{"automatic rollback going", progressOpts{update: true, before: completedBefore}, at(pb.UpdateState_UPDATE_STATE_ROLLBACK_STARTED, 200, "update rolled back"), true, "update: rollback_started: update rolled back", ""},
		{"rolled back after failure", progressOpts{update: true, before: completedBefore}, at(pb.UpdateState_UPDATE_STATE_ROLLBACK_COMPLETED, 200, "task failed"), false,
			"update: rollback_completed: task failed", "the update of service web failed and was rolled back: task failed"},
		{"requested rollback done", progressOpts{update: true, rollback: true, before: completedBefore}, at(pb.UpdateState_UPDATE_STATE_ROLLBACK_COMPLETED, 200, ""), false, "update: rollback_completed", ""},
		{"rollback paused", progressOpts{update: true, rollback: true, before: completedBefore}, at(pb.UpdateState_UPDATE_STATE_ROLLBACK_PAUSED, 200, "no"), false, "update: rollback_paused: no", "the rollback of service web is paused: no"},
		{"no timestamps, new state", progressOpts{update: true, before: at(pb.UpdateState_UPDATE_STATE_COMPLETED, 0, "")}, at(pb.UpdateState_UPDATE_STATE_UPDATING, 0, ""), true, "update: updating", ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			svc := progressService(1)
			svc.UpdateStatus = tt.now
			v := judgeUpdate(svc, tt.opts)
			if v.wait != tt.wait || v.line != tt.line {
				t.Errorf("wait %v, line %q; want %v, %q", v.wait, v.line, tt.wait, tt.line)
			}
			switch {
			case tt.errPart == "" && v.err != nil:
				t.Errorf("error %v, want none", v.err)
			case tt.errPart != "" && (v.err == nil || !strings.Contains(v.err.Error(), tt.errPart)):
				t.Errorf("error %v, want it to contain %q", v.err, tt.errPart)
			}
		})
	}
}

func TestRenderProgressPrinter(t *testing.T) {
	frame1 := []progressLine{{key: "overall", text: "overall progress: 0 out of 2 tasks"}, {key: "slot:1", text: "1/2:", blank: true}, {key: "slot:2", text: "2/2: new"}}
	frame2 := []progressLine{{key: "overall", text: "overall progress: 1 out of 2 tasks"}, {key: "slot:1", text: "1/2: running"}, {key: "slot:2", text: "2/2: new"}}
	frame3 := []progressLine{{key: "overall", text: "overall progress: 1 out of 2 tasks"}}

	// Not a terminal: only what changed, blank lines left out.
	var b bytes.Buffer
	p := newProgressPrinter(&b, false, 0)
	p.draw(frame1)
	p.draw(frame2)
	p.draw(frame2)
	p.draw(frame3)
	p.draw(frame2) // lines that went away and came back are printed again
	want := "overall progress: 0 out of 2 tasks\n2/2: new\n" +
		"overall progress: 1 out of 2 tasks\n1/2: running\n" +
		"1/2: running\n2/2: new\n"
	if b.String() != want {
		t.Errorf("plain output:\n%q\nwant:\n%q", b.String(), want)
	}

	// A terminal: redrawn in place.
	b.Reset()
	p = newProgressPrinter(&b, true, 20)
	p.draw(frame1)
	p.draw(frame3)
	want = "\x1b[2Koverall progress: 0\n\x1b[2K1/2:\n\x1b[2K2/2: new\n" +
		"\x1b[3A\x1b[2Koverall progress: 1\n\x1b[2K\n\x1b[2K\n\x1b[2A"
	if b.String() != want {
		t.Errorf("terminal output:\n%q\nwant:\n%q", b.String(), want)
	}
}
