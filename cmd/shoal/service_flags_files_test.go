package main

import (
	"strings"
	"testing"

	pb "github.com/shoal-cluster/shoal/proto"
	"google.golang.org/protobuf/proto"
)

// flagCase is one test of the secret and config flags: the flags given,
// and what they make of the container spec, or the error they give.
type flagCase struct {
	args    []string
	want    func(c *pb.ContainerSpec) // nil: an error is expected
	wantErr string
}

// checkFlagCases runs create cases (existing nil: the spec starts from
// `service create /bin/app`) or update cases (on a copy of existing).
func checkFlagCases(t *testing.T, existing *pb.ServiceSpec, cases []flagCase) {
	t.Helper()
	for _, tt := range cases {
		var (
			got, want *pb.ServiceSpec
			err       error
		)
		if existing == nil {
			got, err = createSpec(append(tt.args, "/bin/app")...)
			want = baseSpec("/bin/app")
		} else {
			got, err = updateSpec(existing, tt.args...)
			want = proto.Clone(existing).(*pb.ServiceSpec)
		}
		if tt.want == nil {
			if err == nil || !strings.Contains(err.Error(), tt.wantErr) || strings.Contains(err.Error(), "\n") {
				t.Errorf("%q: %v, want one line with %q", tt.args, err, tt.wantErr)
			}
			continue
		}
		if err != nil {
			t.Errorf("%q: %v", tt.args, err)
			continue
		}
		tt.want(want.Task.Container)
		if !proto.Equal(got, want) {
			t.Errorf("%q\n got: %s\nwant: %s", tt.args, text(got), text(want))
		}
	}
}

func secrets(refs ...*pb.SecretReference) func(*pb.ContainerSpec) {
	return func(c *pb.ContainerSpec) { c.Secrets = refs }
}

func configs(refs ...*pb.ConfigReference) func(*pb.ContainerSpec) {
	return func(c *pb.ContainerSpec) { c.Configs = refs }
}

func TestSecretFlagsOnCreate(t *testing.T) {
	checkFlagCases(t, nil, []flagCase{
		{args: []string{"--secret", "db"}, want: secrets(&pb.SecretReference{SecretName: "db", Target: "db", Mode: 0o400})},
		{args: []string{"--secret", "db,target=pw,mode=0440"}, want: secrets(&pb.SecretReference{SecretName: "db", Target: "pw", Mode: 0o440})},
		{args: []string{"--secret", "source=db,target=pw", "--secret", "tls.key"}, want: secrets(
			&pb.SecretReference{SecretName: "db", Target: "pw", Mode: 0o400}, &pb.SecretReference{SecretName: "tls.key", Target: "tls.key", Mode: 0o400})},
		{args: []string{"--secret", "db", "--secret", "db,target=db2"}, want: secrets(
			&pb.SecretReference{SecretName: "db", Target: "db", Mode: 0o400}, &pb.SecretReference{SecretName: "db", Target: "db2", Mode: 0o400})},
		{args: []string{"--secret", ""}, wantErr: "give the secret's name"},
		{args: []string{"--secret", "bad/name"}, wantErr: "give the secret's name"},
		{args: []string{"--secret", "db,target=../x"}, wantErr: `target="../x": use a plain file name`},
		{args: []string{"--secret", "db,target=a/b"}, wantErr: "use a plain file name"},
		{args: []string{"--secret", "db,mode=999"}, wantErr: "use an octal permission mode"},
		{args: []string{"--secret", "db,mode=01777"}, wantErr: "use an octal permission mode"},
		{args: []string{"--secret", "db,uid=0"}, wantErr: "uid is not supported"},
		{args: []string{"--secret", "db,colour=red"}, wantErr: `unknown field "colour"`},
		{args: []string{"--secret", "a,target=x", "--secret", "b,target=x"}, wantErr: `secret a already uses the target "x"`},
	})
}

func TestSecretFlagsOnUpdate(t *testing.T) {
	existing := existingSpec()
	existing.Task.Container.Secrets = []*pb.SecretReference{
		{SecretId: "s1", SecretName: "db", Target: "db", Mode: 0o400},
		{SecretId: "s2", SecretName: "api", Target: "token", Mode: 0o400},
	}
	checkFlagCases(t, existing, []flagCase{
		{args: []string{"--secret-rm", "db", "--secret-add", "db2"}, want: secrets( // rm by name, add
			&pb.SecretReference{SecretId: "s2", SecretName: "api", Target: "token", Mode: 0o400}, &pb.SecretReference{SecretName: "db2", Target: "db2", Mode: 0o400})},
		{args: []string{"--secret-rm", "s2"}, want: secrets(&pb.SecretReference{SecretId: "s1", SecretName: "db", Target: "db", Mode: 0o400})}, // rm by ID
		{args: []string{"--secret-add", "api2,target=token"}, want: secrets( // add on a used target replaces
			&pb.SecretReference{SecretId: "s1", SecretName: "db", Target: "db", Mode: 0o400}, &pb.SecretReference{SecretName: "api2", Target: "token", Mode: 0o400})},
		{args: []string{"--secret-rm", "nope"}, wantErr: "--secret-rm nope: the service uses no such secret"},
	})
}

func TestConfigFlagsOnCreate(t *testing.T) {
	checkFlagCases(t, nil, []flagCase{
		{args: []string{"--config", "app.conf"}, want: configs(&pb.ConfigReference{ConfigName: "app.conf", Target: "/app.conf", Mode: 0o444})},
		{args: []string{"--config", "source=app,target=/etc/app/app.conf,mode=0440,uid=1000,gid=100"}, want: configs(
			&pb.ConfigReference{ConfigName: "app", Target: "/etc/app/app.conf", Mode: 0o440, Uid: "1000", Gid: "100"})},
		{args: []string{"--config", "a", "--config", "src=b,target=/b.conf"}, want: configs(
			&pb.ConfigReference{ConfigName: "a", Target: "/a", Mode: 0o444}, &pb.ConfigReference{ConfigName: "b", Target: "/b.conf", Mode: 0o444})},
		{args: []string{"--config", ""}, wantErr: "give the config's name"},
		{args: []string{"--config", "bad/name"}, wantErr: "give the config's name"},
		{args: []string{"--config", "app,target=etc/app.conf"}, wantErr: `target="etc/app.conf": use an absolute file path`},
		{args: []string{"--config", "app,target=/etc/../x"}, wantErr: "use an absolute file path"},
		{args: []string{"--config", "app,target=/"}, wantErr: "use an absolute file path"},
		{args: []string{"--config", "app,mode=0999"}, wantErr: "use an octal permission mode"},
		{args: []string{"--config", "app,uid=root"}, wantErr: `uid="root": use a numeric ID`},
		{args: []string{"--config", "app,colour=red"}, wantErr: `unknown field "colour"`},
		{args: []string{"--config", "a,target=/x", "--config", "b,target=/x"}, wantErr: `config a already uses the target "/x"`},
	})
}

func TestConfigFlagsOnUpdate(t *testing.T) {
	existing := existingSpec()
	existing.Task.Container.Configs = []*pb.ConfigReference{
		{ConfigId: "c1", ConfigName: "app", Target: "/app", Mode: 0o444},
		{ConfigId: "c2", ConfigName: "nginx", Target: "/etc/nginx.conf", Mode: 0o444},
	}
	checkFlagCases(t, existing, []flagCase{
		{args: []string{"--config-rm", "app", "--config-add", "app2"}, want: configs( // rm by name, add
			&pb.ConfigReference{ConfigId: "c2", ConfigName: "nginx", Target: "/etc/nginx.conf", Mode: 0o444}, &pb.ConfigReference{ConfigName: "app2", Target: "/app2", Mode: 0o444})},
		{args: []string{"--config-rm", "c2"}, want: configs(&pb.ConfigReference{ConfigId: "c1", ConfigName: "app", Target: "/app", Mode: 0o444})}, // rm by ID
		{args: []string{"--config-add", "nginx2,target=/etc/nginx.conf"}, want: configs( // add on a used target replaces
			&pb.ConfigReference{ConfigId: "c1", ConfigName: "app", Target: "/app", Mode: 0o444}, &pb.ConfigReference{ConfigName: "nginx2", Target: "/etc/nginx.conf", Mode: 0o444})},
		{args: []string{"--config-rm", "nope"}, wantErr: "--config-rm nope: the service uses no such config"},
		{args: []string{"--config-add", "x,target=rel"}, wantErr: "use an absolute file path"},
	})
}
