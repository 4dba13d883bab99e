package scheduler

import (
	"strings"
	"testing"

	pb "github.com/shoal-cluster/shoal/proto"
)

func TestSpreadSixTasksOverThreeNodes(t *testing.T) {
	c := modelOf([]*pb.Node{mkNode("a"), mkNode("b"), mkNode("c")})
	ds := c.schedule(tasks("web", 6))
	mustPlaceAll(t, ds)
	if got, want := perNode(ds), map[string]int{"a": 2, "b": 2, "c": 2}; !equalCounts(got, want) {
		t.Fatalf("placement %v, want %v", got, want)
	}
	// The model counts what it assigned: 3 more tasks go one per node.
	ds = c.schedule(tasks("web2", 3))
	if got, want := perNode(ds), map[string]int{"a": 1, "b": 1, "c": 1}; !equalCounts(got, want) {
		t.Fatalf("second service: placement %v, want %v", got, want)
	}
}

func TestRanking(t *testing.T) {
	nodes := []*pb.Node{mkNode("a"), mkNode("b"), mkNode("c")}
	tests := []struct {
		name     string
		existing []*pb.Task
		pending  []*pb.Task
		want     map[string]int
	}{
		{
			name: "fewest tasks of the service first, even on a busier node",
			existing: []*pb.Task{
				mkTask("o1", "other", running("a")), mkTask("o2", "other", running("a")), mkTask("o3", "other", running("a")),
				mkTask("w1", "web", running("b")), mkTask("w2", "web", running("c")),
			},
			pending: tasks("web", 1),
			want:    map[string]int{"a": 1},
		},
		{
			name:     "then least loaded",
			existing: []*pb.Task{mkTask("o1", "other", running("a")), mkTask("o2", "other", running("b"))},
			pending:  tasks("web", 1),
			want:     map[string]int{"c": 1},
		},
		{
			name:     "then lowest node ID",
			existing: nil,
			pending:  tasks("web", 1),
			want:     map[string]int{"a": 1},
		},
		{
			name: "tasks that are not active do not count",
			existing: []*pb.Task{
				mkTask("o1", "other", running("a"), func(t *pb.Task) { t.DesiredState = pb.TaskState_TASK_STATE_SHUTDOWN }),
				mkTask("o2", "other", running("a"), func(t *pb.Task) { t.Status.State = pb.TaskState_TASK_STATE_FAILED }),
				mkTask("o3", "other", running("b")),
			},
			pending: tasks("web", 2),
			want:    map[string]int{"a": 1, "c": 1},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ds := modelOf(nodes, tt.existing...).schedule(tt.pending)
			mustPlaceAll(t, ds)
			if got := perNode(ds); !equalCounts(got, tt.want) {
				t.Fatalf("placement %v, want %v", got, tt.want)
			}
		})
	}
}

func TestReservations(t *testing.T) {
	nodes := []*pb.Node{
		mkNode("small", withResources(1*cpu, 1*gib)),
		mkNode("medium", withResources(2*cpu, 2*gib)),
		mkNode("large", withResources(4*cpu, 4*gib)),
	}
	tests := []struct {
		name     string
		existing []*pb.Task
		pending  []*pb.Task
		want     map[string]int
		reason   string
	}{
		{
			name:    "memory fits on one node only",
			pending: tasks("web", 1, reserve(0, 3*gib)),
			want:    map[string]int{"large": 1},
		},
		{
			name:    "cpu fits on two nodes",
			pending: tasks("web", 2, reserve(2*cpu, 0)),
			want:    map[string]int{"medium": 1, "large": 1},
		},
		{
			name:    "the batch uses up the nodes",
			pending: tasks("web", 4, reserve(0, 2*gib)),
			want:    map[string]int{"medium": 1, "large": 2, "": 1},
			reason:  "no suitable node (insufficient memory on 3 nodes)",
		},
		{
			name:     "active tasks' reservations count",
			existing: []*pb.Task{mkTask("big", "db", running("large"), reserve(3*cpu, 3*gib))},
			pending:  tasks("web", 5, reserve(0, 1*gib)),
			want:     map[string]int{"medium": 2, "small": 1, "large": 1, "": 1},
			reason:   "no suitable node (insufficient memory on 3 nodes)",
		},
		{
			name:    "nothing fits",
			pending: tasks("web", 2, reserve(8*cpu, 0)),
			want:    map[string]int{"": 2},
			reason:  "no suitable node (insufficient cpu on 3 nodes)",
		},
		{
			name:    "cpu is checked before memory",
			pending: tasks("web", 1, reserve(3*cpu, 8*gib)),
			want:    map[string]int{"": 1},
			reason:  "no suitable node (insufficient cpu on 2 nodes; insufficient memory on 1 node)",
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ds := modelOf(nodes, tt.existing...).schedule(tt.pending)
			if got := perNode(ds); !equalCounts(got, tt.want) {
				t.Fatalf("placement %v, want %v", got, tt.want)
			}
			for _, d := range ds {
				if d.node == "" && d.reason != tt.reason {
					t.Fatalf("reason %q, want %q", d.reason, tt.reason)
				}
			}
		})
	}
}

func TestConstraintsFilter(t *testing.T) {
	nodes := []*pb.Node{
		mkNode("n1", withLabel("zone", "a"), withLabel("ssd", "true"), withEngineLabel("gpu", "nvidia")),
		mkNode("n2", withLabel("zone", "b")),
		mkNode("n3", withRole(pb.NodeRole_NODE_ROLE_MANAGER), withLabel("zone", "b"),
			func(n *pb.Node) { n.Description.Os = "freebsd"; n.Description.Arch = "arm64" }),
	}
	tests := []struct {
		constraints []string
		want        []string // nodes that may take the task
	}{
		{[]string{"node.labels.zone==a"}, []string{"n1"}},
		{[]string{"node.labels.zone!=a"}, []string{"n2", "n3"}},
		{[]string{"node.labels.zone==b", "node.role==worker"}, []string{"n2"}},
		{[]string{"node.role==manager"}, []string{"n3"}},
		{[]string{"node.role!=manager"}, []string{"n1", "n2"}},
		{[]string{"node.hostname==host-n2"}, []string{"n2"}},
		{[]string{"node.hostname!=host-n2"}, []string{"n1", "n3"}},
		{[]string{"node.id==n3"}, []string{"n3"}},
		{[]string{"node.labels.ssd!=true"}, []string{"n2", "n3"}},
		{[]string{"node.labels.ssd==true"}, []string{"n1"}},
		{[]string{"engine.labels.gpu==NVIDIA"}, []string{"n1"}},
		{[]string{"node.platform.os==linux"}, []string{"n1", "n2"}},
		{[]string{"node.platform.arch==amd64"}, []string{"n1", "n2"}},
		{[]string{"node.platform.arch==aarch64"}, []string{"n3"}},
		{[]string{"node.labels.zone==c"}, nil},
	}
	for _, tt := range tests {
		t.Run(strings.Join(tt.constraints, ","), func(t *testing.T) {
			// One task per node at most: the spread shows every eligible node.
			ds := modelOf(nodes).schedule(tasks("web", 3, constraints(tt.constraints...), maxReplicas(1)))
			var got []string
			for _, d := range ds {
				if d.node != "" {
					got = append(got, d.node)
				}
			}
			if strings.Join(got, ",") != strings.Join(tt.want, ",") {
				t.Fatalf("placed on %v, want %v", got, tt.want)
			}
			if len(tt.want) == 0 {
				if want := "no suitable node (scheduling constraints not satisfied on 3 nodes)"; ds[0].reason != want {
					t.Fatalf("reason %q, want %q", ds[0].reason, want)
				}
			}
		})
	}
}

func TestInvalidConstraintKeepsTaskPending(t *testing.T) {
	ds := modelOf([]*pb.Node{mkNode("a")}).schedule(tasks("web", 1, constraints("node.labels.zone=a")))
	if ds[0].node != "" || !strings.Contains(ds[0].reason, `invalid placement constraint "node.labels.zone=a"`) {
		t.Fatalf("decision %+v, want pending with the parse error", ds[0])
	}
}

func TestPlacementPreferences(t *testing.T) {
	// Zone a has one node, b three, c two; n7 has no zone label.
	nodes := []*pb.Node{
		mkNode("n1", withLabel("zone", "a"), withLabel("rack", "1")),
		mkNode("n2", withLabel("zone", "b"), withLabel("rack", "1")),
		mkNode("n3", withLabel("zone", "b"), withLabel("rack", "2")),
		mkNode("n4", withLabel("zone", "b"), withLabel("rack", "2")),
		mkNode("n5", withLabel("zone", "c"), withLabel("rack", "1")),
		mkNode("n6", withLabel("zone", "c"), withLabel("rack", "1")),
	}
	zoneOf := map[string]string{"n1": "a", "n2": "b", "n3": "b", "n4": "b", "n5": "c", "n6": "c", "n7": ""}

	t.Run("spread across zones", func(t *testing.T) {
		ds := modelOf(nodes).schedule(tasks("web", 6, spread("node.labels.zone")))
		mustPlaceAll(t, ds)
		zones := map[string]int{}
		for _, d := range ds {
			zones[zoneOf[d.node]]++
		}
		if want := map[string]int{"a": 2, "b": 2, "c": 2}; !equalCounts(zones, want) {
			t.Fatalf("per zone %v, want %v (per node %v)", zones, want, perNode(ds))
		}
		if got := perNode(ds)["n1"]; got != 2 {
			t.Fatalf("n1, alone in zone a, got %d tasks, want 2", got)
		}
	})

	t.Run("nodes without the label form their own group", func(t *testing.T) {
		all := append(append([]*pb.Node{}, nodes...), mkNode("n7"))
		ds := modelOf(all).schedule(tasks("web", 8, spread("node.labels.zone")))
		mustPlaceAll(t, ds)
		zones := map[string]int{}
		for _, d := range ds {
			zones[zoneOf[d.node]]++
		}
		if want := map[string]int{"": 2, "a": 2, "b": 2, "c": 2}; !equalCounts(zones, want) {
			t.Fatalf("per zone %v, want %v", zones, want)
		}
	})

	t.Run("existing tasks count", func(t *testing.T) {
		existing := []*pb.Task{mkTask("x1", "web", running("n2")), mkTask("x2", "web", running("n3"))}
		ds := modelOf(nodes, existing...).schedule(tasks("web", 4, spread("node.labels.zone")))
		mustPlaceAll(t, ds)
		zones := map[string]int{}
		for _, d := range ds {
			zones[zoneOf[d.node]]++
		}
		if want := map[string]int{"a": 2, "c": 2}; !equalCounts(zones, want) {
			t.Fatalf("per zone %v, want %v", zones, want)
		}
	})

	t.Run("nested preferences", func(t *testing.T) {
		ds := modelOf(nodes).schedule(tasks("web", 12, spread("node.labels.zone", "node.labels.rack")))
		mustPlaceAll(t, ds)
		got := perNode(ds)
		// 4 per zone; zone b splits 2 to rack 1 (n2) and 2 to rack 2 (n3, n4).
		want := map[string]int{"n1": 4, "n2": 2, "n3": 1, "n4": 1, "n5": 2, "n6": 2}
		if !equalCounts(got, want) {
			t.Fatalf("placement %v, want %v", got, want)
		}
	})

	t.Run("a full zone overflows to the others", func(t *testing.T) {
		small := []*pb.Node{
			mkNode("n1", withLabel("zone", "a"), withResources(4*cpu, 1*gib)),
			mkNode("n2", withLabel("zone", "b")),
			mkNode("n3", withLabel("zone", "c")),
		}
		ds := modelOf(small).schedule(tasks("web", 6, spread("node.labels.zone"), reserve(0, 1*gib)))
		mustPlaceAll(t, ds)
		if got, want := perNode(ds), map[string]int{"n1": 1, "n2": 3, "n3": 2}; !equalCounts(got, want) {
			t.Fatalf("placement %v, want %v", got, want)
		}
	})
}

func TestMaxReplicas(t *testing.T) {
	nodes := []*pb.Node{mkNode("a"), mkNode("b")}
	existing := []*pb.Task{mkTask("o1", "other", running("a")), mkTask("o2", "other", running("a"))}
	ds := modelOf(nodes, existing...).schedule(tasks("web", 5, maxReplicas(2)))
	if got, want := perNode(ds), map[string]int{"a": 2, "b": 2, "": 1}; !equalCounts(got, want) {
		t.Fatalf("placement %v, want %v", got, want)
	}
	if want := "no suitable node (max replicas per node reached on 2 nodes)"; ds[4].reason != want {
		t.Fatalf("reason %q, want %q", ds[4].reason, want)
	}
}

func TestHostPorts(t *testing.T) {
	nodes := []*pb.Node{mkNode("a"), mkNode("b"), mkNode("c")}
	existing := []*pb.Task{mkTask("x", "other", running("a"), hostPortTask(8080, pb.PortProtocol_PORT_PROTOCOL_TCP))}
	tcp := hostPortTask(8080, pb.PortProtocol_PORT_PROTOCOL_TCP)

	ds := modelOf(nodes, existing...).schedule(tasks("web", 3, tcp))
	if got, want := perNode(ds), map[string]int{"b": 1, "c": 1, "": 1}; !equalCounts(got, want) {
		t.Fatalf("placement %v, want %v", got, want)
	}
	if want := "no suitable node (host port 8080/tcp in use on 3 nodes)"; ds[2].reason != want {
		t.Fatalf("reason %q, want %q", ds[2].reason, want)
	}

	// The same port over UDP, or published through the ingress, is free.
	udp := modelOf(nodes, existing...).schedule(tasks("dns", 3, hostPortTask(8080, pb.PortProtocol_PORT_PROTOCOL_UDP)))
	mustPlaceAll(t, udp)
	ingress := modelOf(nodes, existing...).schedule(tasks("lb", 3, func(t *pb.Task) {
		t.Endpoint = &pb.Endpoint{Ports: []*pb.PortConfig{{TargetPort: 80, PublishedPort: 8080}}}
	}))
	if got := perNode(ingress); got["a"] != 1 || got[""] != 0 {
		t.Fatalf("ingress ports: placement %v, want one task per node", got)
	}
}

func TestNodeStateFilters(t *testing.T) {
	nodes := []*pb.Node{
		mkNode("down", withState(pb.NodeState_NODE_STATE_DOWN)),
		mkNode("unknown", withState(pb.NodeState_NODE_STATE_UNKNOWN)),
		mkNode("drained", withAvailability(pb.NodeAvailability_NODE_AVAILABILITY_DRAIN)),
		mkNode("paused", withAvailability(pb.NodeAvailability_NODE_AVAILABILITY_PAUSE)),
		mkNode("manager", withRole(pb.NodeRole_NODE_ROLE_MANAGER), withRuntimes()),
		// A down and drained node counts once, as not ready.
		mkNode("both", withState(pb.NodeState_NODE_STATE_DOWN), withAvailability(pb.NodeAvailability_NODE_AVAILABILITY_DRAIN)),
	}
	ds := modelOf(nodes).schedule(tasks("web", 3))
	want := "no suitable node (3 nodes not ready; 2 nodes not active; no agent on 1 node)"
	for _, d := range ds {
		if d.node != "" || d.reason != want {
			t.Fatalf("decision node=%q reason=%q, want pending with %q", d.node, d.reason, want)
		}
	}
	ds = modelOf(append(nodes, mkNode("ok"))).schedule(tasks("web", 3))
	if got := perNode(ds); !equalCounts(got, map[string]int{"ok": 3}) {
		t.Fatalf("placement %v, want all on the one usable node", got)
	}
	if ds := modelOf(nil).schedule(tasks("web", 1)); ds[0].reason != "no suitable node (the cluster has no nodes)" {
		t.Fatalf("reason without nodes: %q", ds[0].reason)
	}
}

func TestRuntimeFilter(t *testing.T) {
	nodes := []*pb.Node{mkNode("p1"), mkNode("p2"), mkNode("d1", withRuntimes("process", "docker"))}
	ds := modelOf(nodes).schedule(tasks("web", 2, taskRuntime("docker")))
	if got := perNode(ds); !equalCounts(got, map[string]int{"d1": 2}) {
		t.Fatalf("placement %v, want both on d1", got)
	}
	// No runtime means process.
	ds = modelOf(nodes).schedule(tasks("web", 3, taskRuntime("")))
	mustPlaceAll(t, ds)
	ds = modelOf(nodes[:2]).schedule(tasks("web", 1, taskRuntime("docker")))
	if want := "no suitable node (runtime docker not available on 2 nodes)"; ds[0].reason != want {
		t.Fatalf("reason %q, want %q", ds[0].reason, want)
	}
}

func TestReasonCountsFirstFailingFilter(t *testing.T) {
	nodes := []*pb.Node{
		mkNode("a", withState(pb.NodeState_NODE_STATE_DOWN), withResources(0, 0)),
		mkNode("b", withAvailability(pb.NodeAvailability_NODE_AVAILABILITY_PAUSE)),
		mkNode("c", withLabel("zone", "x")),
		mkNode("d", withLabel("zone", "y"), withResources(4*cpu, 1*gib)),
		mkNode("e", withLabel("zone", "y"), withResources(4*cpu, 1*gib)),
		mkNode("f", withLabel("zone", "y")),
		mkNode("g", withLabel("zone", "y"), withRuntimes("docker")),
	}
	existing := []*pb.Task{mkTask("x", "other", running("f"), hostPortTask(8080, pb.PortProtocol_PORT_PROTOCOL_TCP))}
	ds := modelOf(nodes, existing...).schedule(tasks("web", 1,
		constraints("node.labels.zone==y"), reserve(0, 2*gib), hostPortTask(8080, pb.PortProtocol_PORT_PROTOCOL_TCP)))
	want := "no suitable node (1 node not ready; 1 node not active; runtime process not available on 1 node; " +
		"scheduling constraints not satisfied on 1 node; insufficient memory on 2 nodes; host port 8080/tcp in use on 1 node)"
	if ds[0].node != "" || ds[0].reason != want {
		t.Fatalf("decision node=%q reason=%q\nwant %q", ds[0].node, ds[0].reason, want)
	}
}

func TestGlobalTasks(t *testing.T) {
	nodes := []*pb.Node{
		mkNode("a"),
		mkNode("b", withResources(1*cpu, 1*gib)),
		mkNode("paused", withAvailability(pb.NodeAvailability_NODE_AVAILABILITY_PAUSE)),
	}
	tests := []struct {
		name     string
		task     *pb.Task
		wantNode string
		reason   string
	}{
		{"fits", mkTask("g1", "mon", onNode("b")), "b", ""},
		{"only that node is checked", mkTask("g2", "mon", onNode("b"), reserve(0, 2*gib)), "",
			"no suitable node (insufficient memory on 1 node)"},
		{"paused node", mkTask("g3", "mon", onNode("paused")), "", "no suitable node (1 node not active)"},
		{"unknown node", mkTask("g4", "mon", onNode("gone")), "", "no suitable node (node gone not found)"},
		{"constraints", mkTask("g5", "mon", onNode("a"), constraints("node.role==manager")), "",
			"no suitable node (scheduling constraints not satisfied on 1 node)"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ds := modelOf(nodes).schedule([]*pb.Task{tt.task})
			if ds[0].node != tt.wantNode || ds[0].reason != tt.reason {
				t.Fatalf("decision node=%q reason=%q, want node=%q reason=%q", ds[0].node, ds[0].reason, tt.wantNode, tt.reason)
			}
		})
	}
	// Global tasks count for the replicated tasks scheduled with them.
	c := modelOf(nodes)
	ds := c.schedule(append([]*pb.Task{mkTask("g", "web", onNode("a"))}, tasks("web", 1)...))
	if ds[0].node != "a" || ds[1].node != "b" {
		t.Fatalf("placement %q, %q; want a, then b", ds[0].node, ds[1].node)
	}
}
