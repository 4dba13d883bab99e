package main

// Rendering of services and tasks for `service ls`, `service ps` and
// `service inspect --pretty`. Everything here writes to an io.Writer and
// takes the current time, so that tests can check the exact output.

import (
	"bytes"
	"fmt"
	"io"
	"sort"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"
	"unicode/utf8"

	"github.com/shoal-cluster/shoal/internal/registry"
	pb "github.com/shoal-cluster/shoal/proto"
)

const (
	shortIDLen   = 12
	maxErrLength = 30
)

// tableTo is newTable writing to w, without the padding tabwriter leaves
// at the end of lines whose last columns are empty.
func tableTo(w io.Writer, headers ...string) *table {
	t := &table{w: tabwriter.NewWriter(&trimWriter{w: w}, 0, 0, 3, ' ', 0)}
	t.row(headers...)
	return t
}

// trimWriter drops trailing blanks from each line. It holds a partial line
// until its newline comes; every row of a table ends with one.
type trimWriter struct {
	w       io.Writer
	partial []byte
}

func (t *trimWriter) Write(p []byte) (int, error) {
	t.partial = append(t.partial, p...)
	i := bytes.LastIndexByte(t.partial, '\n')
	if i < 0 {
		return len(p), nil
	}
	var b strings.Builder
	for _, l := range strings.SplitAfter(string(t.partial[:i+1]), "\n") {
		if l != "" {
			b.WriteString(strings.TrimRight(l[:len(l)-1], " ") + "\n")
		}
	}
	t.partial = append(t.partial[:0], t.partial[i+1:]...)
	if _, err := io.WriteString(t.w, b.String()); err != nil {
		return 0, err
	}
	return len(p), nil
}

func shortID(id string) string {
	if len(id) > shortIDLen {
		return id[:shortIDLen]
	}
	return id
}

// modeWord is the MODE column: replicated, global, replicated job, global job.
func modeWord(spec *pb.ServiceSpec) string {
	switch spec.GetMode().(type) {
	case *pb.ServiceSpec_Global:
		return "global"
	case *pb.ServiceSpec_ReplicatedJob:
		return "replicated job"
	case *pb.ServiceSpec_GlobalJob:
		return "global job"
	}
	return "replicated"
}

func protoWord(p pb.PortProtocol) string {
	return strings.ToLower(strings.TrimPrefix(p.String(), "PORT_PROTOCOL_"))
}

// portString formats a published port as Docker does: "*:8080->80/tcp".
func portString(p *pb.PortConfig) string {
	if p.GetPublishedPort() == 0 {
		return fmt.Sprintf("%d/%s", p.GetTargetPort(), protoWord(p.GetProtocol()))
	}
	return fmt.Sprintf("*:%d->%d/%s", p.GetPublishedPort(), p.GetTargetPort(), protoWord(p.GetProtocol()))
}

// servicePorts is the PORTS column of `service ls`: the allocated ports if
// the cluster has allocated them, else the spec's.
func servicePorts(svc *pb.Service) string {
	ports := svc.GetEndpoint().GetPorts()
	if len(ports) == 0 {
		ports = svc.GetSpec().GetEndpoint().GetPorts()
	}
	out := make([]string, 0, len(ports))
	for _, p := range ports {
		s := portString(p)
		if p.GetPublishMode() == pb.PublishMode_PUBLISH_MODE_HOST {
			s += " (host)"
		}
		out = append(out, s)
	}
	return strings.Join(out, ", ")
}

// taskPorts is the PORTS column of `service ps`: where the task's ports
// are bound on its node.
func taskPorts(t *pb.Task) string {
	var out []string
	for _, b := range t.GetStatus().GetPorts() {
		ip := b.GetHostIp()
		if ip == "" || ip == "0.0.0.0" || ip == "::" {
			ip = "*"
		}
		out = append(out, fmt.Sprintf("%s:%d->%d/%s", ip, b.GetHostPort(), b.GetTargetPort(), protoWord(b.GetProtocol())))
	}
	return strings.Join(out, ", ")
}

// replicasCell is the REPLICAS column: "running/desired", with the
// per-node limit or job completions when they apply.
func replicasCell(svc *pb.Service, c *pb.ServiceTaskCounts) string {
	spec := svc.GetSpec()
	running := c.GetRunning()
	switch m := spec.GetMode().(type) {
	case *pb.ServiceSpec_Replicated:
		s := fmt.Sprintf("%d/%d", running, m.Replicated.GetReplicas())
		if max := spec.GetTask().GetPlacement().GetMaxReplicas(); max > 0 {
			s += fmt.Sprintf(" (max %d per node)", max)
		}
		return s
	case *pb.ServiceSpec_ReplicatedJob:
		return fmt.Sprintf("%d/%d (%d/%d completed)", running, m.ReplicatedJob.GetMaxConcurrent(), c.GetCompleted(), m.ReplicatedJob.GetTotalCompletions())
	case *pb.ServiceSpec_GlobalJob:
		return fmt.Sprintf("%d/%d (%d/%d completed)", running, c.GetDesired(), c.GetCompleted(), c.GetDesired()+c.GetCompleted())
	}
	return fmt.Sprintf("%d/%d", running, c.GetDesired())
}

// renderServiceList writes the `service ls` table.
func renderServiceList(w io.Writer, services []*pb.Service, counts []*pb.ServiceTaskCounts) {
	byID := map[string]*pb.ServiceTaskCounts{}
	for _, c := range counts {
		byID[c.GetServiceId()] = c
	}
	t := tableTo(w, "ID", "NAME", "MODE", "REPLICAS", "IMAGE", "PORTS")
	for _, svc := range services {
		spec := svc.GetSpec()
		t.row(shortID(svc.GetId()), spec.GetAnnotations().GetName(), modeWord(spec),
			replicasCell(svc, byID[svc.GetId()]), registry.StripDigest(spec.GetTask().GetContainer().GetImage()), servicePorts(svc))
	}
	t.flush()
}

func sortServices(services []*pb.Service) {
	sort.Slice(services, func(i, j int) bool {
		ni, nj := services[i].GetSpec().GetAnnotations().GetName(), services[j].GetSpec().GetAnnotations().GetName()
		if ni != nj {
			return ni < nj
		}
		return services[i].GetId() < services[j].GetId()
	})
}

// ---------------------------------------------------------------- ps

// taskName is NAME in `service ps`: web.3 for replicated tasks, web.NODE
// (node ID prefix) for global ones.
func taskName(t *pb.Task, noTrunc bool) string {
	if t.GetSlot() != 0 || t.GetNodeId() == "" {
		return fmt.Sprintf("%s.%d", t.GetServiceName(), t.GetSlot())
	}
	node := t.GetNodeId()
	if !noTrunc {
		node = shortID(node)
	}
	return t.GetServiceName() + "." + node
}

func taskCreated(t *pb.Task) int64 {
	if c := t.GetMeta().GetCreatedAt(); c != 0 {
		return c
	}
	return t.GetStatus().GetTimestamp()
}

// sortTasks orders tasks as `service ps` shows them: by service, then slot
// (or node, for global tasks), newest first within a slot.
func sortTasks(tasks []*pb.Task) {
	sort.SliceStable(tasks, func(i, j int) bool {
		a, b := tasks[i], tasks[j]
		if a.GetServiceName() != b.GetServiceName() {
			return a.GetServiceName() < b.GetServiceName()
		}
		if a.GetServiceId() != b.GetServiceId() {
			return a.GetServiceId() < b.GetServiceId()
		}
		if a.GetSlot() != b.GetSlot() {
			return a.GetSlot() < b.GetSlot()
		}
		if a.GetSlot() == 0 && a.GetNodeId() != b.GetNodeId() {
			return a.GetNodeId() < b.GetNodeId()
		}
		if ca, cb := taskCreated(a), taskCreated(b); ca != cb {
			return ca > cb
		}
		return a.GetMeta().GetVersion() > b.GetMeta().GetVersion()
	})
}

// taskStateWord turns TASK_STATE_RUNNING into "Running".
func taskStateWord(s pb.TaskState) string { return enumWord(s.String(), "TASK_STATE_") }

// currentState is CURRENT STATE: "Running 5 seconds ago".
func currentState(t *pb.Task, now time.Time) string {
	st := taskStateWord(t.GetStatus().GetState())
	ts := t.GetStatus().GetTimestamp()
	if ts == 0 {
		return st
	}
	d := now.Sub(time.Unix(0, ts))
	if d < 0 {
		d = 0
	}
	out := st + " " + strings.ToLower(humanDuration(d)) + " ago"
	if msg := t.GetStatus().GetMessage(); t.GetStatus().GetState() == pb.TaskState_TASK_STATE_PREPARING && strings.HasPrefix(msg, "pulling ") {
		out += " (" + msg + ")" // an image pull's progress
	}
	return out
}

// humanDuration is Docker's units.HumanDuration.
func humanDuration(d time.Duration) string {
	if seconds := int(d.Seconds()); seconds < 1 {
		return "Less than a second"
	} else if seconds == 1 {
		return "1 second"
	} else if seconds < 60 {
		return fmt.Sprintf("%d seconds", seconds)
	} else if minutes := int(d.Minutes()); minutes == 1 {
		return "About a minute"
	} else if minutes < 60 {
		return fmt.Sprintf("%d minutes", minutes)
	} else if hours := int(d.Hours() + 0.5); hours == 1 {
		return "About an hour"
	} else if hours < 48 {
		return fmt.Sprintf("%d hours", hours)
	} else if hours < 24*7*2 {
		return fmt.Sprintf("%d days", hours/24)
	} else if hours < 24*30*2 {
		return fmt.Sprintf("%d weeks", hours/24/7)
	} else if hours < 24*365*2 {
		return fmt.Sprintf("%d months", hours/24/30)
	}
	return fmt.Sprintf("%d years", int(d.Hours())/24/365)
}

// taskError is the ERROR column: the task's error, or why a pending task
// has no node yet; quoted, and cut to 30 characters unless noTrunc.
func taskError(t *pb.Task, noTrunc bool) string {
	msg := t.GetStatus().GetErr()
	if msg == "" && t.GetStatus().GetState() <= pb.TaskState_TASK_STATE_PENDING && t.GetDesiredState() <= pb.TaskState_TASK_STATE_RUNNING {
		msg = t.GetPendingReason()
	}
	if msg == "" {
		return ""
	}
	msg = strings.ReplaceAll(msg, "\n", " ")
	if !noTrunc && utf8.RuneCountInString(msg) > maxErrLength {
		msg = strings.TrimRight(string([]rune(msg)[:maxErrLength-1]), " ") + "…"
	}
	return strconv.Quote(msg)
}

// nodeName is a node's hostname, or its ID prefix when unknown.
func nodeName(nodes map[string]string, id string) string {
	if id == "" {
		return ""
	}
	if h := nodes[id]; h != "" {
		return h
	}
	return shortID(id)
}

// renderTaskList writes the `service ps` table; tasks must be sorted with
// sortTasks. Older tasks of a slot are shown under the newest with " \_ ".
func renderTaskList(w io.Writer, tasks []*pb.Task, nodes map[string]string, noTrunc bool, now time.Time) {
	t := tableTo(w, "ID", "NAME", "IMAGE", "NODE", "DESIRED STATE", "CURRENT STATE", "ERROR", "PORTS")
	prev := ""
	for _, task := range tasks {
		name := taskName(task, noTrunc)
		group := task.GetServiceId() + "/" + name
		shown := name
		if group == prev {
			shown = ` \_ ` + name
		}
		prev = group
		id := task.GetId()
		if !noTrunc {
			id = shortID(id)
		}
		image := task.GetSpec().GetContainer().GetImage()
		if !noTrunc {
			image = registry.StripDigest(image) // as Docker shows it; inspect has the digest
		}
		t.row(id, shown, image, nodeName(nodes, task.GetNodeId()),
			taskStateWord(task.GetDesiredState()), currentState(task, now), taskError(task, noTrunc), taskPorts(task))
	}
	t.flush()
}

// taskFilter is `service ps --filter`: KEY=VALUE pairs; values of one key
// are alternatives, different keys must all match.
type taskFilter map[string][]string

func parseTaskFilters(filters []string) (taskFilter, error) {
	f := taskFilter{}
	for _, kv := range filters {
		k, v, ok := strings.Cut(kv, "=")
		if !ok || v == "" {
			return nil, usagef("--filter %q: use KEY=VALUE, e.g. desired-state=running", kv)
		}
		switch k {
		case "desired-state":
			if _, ok := pb.TaskState_value["TASK_STATE_"+strings.ToUpper(v)]; !ok {
				return nil, usagef("--filter %q: desired-state is running, ready, shutdown, remove or another task state", kv)
			}
		case "node", "id", "name":
		default:
			return nil, usagef("--filter %q: filter on desired-state, node, id or name", kv)
		}
		f[k] = append(f[k], v)
	}
	return f, nil
}

func (f taskFilter) match(t *pb.Task, nodes map[string]string) bool {
	anyOf := func(key string, ok func(v string) bool) bool {
		vals, given := f[key]
		if !given {
			return true
		}
		for _, v := range vals {
			if ok(v) {
				return true
			}
		}
		return false
	}
	return anyOf("desired-state", func(v string) bool {
		return t.GetDesiredState().String() == "TASK_STATE_"+strings.ToUpper(v)
	}) && anyOf("node", func(v string) bool {
		return t.GetNodeId() != "" && (nodes[t.GetNodeId()] == v || strings.HasPrefix(t.GetNodeId(), v))
	}) && anyOf("id", func(v string) bool {
		return strings.HasPrefix(t.GetId(), v)
	}) && anyOf("name", func(v string) bool {
		return taskName(t, true) == v || taskName(t, false) == v
	})
}

// ---------------------------------------------------------------- inspect

func updateStateWord(s pb.UpdateState) string {
	return strings.ToLower(strings.TrimPrefix(s.String(), "UPDATE_STATE_"))
}

func enumLower(name, prefix string) string {
	return strings.ReplaceAll(strings.ToLower(strings.TrimPrefix(name, prefix)), "_", "-")
}

func dur(ns int64) string { return time.Duration(ns).String() }

// agoAt says how long before now a time (Unix nanoseconds) was, for
// --pretty output ("-" for none).
func agoAt(now time.Time, ns int64) string {
	if ns == 0 {
		return "-"
	}
	return strings.ToLower(humanDuration(now.Sub(time.Unix(0, ns)))) + " ago"
}

// renderServicePretty writes `service inspect --pretty` for one service.
func renderServicePretty(w io.Writer, svc *pb.Service, now time.Time) {
	spec := svc.GetSpec()
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	p := func(format string, args ...any) { fmt.Fprintf(tw, format+"\n", args...) }
	when := func(ns int64) string { return agoAt(now, ns) }
	p("ID:\t%s", svc.GetId())
	p("Name:\t%s", spec.GetAnnotations().GetName())
	if labels := spec.GetAnnotations().GetLabels(); len(labels) > 0 {
		p("Labels:")
		for _, k := range sortedKeys(labels) {
			p(" %s=%s", k, labels[k])
		}
	}
	p("Created:\t%s", when(svc.GetMeta().GetCreatedAt()))
	p("Updated:\t%s", when(svc.GetMeta().GetUpdatedAt()))
	p("Spec version:\t%d", svc.GetSpecVersion())
	switch m := spec.GetMode().(type) {
	case *pb.ServiceSpec_Replicated:
		p("Service Mode:\tReplicated")
		p(" Replicas:\t%d", m.Replicated.GetReplicas())
	case *pb.ServiceSpec_Global:
		p("Service Mode:\tGlobal")
	case *pb.ServiceSpec_ReplicatedJob:
		p("Service Mode:\tReplicated job")
		p(" Max concurrent:\t%d", m.ReplicatedJob.GetMaxConcurrent())
		p(" Total completions:\t%d", m.ReplicatedJob.GetTotalCompletions())
	case *pb.ServiceSpec_GlobalJob:
		p("Service Mode:\tGlobal job")
	}
	if as := spec.GetAutoscale(); as != nil {
		p("Autoscaling:")
		p(" Target:\tCPU %d%% of the reservation", as.GetTargetCpuPercent())
		p(" Bounds:\t%d to %d tasks", as.GetMinReplicas(), as.GetMaxReplicas())
		sync, window := 15*time.Second, 300*time.Second
		if as.GetSyncPeriod() > 0 {
			sync = time.Duration(as.GetSyncPeriod())
		}
		if as.GetDownscaleWindow() > 0 {
			window = time.Duration(as.GetDownscaleWindow())
		} else if as.GetDownscaleWindow() < 0 {
			window = 0
		}
		p(" Sync:\tevery %s; scale-down window %s", sync, window)
		if st := svc.GetAutoscaleStatus(); st != nil {
			p(" Last decision:\t%d → %d, %s: %s", st.GetFromReplicas(), st.GetToReplicas(), when(st.GetDecidedAt()), st.GetReason())
		} else {
			p(" Last decision:\tnone yet")
		}
	}
	if js := svc.GetJobStatus(); js != nil {
		p("JobStatus:")
		p(" Iteration:\t%d", js.GetJobIteration())
		p(" Last execution:\t%s", when(js.GetLastExecution()))
	}
	if us := svc.GetUpdateStatus(); us != nil && us.GetState() != pb.UpdateState_UPDATE_STATE_UNKNOWN {
		p("UpdateStatus:")
		p(" State:\t%s", updateStateWord(us.GetState()))
		p(" Started:\t%s", when(us.GetStartedAt()))
		if us.GetCompletedAt() != 0 {
			p(" Completed:\t%s", when(us.GetCompletedAt()))
		}
		if us.GetMessage() != "" {
			p(" Message:\t%s", us.GetMessage())
		}
	}
	task := spec.GetTask()
	if pl := task.GetPlacement(); pl != nil {
		p("Placement:")
		if len(pl.GetConstraints()) > 0 {
			p(" Constraints:\t%s", strings.Join(pl.GetConstraints(), ", "))
		}
		for _, pref := range pl.GetPreferences() {
			p(" Preference:\tspread=%s", pref.GetSpreadDescriptor())
		}
		if pl.GetMaxReplicas() > 0 {
			p(" Max replicas per node:\t%d", pl.GetMaxReplicas())
		}
	}
	for _, u := range []struct {
		title string
		cfg   *pb.UpdateConfig
	}{{"UpdateConfig", spec.GetUpdate()}, {"RollbackConfig", spec.GetRollback()}} {
		if u.cfg == nil {
			continue
		}
		p("%s:", u.title)
		p(" Parallelism:\t%d", u.cfg.GetParallelism())
		if u.cfg.GetDelay() != 0 {
			p(" Delay:\t%s", dur(u.cfg.GetDelay()))
		}
		p(" On failure:\t%s", enumLower(u.cfg.GetFailureAction().String(), "UPDATE_FAILURE_ACTION_"))
		p(" Monitoring Period:\t%s", dur(u.cfg.GetMonitor()))
		p(" Max failure ratio:\t%g", u.cfg.GetMaxFailureRatio())
		p(" Order:\t%s", enumLower(u.cfg.GetOrder().String(), "UPDATE_ORDER_"))
	}
	c := task.GetContainer()
	runtime := task.GetRuntime()
	if runtime == "" {
		runtime = runtimeProcess
	}
	p("ContainerSpec:")
	p(" Runtime:\t%s", runtime)
	p(" Image:\t%s", c.GetImage())
	if d := registry.Digest(c.GetImage()); d != "" {
		p(" Tag:\t%s", registry.StripDigest(c.GetImage()))
		p(" Digest:\t%s", d)
	}
	if c.GetWithRegistryAuth() {
		p(" Registry auth:\tsealed on the managers, for %s", svc.GetRegistryAuthServer())
	}
	if len(c.GetCommand()) > 0 {
		p(" Command:\t%s", strings.Join(c.GetCommand(), " "))
	}
	if len(c.GetArgs()) > 0 {
		p(" Args:\t%s", strings.Join(c.GetArgs(), " "))
	}
	if len(c.GetEnv()) > 0 {
		p(" Env:\t%s", strings.Join(c.GetEnv(), " "))
	}
	if c.GetDir() != "" {
		p(" Dir:\t%s", c.GetDir())
	}
	if c.GetUser() != "" {
		p(" User:\t%s", c.GetUser())
	}
	if labels := c.GetLabels(); len(labels) > 0 {
		p(" Labels:")
		for _, k := range sortedKeys(labels) {
			p("  %s=%s", k, labels[k])
		}
	}
	p(" Stop grace period:\t%s", dur(c.GetStopGracePeriod()))
	if len(c.GetMounts()) > 0 {
		p("Mounts:")
		for _, m := range c.GetMounts() {
			ro := ""
			if m.GetReadOnly() {
				ro = ", read-only"
			}
			p(" %s:\t%s -> %s%s", enumLower(m.GetType().String(), "MOUNT_TYPE_"), m.GetSource(), m.GetTarget(), ro)
		}
	}
	if len(c.GetSecrets()) > 0 {
		p("Secrets:")
		for _, r := range c.GetSecrets() {
			p(" %s:	-> %s (mode %04o)", r.GetSecretName(), r.GetTarget(), r.GetMode())
		}
	}
	if len(c.GetConfigs()) > 0 {
		p("Configs:")
		for _, r := range c.GetConfigs() {
			owner := ""
			if r.GetUid() != "" || r.GetGid() != "" {
				owner = fmt.Sprintf(", uid %q gid %q", r.GetUid(), r.GetGid())
			}
			p(" %s:	-> %s (mode %04o%s)", r.GetConfigName(), r.GetTarget(), r.GetMode(), owner)
		}
	}
	if hc := c.GetHealthcheck(); hc != nil {
		p("Healthcheck:")
		switch {
		case hc.GetDisable():
			p(" Disabled:\ttrue")
		case len(hc.GetCommand()) > 0:
			p(" Command:\t%s", strings.Join(hc.GetCommand(), " "))
		case hc.GetHttpGet() != "":
			p(" HTTP GET:\t%s", hc.GetHttpGet())
		case hc.GetTcpSocket() != 0:
			p(" TCP port:\t%d", hc.GetTcpSocket())
		}
		if !hc.GetDisable() {
			p(" Interval:\t%s", dur(hc.GetInterval()))
			p(" Timeout:\t%s", dur(hc.GetTimeout()))
			p(" Start period:\t%s", dur(hc.GetStartPeriod()))
			p(" Retries:\t%d", hc.GetRetries())
		}
	}
	if r := task.GetResources(); r != nil {
		p("Resources:")
		for _, x := range []struct {
			title string
			res   *pb.Resources
		}{{"Reservations", r.GetReservations()}, {"Limits", r.GetLimits()}} {
			if x.res == nil {
				continue
			}
			p(" %s:", x.title)
			if x.res.GetNanoCpus() > 0 {
				p("  CPU:\t%s", formatCPUs(x.res.GetNanoCpus()))
			}
			if x.res.GetMemoryBytes() > 0 {
				p("  Memory:\t%s", humanBytes(x.res.GetMemoryBytes()))
			}
		}
	}
	if r := task.GetRestart(); r != nil {
		p("Restart Policy:")
		p(" Condition:\t%s", enumLower(r.GetCondition().String(), "RESTART_CONDITION_"))
		p(" Delay:\t%s", dur(r.GetDelay()))
		if r.GetMaxAttempts() > 0 {
			p(" Max attempts:\t%d", r.GetMaxAttempts())
		}
		if r.GetWindow() > 0 {
			p(" Window:\t%s", dur(r.GetWindow()))
		}
	}
	p("Endpoint Mode:\t%s", strings.ToLower(strings.TrimPrefix(spec.GetEndpoint().GetMode().String(), "RESOLUTION_MODE_")))
	if va := svc.GetEndpoint().GetVirtualAddr(); va != "" {
		p("Virtual address:\t%s", va)
	}
	ports := svc.GetEndpoint().GetPorts()
	if len(ports) == 0 {
		ports = spec.GetEndpoint().GetPorts()
	}
	if len(ports) > 0 {
		p("Ports:")
		for _, port := range ports {
			p(" PublishedPort = %d", port.GetPublishedPort())
			p("  Protocol = %s", protoWord(port.GetProtocol()))
			p("  TargetPort = %d", port.GetTargetPort())
			p("  PublishMode = %s", strings.ToLower(strings.TrimPrefix(port.GetPublishMode().String(), "PUBLISH_MODE_")))
		}
	}
	tw.Flush()
}

func sortedKeys(m map[string]string) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	return keys
}
