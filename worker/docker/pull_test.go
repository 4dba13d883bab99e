package docker

import (
	"encoding/base64"
	"encoding/json"
	"testing"

	"github.com/moby/moby/api/types/jsonstream"
	"github.com/moby/moby/api/types/registry"
	pb "github.com/shoal-cluster/shoal/proto"
)

func TestPullProgress(t *testing.T) {
	msg := func(id, status string) jsonstream.Message { return jsonstream.Message{ID: id, Status: status} }
	steps := []struct {
		m       jsonstream.Message
		want    string
		changed bool
	}{
		{msg("v1", "Pulling from shoal/hello"), "", false},
		{msg("a1", "Pulling fs layer"), "pulling 0/1 layers", true},
		{msg("b2", "Already exists"), "pulling 1/2 layers", true},
		{msg("c3", "Waiting"), "pulling 1/3 layers", true},
		{msg("a1", "Downloading"), "pulling 1/3 layers", false},
		{msg("a1", "Pull complete"), "pulling 2/3 layers", true},
		{msg("c3", "Pull complete"), "pulling 3/3 layers", true},
		{msg("", "Digest: sha256:abc"), "pulling 3/3 layers", false},
		{msg("", "Status: Downloaded newer image for shoal/hello:v1"), "pulling 3/3 layers", false},
	}
	var p pullProgress
	for i, s := range steps {
		got, changed := p.note(s.m)
		if got != s.want || changed != s.changed {
			t.Errorf("step %d (%s %s): %q changed=%v, want %q changed=%v", i, s.m.ID, s.m.Status, got, changed, s.want, s.changed)
		}
	}
	if p.total() != 3 {
		t.Errorf("total %d, want 3", p.total())
	}
}

func TestEncodeAuth(t *testing.T) {
	enc, err := EncodeAuth(&pb.RegistryAuth{Server: "127.0.0.1:5000", Username: "alice", Password: "s3cret/+="})
	if err != nil {
		t.Fatal(err)
	}
	raw, err := base64.URLEncoding.DecodeString(enc)
	if err != nil {
		t.Fatalf("not base64url: %v", err)
	}
	var got registry.AuthConfig
	if err := json.Unmarshal(raw, &got); err != nil {
		t.Fatal(err)
	}
	if got.Username != "alice" || got.Password != "s3cret/+=" || got.ServerAddress != "127.0.0.1:5000" {
		t.Fatalf("decoded %+v", got)
	}
}
