package controlapi

import (
	"bytes"
	"context"
	"log/slog"
	"strings"
	"testing"

	"github.com/shoal-cluster/shoal/internal/storetest"
	"github.com/shoal-cluster/shoal/manager/sealer"
	pb "github.com/shoal-cluster/shoal/proto"
	"github.com/shoal-cluster/shoal/raftstore"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

type fixedKey struct{ k *sealer.Key }

func (f fixedKey) Key() (*sealer.Key, error) { return f.k, nil }

// newConfigServer is a control API on a memory store with one secret
// ("pw") and one config ("app.conf", "port=80").
func newConfigServer(t *testing.T) (*Server, raftstore.StateStore) {
	t.Helper()
	store := storetest.Memory(t, nil)
	key, err := sealer.Generate()
	if err != nil {
		t.Fatal(err)
	}
	s := New(Config{Store: store, Keys: fixedKey{key}, Log: slog.New(slog.DiscardHandler)})
	ctx := context.Background()
	if _, err := s.CreateSecret(ctx, &pb.CreateSecretRequest{Spec: &pb.SecretSpec{Annotations: &pb.Annotations{Name: "pw"}, Data: []byte("hunter2")}}); err != nil {
		t.Fatal(err)
	}
	if _, err := s.CreateConfig(ctx, &pb.CreateConfigRequest{Spec: &pb.ConfigSpec{Annotations: &pb.Annotations{Name: "app.conf"}, Data: []byte("port=80")}}); err != nil {
		t.Fatal(err)
	}
	return s, store
}

func configService(name string, secrets []*pb.SecretReference, configs ...*pb.ConfigReference) *pb.ServiceSpec {
	return &pb.ServiceSpec{
		Annotations: &pb.Annotations{Name: name},
		Task:        &pb.TaskSpec{Runtime: "process", Container: &pb.ContainerSpec{Image: "/bin/sh", Secrets: secrets, Configs: configs}},
		Mode:        &pb.ServiceSpec_Replicated{Replicated: &pb.ReplicatedService{Replicas: 1}},
	}
}

// storeIndex is the store's index: a refused request must not move it.
func storeIndex(store raftstore.StateStore) uint64 {
	var i uint64
	store.View(func(tx *raftstore.Tx) { i = tx.Index() })
	return i
}

func TestConfigCreateRefusals(t *testing.T) {
	s, _ := newConfigServer(t)
	create := func(name string, data []byte, labels map[string]string) error {
		_, err := s.CreateConfig(context.Background(), &pb.CreateConfigRequest{Spec: &pb.ConfigSpec{Annotations: &pb.Annotations{Name: name, Labels: labels}, Data: data}})
		return err
	}
	for _, c := range []struct {
		name   string
		err    error
		code   codes.Code
		substr string
	}{
		{"no name", create("", []byte("x"), nil), codes.InvalidArgument, "a config needs a name"},
		{"bad name", create("a/b", []byte("x"), nil), codes.InvalidArgument, `invalid config name "a/b"`},
		{"long name", create(strings.Repeat("a", 65), []byte("x"), nil), codes.InvalidArgument, "invalid config name"},
		{"empty", create("e", nil, nil), codes.InvalidArgument, `config "e" is empty`},
		{"too large", create("big", bytes.Repeat([]byte("x"), MaxConfigSize+1), nil), codes.InvalidArgument, "1024001 bytes, more than the limit of 1024000 bytes (1000 KiB)"},
		{"bad label", create("l", []byte("x"), map[string]string{"a b": "c"}), codes.InvalidArgument, `invalid label key "a b"`},
		{"taken", create("app.conf", []byte("other"), nil), codes.AlreadyExists, `a config named "app.conf" already exists`},
	} {
		t.Run(c.name, func(t *testing.T) {
			st, _ := status.FromError(c.err)
			if st.Code() != c.code || !strings.Contains(st.Message(), c.substr) || strings.Contains(st.Message(), "\n") {
				t.Fatalf("got %v, want %v containing %q on one line", c.err, c.code, c.substr)
			}
		})
	}
	resp, err := s.ListConfigs(context.Background(), &pb.ListConfigsRequest{})
	if err != nil || len(resp.GetConfigs()) != 1 {
		t.Fatalf("after the refusals: %d configs (%v), want only app.conf", len(resp.GetConfigs()), err)
	}
}

func TestConfigLargestAccepted(t *testing.T) {
	s, _ := newConfigServer(t)
	data := bytes.Repeat([]byte("y"), MaxConfigSize)
	resp, err := s.CreateConfig(context.Background(), &pb.CreateConfigRequest{Spec: &pb.ConfigSpec{Annotations: &pb.Annotations{Name: "big"}, Data: data}})
	if err != nil {
		t.Fatalf("create a config at the limit: %v", err)
	}
	if resp.GetConfig().GetSize() != MaxConfigSize || len(resp.GetConfig().GetSpec().GetData()) != 0 {
		t.Fatalf("create returned size %d with %d data bytes; want size %d and no data", resp.GetConfig().GetSize(), len(resp.GetConfig().GetSpec().GetData()), MaxConfigSize)
	}
	got, err := s.GetConfig(context.Background(), &pb.GetConfigRequest{Ref: "big"})
	if err != nil || !bytes.Equal(got.GetConfig().GetSpec().GetData(), data) {
		t.Fatalf("inspect returned %d bytes (%v), want the %d stored", len(got.GetConfig().GetSpec().GetData()), err, len(data))
	}
	ls, _ := s.ListConfigs(context.Background(), &pb.ListConfigsRequest{})
	for _, c := range ls.GetConfigs() {
		if len(c.GetSpec().GetData()) != 0 {
			t.Errorf("ls returned the data of %s", configName(c))
		}
	}
}

// TestConfigReferences: references are resolved and defaulted, and every
// bad one is refused with one line, creating nothing.
func TestConfigReferences(t *testing.T) {
	s, store := newConfigServer(t)
	ctx := context.Background()
	if _, err := s.CreateConfig(ctx, &pb.CreateConfigRequest{Spec: &pb.ConfigSpec{Annotations: &pb.Annotations{Name: "other"}, Data: []byte("o")}}); err != nil {
		t.Fatal(err)
	}
	resp, err := s.CreateService(ctx, &pb.CreateServiceRequest{Spec: configService("ok", []*pb.SecretReference{{SecretName: "pw"}},
		&pb.ConfigReference{ConfigName: "app.conf"}, &pb.ConfigReference{ConfigName: "other", Target: "/etc/other.conf", Mode: 0o440, Uid: "1000", Gid: "1000"})})
	if err != nil {
		t.Fatalf("create a service with two configs: %v", err)
	}
	refs := resp.GetService().GetSpec().GetTask().GetContainer().GetConfigs()
	if len(refs) != 2 || refs[0].GetConfigId() == "" || refs[0].GetTarget() != "/app.conf" || refs[0].GetMode() != 0o444 ||
		refs[1].GetTarget() != "/etc/other.conf" || refs[1].GetMode() != 0o440 || refs[1].GetUid() != "1000" {
		t.Fatalf("stored references %v: want app.conf at /app.conf 0444 with its ID, other at /etc/other.conf 0440 uid 1000", refs)
	}

	before := storeIndex(store)
	for _, c := range []struct {
		name    string
		secrets []*pb.SecretReference
		configs []*pb.ConfigReference
		code    codes.Code
		substr  string
	}{
		{"unknown config", nil, []*pb.ConfigReference{{ConfigName: "nope"}}, codes.NotFound, `no config "nope"; create it first with ` + "`shoal config create nope FILE`"},
		{"relative target", nil, []*pb.ConfigReference{{ConfigName: "app.conf", Target: "etc/app.conf"}}, codes.InvalidArgument, `invalid target "etc/app.conf"`},
		{"dotdot target", nil, []*pb.ConfigReference{{ConfigName: "app.conf", Target: "/etc/../x"}}, codes.InvalidArgument, "invalid target"},
		{"root target", nil, []*pb.ConfigReference{{ConfigName: "app.conf", Target: "/"}}, codes.InvalidArgument, "invalid target"},
		{"two configs one target", nil, []*pb.ConfigReference{{ConfigName: "app.conf", Target: "/x"}, {ConfigName: "other", Target: "/x"}},
			codes.InvalidArgument, `config "other" and config "app.conf" both use the path /x`},
		{"config under another", nil, []*pb.ConfigReference{{ConfigName: "app.conf", Target: "/etc"}, {ConfigName: "other", Target: "/etc/o"}},
			codes.InvalidArgument, "both use the path /etc"},
		{"config on a secret", []*pb.SecretReference{{SecretName: "pw"}}, []*pb.ConfigReference{{ConfigName: "app.conf", Target: "/run/secrets/pw"}},
			codes.InvalidArgument, `config "app.conf" and secret "pw" both use the path /run/secrets/pw`},
		{"config above a secret", []*pb.SecretReference{{SecretName: "pw", Target: "key"}}, []*pb.ConfigReference{{ConfigName: "app.conf", Target: "/run/secrets"}},
			codes.InvalidArgument, "both use the path /run/secrets"},
		{"bad mode", nil, []*pb.ConfigReference{{ConfigName: "app.conf", Mode: 0o1777}}, codes.InvalidArgument, "not a permission mode"},
		{"bad uid", nil, []*pb.ConfigReference{{ConfigName: "app.conf", Uid: "root"}}, codes.InvalidArgument, `uid "root" is not a numeric ID`},
	} {
		t.Run(c.name, func(t *testing.T) {
			_, err := s.CreateService(ctx, &pb.CreateServiceRequest{Spec: configService("bad", c.secrets, c.configs...)})
			st, _ := status.FromError(err)
			if st.Code() != c.code || !strings.Contains(st.Message(), c.substr) || strings.Contains(st.Message(), "\n") {
				t.Fatalf("got %v, want %v containing %q on one line", err, c.code, c.substr)
			}
			if after := storeIndex(store); after != before {
				t.Fatalf("the refused create moved the store from index %d to %d", before, after)
			}
		})
	}
}

// TestConfigRemoveInUse: rm is refused while a service uses the config,
// naming the services, and works once they have dropped it.
func TestConfigRemoveInUse(t *testing.T) {
	s, _ := newConfigServer(t)
	ctx := context.Background()
	for _, name := range []string{"web", "api"} {
		if _, err := s.CreateService(ctx, &pb.CreateServiceRequest{Spec: configService(name, nil, &pb.ConfigReference{ConfigName: "app.conf"})}); err != nil {
			t.Fatal(err)
		}
	}
	_, err := s.RemoveConfig(ctx, &pb.RemoveConfigRequest{Ref: "app.conf"})
	if st, _ := status.FromError(err); st.Code() != codes.FailedPrecondition || !strings.Contains(st.Message(), `config "app.conf" is in use by services api, web`) ||
		!strings.Contains(st.Message(), "shoal service update --config-rm app.conf SERVICE") {
		t.Fatalf("rm of a config in use: %v", err)
	}
	got, err := s.GetConfig(ctx, &pb.GetConfigRequest{Ref: "app.conf"})
	if err != nil || strings.Join(got.GetServices(), ",") != "api,web" || string(got.GetConfig().GetSpec().GetData()) != "port=80" {
		t.Fatalf("inspect: %v services, data %q (%v); want api,web and port=80", got.GetServices(), got.GetConfig().GetSpec().GetData(), err)
	}
	for _, name := range []string{"web", "api"} {
		if _, err := s.RemoveService(ctx, &pb.RemoveServiceRequest{Ref: name}); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := s.RemoveConfig(ctx, &pb.RemoveConfigRequest{Ref: "app.conf"}); err != nil {
		t.Fatalf("rm of an unused config: %v", err)
	}
	if _, err := s.GetConfig(ctx, &pb.GetConfigRequest{Ref: "app.conf"}); status.Code(err) != codes.NotFound {
		t.Fatalf("inspect after rm: %v, want NotFound", err)
	}
}

// TestBlobUpdates: a secret's or config's labels may change; its name and
// value may not, but a spec repeating them is accepted (docker stack
// deploy sends it on every deploy) and one without the value too.
func TestBlobUpdates(t *testing.T) {
	s, store := newConfigServer(t)
	ctx := context.Background()
	sec, err := s.GetSecret(ctx, &pb.GetSecretRequest{Ref: "pw"})
	if err != nil {
		t.Fatal(err)
	}
	v := sec.GetSecret().GetMeta().GetVersion()
	before := storeIndex(store)
	if _, err := s.UpdateSecret(ctx, &pb.UpdateSecretRequest{Ref: "pw", Version: v, Spec: &pb.SecretSpec{Annotations: &pb.Annotations{Name: "pw"}, Data: []byte("hunter2")}}); err != nil {
		t.Fatalf("the same secret again: %v", err)
	}
	if storeIndex(store) != before {
		t.Fatal("an update that changes nothing wrote to the store")
	}
	for _, c := range []struct {
		name string
		err  error
		code codes.Code
		sub  string
	}{
		{"secret value", func() error {
			_, err := s.UpdateSecret(ctx, &pb.UpdateSecretRequest{Ref: "pw", Version: v, Spec: &pb.SecretSpec{Annotations: &pb.Annotations{Name: "pw"}, Data: []byte("other")}})
			return err
		}(), codes.InvalidArgument, "secret pw cannot change its value"},
		{"secret name", func() error {
			_, err := s.UpdateSecret(ctx, &pb.UpdateSecretRequest{Ref: "pw", Spec: &pb.SecretSpec{Annotations: &pb.Annotations{Name: "pw2"}}})
			return err
		}(), codes.InvalidArgument, "name cannot change"},
		{"stale version", func() error {
			_, err := s.UpdateSecret(ctx, &pb.UpdateSecretRequest{Ref: "pw", Version: v + 100, Spec: &pb.SecretSpec{Annotations: &pb.Annotations{Name: "pw"}}})
			return err
		}(), codes.Aborted, "changed by someone else"},
		{"config data", func() error {
			_, err := s.UpdateConfig(ctx, &pb.UpdateConfigRequest{Ref: "app.conf", Spec: &pb.ConfigSpec{Annotations: &pb.Annotations{Name: "app.conf"}, Data: []byte("port=81")}})
			return err
		}(), codes.InvalidArgument, "config app.conf cannot change its value"},
	} {
		if st, _ := status.FromError(c.err); st.Code() != c.code || !strings.Contains(st.Message(), c.sub) {
			t.Errorf("%s: got %v, want %v with %q", c.name, c.err, c.code, c.sub)
		}
	}
	if storeIndex(store) != before {
		t.Fatal("a refused update changed the store")
	}
	up, err := s.UpdateSecret(ctx, &pb.UpdateSecretRequest{Ref: "pw", Version: v, Spec: &pb.SecretSpec{Annotations: &pb.Annotations{Name: "pw", Labels: map[string]string{"team": "a"}}}})
	if err != nil || up.GetSecret().GetSpec().GetAnnotations().GetLabels()["team"] != "a" || len(up.GetSecret().GetSealedData()) != 0 {
		t.Fatalf("relabel the secret: %v %v", up, err)
	}
	cf, err := s.UpdateConfig(ctx, &pb.UpdateConfigRequest{Ref: "app.conf", Spec: &pb.ConfigSpec{Annotations: &pb.Annotations{Name: "app.conf", Labels: map[string]string{"x": "y"}}, Data: []byte("port=80")}})
	if err != nil || cf.GetConfig().GetSpec().GetAnnotations().GetLabels()["x"] != "y" {
		t.Fatalf("relabel the config: %v %v", cf, err)
	}
	got, _ := s.GetConfig(ctx, &pb.GetConfigRequest{Ref: "app.conf"})
	if string(got.GetConfig().GetSpec().GetData()) != "port=80" {
		t.Fatalf("config data after relabel: %q", got.GetConfig().GetSpec().GetData())
	}
}
