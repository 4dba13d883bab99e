package scheduler

import (
	"container/heap"
	"maps"
	"slices"
	"strconv"
	"strings"

	pb "github.com/shoal-cluster/shoal/proto"
)

// reasonKind is a filter a node can fail, in the order they are checked:
// a node counts once, for the first filter it fails.
type reasonKind int

const (
	reasonNotReady reasonKind = iota + 1
	reasonNotActive
	reasonNoAgent
	reasonRuntime
	reasonConstraints
	reasonCPU
	reasonMemory
	reasonPort
	reasonMaxReplicas
)

type reasonKey struct {
	kind   reasonKind
	detail string // the runtime or the port, where the message names one
}

// reasons counts the nodes that failed each filter.
type reasons map[reasonKey]int

func (r reasons) add(k reasonKind, detail string) { r[reasonKey{k, detail}]++ }

func nodes(n int) string {
	if n == 1 {
		return "1 node"
	}
	return itoa(int64(n)) + " nodes"
}

func itoa(n int64) string { return strconv.FormatInt(n, 10) }

// String renders the pending reason, e.g. "no suitable node (insufficient
// memory on 3 nodes; 1 node not ready)".
func (r reasons) String() string {
	if len(r) == 0 {
		return "no suitable node (the cluster has no nodes)"
	}
	keys := make([]reasonKey, 0, len(r))
	for k := range r {
		keys = append(keys, k)
	}
	slices.SortFunc(keys, func(a, b reasonKey) int {
		if a.kind != b.kind {
			return int(a.kind - b.kind)
		}
		return strings.Compare(a.detail, b.detail)
	})
	var b strings.Builder
	b.WriteString("no suitable node (")
	for i, k := range keys {
		if i > 0 {
			b.WriteString("; ")
		}
		n := r[k]
		switch k.kind {
		case reasonNotReady:
			b.WriteString(nodes(n) + " not ready")
		case reasonNotActive:
			b.WriteString(nodes(n) + " not active")
		case reasonNoAgent:
			b.WriteString("no agent on " + nodes(n))
		case reasonRuntime:
			b.WriteString("runtime " + k.detail + " not available on " + nodes(n))
		case reasonConstraints:
			b.WriteString("scheduling constraints not satisfied on " + nodes(n))
		case reasonCPU:
			b.WriteString("insufficient cpu on " + nodes(n))
		case reasonMemory:
			b.WriteString("insufficient memory on " + nodes(n))
		case reasonPort:
			b.WriteString("host port " + k.detail + " in use on " + nodes(n))
		case reasonMaxReplicas:
			b.WriteString("max replicas per node reached on " + nodes(n))
		}
	}
	b.WriteString(")")
	return b.String()
}

// requirements is what placing a task needs; tasks of one service with the
// same requirements are interchangeable and are placed as a group.
type requirements struct {
	service     string
	runtime     string
	cpu, mem    int64
	ports       []hostPort
	maxReplicas uint64
	constraints []Constraint
	badSpec     error
	prefs       []attribute
	// filterKey identifies what the node-level filters check: groups with
	// the same key share one pass over the nodes.
	filterKey string
}

func (c *cluster) requirementsOf(t *pb.Task) *requirements {
	spec := t.GetSpec()
	res := spec.GetResources().GetReservations()
	req := &requirements{
		service:     t.GetServiceId(),
		runtime:     spec.GetRuntime(),
		cpu:         res.GetNanoCpus(),
		mem:         res.GetMemoryBytes(),
		ports:       hostPorts(t),
		maxReplicas: spec.GetPlacement().GetMaxReplicas(),
	}
	if req.runtime == "" {
		req.runtime = defaultRuntime
	}
	req.constraints, req.badSpec = c.constraints(spec.GetPlacement().GetConstraints())
	req.filterKey = req.runtime + "\x00" + strings.Join(spec.GetPlacement().GetConstraints(), "\x00")
	for _, p := range spec.GetPlacement().GetPreferences() {
		// An unusable preference is ignored: the control API validates them.
		if a, err := parseAttribute(strings.TrimSpace(p.GetSpreadDescriptor())); err == nil {
			req.prefs = append(req.prefs, a)
		}
	}
	return req
}

// groupKey identifies the requirements of a task without building them.
func groupKey(buf []byte, t *pb.Task) []byte {
	spec := t.GetSpec()
	res := spec.GetResources().GetReservations()
	buf = append(buf[:0], t.GetServiceId()...)
	buf = append(buf, 0)
	buf = append(buf, spec.GetRuntime()...)
	buf = append(buf, 0)
	buf = strconv.AppendInt(buf, res.GetNanoCpus(), 10)
	buf = append(buf, 0)
	buf = strconv.AppendInt(buf, res.GetMemoryBytes(), 10)
	buf = append(buf, 0)
	buf = strconv.AppendUint(buf, spec.GetPlacement().GetMaxReplicas(), 10)
	for _, c := range spec.GetPlacement().GetConstraints() {
		buf = append(buf, 1)
		buf = append(buf, c...)
	}
	for _, p := range spec.GetPlacement().GetPreferences() {
		buf = append(buf, 2)
		buf = append(buf, p.GetSpreadDescriptor()...)
	}
	for _, p := range hostPorts(t) {
		buf = append(buf, 3)
		buf = strconv.AppendUint(buf, uint64(p.port), 10)
		buf = append(buf, byte('0'+p.proto))
	}
	return buf
}

// nodeFilter returns the first node-level filter ns fails for req: its
// state, availability and agent, the runtime, then the constraints.
func nodeFilter(ns *nodeState, req *requirements) (reasonKind, string) {
	if ns.down != 0 {
		return ns.down, ""
	}
	if !ns.hasRuntime(req.runtime) {
		return reasonRuntime, req.runtime
	}
	for _, c := range req.constraints {
		if !c.Match(ns.node) {
			return reasonConstraints, ""
		}
	}
	return 0, ""
}

// fitFilter returns the first filter ns fails for req given what its
// active tasks take: reservations, host ports, max replicas. ns.svc must
// hold the node's count of tasks of req.service.
func fitFilter(ns *nodeState, req *requirements) (reasonKind, string) {
	if req.cpu > 0 && ns.cpu-ns.usedCPU < req.cpu {
		return reasonCPU, ""
	}
	if req.mem > 0 && ns.mem-ns.usedMem < req.mem {
		return reasonMemory, ""
	}
	for _, p := range req.ports {
		if ns.ports[p] > 0 {
			return reasonPort, p.String()
		}
	}
	if req.maxReplicas > 0 && uint64(ns.svc) >= req.maxReplicas {
		return reasonMaxReplicas, ""
	}
	return 0, ""
}

// decision is the outcome for one task: the node it goes to, or why it
// stays pending.
type decision struct {
	task   *pb.Task
	node   string
	reason string
}

type group struct {
	req   *requirements
	tasks []*pb.Task
}

// schedule decides where tasks go, in order, and records each assignment
// in the model. Tasks that already name a node (global tasks) are only
// checked against that node.
func (c *cluster) schedule(tasks []*pb.Task) []decision {
	out := make([]decision, 0, len(tasks))
	groups := map[string]*group{}
	var order []*group
	var buf []byte
	for _, t := range tasks {
		if t.GetNodeId() != "" {
			out = append(out, c.placeOnNode(t))
			continue
		}
		buf = groupKey(buf, t)
		g := groups[string(buf)]
		if g == nil {
			g = &group{req: c.requirementsOf(t)}
			groups[string(buf)] = g
			order = append(order, g)
		}
		g.tasks = append(g.tasks, t)
	}
	filters := map[string]*filtered{}
	for _, g := range order {
		out = c.placeGroup(g, filters, out)
	}
	return out
}

// assign records task t on ns.
func (c *cluster) assign(t *pb.Task, ns *nodeState, req *requirements) {
	c.setUsage(t.GetId(), &usage{node: ns.id, service: req.service, cpu: req.cpu, mem: req.mem, ports: req.ports})
	ns.svc++
}

// countService sets every node's svc to its number of active tasks of
// service; the returned function sets them back to 0.
func (c *cluster) countService(service string) (reset func()) {
	for ns, n := range c.services[service] {
		ns.svc = n
	}
	return func() {
		for ns := range c.services[service] {
			ns.svc = 0
		}
	}
}

// filtered is the outcome of the node-level filters for one filterKey:
// the nodes that pass, and why the others do not.
type filtered struct {
	cands []*nodeState
	why   reasons
}

func (c *cluster) filter(req *requirements, cache map[string]*filtered) *filtered {
	if f := cache[req.filterKey]; f != nil {
		return f
	}
	f := &filtered{why: reasons{}}
	for _, ns := range c.sortedNodes() {
		if k, detail := nodeFilter(ns, req); k != 0 {
			f.why.add(k, detail)
			continue
		}
		f.cands = append(f.cands, ns)
	}
	cache[req.filterKey] = f
	return f
}

// placeOnNode checks a task that arrived with its node set.
func (c *cluster) placeOnNode(t *pb.Task) decision {
	ns := c.nodes[t.GetNodeId()]
	if ns == nil || ns.node == nil {
		return decision{task: t, reason: "no suitable node (node " + t.GetNodeId() + " not found)"}
	}
	req := c.requirementsOf(t)
	if req.badSpec != nil {
		return decision{task: t, reason: req.badSpec.Error()}
	}
	ns.svc = c.services[req.service][ns]
	defer func() { ns.svc = 0 }()
	k, detail := nodeFilter(ns, req)
	if k == 0 {
		k, detail = fitFilter(ns, req)
	}
	if k != 0 {
		r := reasons{}
		r.add(k, detail)
		return decision{task: t, reason: r.String()}
	}
	c.assign(t, ns, req)
	return decision{task: t, node: ns.id}
}

// placeGroup places a group of interchangeable tasks. The nodes that pass
// the node-level filters are arranged in a tree by the values of the
// placement preferences; each task goes down the branch with the fewest
// tasks of the service, then to the leaf's best node: fewest tasks of the
// service, then fewest tasks, then lowest ID. A node that fails the fit
// filters leaves the tree for the rest of the group: the group only ever
// takes more from it.
func (c *cluster) placeGroup(g *group, filters map[string]*filtered, out []decision) []decision {
	req := g.req
	if req.badSpec != nil {
		for _, t := range g.tasks {
			out = append(out, decision{task: t, reason: req.badSpec.Error()})
		}
		return out
	}
	defer c.countService(req.service)()
	f := c.filter(req, filters)
	why := maps.Clone(f.why)
	root := &branch{}
	for _, ns := range f.cands {
		root.insert(ns, req)
	}
	root.init()
	fit := func(ns *nodeState) bool {
		k, detail := fitFilter(ns, req)
		if k != 0 {
			why.add(k, detail)
			return false
		}
		return true
	}
	for i, t := range g.tasks {
		ns := root.place(fit)
		if ns == nil {
			reason := why.String()
			for _, t := range g.tasks[i:] {
				out = append(out, decision{task: t, reason: reason})
			}
			break
		}
		c.assign(t, ns, req)
		out = append(out, decision{task: t, node: ns.id})
	}
	return out
}

// branch is a subtree of candidate nodes sharing the values of the first
// preferences; the leaves hold the nodes in a heap.
type branch struct {
	key       string
	count     int // tasks of the service on the subtree's nodes
	children  []*branch
	index     map[string]*branch
	leaf      *nodeHeap
	exhausted bool
}

func (b *branch) insert(ns *nodeState, req *requirements) {
	svc := ns.svc
	for d := 0; ; d++ {
		b.count += svc
		if d == len(req.prefs) {
			if b.leaf == nil {
				b.leaf = &nodeHeap{}
			}
			b.leaf.entries = append(b.leaf.entries, heapEntry{ns: ns, svc: svc, tasks: ns.tasks})
			return
		}
		v := req.prefs[d].value(ns.node)
		child := b.index[v]
		if child == nil {
			if b.index == nil {
				b.index = map[string]*branch{}
			}
			child = &branch{key: v}
			b.index[v] = child
			b.children = append(b.children, child)
		}
		b = child
	}
}

func (b *branch) init() {
	if b.leaf != nil {
		heap.Init(b.leaf)
	}
	slices.SortFunc(b.children, func(x, y *branch) int { return strings.Compare(x.key, y.key) })
	for _, ch := range b.children {
		ch.init()
	}
	if b.leaf == nil && len(b.children) == 0 {
		b.exhausted = true
	}
}

// place picks a node for one task and counts the task in the subtree; it
// returns nil when no node of the subtree fits.
func (b *branch) place(fit func(*nodeState) bool) *nodeState {
	if b.exhausted {
		return nil
	}
	if h := b.leaf; h != nil {
		for len(h.entries) > 0 {
			e := &h.entries[0]
			if !fit(e.ns) {
				heap.Pop(h)
				continue
			}
			ns := e.ns
			e.svc++
			e.tasks++
			heap.Fix(h, 0)
			b.count++
			return ns
		}
		b.exhausted = true
		return nil
	}
	for {
		var best *branch
		for _, ch := range b.children {
			if !ch.exhausted && (best == nil || ch.count < best.count) {
				best = ch
			}
		}
		if best == nil {
			b.exhausted = true
			return nil
		}
		if ns := best.place(fit); ns != nil {
			b.count++
			return ns
		}
	}
}

// heapEntry caches a node's ranking keys: only this group changes them
// while the group is being placed.
type heapEntry struct {
	ns    *nodeState
	svc   int
	tasks int
}

type nodeHeap struct{ entries []heapEntry }

func (h *nodeHeap) Len() int { return len(h.entries) }
func (h *nodeHeap) Less(i, j int) bool {
	a, b := &h.entries[i], &h.entries[j]
	if a.svc != b.svc {
		return a.svc < b.svc
	}
	if a.tasks != b.tasks {
		return a.tasks < b.tasks
	}
	return a.ns.id < b.ns.id
}
func (h *nodeHeap) Swap(i, j int) { h.entries[i], h.entries[j] = h.entries[j], h.entries[i] }
func (h *nodeHeap) Push(x any)    { h.entries = append(h.entries, x.(heapEntry)) }
func (h *nodeHeap) Pop() any {
	e := h.entries[len(h.entries)-1]
	h.entries = h.entries[:len(h.entries)-1]
	return e
}
