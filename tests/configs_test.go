package tests

import (
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	pb "github.com/shoal-cluster/shoal/proto"
	"github.com/shoal-cluster/shoal/raftstore"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// createConfig creates a config through manager m (a follower forwards the
// call to the leader).
func (c *cluster) createConfig(m *mgr, name string, data []byte) *pb.Config {
	c.t.Helper()
	ctx, cancel := c.ctx()
	defer cancel()
	resp, err := c.control(m).CreateConfig(ctx, &pb.CreateConfigRequest{Spec: &pb.ConfigSpec{Annotations: &pb.Annotations{Name: name}, Data: data}})
	if err != nil {
		c.t.Fatalf("create config %s: %v", name, err)
	}
	return resp.GetConfig()
}

// configReaderSpec is a service whose tasks copy their config file at
// /etc/app/app.conf, and its mode, to out/<task ID> and then keep running.
func configReaderSpec(name, out string, replicas uint64, refs ...*pb.ConfigReference) *pb.ServiceSpec {
	spec := secretReaderSpec(name, out, replicas)
	script := fmt.Sprintf(`f="$SHOAL_CONFIGS_DIR/etc/app/app.conf"; { stat -c %%a "$f"; cat "$f"; } > %s/"$SHOAL_TASK_ID".tmp && mv %s/"$SHOAL_TASK_ID".tmp %s/"$SHOAL_TASK_ID"; exec sleep 600`, out, out, out)
	spec.Task.Container.Args = []string{"-c", script}
	spec.Task.Container.Configs = refs
	return spec
}

// TestConfigsReachOnlyTheirNodes follows a config from create (through a
// follower) to a task's file: replicated by Raft to every manager, sent
// only to the workers that run a task using it, read by the task from
// $SHOAL_CONFIGS_DIR at its target with its mode, refused removal while a
// service uses it, and forgotten by the workers once the tasks end.
func TestConfigsReachOnlyTheirNodes(t *testing.T) {
	c := newCluster(t)
	c.addManagers(3)
	c.addWorkers(3)
	out := filepath.Join(c.base, "out")
	if err := os.Mkdir(out, 0o755); err != nil {
		t.Fatal(err)
	}
	var follower *mgr
	for _, m := range c.live() {
		if m != c.leader() {
			follower = m
		}
	}
	data := []byte("listen=8080\nname=" + string(secretValue(t)) + "\n")
	cfg := c.createConfig(follower, "app.conf", data)
	c.createConfig(c.leader(), "unused.conf", []byte("x"))
	if cfg.GetSize() != uint64(len(data)) || len(cfg.GetSpec().GetData()) != 0 {
		t.Fatalf("create returned size %d with %d data bytes; want size %d and no data", cfg.GetSize(), len(cfg.GetSpec().GetData()), len(data))
	}
	// Every manager's store has it, through Raft.
	c.eventually(10*time.Second, "the config on every manager", func() (bool, string) {
		for _, m := range c.live() {
			var got *pb.Config
			m.m.Store().View(func(tx *raftstore.Tx) { got, _ = tx.Configs().Get(cfg.GetId()) })
			if !bytes.Equal(got.GetSpec().GetData(), data) {
				return false, fmt.Sprintf("%s has %q", m.cfg.Hostname, got.GetSpec().GetData())
			}
		}
		return true, ""
	})

	c.createService(configReaderSpec("reader", out, 2, &pb.ConfigReference{ConfigName: "app.conf", Target: "/etc/app/app.conf", Mode: 0o440}))
	users := c.readersRead("reader", out, 2, "440\n"+string(data))
	for _, w := range c.workers {
		held, files := w.a.HeldConfigs(), filesUnder(w.a.ConfigsDir())
		if users[w.a.ID()] {
			if !slices.Equal(held, []string{cfg.GetId()}) || len(files) != 1 || !strings.HasSuffix(files[0], "/etc/app/app.conf") {
				t.Errorf("worker %s runs a reader but holds configs %v, files %v; want [%s] and one etc/app/app.conf", w.cfg.Hostname, held, files, cfg.GetId())
			}
			continue
		}
		if len(held) != 0 || len(files) != 0 {
			t.Errorf("worker %s runs no reader but holds configs %v and files %v", w.cfg.Hostname, held, files)
		}
	}

	// In use: the config cannot be removed; inspect names the service and
	// shows the data.
	ctx, cancel := c.ctx()
	defer cancel()
	cl := c.control(follower)
	_, err := cl.RemoveConfig(ctx, &pb.RemoveConfigRequest{Ref: "app.conf"})
	if status.Code(err) != codes.FailedPrecondition || !strings.Contains(err.Error(), `config "app.conf" is in use by service reader`) {
		t.Fatalf("remove a config in use = %v, want FailedPrecondition naming the service", err)
	}
	got, err := cl.GetConfig(ctx, &pb.GetConfigRequest{Ref: "app.conf"})
	if err != nil || !slices.Equal(got.GetServices(), []string{"reader"}) || !bytes.Equal(got.GetConfig().GetSpec().GetData(), data) {
		t.Fatalf("inspect: services %v, data %q (%v); want [reader] and the data", got.GetServices(), got.GetConfig().GetSpec().GetData(), err)
	}

	// The tasks end: their nodes forget the config and its files.
	c.scale("reader", 0)
	c.eventually(30*time.Second, "the config gone from every worker", func() (bool, string) {
		for _, w := range c.workers {
			if held, files := w.a.HeldConfigs(), filesUnder(w.a.ConfigsDir()); len(held) > 0 || len(files) > 0 {
				return false, fmt.Sprintf("%s holds %v, files %v", w.cfg.Hostname, held, files)
			}
		}
		return true, ""
	})
	removeService(t, c, "reader")
	if _, err := cl.RemoveConfig(ctx, &pb.RemoveConfigRequest{Ref: "app.conf"}); err != nil {
		t.Fatalf("remove an unused config: %v", err)
	}
	list, err := cl.ListConfigs(ctx, &pb.ListConfigsRequest{})
	if err != nil || len(list.GetConfigs()) != 1 || list.GetConfigs()[0].GetSpec().GetAnnotations().GetName() != "unused.conf" {
		t.Fatalf("configs after rm: %v, %v; want only unused.conf", list.GetConfigs(), err)
	}
}

// TestConfigBadInput: each mistake gets one clear error and changes
// nothing on the cluster.
func TestConfigBadInput(t *testing.T) {
	c := newCluster(t)
	c.addManagers(1)
	cl := c.control(c.leader())
	ctx, cancel := c.ctx()
	defer cancel()
	c.createConfig(c.leader(), "taken", []byte("v"))
	c.createSecret("pw", []byte("hunter2"))

	create := func(name string, data []byte) error {
		_, err := cl.CreateConfig(ctx, &pb.CreateConfigRequest{Spec: &pb.ConfigSpec{Annotations: &pb.Annotations{Name: name}, Data: data}})
		return err
	}
	svc := func(secrets []*pb.SecretReference, refs ...*pb.ConfigReference) error {
		spec := configReaderSpec("svc", c.base, 1, refs...)
		spec.Task.Container.Secrets = secrets
		_, err := cl.CreateService(ctx, &pb.CreateServiceRequest{Spec: spec})
		return err
	}
	for _, tc := range []struct {
		name string
		err  error
		code codes.Code
		want string
	}{
		{"too large", create("big", bytes.Repeat([]byte("x"), 1000*1024+1)), codes.InvalidArgument, `config "big" is 1024001 bytes, more than the limit of 1024000 bytes (1000 KiB)`},
		{"empty", create("empty", nil), codes.InvalidArgument, "is empty"},
		{"duplicate name", create("taken", []byte("w")), codes.AlreadyExists, `a config named "taken" already exists`},
		{"invalid name", create("no/slash", []byte("w")), codes.InvalidArgument, "invalid config name"},
		{"unknown config", svc(nil, &pb.ConfigReference{ConfigName: "nope"}), codes.NotFound, `no config "nope"`},
		{"relative target", svc(nil, &pb.ConfigReference{ConfigName: "taken", Target: "etc/x"}), codes.InvalidArgument, `invalid target "etc/x"`},
		{"a secret's target", svc([]*pb.SecretReference{{SecretName: "pw"}}, &pb.ConfigReference{ConfigName: "taken", Target: "/run/secrets/pw"}),
			codes.InvalidArgument, `config "taken" and secret "pw" both use the path /run/secrets/pw`},
		{"two configs, one target", svc(nil, &pb.ConfigReference{ConfigName: "taken", Target: "/a"}, &pb.ConfigReference{ConfigName: "taken", Target: "/a"}),
			codes.InvalidArgument, "both use the path /a"},
	} {
		msg := status.Convert(tc.err).Message()
		if status.Code(tc.err) != tc.code || !strings.Contains(msg, tc.want) || strings.Contains(msg, "\n") {
			t.Errorf("%s: %v; want %v with %q on one line", tc.name, tc.err, tc.code, tc.want)
		}
	}
	// Nothing changed: the one config, no service.
	list, err := cl.ListConfigs(ctx, &pb.ListConfigsRequest{})
	if err != nil || len(list.GetConfigs()) != 1 || list.GetConfigs()[0].GetSpec().GetAnnotations().GetName() != "taken" {
		t.Errorf("configs after the bad input: %v, %v; want only taken", list.GetConfigs(), err)
	}
	services, err := cl.ListServices(ctx, &pb.ListServicesRequest{})
	if err != nil || len(services.GetServices()) != 0 {
		t.Errorf("services after the bad input: %v, %v", services.GetServices(), err)
	}
	if _, err := cl.RemoveConfig(ctx, &pb.RemoveConfigRequest{Ref: "nope"}); status.Code(err) != codes.NotFound {
		t.Errorf("remove an unknown config: %v, want NotFound", err)
	}
	if err := create("exactly-1000k", bytes.Repeat([]byte("y"), 1000*1024)); err != nil {
		t.Errorf("a config of exactly 1000 KiB: %v", err)
	}
}
