package dashboard

import (
	"cmp"
	"context"
	"fmt"
	"math"
	"slices"
	"strconv"
	"strings"
	"time"

	pb "github.com/shoal-cluster/shoal/proto"
)

// State is what the pages show: the cluster as of one refresh, in the
// words the CLI uses. It never holds a secret's value, a join token or a
// key.
type State struct {
	// Version counts refreshes; the pages ignore a state older than the
	// one they show.
	Version   uint64 `json:"version"`
	UpdatedAt int64  `json:"updated_at"` // Unix milliseconds of the change
	// Via is the manager that answered.
	Via string `json:"via"`
	// Error says why the latest refresh failed; the rest is then the
	// last state read.
	Error string `json:"error,omitempty"`

	Cluster  ClusterView    `json:"cluster"`
	Nodes    []NodeView     `json:"nodes"`
	Services []ServiceView  `json:"services"`
	Tasks    []TaskView     `json:"tasks"`
	Secrets  []SecretView   `json:"secrets"`
	Configs  []SecretView   `json:"configs"`
	NodesBy  map[string]int `json:"nodes_by_state"`
	TasksBy  map[string]int `json:"tasks_by_state"`
}

// ClusterView is the cluster and its managers' Raft state.
type ClusterView struct {
	ID             string        `json:"id"`
	LeaderID       string        `json:"leader_id"`
	LeaderHostname string        `json:"leader_hostname"`
	Managers       []ManagerView `json:"managers"`
}

// ManagerView is one manager's Raft state, as `cluster info` shows it.
type ManagerView struct {
	NodeID       string `json:"node_id"`
	Hostname     string `json:"hostname"`
	APIAddr      string `json:"api_addr"`
	State        string `json:"state"` // Leader, Follower, Candidate, or Unreachable
	Term         uint64 `json:"term"`
	CommitIndex  uint64 `json:"commit_index"`
	AppliedIndex uint64 `json:"applied_index"`
	Voter        bool   `json:"voter"`
	Leader       bool   `json:"leader"`
	Error        string `json:"error,omitempty"`
}

// NodeView is one node, with what its tasks reserve of what it has.
type NodeView struct {
	ID           string `json:"id"`
	Hostname     string `json:"hostname"`
	Addr         string `json:"addr"`
	Role         string `json:"role"`         // manager or worker
	State        string `json:"state"`        // Ready, Down, Unknown, Disconnected
	Availability string `json:"availability"` // Active, Pause, Drain
	Manager      string `json:"manager"`      // Leader, Reachable, Unreachable, or empty
	Message      string `json:"message,omitempty"`
	NanoCPUs     int64  `json:"nano_cpus"`
	MemoryBytes  int64  `json:"memory_bytes"`
	ReservedCPUs int64  `json:"reserved_nano_cpus"`
	ReservedMem  int64  `json:"reserved_memory_bytes"`
	Running      int    `json:"running"` // tasks running here
	Runtimes     string `json:"runtimes"`
}

// ServiceView is one service.
type ServiceView struct {
	ID            string   `json:"id"`
	Name          string   `json:"name"`
	Mode          string   `json:"mode"` // replicated, global, replicated job, global job
	Scalable      bool     `json:"scalable"`
	Desired       uint64   `json:"desired"`
	Running       uint64   `json:"running"`
	Image         string   `json:"image"`
	Runtime       string   `json:"runtime"`
	Ports         []string `json:"ports"`
	UpdateState   string   `json:"update_state"` // updating, completed, paused, rollback_started, ...
	UpdateMessage string   `json:"update_message,omitempty"`
	CanRollback   bool     `json:"can_rollback"`
	SpecVersion   uint64   `json:"spec_version"`
	UpdatedAt     int64    `json:"updated_at"` // Unix milliseconds
}

// TaskView is one task, current or ended (a slot's history).
type TaskView struct {
	ID           string `json:"id"`
	Name         string `json:"name"` // web.3
	ServiceID    string `json:"service_id"`
	ServiceName  string `json:"service_name"`
	Slot         uint64 `json:"slot"`
	NodeID       string `json:"node_id"`
	NodeName     string `json:"node_name"`
	DesiredState string `json:"desired_state"`
	State        string `json:"state"`
	Health       string `json:"health,omitempty"`
	Error        string `json:"error,omitempty"`
	Message      string `json:"message,omitempty"`
	Pending      string `json:"pending_reason,omitempty"`
	Ports        string `json:"ports,omitempty"`
	SpecVersion  uint64 `json:"spec_version"`
	Current      bool   `json:"current"` // desired to run: not history
	Since        int64  `json:"since"`   // Unix milliseconds of the state
	// Usage is the task's latest CPU and memory sample, when the leader
	// has one (rounded, so that the page is not pushed for noise).
	Usage *UsageView `json:"usage,omitempty"`
}

// UsageView is a running task's CPU and memory use, as `service stats`
// shows it: CPU in percent of one core (and of the reservation), memory
// in MiB (and in percent of the limit).
type UsageView struct {
	CPUPercent       int   `json:"cpu_percent"`
	CPUOfReservation int   `json:"cpu_of_reservation,omitempty"`
	MemoryMiB        int64 `json:"memory_mib"`
	MemoryOfLimit    int   `json:"memory_of_limit,omitempty"`
}

// SecretView is a secret's or a config's name and size: never its value.
type SecretView struct {
	ID        string `json:"id"`
	Name      string `json:"name"`
	Size      uint64 `json:"size"`
	CreatedAt int64  `json:"created_at"`
	UpdatedAt int64  `json:"updated_at"`
}

// EventView is one cluster event, as `shoal events` prints it.
type EventView struct {
	Index      uint64            `json:"index"`
	Seq        uint32            `json:"seq"`
	Time       int64             `json:"time"` // Unix milliseconds
	Type       string            `json:"type"`
	Action     string            `json:"action"`
	ID         string            `json:"id"`
	Name       string            `json:"name"`
	Attributes map[string]string `json:"attributes,omitempty"`
	Text       string            `json:"text"`

	n uint64 // the server's count of events when this one arrived
}

// read fetches the cluster through m and builds its State (without
// Version, which the publisher sets).
func read(ctx context.Context, m *managers) (*State, error) {
	var (
		cl    *pb.GetClusterResponse
		nodes *pb.ListNodesResponse
		svcs  *pb.ListServicesResponse
		tasks *pb.ListTasksResponse
		secs  *pb.ListSecretsResponse
		cfgs  *pb.ListConfigsResponse
		stats []*pb.TaskStat
	)
	via, err := m.do(ctx, func(ctx context.Context, c pb.ControlClient) error {
		var err error
		if nodes, err = c.ListNodes(ctx, &pb.ListNodesRequest{}); err != nil {
			return err
		}
		if svcs, err = c.ListServices(ctx, &pb.ListServicesRequest{}); err != nil {
			return err
		}
		if tasks, err = c.ListTasks(ctx, &pb.ListTasksRequest{}); err != nil {
			return err
		}
		if secs, err = c.ListSecrets(ctx, &pb.ListSecretsRequest{}); err != nil {
			return err
		}
		if cfgs, err = c.ListConfigs(ctx, &pb.ListConfigsRequest{}); err != nil {
			return err
		}
		if cl, err = c.GetCluster(ctx, &pb.GetClusterRequest{}); err != nil {
			return err
		}
		// The tasks' CPU and memory: a leader that has no figures yet
		// (or is being elected) leaves the columns empty, not the page.
		if resp, err := c.TaskStats(ctx, &pb.TaskStatsRequest{}); err == nil {
			stats = resp.GetStats()
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	m.learn(nodes.GetNodes())
	s := build(cl, nodes.GetNodes(), svcs.GetServices(), svcs.GetCounts(), tasks.GetTasks(), secs.GetSecrets(), cfgs.GetConfigs())
	addUsage(s, stats)
	s.Via = via
	return s, nil
}

// build turns what the Control API returned into a State.
func build(cl *pb.GetClusterResponse, nodes []*pb.Node, svcs []*pb.Service, counts []*pb.ServiceTaskCounts, tasks []*pb.Task,
	secrets []*pb.Secret, configs []*pb.Config) *State {
	s := &State{UpdatedAt: time.Now().UnixMilli(), NodesBy: map[string]int{}, TasksBy: map[string]int{},
		Nodes: []NodeView{}, Services: []ServiceView{}, Tasks: []TaskView{}, Secrets: []SecretView{}, Configs: []SecretView{}}
	hostnames := map[string]string{}
	for _, n := range nodes {
		hostnames[n.GetId()] = n.GetDescription().GetHostname()
	}

	s.Cluster = ClusterView{ID: cl.GetCluster().GetId(), LeaderID: cl.GetLeaderNodeId(), LeaderHostname: hostnames[cl.GetLeaderNodeId()]}
	for _, mgr := range cl.GetManagers() {
		state := mgr.GetState()
		if mgr.GetError() != "" {
			state = "Unreachable"
		}
		s.Cluster.Managers = append(s.Cluster.Managers, ManagerView{
			NodeID: mgr.GetNodeId(), Hostname: mgr.GetHostname(), APIAddr: mgr.GetApiAddr(), State: state,
			Term: mgr.GetTerm(), CommitIndex: mgr.GetCommitIndex(), AppliedIndex: mgr.GetAppliedIndex(),
			Voter: mgr.GetVoter(), Leader: mgr.GetNodeId() == cl.GetLeaderNodeId(), Error: mgr.GetError(),
		})
	}
	slices.SortFunc(s.Cluster.Managers, func(a, b ManagerView) int { return cmp.Compare(a.Hostname, b.Hostname) })

	byNode := map[string]*NodeView{}
	for _, n := range nodes {
		r := n.GetDescription().GetResources()
		v := NodeView{
			ID: n.GetId(), Hostname: n.GetDescription().GetHostname(), Addr: n.GetStatus().GetAddr(),
			Role:         word(n.GetRole().String(), "NODE_ROLE_"),
			State:        title(word(n.GetStatus().GetState().String(), "NODE_STATE_")),
			Availability: title(word(n.GetSpec().GetAvailability().String(), "NODE_AVAILABILITY_")),
			Message:      n.GetStatus().GetMessage(),
			NanoCPUs:     r.GetNanoCpus(), MemoryBytes: r.GetMemoryBytes(),
			Runtimes: strings.Join(n.GetDescription().GetRuntimes(), ", "),
		}
		if ms := n.GetManagerStatus(); n.GetRole() == pb.NodeRole_NODE_ROLE_MANAGER && ms != nil {
			v.Manager = title(word(ms.GetReachability().String(), "REACHABILITY_"))
			if ms.GetLeader() || n.GetId() == cl.GetLeaderNodeId() {
				v.Manager = "Leader"
			}
		}
		s.Nodes = append(s.Nodes, v)
		s.NodesBy[v.State]++
	}
	slices.SortFunc(s.Nodes, func(a, b NodeView) int {
		return cmp.Or(cmp.Compare(a.Hostname, b.Hostname), cmp.Compare(a.ID, b.ID))
	})
	for i := range s.Nodes {
		byNode[s.Nodes[i].ID] = &s.Nodes[i]
	}

	countBy := map[string]*pb.ServiceTaskCounts{}
	for _, c := range counts {
		countBy[c.GetServiceId()] = c
	}
	for _, svc := range svcs {
		spec := svc.GetSpec()
		c := countBy[svc.GetId()]
		v := ServiceView{
			ID: svc.GetId(), Name: spec.GetAnnotations().GetName(), Mode: mode(spec),
			Running: c.GetRunning(), Desired: c.GetDesired(),
			Image: spec.GetTask().GetContainer().GetImage(), Runtime: cmp.Or(spec.GetTask().GetRuntime(), "process"),
			Ports:         ports(svc),
			UpdateState:   word(svc.GetUpdateStatus().GetState().String(), "UPDATE_STATE_"),
			UpdateMessage: svc.GetUpdateStatus().GetMessage(),
			CanRollback:   svc.GetPreviousSpec() != nil,
			SpecVersion:   svc.GetSpecVersion(),
			UpdatedAt:     svc.GetMeta().GetUpdatedAt() / 1e6,
		}
		if v.UpdateState == "unknown" {
			v.UpdateState = ""
		}
		if r := spec.GetReplicated(); r != nil {
			v.Scalable, v.Desired = true, r.GetReplicas()
		}
		s.Services = append(s.Services, v)
	}
	slices.SortFunc(s.Services, func(a, b ServiceView) int { return cmp.Or(cmp.Compare(a.Name, b.Name), cmp.Compare(a.ID, b.ID)) })

	for _, t := range tasks {
		st := t.GetStatus()
		state := word(st.GetState().String(), "TASK_STATE_")
		v := TaskView{
			ID: t.GetId(), Name: taskName(t, hostnames), ServiceID: t.GetServiceId(), ServiceName: t.GetServiceName(),
			Slot: t.GetSlot(), NodeID: t.GetNodeId(), NodeName: hostnames[t.GetNodeId()],
			DesiredState: word(t.GetDesiredState().String(), "TASK_STATE_"), State: state,
			Error: st.GetErr(), Message: st.GetMessage(), Pending: t.GetPendingReason(), Ports: taskPorts(t),
			SpecVersion: t.GetSpecVersion(), Current: t.GetDesiredState() <= pb.TaskState_TASK_STATE_RUNNING,
			Since: st.GetTimestamp() / 1e6,
		}
		if h := st.GetHealth(); h != pb.HealthState_HEALTH_STATE_NONE {
			v.Health = word(h.String(), "HEALTH_STATE_")
		}
		s.Tasks = append(s.Tasks, v)
		if v.Current {
			s.TasksBy[state]++
		}
		// What a node holds: tasks not yet ended, whatever they want.
		if n := byNode[t.GetNodeId()]; n != nil && st.GetState() <= pb.TaskState_TASK_STATE_RUNNING {
			res := t.GetSpec().GetResources().GetReservations()
			n.ReservedCPUs += res.GetNanoCpus()
			n.ReservedMem += res.GetMemoryBytes()
			if st.GetState() == pb.TaskState_TASK_STATE_RUNNING {
				n.Running++
			}
		}
	}
	slices.SortFunc(s.Tasks, func(a, b TaskView) int {
		return cmp.Or(cmp.Compare(a.ServiceName, b.ServiceName), cmp.Compare(a.Slot, b.Slot), cmp.Compare(a.NodeName, b.NodeName),
			-cmp.Compare(a.Since, b.Since), cmp.Compare(a.ID, b.ID))
	})

	for _, sec := range secrets {
		s.Secrets = append(s.Secrets, SecretView{ID: sec.GetId(), Name: sec.GetSpec().GetAnnotations().GetName(), Size: sec.GetSize(),
			CreatedAt: sec.GetMeta().GetCreatedAt() / 1e6, UpdatedAt: sec.GetMeta().GetUpdatedAt() / 1e6})
	}
	slices.SortFunc(s.Secrets, func(a, b SecretView) int { return cmp.Compare(a.Name, b.Name) })
	for _, c := range configs {
		s.Configs = append(s.Configs, SecretView{ID: c.GetId(), Name: c.GetSpec().GetAnnotations().GetName(), Size: c.GetSize(),
			CreatedAt: c.GetMeta().GetCreatedAt() / 1e6, UpdatedAt: c.GetMeta().GetUpdatedAt() / 1e6})
	}
	slices.SortFunc(s.Configs, func(a, b SecretView) int { return cmp.Compare(a.Name, b.Name) })
	return s
}

// addUsage puts each task's latest CPU and memory figures on its view.
func addUsage(s *State, stats []*pb.TaskStat) {
	byTask := map[string]*pb.TaskStat{}
	for _, st := range stats {
		if st.GetUsage() != nil {
			byTask[st.GetTaskId()] = st
		}
	}
	for i := range s.Tasks {
		st := byTask[s.Tasks[i].ID]
		if st == nil {
			continue
		}
		u := st.GetUsage()
		v := &UsageView{MemoryMiB: u.GetMemoryBytes() >> 20}
		if u.GetCpuWindow() > 0 {
			v.CPUPercent = int(math.Round(float64(u.GetCpuNanoCores()) / 1e7))
			if r := st.GetCpuReservation(); r > 0 {
				v.CPUOfReservation = int(math.Round(float64(u.GetCpuNanoCores()) * 100 / float64(r)))
			}
		}
		if l := st.GetMemoryLimit(); l > 0 {
			v.MemoryOfLimit = int(math.Round(float64(u.GetMemoryBytes()) * 100 / float64(l)))
		}
		s.Tasks[i].Usage = v
	}
}

// word turns NODE_STATE_READY into "ready".
func word(name, prefix string) string {
	return strings.ToLower(strings.TrimPrefix(name, prefix))
}

// title capitalises the first letter: "ready" becomes "Ready".
func title(w string) string {
	if w == "" {
		return ""
	}
	return strings.ToUpper(w[:1]) + w[1:]
}

func mode(spec *pb.ServiceSpec) string {
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

// ports formats a service's published ports as `service ls` does:
// "*:8080->80/tcp".
func ports(svc *pb.Service) []string {
	ps := svc.GetEndpoint().GetPorts()
	if len(ps) == 0 {
		ps = svc.GetSpec().GetEndpoint().GetPorts()
	}
	out := []string{}
	for _, p := range ps {
		proto := word(p.GetProtocol().String(), "PORT_PROTOCOL_")
		s := fmt.Sprintf("%d/%s", p.GetTargetPort(), proto)
		if p.GetPublishedPort() != 0 {
			s = fmt.Sprintf("*:%d->%d/%s", p.GetPublishedPort(), p.GetTargetPort(), proto)
		}
		if p.GetPublishMode() == pb.PublishMode_PUBLISH_MODE_HOST {
			s += " (host)"
		}
		out = append(out, s)
	}
	return out
}

// taskPorts is where a task's ports are bound on its node.
func taskPorts(t *pb.Task) string {
	var out []string
	for _, b := range t.GetStatus().GetPorts() {
		ip := b.GetHostIp()
		if ip == "" || ip == "0.0.0.0" || ip == "::" {
			ip = "*"
		}
		out = append(out, fmt.Sprintf("%s:%d->%d/%s", ip, b.GetHostPort(), b.GetTargetPort(), word(b.GetProtocol().String(), "PORT_PROTOCOL_")))
	}
	return strings.Join(out, ", ")
}

// taskName is the task's name as `service ps` shows it: web.3, or the
// service and node for a global task.
func taskName(t *pb.Task, hostnames map[string]string) string {
	if t.GetSlot() != 0 {
		return t.GetServiceName() + "." + strconv.FormatUint(t.GetSlot(), 10)
	}
	return t.GetServiceName() + "." + cmp.Or(hostnames[t.GetNodeId()], shortID(t.GetNodeId()))
}

func shortID(id string) string {
	if len(id) > 12 {
		return id[:12]
	}
	return id
}

// eventView turns a cluster event into what the pages show.
func eventView(e *pb.ClusterEvent, hostnames map[string]string) EventView {
	attrs := e.GetAttributes()
	v := EventView{Index: e.GetIndex(), Seq: e.GetSeq(), Time: e.GetTime() / 1e6, Type: e.GetType(), Action: e.GetAction(),
		ID: e.GetId(), Name: e.GetName(), Attributes: attrs}
	name := e.GetName()
	if name == "" && e.GetType() == "node" {
		name = cmp.Or(hostnames[e.GetId()], shortID(e.GetId()))
	}
	var b strings.Builder
	fmt.Fprintf(&b, "%s %s %s", e.GetType(), e.GetAction(), name)
	keys := make([]string, 0, len(attrs))
	for k, val := range attrs {
		if val != "" {
			keys = append(keys, k)
		}
	}
	slices.Sort(keys)
	var parts []string
	for _, k := range keys {
		val := attrs[k]
		if k == "node" {
			val = cmp.Or(hostnames[val], shortID(val))
		}
		parts = append(parts, k+"="+val)
	}
	if len(parts) > 0 {
		fmt.Fprintf(&b, " (%s)", strings.Join(parts, ", "))
	}
	v.Text = b.String()
	return v
}
