package container

import (
	"context"
	"errors"
	"fmt"

	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/google/go-containerregistry/pkg/name"
	pb "github.com/shoal-cluster/shoal/proto"
	"github.com/shoal-cluster/shoal/worker"
	"github.com/shoal-cluster/shoal/worker/imagestore"
	"github.com/shoal-cluster/shoal/worker/tasknet"
)

// StoreImages is the node's image store (package imagestore) as the
// runtime's Images: an image the store lacks is pulled from its registry.
func StoreImages(s *imagestore.Store) Images { return storeImages{s} }

type storeImages struct{ s *imagestore.Store }

func (i storeImages) Image(ctx context.Context, ref string, auth *pb.RegistryAuth) (Image, error) {
	img, err := i.s.Resolve(ref)
	if err == nil {
		return Image{ID: img.ID, Config: img.Config}, nil
	}
	if !errors.Is(err, imagestore.ErrImageNotFound) {
		return Image{}, fmt.Errorf("image %s: %w", ref, err)
	}
	if _, perr := name.ParseReference(ref); perr != nil {
		return Image{}, &worker.PermanentError{Err: fmt.Errorf("image %q is not a valid reference: %v", ref, perr)}
	}
	worker.ReportProgress(ctx, "pulling "+ref)
	img, err = i.s.Pull(ctx, ref, authenticator(auth))
	if err != nil {
		return Image{}, fmt.Errorf("image %s is not on this node and the pull failed (load it with `shoal image load`, or check the registry): %w", ref, err)
	}
	return Image{ID: img.ID, Config: img.Config}, nil
}

func (i storeImages) MountRootFS(ctx context.Context, taskID string, img Image, readOnly bool) (string, error) {
	full, err := i.s.Resolve(img.ID)
	if err != nil {
		return "", err
	}
	return i.s.MountRootFS(ctx, taskID, full, readOnly)
}

func (i storeImages) UnmountRootFS(ctx context.Context, taskID string) error {
	return i.s.UnmountRootFS(ctx, taskID)
}

// authenticator turns a service's registry credentials into the
// registry client's; nil pulls anonymously.
func authenticator(a *pb.RegistryAuth) authn.Authenticator {
	if a == nil {
		return nil
	}
	return authn.FromConfig(authn.AuthConfig{
		Username: a.GetUsername(), Password: a.GetPassword(),
		IdentityToken: a.GetIdentityToken(), RegistryToken: a.GetRegistryToken(),
	})
}

// TaskNetwork is a node's task network (package tasknet) as the runtime's
// Network: each task gets its own namespace and address on the node's
// bridge.
func TaskNetwork(n interface {
	Attach(ctx context.Context, taskID string) (tasknet.Attachment, error)
	Detach(ctx context.Context, taskID string) error
}) Network {
	return taskNetwork{n}
}

type taskNetwork struct {
	n interface {
		Attach(ctx context.Context, taskID string) (tasknet.Attachment, error)
		Detach(ctx context.Context, taskID string) error
	}
}

func (t taskNetwork) Attach(ctx context.Context, taskID string) (Attachment, error) {
	a, err := t.n.Attach(ctx, taskID)
	if err != nil {
		return Attachment{}, err
	}
	return Attachment{NetNSPath: a.NetNSPath, IP: a.IP.String(), ResolvConf: a.ResolvConf}, nil
}

func (t taskNetwork) Detach(ctx context.Context, taskID string) error { return t.n.Detach(ctx, taskID) }
