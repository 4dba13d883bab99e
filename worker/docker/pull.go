package docker

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"strings"

	cerrdefs "github.com/containerd/errdefs"
	"github.com/moby/moby/api/types/jsonstream"
	"github.com/moby/moby/api/types/registry"
	"github.com/moby/moby/client"
	pb "github.com/shoal-cluster/shoal/proto"
	"github.com/shoal-cluster/shoal/worker"
)

// pull has the Engine pull image (tag, digest or both) from its registry,
// with auth when given, reporting progress through ctx ("pulling 3/5
// layers"). A failure carries the registry's reason, as the Engine gives
// it; it is not permanent: the restart policy decides whether to try again
// (a registry that was down may be back).
func (r *Runtime) pull(ctx context.Context, image string, auth *pb.RegistryAuth) error {
	opts := client.ImagePullOptions{}
	if auth != nil {
		enc, err := EncodeAuth(auth)
		if err != nil {
			return err
		}
		opts.RegistryAuth = enc
	}
	worker.ReportProgress(ctx, "pulling "+image)
	res, err := r.cli.ImagePull(ctx, image, opts)
	if err != nil {
		return r.pullError(image, err, auth != nil)
	}
	defer res.Close()
	var p pullProgress
	for m, err := range res.JSONMessages(ctx) {
		if err != nil {
			return r.pullError(image, err, auth != nil)
		}
		if m.Error != nil {
			return r.pullError(image, fmt.Errorf("%s", m.Error.Message), auth != nil)
		}
		if msg, changed := p.note(m); changed {
			worker.ReportProgress(ctx, msg)
		}
	}
	if ctx.Err() != nil {
		return ctx.Err()
	}
	r.log.Info("image pulled", "image", image, "layers", p.total())
	return nil
}

// pullError says which pull failed, where, and the registry's reason;
// for a pull without credentials that the registry may have refused, it
// says how to send some.
func (r *Runtime) pullError(image string, err error, withAuth bool) error {
	reason := strings.TrimPrefix(err.Error(), "Error response from daemon: ")
	if cerrdefs.IsInvalidArgument(err) {
		// A malformed reference never pulls.
		return permanent("image %s cannot be pulled on node %s: %s", image, r.nodeName, reason)
	}
	if !withAuth && mayNeedAuth(reason) {
		reason += " (pulled without registry credentials: if the registry needs some, update the service with --with-registry-auth)"
	}
	return fmt.Errorf("pull %s on node %s: %s", image, r.nodeName, reason)
}

// mayNeedAuth reports whether a pull's failure may be a refusal for want
// of credentials. Through TLS on loopback the Engine reports its plain
// HTTP fallback's failure (a reset connection) rather than the refusal.
func mayNeedAuth(reason string) bool {
	r := strings.ToLower(reason)
	for _, s := range []string{"unauthorized", "no basic auth credentials", "denied", "authentication required", "connection reset"} {
		if strings.Contains(r, s) {
			return true
		}
	}
	return false
}

// EncodeAuth encodes credentials as the Engine's X-Registry-Auth header
// wants them (base64url of the JSON AuthConfig).
func EncodeAuth(a *pb.RegistryAuth) (string, error) {
	b, err := json.Marshal(registry.AuthConfig{
		Username: a.GetUsername(), Password: a.GetPassword(), ServerAddress: a.GetServer(),
		IdentityToken: a.GetIdentityToken(), RegistryToken: a.GetRegistryToken(),
	})
	if err != nil {
		return "", fmt.Errorf("encode registry credentials: %w", err)
	}
	return base64.URLEncoding.EncodeToString(b), nil
}

// pullProgress counts the layers of a pull from the Engine's progress
// messages: one per layer ID, done once pulled or already present.
type pullProgress struct {
	layers map[string]bool // layer ID → done
	last   string
}

// note takes one progress message and returns the progress line, and
// whether it changed.
func (p *pullProgress) note(m jsonstream.Message) (string, bool) {
	if m.ID == "" || strings.HasPrefix(m.Status, "Pulling from") || strings.HasPrefix(m.Status, "Digest:") || strings.HasPrefix(m.Status, "Status:") {
		return p.last, false
	}
	if p.layers == nil {
		p.layers = map[string]bool{}
	}
	switch m.Status {
	case "Pull complete", "Already exists":
		p.layers[m.ID] = true
	default:
		if _, ok := p.layers[m.ID]; !ok {
			p.layers[m.ID] = false
		}
	}
	done := 0
	for _, d := range p.layers {
		if d {
			done++
		}
	}
	line := fmt.Sprintf("pulling %d/%d layers", done, len(p.layers))
	if line == p.last {
		return line, false
	}
	p.last = line
	return line, true
}

// total is how many layers the pull has seen.
func (p *pullProgress) total() int { return len(p.layers) }
