package main

// Progress of create, scale, update and rollback, as Docker shows it:
//
//	overall progress: 2 out of 3 tasks
//	1/3: running   [==================================================>]
//	2/3: running   [==================================================>]
//	3/3: preparing [=================================>                 ]
//	verify: Waiting 1 second to verify that tasks are stable...
//
// A task counts when it is observed RUNNING, is meant to run, runs the
// service's current spec and, if the service has a health check, is
// HEALTHY. The service has converged when every slot (every eligible node,
// for global services: the nodes with a task meant to run) has such a task,
// no other task is still running, the update the command started (if any)
// has completed, and all this stays true for a second.
//
// evalProgress and convergence are pure, so tests feed them fabricated
// services and tasks; watchService does the polling.

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/signal"
	"sort"
	"strings"
	"time"
	"unicode/utf8"

	pb "github.com/shoal-cluster/shoal/proto"
	"google.golang.org/protobuf/proto"
)

const (
	progressInterval = 200 * time.Millisecond
	verifyPeriod     = time.Second
	// emptyVerifyPeriod is how long "0 out of 0 tasks" must hold for a
	// global service: the orchestrator may not have made its tasks yet.
	emptyVerifyPeriod = 3 * time.Second
	maxProgressBars   = 20
	barWidth          = 50
	stepsToRunning    = 9
	historyEvery      = 5 // fetch ended tasks too every 5th poll (~1s)
)

// progressLine is one line of progress; key identifies it across frames.
type progressLine struct {
	key, text string
	blank     bool // nothing to show yet
}

// progressFrame is the evaluation of one poll.
type progressFrame struct {
	lines            []progressLine
	running, desired int
	done             bool          // the tasks have converged
	stable           time.Duration // how long done must hold
	job              bool
	err              error // the job failed
}

// progressOpts say what the command changed.
type progressOpts struct {
	// update: the command changed an existing service (update, scale,
	// rollback): its UpdateStatus is followed.
	update bool
	// rollback: the command asked for a rollback.
	rollback bool
	// before is the service's UpdateStatus before the change: a status
	// that started at the same time is someone else's.
	before *pb.UpdateStatus
}

// healthRequired reports whether tasks must be HEALTHY to count.
func healthRequired(spec *pb.ServiceSpec) bool {
	hc := spec.GetTask().GetContainer().GetHealthcheck()
	return hc != nil && !hc.GetDisable() && hasProbe(hc)
}

type taskJudge struct {
	svc         *pb.Service
	needHealthy bool
}

// upToDate reports whether a task runs the service's current spec.
func (j taskJudge) upToDate(t *pb.Task) bool {
	return t.GetSpecVersion() == j.svc.GetSpecVersion() || proto.Equal(t.GetSpec(), j.svc.GetSpec().GetTask())
}

func (j taskJudge) healthy(t *pb.Task) bool {
	h := t.GetStatus().GetHealth()
	if j.needHealthy {
		return h == pb.HealthState_HEALTH_STATE_HEALTHY
	}
	return h != pb.HealthState_HEALTH_STATE_STARTING && h != pb.HealthState_HEALTH_STATE_UNHEALTHY
}

// counts reports whether a task is done converging.
func (j taskJudge) counts(t *pb.Task) bool {
	return t.GetDesiredState() == pb.TaskState_TASK_STATE_RUNNING && t.GetStatus().GetState() == pb.TaskState_TASK_STATE_RUNNING &&
		j.upToDate(t) && j.healthy(t)
}

// step is how far a task is on its way to running, out of stepsToRunning.
func (j taskJudge) step(t *pb.Task) int {
	switch s := t.GetStatus().GetState(); {
	case s == pb.TaskState_TASK_STATE_RUNNING:
		if j.healthy(t) {
			return stepsToRunning
		}
		return stepsToRunning - 1
	case s > pb.TaskState_TASK_STATE_RUNNING:
		return 0
	default:
		order := []pb.TaskState{pb.TaskState_TASK_STATE_NEW, pb.TaskState_TASK_STATE_PENDING, pb.TaskState_TASK_STATE_ASSIGNED,
			pb.TaskState_TASK_STATE_ACCEPTED, pb.TaskState_TASK_STATE_PREPARING, pb.TaskState_TASK_STATE_READY, pb.TaskState_TASK_STATE_STARTING}
		for i, o := range order {
			if s <= o {
				return i + 1
			}
		}
		return 1
	}
}

// fractionBar is a bar filled n/d of the way.
func fractionBar(n, d int) string {
	w := barWidth * n / max(d, 1)
	return "[" + strings.Repeat("=", w) + ">" + strings.Repeat(" ", barWidth-w) + "]"
}

func progressBar(step int) string {
	n := barWidth * step / stepsToRunning
	return "[" + strings.Repeat("=", n) + ">" + strings.Repeat(" ", barWidth-n) + "]"
}

// unit is what one progress line follows: a slot, or a node of a global
// service.
type unit struct {
	key, label string
	tasks      []*pb.Task
}

// evalProgress evaluates one poll of a service and its tasks (the running
// ones, plus any ended ones known, for their errors).
func evalProgress(svc *pb.Service, tasks []*pb.Task, nodes map[string]string, opts progressOpts) progressFrame {
	spec := svc.GetSpec()
	j := taskJudge{svc: svc, needHealthy: healthRequired(spec)}
	var units []*unit
	switch m := spec.GetMode().(type) {
	case *pb.ServiceSpec_ReplicatedJob, *pb.ServiceSpec_GlobalJob:
		return evalJob(svc, j, tasks, nodes)
	case *pb.ServiceSpec_Global:
		byNode := map[string]*unit{}
		for _, t := range tasks {
			if t.GetNodeId() != "" && t.GetDesiredState() <= pb.TaskState_TASK_STATE_RUNNING && byNode[t.GetNodeId()] == nil {
				u := &unit{key: "node:" + t.GetNodeId(), label: nodeName(nodes, t.GetNodeId())}
				byNode[t.GetNodeId()] = u
				units = append(units, u)
			}
		}
		for _, t := range tasks {
			if u := byNode[t.GetNodeId()]; u != nil {
				u.tasks = append(u.tasks, t)
			}
		}
		sort.Slice(units, func(a, b int) bool {
			if units[a].label != units[b].label {
				return units[a].label < units[b].label
			}
			return units[a].key < units[b].key
		})
	default:
		r := uint64(0)
		if m, ok := m.(*pb.ServiceSpec_Replicated); ok {
			r = m.Replicated.GetReplicas()
		}
		units = make([]*unit, r)
		for i := range units {
			units[i] = &unit{key: fmt.Sprintf("slot:%d", i+1), label: fmt.Sprintf("%d/%d", i+1, r)}
		}
		for _, t := range tasks {
			if t.GetSlot() >= 1 && t.GetSlot() <= r {
				units[t.GetSlot()-1].tasks = append(units[t.GetSlot()-1].tasks, t)
			}
		}
	}

	f := progressFrame{desired: len(units), stable: verifyPeriod}
	counted := map[*pb.Task]bool{}
	var lines []progressLine
	width := 0
	for _, u := range units {
		width = max(width, len(u.label))
	}
	for _, u := range units {
		sortNewestFirst(u.tasks)
		var best *pb.Task
		for _, t := range u.tasks {
			if j.counts(t) {
				best = t
				break
			}
		}
		if best != nil {
			counted[best] = true
			f.running++
		} else {
			best = pickTask(j, u.tasks)
		}
		lines = append(lines, unitLine(j, u, best, width))
	}
	stray := 0
	for _, t := range tasks {
		if t.GetStatus().GetState() == pb.TaskState_TASK_STATE_RUNNING && !counted[t] {
			stray++
		}
	}
	f.done = f.running == f.desired && stray == 0
	if f.desired == 0 {
		f.stable = emptyVerifyPeriod
	}
	what := "overall progress: "
	if opts.rollback {
		what += "rolling back update: "
	}
	f.lines = append(f.lines, progressLine{key: "overall", text: fmt.Sprintf("%s%d out of %d tasks", what, f.running, f.desired)})
	if len(units) <= maxProgressBars {
		f.lines = append(f.lines, lines...)
	}
	return f
}

func sortNewestFirst(tasks []*pb.Task) {
	sort.SliceStable(tasks, func(a, b int) bool {
		if ca, cb := taskCreated(tasks[a]), taskCreated(tasks[b]); ca != cb {
			return ca > cb
		}
		return tasks[a].GetMeta().GetVersion() > tasks[b].GetMeta().GetVersion()
	})
}

// pickTask chooses the task a progress line shows when none counts: the
// newest of those meant to run, preferring the current spec; else the
// newest of all. tasks are newest first.
func pickTask(j taskJudge, tasks []*pb.Task) *pb.Task {
	var newest, current *pb.Task
	for _, t := range tasks {
		if t.GetDesiredState() > pb.TaskState_TASK_STATE_RUNNING {
			continue
		}
		if newest == nil {
			newest = t
		}
		if current == nil && j.upToDate(t) {
			current = t
		}
	}
	switch {
	case current != nil:
		return current
	case newest != nil:
		return newest
	case len(tasks) > 0:
		return tasks[0]
	}
	return nil
}

func unitLine(j taskJudge, u *unit, t *pb.Task, width int) progressLine {
	label := fmt.Sprintf("%-*s", width+1, u.label+":")
	if t == nil {
		return progressLine{key: u.key, text: label, blank: true}
	}
	state := t.GetStatus().GetState()
	word := strings.ToLower(taskStateWord(state))
	step := j.step(t)
	var note string
	switch {
	case !j.upToDate(t):
		word, step, note = "waiting", 0, "previous version "+strings.ToLower(taskStateWord(state))
	case state == pb.TaskState_TASK_STATE_RUNNING && step < stepsToRunning:
		note = "health: " + strings.ToLower(enumWord(t.GetStatus().GetHealth().String(), "HEALTH_STATE_"))
		if t.GetStatus().GetHealth() == pb.HealthState_HEALTH_STATE_NONE {
			note = "waiting for the first health check"
		}
	case t.GetStatus().GetErr() != "":
		note = t.GetStatus().GetErr()
	case state <= pb.TaskState_TASK_STATE_PENDING && t.GetPendingReason() != "":
		note = t.GetPendingReason()
	case state > pb.TaskState_TASK_STATE_RUNNING:
		note = t.GetStatus().GetMessage()
	}
	if note == "" && step < stepsToRunning {
		// A replacement on its way: say why the one before it ended.
		for _, old := range u.tasks {
			if old != t && old.GetStatus().GetState() > pb.TaskState_TASK_STATE_RUNNING && old.GetStatus().GetErr() != "" && j.upToDate(old) {
				note = "previous attempt: " + old.GetStatus().GetErr()
				break
			}
		}
	}
	text := fmt.Sprintf("%s %-9s %s", label, word, progressBar(step))
	if note != "" {
		text += " " + strings.ReplaceAll(note, "\n", " ")
	}
	return progressLine{key: u.key, text: text}
}

// evalJob evaluates a job, as Docker's job progress: the completions of its
// current iteration, the tasks active, and a line per slot (per node, for a
// global job) while there are few. The job is done when every slot (every
// node that runs it) has completed; it has failed when nothing runs any
// more and a slot's restart policy gave up on it.
func evalJob(svc *pb.Service, j taskJudge, tasks []*pb.Task, nodes map[string]string) progressFrame {
	f := progressFrame{job: true}
	iter := svc.GetJobStatus().GetJobIteration()
	type group struct {
		key, label string
		tasks      []*pb.Task
		complete   bool
		active     *pb.Task
	}
	groups := map[string]*group{}
	var order []*group
	active := 0
	_, global := svc.GetSpec().GetMode().(*pb.ServiceSpec_GlobalJob)
	for _, t := range tasks {
		if iter != 0 && t.GetJobIteration() != iter || iter == 0 && !j.upToDate(t) {
			continue
		}
		key := fmt.Sprintf("slot:%d", t.GetSlot())
		if global {
			key = "node:" + t.GetNodeId()
		}
		g := groups[key]
		if g == nil {
			g = &group{key: key}
			groups[key] = g
			order = append(order, g)
		}
		g.tasks = append(g.tasks, t)
		switch st := t.GetStatus().GetState(); {
		case st == pb.TaskState_TASK_STATE_COMPLETE:
			g.complete = true
		case t.GetDesiredState() <= pb.TaskState_TASK_STATE_RUNNING:
			g.active = t
			active++
		}
	}
	completed := 0
	var gaveUp []*group
	for _, g := range order {
		sortNewestFirst(g.tasks)
		switch {
		case g.complete:
			completed++
		case g.active == nil:
			gaveUp = append(gaveUp, g)
		}
	}
	var total int
	switch m := svc.GetSpec().GetMode().(type) {
	case *pb.ServiceSpec_ReplicatedJob:
		limit := max(m.ReplicatedJob.GetMaxConcurrent(), 1)
		total = int(m.ReplicatedJob.GetTotalCompletions())
		if total == 0 {
			total = int(limit)
		}
		for _, g := range order {
			g.label = fmt.Sprintf("%d/%d", g.tasks[0].GetSlot(), total)
		}
		f.lines = append(f.lines,
			progressLine{key: "overall", text: fmt.Sprintf("job progress: %d out of %d complete %s", completed, total, fractionBar(completed, total))},
			progressLine{key: "active", text: fmt.Sprintf("active tasks: %d out of %d tasks", active, limit)})
		f.done = completed >= total
	default:
		total = len(order)
		for _, g := range order {
			g.label = nodeName(nodes, g.tasks[0].GetNodeId())
		}
		f.lines = append(f.lines, progressLine{key: "overall", text: fmt.Sprintf("job progress: %d out of %d nodes complete %s", completed, total, fractionBar(completed, total))})
		f.done = total > 0 && completed == total
		if total == 0 {
			// No eligible node yet, or the orchestrator has not made the
			// tasks: done only if that holds a while.
			f.done, f.stable = true, emptyVerifyPeriod
		}
	}
	f.desired, f.running = total, min(completed, total)
	if len(order) <= maxProgressBars {
		sort.SliceStable(order, func(a, b int) bool {
			if ta, tb := order[a].tasks[0], order[b].tasks[0]; ta.GetSlot() != tb.GetSlot() {
				return ta.GetSlot() < tb.GetSlot()
			}
			return order[a].label < order[b].label
		})
		width := 0
		for _, g := range order {
			width = max(width, len(g.label))
		}
		for _, g := range order {
			t, note := g.tasks[0], ""
			if g.active != nil {
				t = g.active
			}
			step := j.step(t)
			switch {
			case g.complete:
				step = stepsToRunning
			case t.GetStatus().GetErr() != "":
				note = t.GetStatus().GetErr()
			case g.active != nil && len(g.tasks) > 1:
				for _, old := range g.tasks {
					if old != t && old.GetStatus().GetErr() != "" {
						note = "previous attempt: " + old.GetStatus().GetErr()
						break
					}
				}
			}
			text := fmt.Sprintf("%-*s %-9s %s", width+1, g.label+":", strings.ToLower(taskStateWord(t.GetStatus().GetState())), progressBar(step))
			if note != "" {
				text += " " + strings.ReplaceAll(note, "\n", " ")
			}
			f.lines = append(f.lines, progressLine{key: g.key, text: text})
		}
	}
	if !f.done && active == 0 && len(gaveUp) > 0 && (global || completed+len(gaveUp) >= total) {
		g := gaveUp[0]
		why := g.tasks[0].GetStatus().GetErr()
		if why == "" {
			why = g.tasks[0].GetStatus().GetMessage()
		}
		name := svc.GetSpec().GetAnnotations().GetName()
		f.err = fmt.Errorf("job %s failed: %d out of %d complete; %s gave up after %d attempt(s): %s; see `shoal service ps %s`, and run it again with `shoal service update --force %s`",
			name, completed, total, strings.Replace(g.key, ":", " ", 1), len(g.tasks), why, name, name)
	}
	return f
}

// updateVerdict is what the service's UpdateStatus says about the change
// the command made.
type updateVerdict struct {
	wait bool   // the update is still going
	line string // a progress line, if the status is ours
	err  error  // the update failed: paused or rolled back
}

func judgeUpdate(svc *pb.Service, opts progressOpts) updateVerdict {
	us := svc.GetUpdateStatus()
	if !opts.update || us.GetState() == pb.UpdateState_UPDATE_STATE_UNKNOWN {
		return updateVerdict{}
	}
	if b := opts.before; b != nil && b.GetState() != pb.UpdateState_UPDATE_STATE_UNKNOWN {
		same := b.GetStartedAt() == us.GetStartedAt()
		if b.GetStartedAt() == 0 && us.GetStartedAt() == 0 {
			same = b.GetState() == us.GetState() && b.GetMessage() == us.GetMessage()
		}
		if same {
			return updateVerdict{} // not (yet) ours
		}
	}
	name := svc.GetSpec().GetAnnotations().GetName()
	word := updateStateWord(us.GetState())
	msg := us.GetMessage()
	line := "update: " + word
	if msg != "" {
		line += ": " + msg
	}
	v := updateVerdict{line: line}
	why := ""
	if msg != "" {
		why = ": " + msg
	}
	switch us.GetState() {
	case pb.UpdateState_UPDATE_STATE_UPDATING, pb.UpdateState_UPDATE_STATE_ROLLBACK_STARTED:
		v.wait = true
	case pb.UpdateState_UPDATE_STATE_PAUSED:
		v.err = fmt.Errorf("the update of service %s is paused%s; see `shoal service ps %s`, then fix it with `shoal service update` or undo it with `shoal service rollback %s`", name, why, name, name)
	case pb.UpdateState_UPDATE_STATE_ROLLBACK_PAUSED:
		v.err = fmt.Errorf("the rollback of service %s is paused%s; see `shoal service ps %s` and fix it with `shoal service update`", name, why, name)
	case pb.UpdateState_UPDATE_STATE_ROLLBACK_COMPLETED:
		if !opts.rollback {
			v.err = fmt.Errorf("the update of service %s failed and was rolled back%s; see `shoal service ps %s`", name, why, name)
		}
	}
	return v
}

// convergence tracks how long a service has looked converged.
type convergence struct {
	since time.Time
}

// observe adds the update and verify lines to a frame and reports whether
// the service has converged for good.
func (c *convergence) observe(f progressFrame, v updateVerdict, now time.Time) ([]progressLine, bool) {
	lines := append([]progressLine(nil), f.lines...)
	if v.line != "" {
		lines = append(lines, progressLine{key: "update", text: v.line})
	}
	if !f.done || v.wait || v.err != nil {
		c.since = time.Time{}
		return lines, false
	}
	if c.since.IsZero() {
		c.since = now
	}
	if f.job && now.Sub(c.since) >= f.stable {
		return append(lines, progressLine{key: "verify", text: "verify: Job complete"}), true
	}
	if now.Sub(c.since) >= f.stable {
		return append(lines, progressLine{key: "verify", text: "verify: Service converged"}), true
	}
	secs := int((f.stable + time.Second - 1) / time.Second)
	unit := "seconds"
	if secs == 1 {
		unit = "second"
	}
	return append(lines, progressLine{key: "verify", text: fmt.Sprintf("verify: Waiting %d %s to verify that tasks are stable...", secs, unit)}), false
}

// progressPrinter draws frames: in place on a terminal, else only the lines
// that changed.
type progressPrinter struct {
	w     io.Writer
	tty   bool
	width int // terminal columns; 0 if unknown
	drawn int
	last  map[string]string
}

func newProgressPrinter(w io.Writer, tty bool, width int) *progressPrinter {
	return &progressPrinter{w: w, tty: tty, width: width, last: map[string]string{}}
}

func (p *progressPrinter) fit(s string) string {
	if p.width <= 1 || utf8.RuneCountInString(s) < p.width {
		return s
	}
	return string([]rune(s)[:p.width-1])
}

func (p *progressPrinter) draw(lines []progressLine) {
	var b strings.Builder
	if p.tty {
		if p.drawn > 0 {
			fmt.Fprintf(&b, "\x1b[%dA", p.drawn)
		}
		for _, l := range lines {
			b.WriteString("\x1b[2K" + p.fit(l.text) + "\n")
		}
		for i := len(lines); i < p.drawn; i++ {
			b.WriteString("\x1b[2K\n")
		}
		if extra := p.drawn - len(lines); extra > 0 {
			fmt.Fprintf(&b, "\x1b[%dA", extra)
		}
		p.drawn = len(lines)
	} else {
		seen := map[string]bool{}
		for _, l := range lines {
			seen[l.key] = true
			if l.blank || p.last[l.key] == l.text {
				continue
			}
			p.last[l.key] = l.text
			b.WriteString(strings.TrimRight(l.text, " ") + "\n")
		}
		for k := range p.last {
			if !seen[k] {
				delete(p.last, k)
			}
		}
	}
	io.WriteString(p.w, b.String())
}

// isTerminal reports whether f is a terminal.
func isTerminal(f *os.File) bool {
	fi, err := f.Stat()
	return err == nil && fi.Mode()&os.ModeCharDevice != 0 && os.Getenv("TERM") != "dumb"
}

// watchService polls a service until it converges, its update fails, the
// timeout passes or the user presses Ctrl-C.
func watchService(s *session, svc *pb.Service, opts progressOpts, quiet bool, timeout time.Duration) error {
	ctx, stop := signal.NotifyContext(s.ctx, os.Interrupt)
	defer stop()
	id, name := svc.GetId(), svc.GetSpec().GetAnnotations().GetName()
	if name == "" {
		name = id
	}
	var printer *progressPrinter
	if quiet {
		printer = newProgressPrinter(io.Discard, false, 0)
	} else {
		tty := isTerminal(os.Stdout)
		width := 0
		if tty {
			width = terminalWidth(os.Stdout)
		}
		printer = newProgressPrinter(os.Stdout, tty, width)
	}
	var conv convergence
	nodes := map[string]string{}
	var nodesAt time.Time
	var history []*pb.Task
	var last progressFrame
	stopped := func() error {
		if errors.Is(ctx.Err(), context.DeadlineExceeded) && last.job {
			return fmt.Errorf("job %s has not finished after %s (%d out of %d complete): it keeps running in the background; see `shoal service ps %s`, or wait longer with --timeout",
				name, timeout, last.running, last.desired, name)
		}
		if errors.Is(ctx.Err(), context.DeadlineExceeded) {
			return fmt.Errorf("service %s has not converged after %s (%d out of %d tasks): it keeps converging in the background; see `shoal service ps %s`, or wait longer with --timeout",
				name, timeout, last.running, last.desired, name)
		}
		fmt.Fprintf(os.Stderr, "Stopped watching: service %s keeps converging in the background. See `shoal service ps %s`.\n", name, name)
		return nil
	}
	for poll := 0; ; poll++ {
		got, err := s.control.GetService(ctx, &pb.GetServiceRequest{Ref: id})
		if err != nil {
			if ctx.Err() != nil {
				return stopped()
			}
			return s.explain(err)
		}
		svc = got.GetService()
		verdict := judgeUpdate(svc, opts)
		// Every few polls, and before reporting a failed update, fetch the
		// ended tasks too: they carry the errors.
		// A job's completed tasks are no longer meant to run: fetch them all.
		full := poll%historyEvery == 0 || verdict.err != nil || svc.GetJobStatus() != nil
		resp, err := s.control.ListTasks(ctx, &pb.ListTasksRequest{ServiceRef: id, RunningOnly: !full})
		if err != nil {
			if ctx.Err() != nil {
				return stopped()
			}
			return s.explain(err)
		}
		tasks := resp.GetTasks()
		if full {
			history = history[:0]
			for _, t := range tasks {
				if t.GetStatus().GetState() > pb.TaskState_TASK_STATE_RUNNING {
					history = append(history, t)
				}
			}
		} else {
			tasks = mergeHistory(tasks, history)
		}
		if global := svc.GetSpec().GetGlobal() != nil || svc.GetSpec().GetGlobalJob() != nil; global && time.Since(nodesAt) > 2*time.Second && unknownNode(tasks, nodes) {
			nodesAt = time.Now()
			if n, err := s.control.ListNodes(ctx, &pb.ListNodesRequest{}); err == nil {
				nodes = hostnames(n.GetNodes())
			}
		}
		last = evalProgress(svc, tasks, nodes, opts)
		lines, done := conv.observe(last, verdict, time.Now())
		printer.draw(lines)
		if verdict.err != nil {
			return verdict.err
		}
		if last.err != nil {
			return last.err
		}
		if done {
			return nil
		}
		select {
		case <-ctx.Done():
			return stopped()
		case <-time.After(progressInterval):
		}
	}
}

// mergeHistory adds the ended tasks of the last full poll to tasks.
func mergeHistory(tasks, history []*pb.Task) []*pb.Task {
	if len(history) == 0 {
		return tasks
	}
	ids := make(map[string]bool, len(tasks))
	for _, t := range tasks {
		ids[t.GetId()] = true
	}
	out := append([]*pb.Task(nil), tasks...)
	for _, t := range history {
		if !ids[t.GetId()] {
			out = append(out, t)
		}
	}
	return out
}

func unknownNode(tasks []*pb.Task, nodes map[string]string) bool {
	for _, t := range tasks {
		if t.GetNodeId() != "" && nodes[t.GetNodeId()] == "" {
			return true
		}
	}
	return false
}

func hostnames(nodes []*pb.Node) map[string]string {
	m := make(map[string]string, len(nodes))
	for _, n := range nodes {
		m[n.GetId()] = n.GetDescription().GetHostname()
	}
	return m
}
