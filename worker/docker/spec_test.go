package docker

import (
	"errors"
	"net/netip"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/moby/moby/api/types/container"
	"github.com/moby/moby/api/types/mount"
	"github.com/moby/moby/api/types/network"
	pb "github.com/shoal-cluster/shoal/proto"
	"github.com/shoal-cluster/shoal/worker"
)

func TestContainerName(t *testing.T) {
	for _, c := range []struct {
		task *pb.Task
		want string
	}{
		{&pb.Task{Id: "t1", ServiceName: "web", Slot: 3, NodeId: "n1"}, "web.3.t1"},
		{&pb.Task{Id: "t2", ServiceName: "agent", NodeId: "n1"}, "agent.n1.t2"},
		{&pb.Task{Id: "t3"}, "task.t3"},
		{&pb.Task{Id: "t4", ServiceName: "we b/x", Slot: 1}, "we-b-x.1.t4"},
		{&pb.Task{Id: "t5", ServiceName: "_x", Slot: 1}, "x_x.1.t5"},
	} {
		if got := ContainerName(c.task); got != c.want {
			t.Errorf("ContainerName(%v) = %q, want %q", c.task, got, c.want)
		}
	}
}

func TestBuildSpec(t *testing.T) {
	dir := t.TempDir()
	task := &pb.Task{
		Id: "abc", ServiceId: "svc1", ServiceName: "web", Slot: 2, NodeId: "node1",
		Spec: &pb.TaskSpec{
			Runtime: Name,
			Container: &pb.ContainerSpec{
				Image: "shoal/hello:v1", Command: []string{"/hello"}, Args: []string{"-listen", ":8080"},
				Env: []string{"A=1", "SHOAL_TASK_SLOT=override", "A=2"}, Dir: "/tmp", User: "1000:1000",
				Labels: map[string]string{"team": "blue", LabelNodeID: "spoofed"},
				Mounts: []*pb.Mount{
					{Type: pb.MountType_MOUNT_TYPE_BIND, Source: dir, Target: "/data", ReadOnly: true},
					{Type: pb.MountType_MOUNT_TYPE_VOLUME, Source: "vol1", Target: "/vol"},
					{Type: pb.MountType_MOUNT_TYPE_TMPFS, Target: "/scratch"},
				},
				StopGracePeriod: int64(1500 * time.Millisecond),
				Healthcheck:     &pb.HealthCheck{Command: []string{"/hello", "-healthcheck", "http://127.0.0.1:8080/healthz"}, Interval: int64(time.Second)},
			},
			Resources: &pb.ResourceRequirements{Limits: &pb.Resources{MemoryBytes: 64 << 20, NanoCpus: 5e8}},
		},
		Endpoint: &pb.Endpoint{Spec: &pb.EndpointSpec{Ports: []*pb.PortConfig{
			{TargetPort: 8080},
			{TargetPort: 53, Protocol: pb.PortProtocol_PORT_PROTOCOL_UDP, PublishMode: pb.PublishMode_PUBLISH_MODE_HOST, PublishedPort: 5353},
		}}},
	}
	ip := netip.MustParseAddr("10.0.0.5")
	s, err := buildSpec(task, "node1", ip, worker.TaskFiles{})
	if err != nil {
		t.Fatal(err)
	}
	if s.name != "web.2.abc" {
		t.Errorf("name %q", s.name)
	}
	cfg, host := s.config, s.host
	if !slices.Equal(cfg.Entrypoint, []string{"/hello"}) || !slices.Equal(cfg.Cmd, []string{"-listen", ":8080"}) {
		t.Errorf("entrypoint %v cmd %v", cfg.Entrypoint, cfg.Cmd)
	}
	env := strings.Join(cfg.Env, " ")
	for _, want := range []string{"SHOAL_TASK_ID=abc", "SHOAL_SERVICE_NAME=web", "SHOAL_TASK_SLOT=override", "A=2", "SHOAL_NODE_ID=node1"} {
		if !slices.Contains(cfg.Env, want) {
			t.Errorf("env %s lacks %s", env, want)
		}
	}
	count := func(prefix string) int {
		n := 0
		for _, kv := range cfg.Env {
			if strings.HasPrefix(kv, prefix) {
				n++
			}
		}
		return n
	}
	if count("A=") != 1 || count("SHOAL_TASK_SLOT=") != 1 {
		t.Errorf("env has duplicates: %s", env)
	}
	if cfg.WorkingDir != "/tmp" || cfg.User != "1000:1000" || cfg.Image != "shoal/hello:v1" {
		t.Errorf("config %+v", cfg)
	}
	if cfg.Labels["team"] != "blue" || cfg.Labels[LabelNodeID] != "node1" || cfg.Labels[LabelTaskID] != "abc" ||
		cfg.Labels[LabelServiceID] != "svc1" || cfg.Labels[LabelServiceName] != "web" || cfg.Labels[LabelPorts] != "8080/tcp,53/udp" {
		t.Errorf("labels %v", cfg.Labels)
	}
	if cfg.StopTimeout == nil || *cfg.StopTimeout != 2 {
		t.Errorf("stop timeout %v", cfg.StopTimeout)
	}
	hc := cfg.Healthcheck
	if hc == nil || !slices.Equal(hc.Test, []string{"CMD", "/hello", "-healthcheck", "http://127.0.0.1:8080/healthz"}) ||
		hc.Interval != time.Second || hc.Timeout != worker.DefaultHealthTimeout || hc.Retries != worker.DefaultHealthRetries {
		t.Errorf("healthcheck %+v", hc)
	}
	if host.RestartPolicy.Name != container.RestartPolicyDisabled || host.Memory != 64<<20 || host.NanoCPUs != 5e8 {
		t.Errorf("host config %+v", host)
	}
	wantMounts := []mount.Mount{
		{Type: mount.TypeBind, Source: dir, Target: "/data", ReadOnly: true},
		{Type: mount.TypeVolume, Source: "vol1", Target: "/vol"},
		{Type: mount.TypeTmpfs, Target: "/scratch"},
	}
	if len(host.Mounts) != 3 {
		t.Fatalf("mounts %+v", host.Mounts)
	}
	for i, m := range wantMounts {
		got := host.Mounts[i]
		if got.Type != m.Type || got.Source != m.Source || got.Target != m.Target || got.ReadOnly != m.ReadOnly {
			t.Errorf("mount %d: %+v, want %+v", i, got, m)
		}
	}
	tcp := network.MustParsePort("8080/tcp")
	udp := network.MustParsePort("53/udp")
	if _, ok := cfg.ExposedPorts[tcp]; !ok {
		t.Errorf("exposed %v", cfg.ExposedPorts)
	}
	if b := host.PortBindings[tcp]; len(b) != 1 || b[0].HostIP != ip || b[0].HostPort != "" {
		t.Errorf("tcp binding %+v", b)
	}
	if b := host.PortBindings[udp]; len(b) != 1 || b[0].HostPort != "5353" {
		t.Errorf("udp binding %+v", b)
	}
}

func TestHealthConfig(t *testing.T) {
	if healthConfig(nil) != nil {
		t.Error("no check: want the image's")
	}
	for _, hc := range []*pb.HealthCheck{{Disable: true}, {HttpGet: "/healthz"}, {TcpSocket: 80}} {
		if got := healthConfig(hc); got == nil || !slices.Equal(got.Test, []string{"NONE"}) {
			t.Errorf("%v: got %+v, want NONE", hc, got)
		}
	}
	got := healthConfig(&pb.HealthCheck{Interval: int64(time.Second), Retries: 5})
	if got == nil || len(got.Test) != 0 || got.Interval != time.Second || got.Retries != 5 {
		t.Errorf("timings only: %+v", got)
	}
}

func TestBuildSpecRejects(t *testing.T) {
	base := func() *pb.Task {
		return &pb.Task{Id: "x", ServiceName: "web", Slot: 1, Spec: &pb.TaskSpec{Container: &pb.ContainerSpec{Image: "shoal/hello:v1"}}}
	}
	for name, mutate := range map[string]func(*pb.Task){
		"no image":     func(tk *pb.Task) { tk.Spec.Container.Image = "" },
		"bad env":      func(tk *pb.Task) { tk.Spec.Container.Env = []string{"NOEQUALS"} },
		"relative dir": func(tk *pb.Task) { tk.Spec.Container.Dir = "rel" },
		"missing bind src": func(tk *pb.Task) {
			tk.Spec.Container.Mounts = []*pb.Mount{{Source: "/no/such/dir/shoal", Target: "/x"}}
		},
		"relative target": func(tk *pb.Task) {
			tk.Spec.Container.Mounts = []*pb.Mount{{Type: pb.MountType_MOUNT_TYPE_TMPFS, Target: "x"}}
		},
		"bad volume": func(tk *pb.Task) {
			tk.Spec.Container.Mounts = []*pb.Mount{{Type: pb.MountType_MOUNT_TYPE_VOLUME, Source: "a/b", Target: "/x"}}
		},
		"two mounts on one target": func(tk *pb.Task) {
			tk.Spec.Container.Mounts = []*pb.Mount{{Type: pb.MountType_MOUNT_TYPE_TMPFS, Target: "/x"}, {Type: pb.MountType_MOUNT_TYPE_VOLUME, Target: "/x/"}}
		},
	} {
		tk := base()
		mutate(tk)
		_, err := buildSpec(tk, "n", netip.Addr{}, worker.TaskFiles{})
		var perm *worker.PermanentError
		if !errors.As(err, &perm) {
			t.Errorf("%s: got %v, want a permanent error", name, err)
		}
	}
}

func TestBuildSpecMountsSecretsAndConfigs(t *testing.T) {
	task := &pb.Task{Id: "x", ServiceName: "web", Slot: 1, Spec: &pb.TaskSpec{Container: &pb.ContainerSpec{Image: "shoal/hello:v1"}}}
	files := worker.TaskFiles{
		Secrets: worker.FileSet{Dir: "/dev/shm/s/x", Files: []worker.TaskFile{
			{Target: "pw", Path: "/dev/shm/s/x/pw"}, {Target: "tls.key", Path: "/dev/shm/s/x/tls.key"},
		}},
		Configs: worker.FileSet{Dir: "/dev/shm/c/x", Files: []worker.TaskFile{
			{Target: "/app.conf", Path: "/dev/shm/c/x/app.conf"}, {Target: "/etc/nginx/nginx.conf", Path: "/dev/shm/c/x/etc/nginx/nginx.conf"},
		}},
	}
	s, err := buildSpec(task, "n", netip.Addr{}, files)
	if err != nil {
		t.Fatal(err)
	}
	want := []mount.Mount{
		{Type: mount.TypeBind, Source: "/dev/shm/s/x/pw", Target: "/run/secrets/pw", ReadOnly: true},
		{Type: mount.TypeBind, Source: "/dev/shm/s/x/tls.key", Target: "/run/secrets/tls.key", ReadOnly: true},
		{Type: mount.TypeBind, Source: "/dev/shm/c/x/app.conf", Target: "/app.conf", ReadOnly: true},
		{Type: mount.TypeBind, Source: "/dev/shm/c/x/etc/nginx/nginx.conf", Target: "/etc/nginx/nginx.conf", ReadOnly: true},
	}
	if !slices.EqualFunc(s.host.Mounts, want, func(a, b mount.Mount) bool {
		return a.Type == b.Type && a.Source == b.Source && a.Target == b.Target && a.ReadOnly == b.ReadOnly
	}) {
		t.Errorf("mounts %+v, want %+v", s.host.Mounts, want)
	}
	// A mount of the task's own on a secret's path is refused.
	task.Spec.Container.Mounts = []*pb.Mount{{Type: pb.MountType_MOUNT_TYPE_TMPFS, Target: "/run/secrets/pw"}}
	var perm *worker.PermanentError
	if _, err := buildSpec(task, "n", netip.Addr{}, files); !errors.As(err, &perm) {
		t.Errorf("a mount on a secret's path: %v, want a permanent error", err)
	}
	task.Spec.Container.Mounts = []*pb.Mount{{Type: pb.MountType_MOUNT_TYPE_TMPFS, Target: "/app.conf"}}
	if _, err := buildSpec(task, "n", netip.Addr{}, files); !errors.As(err, &perm) || !strings.Contains(err.Error(), `config "/app.conf"`) {
		t.Errorf("a mount on a config's path: %v, want a permanent error naming the config", err)
	}
}
