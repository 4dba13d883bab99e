package dashboard

import (
	"bufio"
	"context"
	"encoding/json"
	"io"
	"net/http"
	"net/http/cookiejar"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/shoal-cluster/shoal/internal/poll"
	pb "github.com/shoal-cluster/shoal/proto"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// fakeControl is one manager's Control API in memory. Calls it does not
// fake panic (the embedded interface is nil).
type fakeControl struct {
	pb.ControlClient

	mu          sync.Mutex
	down        bool // every call fails as a dead manager's
	abortNext   int  // this many UpdateService calls fail Aborted first
	services    map[string]*pb.Service
	nodes       []*pb.Node
	updates     []*pb.UpdateServiceRequest
	nodeUpdates []*pb.UpdateNodeRequest
	calls       int
	events      chan *pb.ClusterEvent
	eventsErr   error // the next Events call fails with it
}

func newFake() *fakeControl {
	return &fakeControl{
		events: make(chan *pb.ClusterEvent, 16),
		services: map[string]*pb.Service{
			"s1": {Id: "s1", Meta: &pb.Meta{Version: 7}, Spec: &pb.ServiceSpec{
				Annotations: &pb.Annotations{Name: "web"},
				Task:        &pb.TaskSpec{Container: &pb.ContainerSpec{Image: "/bin/web"}},
				Mode:        &pb.ServiceSpec_Replicated{Replicated: &pb.ReplicatedService{Replicas: 3}},
			}},
			"s2": {Id: "s2", Meta: &pb.Meta{Version: 9}, Spec: &pb.ServiceSpec{
				Annotations: &pb.Annotations{Name: "agent"},
				Mode:        &pb.ServiceSpec_Global{Global: &pb.GlobalService{}},
			}},
		},
		nodes: []*pb.Node{
			{Id: "n1", Meta: &pb.Meta{Version: 3}, Role: pb.NodeRole_NODE_ROLE_MANAGER,
				Description:   &pb.NodeDescription{Hostname: "m1", Resources: &pb.Resources{NanoCpus: 2e9, MemoryBytes: 1 << 30}},
				Status:        &pb.NodeStatus{State: pb.NodeState_NODE_STATE_READY},
				ManagerStatus: &pb.ManagerStatus{ApiAddr: "b:1", Leader: true}},
			{Id: "n2", Meta: &pb.Meta{Version: 4}, Role: pb.NodeRole_NODE_ROLE_WORKER,
				Description: &pb.NodeDescription{Hostname: "w1", Resources: &pb.Resources{NanoCpus: 4e9, MemoryBytes: 2 << 30}},
				Status:      &pb.NodeStatus{State: pb.NodeState_NODE_STATE_READY}},
		},
	}
}

var errDown = status.Error(codes.Unavailable, "connection refused")

// writes is how many updates the fake received.
func (f *fakeControl) writes() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return len(f.updates) + len(f.nodeUpdates)
}

func (f *fakeControl) check() error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.calls++
	if f.down {
		return errDown
	}
	return nil
}

func (f *fakeControl) ListNodes(context.Context, *pb.ListNodesRequest, ...grpc.CallOption) (*pb.ListNodesResponse, error) {
	if err := f.check(); err != nil {
		return nil, err
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	return &pb.ListNodesResponse{Nodes: f.nodes}, nil
}

func (f *fakeControl) ListServices(context.Context, *pb.ListServicesRequest, ...grpc.CallOption) (*pb.ListServicesResponse, error) {
	if err := f.check(); err != nil {
		return nil, err
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	var out []*pb.Service
	for _, s := range f.services {
		out = append(out, s)
	}
	return &pb.ListServicesResponse{Services: out, Counts: []*pb.ServiceTaskCounts{{ServiceId: "s1", Running: 2, Desired: 3}}}, nil
}

func (f *fakeControl) ListTasks(context.Context, *pb.ListTasksRequest, ...grpc.CallOption) (*pb.ListTasksResponse, error) {
	if err := f.check(); err != nil {
		return nil, err
	}
	res := &pb.TaskSpec{Resources: &pb.ResourceRequirements{Reservations: &pb.Resources{NanoCpus: 5e8, MemoryBytes: 64 << 20}}}
	return &pb.ListTasksResponse{Tasks: []*pb.Task{
		{Id: "t1", ServiceId: "s1", ServiceName: "web", Slot: 1, NodeId: "n2", Spec: res, DesiredState: pb.TaskState_TASK_STATE_RUNNING,
			Status: &pb.TaskStatus{State: pb.TaskState_TASK_STATE_RUNNING}},
		{Id: "t2", ServiceId: "s1", ServiceName: "web", Slot: 2, NodeId: "n2", Spec: res, DesiredState: pb.TaskState_TASK_STATE_RUNNING,
			Status: &pb.TaskStatus{State: pb.TaskState_TASK_STATE_STARTING}},
		{Id: "t0", ServiceId: "s1", ServiceName: "web", Slot: 1, NodeId: "n2", Spec: res, DesiredState: pb.TaskState_TASK_STATE_SHUTDOWN,
			Status: &pb.TaskStatus{State: pb.TaskState_TASK_STATE_FAILED, Err: "exited with code 1"}},
		{Id: "t3", ServiceId: "s1", ServiceName: "web", Slot: 3, DesiredState: pb.TaskState_TASK_STATE_RUNNING,
			Status: &pb.TaskStatus{State: pb.TaskState_TASK_STATE_PENDING}, PendingReason: "no suitable node"},
	}}, nil
}

func (f *fakeControl) ListSecrets(context.Context, *pb.ListSecretsRequest, ...grpc.CallOption) (*pb.ListSecretsResponse, error) {
	if err := f.check(); err != nil {
		return nil, err
	}
	return &pb.ListSecretsResponse{Secrets: []*pb.Secret{{Id: "x1", Spec: &pb.SecretSpec{Annotations: &pb.Annotations{Name: "db-password"}, Data: []byte("hunter2")},
		SealedData: []byte("sealed-bytes"), Size: 7}}}, nil
}

func (f *fakeControl) ListConfigs(context.Context, *pb.ListConfigsRequest, ...grpc.CallOption) (*pb.ListConfigsResponse, error) {
	if err := f.check(); err != nil {
		return nil, err
	}
	return &pb.ListConfigsResponse{Configs: []*pb.Config{{Id: "g1", Spec: &pb.ConfigSpec{Annotations: &pb.Annotations{Name: "nginx.conf"}}, Size: 120}}}, nil
}

func (f *fakeControl) GetCluster(context.Context, *pb.GetClusterRequest, ...grpc.CallOption) (*pb.GetClusterResponse, error) {
	if err := f.check(); err != nil {
		return nil, err
	}
	return &pb.GetClusterResponse{
		Cluster:      &pb.Cluster{Id: "c1", JoinTokens: &pb.JoinTokens{Worker: "SHOAL-1-worker-token", Manager: "SHOAL-1-manager-token"}},
		LeaderNodeId: "n1",
		Managers:     []*pb.ManagerRaftStatus{{NodeId: "n1", Hostname: "m1", ApiAddr: "b:1", State: "Leader", Term: 4, AppliedIndex: 90, CommitIndex: 90, Voter: true}},
	}, nil
}

func (f *fakeControl) GetService(_ context.Context, req *pb.GetServiceRequest, _ ...grpc.CallOption) (*pb.GetServiceResponse, error) {
	if err := f.check(); err != nil {
		return nil, err
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	for _, s := range f.services {
		if s.GetId() == req.GetRef() || s.GetSpec().GetAnnotations().GetName() == req.GetRef() {
			return &pb.GetServiceResponse{Service: s}, nil
		}
	}
	return nil, status.Errorf(codes.NotFound, "service %s not found", req.GetRef())
}

func (f *fakeControl) UpdateService(_ context.Context, req *pb.UpdateServiceRequest, _ ...grpc.CallOption) (*pb.UpdateServiceResponse, error) {
	if err := f.check(); err != nil {
		return nil, err
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	f.updates = append(f.updates, req)
	if f.abortNext > 0 {
		f.abortNext--
		f.services[req.GetRef()].Meta.Version++ // someone else wrote
		return nil, status.Error(codes.Aborted, "update out of sequence")
	}
	return &pb.UpdateServiceResponse{Service: f.services[req.GetRef()]}, nil
}

func (f *fakeControl) GetNode(_ context.Context, req *pb.GetNodeRequest, _ ...grpc.CallOption) (*pb.GetNodeResponse, error) {
	if err := f.check(); err != nil {
		return nil, err
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	for _, n := range f.nodes {
		if n.GetId() == req.GetRef() {
			return &pb.GetNodeResponse{Node: n}, nil
		}
	}
	return nil, status.Errorf(codes.NotFound, "node %s not found", req.GetRef())
}

func (f *fakeControl) UpdateNode(_ context.Context, req *pb.UpdateNodeRequest, _ ...grpc.CallOption) (*pb.UpdateNodeResponse, error) {
	if err := f.check(); err != nil {
		return nil, err
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	f.nodeUpdates = append(f.nodeUpdates, req)
	return &pb.UpdateNodeResponse{}, nil
}

func (f *fakeControl) Events(ctx context.Context, _ *pb.EventsRequest, _ ...grpc.CallOption) (grpc.ServerStreamingClient[pb.ClusterEvent], error) {
	if err := f.check(); err != nil {
		return nil, err
	}
	f.mu.Lock()
	err := f.eventsErr
	f.eventsErr = nil
	f.mu.Unlock()
	if err != nil {
		return &fakeStream{ctx: ctx, err: err}, nil
	}
	return &fakeStream{ctx: ctx, events: f.events}, nil
}

func (f *fakeControl) ServiceLogs(ctx context.Context, req *pb.ServiceLogsRequest, _ ...grpc.CallOption) (grpc.ServerStreamingClient[pb.LogLine], error) {
	if err := f.check(); err != nil {
		return nil, err
	}
	lines := make(chan *pb.LogLine, 2)
	lines <- &pb.LogLine{TaskId: "t1abcdefghijklmno", NodeId: "n2", Slot: 1, ServiceName: "web", Data: []byte("hello listening\n")}
	lines <- &pb.LogLine{TaskId: "t2abcdefghijklmno", NodeId: "n2", Slot: 2, ServiceName: "web", Data: []byte("two\nlines\n")}
	return &fakeLogStream{ctx: ctx, lines: lines}, nil
}

// fakeLogStream streams its lines, then waits for its context to end, as
// a followed service that prints nothing more.
type fakeLogStream struct {
	grpc.ClientStream
	ctx   context.Context
	lines chan *pb.LogLine
}

func (s *fakeLogStream) Recv() (*pb.LogLine, error) {
	select {
	case l := <-s.lines:
		return l, nil
	case <-s.ctx.Done():
		return nil, status.FromContextError(s.ctx.Err()).Err()
	}
}

// fakeStream streams a fake's events until its context ends.
type fakeStream struct {
	grpc.ClientStream
	ctx    context.Context
	events chan *pb.ClusterEvent
	err    error // fails at once with it
}

func (s *fakeStream) Recv() (*pb.ClusterEvent, error) {
	if s.err != nil {
		return nil, s.err
	}
	select {
	case e := <-s.events:
		return e, nil
	case <-s.ctx.Done():
		return nil, status.FromContextError(s.ctx.Err()).Err()
	}
}

type nopCloser struct{}

func (nopCloser) Close() error { return nil }

// startServer serves a dashboard over the fakes (by address), the first
// seed first, and waits until it has read the cluster.
func startServer(t *testing.T, fakes map[string]*fakeControl, seeds ...string) (*Server, *httptest.Server) {
	t.Helper()
	s, err := New(Config{Managers: seeds, RefreshEvery: 50 * time.Millisecond, Connect: func(addr string) (pb.ControlClient, io.Closer, error) {
		return fakes[addr], nopCloser{}, nil
	}})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { s.Run(ctx); close(done) }()
	ts := httptest.NewServer(s)
	t.Cleanup(func() { ts.Close(); cancel(); <-done })
	poll.Until(t, 10*time.Second, "the first read", poll.Bool(s.Ready, nil))
	return s, ts
}

// login spends the token and returns a client holding the session.
func login(t *testing.T, s *Server, ts *httptest.Server) *http.Client {
	t.Helper()
	jar, _ := cookiejar.New(nil)
	c := &http.Client{Jar: jar, Timeout: 5 * time.Second}
	resp, err := c.Get(s.LoginURL(ts.URL))
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK || resp.Request.URL.RawQuery != "" {
		t.Fatalf("login: %s at %s; want the overview without the token", resp.Status, resp.Request.URL)
	}
	return c
}

// post sends a POST as the dashboard's page does: with its Origin.
func post(t *testing.T, c *http.Client, ts *httptest.Server, path, body string) *http.Response {
	t.Helper()
	req, _ := http.NewRequest(http.MethodPost, ts.URL+path, strings.NewReader(body))
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("Origin", ts.URL)
	resp, err := c.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	return resp
}

func TestLoginTokenOnceAndNothingWithoutSession(t *testing.T) {
	fake := newFake()
	s, ts := startServer(t, map[string]*fakeControl{"a:1": fake}, "a:1")
	token := s.Token()
	plain := &http.Client{CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}

	for _, path := range []string{"/", "/static/app.js", "/api/state", "/api/events", "/api/stream", "/api/services/s1/logs", "/?token=wrong", "/nope"} {
		resp, err := plain.Get(ts.URL + path)
		if err != nil {
			t.Fatal(err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != http.StatusUnauthorized || strings.Contains(string(body), "c1") || strings.Contains(string(body), "web") {
			t.Errorf("GET %s without a session: %s %q; want 401 and no data", path, resp.Status, body)
		}
	}
	resp, err := plain.Post(ts.URL+"/api/services/s1/scale", "application/json", strings.NewReader(`{"replicas":5}`))
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusUnauthorized || fake.writes() != 0 {
		t.Errorf("POST scale without a session: %s, %d updates; want 401 and none", resp.Status, fake.writes())
	}

	// The token: a session cookie, HttpOnly and SameSite=Strict, and a
	// redirect that drops it from the address.
	resp, err = plain.Get(ts.URL + "/?token=" + token)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	cookies := resp.Cookies()
	if resp.StatusCode != http.StatusSeeOther || resp.Header.Get("Location") != "/" || len(cookies) != 1 {
		t.Fatalf("login: %s to %q with %d cookies; want 303 to / with one", resp.Status, resp.Header.Get("Location"), len(cookies))
	}
	if c := cookies[0]; !c.HttpOnly || c.SameSite != http.SameSiteStrictMode || c.Path != "/" || c.Secure {
		t.Errorf("session cookie %+v: want HttpOnly, SameSite=Strict, Path=/ (not Secure without TLS)", c)
	}
	if s.Token() != "" {
		t.Error("the token is still valid after a login")
	}
	resp, err = plain.Get(ts.URL + "/?token=" + token)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusUnauthorized {
		t.Errorf("the token a second time: %s; want 401", resp.Status)
	}

	// With the session: the page and the state, which holds no secret's
	// value, sealed value or join token.
	req, _ := http.NewRequest(http.MethodGet, ts.URL+"/api/state", nil)
	req.AddCookie(cookies[0])
	resp, err = http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK || !strings.Contains(string(body), `"db-password"`) {
		t.Fatalf("state with the session: %s %s", resp.Status, body)
	}
	for _, secret := range []string{"hunter2", "sealed", "SHOAL-1-"} {
		if strings.Contains(string(body), secret) {
			t.Errorf("the state gives away %q: %s", secret, body)
		}
	}

	// A write from another site is refused, session or not.
	req, _ = http.NewRequest(http.MethodPost, ts.URL+"/api/services/s1/scale", strings.NewReader(`{"replicas":5}`))
	req.AddCookie(cookies[0])
	req.Header.Set("Origin", "http://evil.example")
	resp, err = http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusForbidden || fake.writes() != 0 {
		t.Errorf("cross-site POST: %s, %d updates; want 403 and none", resp.Status, fake.writes())
	}
}

func TestSecureCookieWithTLS(t *testing.T) {
	s, err := New(Config{Managers: []string{"a:1"}, SecureCookie: true, Connect: func(string) (pb.ControlClient, io.Closer, error) {
		return newFake(), nopCloser{}, nil
	}})
	if err != nil {
		t.Fatal(err)
	}
	rec := httptest.NewRecorder()
	s.ServeHTTP(rec, httptest.NewRequest(http.MethodGet, "/?token="+s.Token(), nil))
	if c := rec.Result().Cookies(); len(c) != 1 || !c[0].Secure {
		t.Errorf("cookies %v: want one, Secure", c)
	}
}

func TestStateView(t *testing.T) {
	fake := newFake()
	s, _ := startServer(t, map[string]*fakeControl{"a:1": fake}, "a:1")
	s.mu.Lock()
	st := s.state
	s.mu.Unlock()
	if st.Cluster.ID != "c1" || st.Cluster.LeaderHostname != "m1" || len(st.Cluster.Managers) != 1 || st.Cluster.Managers[0].AppliedIndex != 90 {
		t.Errorf("cluster %+v", st.Cluster)
	}
	var w1 NodeView
	for _, n := range st.Nodes {
		if n.Hostname == "w1" {
			w1 = n
		}
	}
	// Two tasks not yet ended hold 2 x 0.5 CPU and 2 x 64 MiB; the failed one nothing.
	if w1.ReservedCPUs != 1e9 || w1.ReservedMem != 128<<20 || w1.Running != 1 || w1.NanoCPUs != 4e9 {
		t.Errorf("w1 %+v: want 1 CPU and 128MiB reserved of 4 CPU, 1 running", w1)
	}
	if st.TasksBy["running"] != 1 || st.TasksBy["starting"] != 1 || st.TasksBy["pending"] != 1 || st.TasksBy["failed"] != 0 {
		t.Errorf("tasks by state %v: want the current tasks only", st.TasksBy)
	}
	if len(st.Configs) != 1 || st.Configs[0].Name != "nginx.conf" || st.Configs[0].Size != 120 {
		t.Errorf("configs %+v", st.Configs)
	}
	if st.NodesBy["Ready"] != 2 {
		t.Errorf("nodes by state %v", st.NodesBy)
	}
	var web ServiceView
	for _, sv := range st.Services {
		if sv.Name == "web" {
			web = sv
		}
	}
	if !web.Scalable || web.Desired != 3 || web.Running != 2 || web.Mode != "replicated" {
		t.Errorf("web %+v", web)
	}
}

// TestFailover: a manager that does not answer is skipped for the next,
// which then stays the current one.
func TestFailover(t *testing.T) {
	dead, alive := newFake(), newFake()
	dead.down = true
	s, ts := startServer(t, map[string]*fakeControl{"a:1": dead, "b:1": alive}, "a:1", "b:1")
	s.mu.Lock()
	via := s.state.Via
	s.mu.Unlock()
	if via != "b:1" {
		t.Errorf("read via %q; want b:1", via)
	}
	c := login(t, s, ts)
	resp := post(t, c, ts, "/api/services/web/scale", `{"replicas":5}`)
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK || alive.writes() != 1 {
		t.Fatalf("scale with the first manager dead: %s, %d updates on the second", resp.Status, alive.writes())
	}
	// The leader dies next: the dashboard carries on through the other.
	alive.mu.Lock()
	alive.down = true
	alive.mu.Unlock()
	dead.mu.Lock()
	dead.down = false
	dead.mu.Unlock()
	poll.Until(t, 10*time.Second, "a read through a:1", func() (bool, string) {
		s.mu.Lock()
		defer s.mu.Unlock()
		return s.state.Via == "a:1" && s.state.Error == "", s.state.Via + " " + s.state.Error
	})
}

func TestActions(t *testing.T) {
	tests := []struct {
		name     string
		path     string
		body     string
		abort    int
		want     int
		check    func(t *testing.T, f *fakeControl)
		contains string
	}{
		{"scale", "/api/services/web/scale", `{"replicas":5}`, 0, 200, func(t *testing.T, f *fakeControl) {
			if len(f.updates) != 1 || f.updates[0].GetSpec().GetReplicated().GetReplicas() != 5 || f.updates[0].GetVersion() != 7 {
				t.Errorf("updates %v: want one, 5 replicas, version 7", f.updates)
			}
		}, "web scaled to 5"},
		{"scale retried after a concurrent write", "/api/services/s1/scale", `{"replicas":4}`, 1, 200, func(t *testing.T, f *fakeControl) {
			if len(f.updates) != 2 || f.updates[1].GetVersion() != 8 {
				t.Errorf("updates %v: want a retry with version 8", f.updates)
			}
		}, "scaled to 4"},
		{"scale a global service", "/api/services/agent/scale", `{"replicas":2}`, 0, 400, nil, "only replicated services can be scaled"},
		{"scale below zero", "/api/services/web/scale", `{"replicas":-1}`, 0, 400, nil, "replicas must be from 0 to 100000"},
		{"scale without a number", "/api/services/web/scale", `{}`, 0, 400, nil, "give the number of replicas"},
		{"scale not JSON", "/api/services/web/scale", `five`, 0, 400, nil, "not JSON"},
		{"scale a missing service", "/api/services/nope/scale", `{"replicas":2}`, 0, 404, nil, "not found"},
		{"image", "/api/services/web/image", `{"image":"/bin/web2"}`, 0, 200, func(t *testing.T, f *fakeControl) {
			if len(f.updates) != 1 || f.updates[0].GetSpec().GetTask().GetContainer().GetImage() != "/bin/web2" {
				t.Errorf("updates %v", f.updates)
			}
		}, "updating to /bin/web2"},
		{"image with a space", "/api/services/web/image", `{"image":"a b"}`, 0, 400, nil, "without spaces"},
		{"redeploy", "/api/services/web/redeploy", ``, 0, 200, func(t *testing.T, f *fakeControl) {
			if len(f.updates) != 1 || f.updates[0].GetSpec().GetTask().GetForceUpdate() != 1 {
				t.Errorf("updates %v", f.updates)
			}
		}, "replaced"},
		{"rollback without a previous spec", "/api/services/web/rollback", ``, 0, 400, nil, "no previous spec"},
		{"drain", "/api/nodes/n2/availability", `{"availability":"drain"}`, 0, 200, func(t *testing.T, f *fakeControl) {
			if len(f.nodeUpdates) != 1 || f.nodeUpdates[0].GetSpec().GetAvailability() != pb.NodeAvailability_NODE_AVAILABILITY_DRAIN || f.nodeUpdates[0].GetVersion() != 4 {
				t.Errorf("node updates %v", f.nodeUpdates)
			}
		}, "w1 set to drain"},
		{"availability sideways", "/api/nodes/n2/availability", `{"availability":"sideways"}`, 0, 400, nil, "use active, pause or drain"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			fake := newFake()
			fake.abortNext = tt.abort
			s, ts := startServer(t, map[string]*fakeControl{"a:1": fake}, "a:1")
			c := login(t, s, ts)
			resp := post(t, c, ts, tt.path, tt.body)
			var out map[string]string
			_ = json.NewDecoder(resp.Body).Decode(&out)
			resp.Body.Close()
			text := out["message"] + out["error"]
			if resp.StatusCode != tt.want || !strings.Contains(text, tt.contains) {
				t.Fatalf("POST %s %s: %d %q; want %d and %q", tt.path, tt.body, resp.StatusCode, text, tt.want, tt.contains)
			}
			fake.mu.Lock()
			defer fake.mu.Unlock()
			if tt.check != nil {
				tt.check(t, fake)
			} else if len(fake.updates)+len(fake.nodeUpdates) != 0 {
				t.Errorf("a refused action changed something: %v %v", fake.updates, fake.nodeUpdates)
			}
		})
	}
}

// TestStreamPushesStateAndEvents: the page's feed carries the state at
// once, and an event and the state read after it as they happen.
func TestStreamPushesStateAndEvents(t *testing.T) {
	fake := newFake()
	s, ts := startServer(t, map[string]*fakeControl{"a:1": fake}, "a:1")
	c := login(t, s, ts)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, ts.URL+"/api/stream", nil)
	resp, err := c.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if ct := resp.Header.Get("Content-Type"); ct != "text/event-stream" {
		t.Fatalf("content type %q", ct)
	}
	lines := bufio.NewScanner(resp.Body)
	lines.Buffer(make([]byte, 1<<20), 1<<20)
	next := func(event string) string {
		t.Helper()
		for lines.Scan() {
			if lines.Text() == "event: "+event && lines.Scan() {
				return strings.TrimPrefix(lines.Text(), "data: ")
			}
		}
		t.Fatalf("the stream ended before an %q message: %v", event, lines.Err())
		return ""
	}
	var st State
	if err := json.Unmarshal([]byte(next("state")), &st); err != nil || st.Cluster.ID != "c1" {
		t.Fatalf("first state: %v %+v", err, st)
	}
	// The cluster changes, and says so.
	fake.mu.Lock()
	fake.nodes[1].Spec = &pb.NodeSpec{Availability: pb.NodeAvailability_NODE_AVAILABILITY_DRAIN}
	fake.mu.Unlock()
	fake.events <- &pb.ClusterEvent{Index: 12, Type: "node", Action: "drain", Id: "n2", Name: "w1", Attributes: map[string]string{"role": "worker"}}
	var evs []EventView
	if err := json.Unmarshal([]byte(next("events")), &evs); err != nil || len(evs) != 1 || evs[0].Text != "node drain w1 (role=worker)" {
		t.Fatalf("events: %v %+v", err, evs)
	}
	// The event asks for a new read, which follows with the change.
	var again State
	if err := json.Unmarshal([]byte(next("state")), &again); err != nil || again.Version <= st.Version || again.Nodes[1].Availability != "Drain" {
		t.Fatalf("state after the event: %v, version %d after %d, nodes %+v", err, again.Version, st.Version, again.Nodes)
	}
}

// TestUnchangedReadIsNotNews: reads that find the cluster as it was push
// nothing to the pages (a re-render could swallow a click).
func TestUnchangedReadIsNotNews(t *testing.T) {
	fake := newFake()
	s, _ := startServer(t, map[string]*fakeControl{"a:1": fake}, "a:1")
	s.mu.Lock()
	v := s.version
	s.mu.Unlock()
	calls := func() int {
		fake.mu.Lock()
		defer fake.mu.Unlock()
		return fake.calls
	}
	// Five more reads (six calls each) of a cluster that does not change.
	start := calls()
	poll.Until(t, 10*time.Second, "five more reads", func() (bool, string) {
		s.poke()
		return calls() >= start+5*6, ""
	})
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.version != v {
		t.Errorf("the state's version moved from %d to %d without a change", v, s.version)
	}
}

// TestEventsResumeTooOld: a manager that no longer holds the events after
// the last one received says so; the dashboard notes the gap in the list
// and follows from now.
func TestEventsResumeTooOld(t *testing.T) {
	fake := newFake()
	fake.eventsErr = status.Error(codes.OutOfRange, "events too old")
	s, _ := startServer(t, map[string]*fakeControl{"a:1": fake}, "a:1")
	fake.events <- &pb.ClusterEvent{Index: 40, Type: "service", Action: "scale", Name: "web"}
	poll.Until(t, 10*time.Second, "the gap noted, then the next event", func() (bool, string) {
		s.mu.Lock()
		defer s.mu.Unlock()
		var texts []string
		for _, e := range s.events {
			texts = append(texts, e.Text)
		}
		return len(texts) == 2 && strings.HasPrefix(texts[0], "dashboard gap") && texts[1] == "service scale web", strings.Join(texts, "; ")
	})
}

// TestLoginURLAgainWithSession: the browser that logged in may open the
// login URL again (a reload): it is sent to the overview, not refused.
func TestLoginURLAgainWithSession(t *testing.T) {
	s, ts := startServer(t, map[string]*fakeControl{"a:1": newFake()}, "a:1")
	token := s.Token()
	c := login(t, s, ts)
	resp, err := c.Get(ts.URL + "/?token=" + token)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK || resp.Request.URL.RawQuery != "" {
		t.Errorf("the login URL again with the session: %s at %s; want the overview", resp.Status, resp.Request.URL)
	}
}

// TestLogs: a service's output arrives with Docker's prefixes, one line
// per line of output; leaving the page ends the stream (goleak checks).
func TestLogs(t *testing.T) {
	s, ts := startServer(t, map[string]*fakeControl{"a:1": newFake()}, "a:1")
	c := login(t, s, ts)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, ts.URL+"/api/services/s1/logs", nil)
	resp, err := c.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	sc := bufio.NewScanner(resp.Body)
	var got []LogLineView
	for len(got) < 3 && sc.Scan() {
		if data, ok := strings.CutPrefix(sc.Text(), "data: "); ok {
			var batch []LogLineView
			if err := json.Unmarshal([]byte(data), &batch); err != nil {
				t.Fatalf("%q: %v", data, err)
			}
			got = append(got, batch...)
		}
	}
	want := []LogLineView{{"web.1.t1abcdefghij@w1", "hello listening"}, {"web.2.t2abcdefghij@w1", "two"}, {"web.2.t2abcdefghij@w1", "lines"}}
	if len(got) != len(want) {
		t.Fatalf("lines %+v, want %+v", got, want)
	}
	for i := range want {
		if got[i] != want[i] {
			t.Errorf("line %d: %+v, want %+v", i, got[i], want[i])
		}
	}
}

func TestIsLoopback(t *testing.T) {
	for addr, want := range map[string]bool{
		"127.0.0.1:8080": true, "127.0.0.5:0": true, "[::1]:80": true, "localhost:80": true,
		"0.0.0.0:8080": false, ":8080": false, "10.1.2.3:80": false, "[::]:80": false, "example.com:80": false, "nonsense": false,
	} {
		if got := IsLoopback(addr); got != want {
			t.Errorf("IsLoopback(%q) = %v, want %v", addr, got, want)
		}
	}
}
