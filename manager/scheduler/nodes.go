package scheduler

import (
	"slices"
	"strings"

	pb "github.com/shoal-cluster/shoal/proto"
	"google.golang.org/protobuf/proto"
)

// defaultRuntime is the runtime of a task that names none.
const defaultRuntime = "process"

// hostPort is a port published in host mode: no two active tasks on a node
// may publish the same one.
type hostPort struct {
	port  uint32
	proto pb.PortProtocol
}

func (p hostPort) String() string {
	proto := "tcp"
	if p.proto == pb.PortProtocol_PORT_PROTOCOL_UDP {
		proto = "udp"
	}
	return itoa(int64(p.port)) + "/" + proto
}

// usage is what an active task takes from its node.
type usage struct {
	node    string
	service string
	cpu     int64
	mem     int64
	ports   []hostPort
}

func (u *usage) equal(o *usage) bool {
	if u == nil || o == nil {
		return u == o
	}
	return u.node == o.node && u.service == o.service && u.cpu == o.cpu && u.mem == o.mem && slices.Equal(u.ports, o.ports)
}

// isActive reports whether a task holds resources on its node: it has a
// node, the scheduler (or a worker) took it past PENDING, and neither its
// desired nor its observed state went beyond RUNNING.
func isActive(t *pb.Task) bool {
	st := t.GetStatus().GetState()
	return t.GetNodeId() != "" &&
		t.GetDesiredState() <= pb.TaskState_TASK_STATE_RUNNING &&
		st >= pb.TaskState_TASK_STATE_ASSIGNED && st <= pb.TaskState_TASK_STATE_RUNNING
}

// isPending reports whether a task waits for the scheduler.
func isPending(t *pb.Task) bool {
	return t.GetStatus().GetState() == pb.TaskState_TASK_STATE_PENDING &&
		t.GetDesiredState() <= pb.TaskState_TASK_STATE_RUNNING
}

// hostPorts lists the distinct host-mode published ports of a task: the
// allocated endpoint's ports or, before allocation, its spec's.
func hostPorts(t *pb.Task) []hostPort {
	configs := t.GetEndpoint().GetPorts()
	if len(configs) == 0 {
		configs = t.GetEndpoint().GetSpec().GetPorts()
	}
	var out []hostPort
	for _, pc := range configs {
		if pc.GetPublishMode() != pb.PublishMode_PUBLISH_MODE_HOST || pc.GetPublishedPort() == 0 {
			continue
		}
		hp := hostPort{port: pc.GetPublishedPort(), proto: pc.GetProtocol()}
		if !slices.Contains(out, hp) {
			out = append(out, hp)
		}
	}
	return out
}

// usageOf is what task t takes from a node, or nil if it is not active.
func usageOf(t *pb.Task) *usage {
	if !isActive(t) {
		return nil
	}
	res := t.GetSpec().GetResources().GetReservations()
	return &usage{
		node:    t.GetNodeId(),
		service: t.GetServiceId(),
		cpu:     res.GetNanoCpus(),
		mem:     res.GetMemoryBytes(),
		ports:   hostPorts(t),
	}
}

// nodeState is the scheduler's view of one node: the node as stored and
// the sum of what its active tasks take.
type nodeState struct {
	id   string
	node *pb.Node // nil when the node is not in the store (its tasks may be)

	// down is the first node-level filter the node fails, 0 if none.
	down     reasonKind
	runtimes []string
	cpu, mem int64

	usedCPU, usedMem int64
	tasks            int
	ports            map[hostPort]int

	// svc is the number of active tasks of the service being placed, set
	// for the duration of one group (see cluster.services).
	svc int
}

func newNodeState(id string) *nodeState {
	return &nodeState{id: id}
}

func (ns *nodeState) setNode(n *pb.Node) {
	ns.node = n
	ns.down = 0
	switch {
	case n.GetStatus().GetState() != pb.NodeState_NODE_STATE_READY:
		ns.down = reasonNotReady
	case n.GetSpec().GetAvailability() != pb.NodeAvailability_NODE_AVAILABILITY_ACTIVE:
		ns.down = reasonNotActive
	case len(n.GetDescription().GetRuntimes()) == 0:
		// Only a node running an agent reports runtimes; today's managers
		// run none, whatever their role.
		ns.down = reasonNoAgent
	}
	ns.runtimes = n.GetDescription().GetRuntimes()
	ns.cpu = n.GetDescription().GetResources().GetNanoCpus()
	ns.mem = n.GetDescription().GetResources().GetMemoryBytes()
}

// add adds (sign 1) or removes (sign -1) a task's usage on its node.
func (c *cluster) add(ns *nodeState, u *usage, sign int) {
	ns.usedCPU += int64(sign) * u.cpu
	ns.usedMem += int64(sign) * u.mem
	ns.tasks += sign
	per := c.services[u.service]
	if per == nil {
		per = map[*nodeState]int{}
		c.services[u.service] = per
	}
	if n := per[ns] + sign; n > 0 {
		per[ns] = n
	} else {
		delete(per, ns)
		if len(per) == 0 {
			delete(c.services, u.service)
		}
	}
	for _, p := range u.ports {
		if ns.ports == nil {
			ns.ports = map[hostPort]int{}
		}
		if n := ns.ports[p] + sign; n > 0 {
			ns.ports[p] = n
		} else {
			delete(ns.ports, p)
		}
	}
}

func (ns *nodeState) hasRuntime(rt string) bool {
	for _, r := range ns.runtimes {
		if strings.EqualFold(r, rt) {
			return true
		}
	}
	return false
}

// cluster is the scheduler's in-memory model: nodes and the usage of every
// active task. The placement functions decide on it and record their
// assignments in it, so that later decisions see them.
type cluster struct {
	nodes  map[string]*nodeState
	sorted []*nodeState // the nodes present in the store, by ID; nil when stale
	usage  map[string]*usage
	// services counts the active tasks of each service per node.
	services map[string]map[*nodeState]int

	constraintCache map[string]constraintSet
}

type constraintSet struct {
	cs  []Constraint
	err error
}

func newCluster() *cluster {
	return &cluster{
		nodes:           map[string]*nodeState{},
		usage:           map[string]*usage{},
		services:        map[string]map[*nodeState]int{},
		constraintCache: map[string]constraintSet{},
	}
}

// putNode records a created or updated node and reports whether anything
// placement depends on changed.
func (c *cluster) putNode(n *pb.Node) bool {
	ns := c.nodes[n.GetId()]
	if ns == nil {
		ns = newNodeState(n.GetId())
		c.nodes[n.GetId()] = ns
	}
	old := ns.node
	ns.setNode(n)
	if old == nil {
		c.sorted = nil
		return true
	}
	return old.GetRole() != n.GetRole() ||
		old.GetStatus().GetState() != n.GetStatus().GetState() ||
		!proto.Equal(old.GetSpec(), n.GetSpec()) ||
		!proto.Equal(old.GetDescription(), n.GetDescription())
}

// removeNode forgets a deleted node; the usage of tasks still naming it is
// kept until they go.
func (c *cluster) removeNode(id string) {
	ns := c.nodes[id]
	if ns == nil {
		return
	}
	ns.node = nil
	c.sorted = nil
	if ns.tasks == 0 {
		delete(c.nodes, id)
	}
}

// setUsage records what task id takes now (nil: nothing) and reports
// whether that freed anything.
func (c *cluster) setUsage(id string, u *usage) (freed bool) {
	old := c.usage[id]
	if old.equal(u) {
		return false
	}
	if old != nil {
		if ns := c.nodes[old.node]; ns != nil {
			c.add(ns, old, -1)
			if ns.node == nil && ns.tasks == 0 {
				delete(c.nodes, old.node)
			}
		}
		delete(c.usage, id)
		freed = true
	}
	if u != nil {
		ns := c.nodes[u.node]
		if ns == nil {
			ns = newNodeState(u.node)
			c.nodes[u.node] = ns
		}
		c.add(ns, u, 1)
		c.usage[id] = u
	}
	return freed
}

// sortedNodes returns the nodes present in the store, by ID.
func (c *cluster) sortedNodes() []*nodeState {
	if c.sorted == nil {
		c.sorted = make([]*nodeState, 0, len(c.nodes))
		for _, ns := range c.nodes {
			if ns.node != nil {
				c.sorted = append(c.sorted, ns)
			}
		}
		slices.SortFunc(c.sorted, func(a, b *nodeState) int { return strings.Compare(a.id, b.id) })
	}
	return c.sorted
}

// constraints parses a task's constraints, once per distinct list.
func (c *cluster) constraints(exprs []string) ([]Constraint, error) {
	if len(exprs) == 0 {
		return nil, nil
	}
	key := strings.Join(exprs, "\x00")
	cs, ok := c.constraintCache[key]
	if !ok {
		if len(c.constraintCache) > 4096 {
			clear(c.constraintCache)
		}
		cs.cs, cs.err = ParseConstraints(exprs)
		c.constraintCache[key] = cs
	}
	return cs.cs, cs.err
}
