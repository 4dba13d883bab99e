package container

import (
	"context"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	pb "github.com/shoal-cluster/shoal/proto"
)

// Image is an image as the runtime needs it: what identifies it and the
// configuration its containers start from.
type Image struct {
	// ID is the image's content address (its config digest).
	ID string
	// Config is the image's run configuration (entrypoint, cmd, env, user,
	// working directory, health check).
	Config v1.Config
}

// Images is the node's image store as the runtime uses it: it finds an
// image by reference (pulling it when the node lacks it) and mounts a
// task's root filesystem from it.
type Images interface {
	// Image returns the image ref names, pulling it with auth (nil:
	// anonymously) when the node does not have it. An image that can never
	// exist (an invalid reference) is a *worker.PermanentError.
	Image(ctx context.Context, ref string, auth *pb.RegistryAuth) (Image, error)
	// MountRootFS mounts the task's root filesystem (the image's layers
	// and a fresh writable layer of the task's own, unless readOnly) and
	// returns where. Mounting a mounted task's again returns the same.
	MountRootFS(ctx context.Context, taskID string, img Image, readOnly bool) (string, error)
	// UnmountRootFS unmounts the task's root filesystem and deletes its
	// writable layer; an unknown task is already unmounted.
	UnmountRootFS(ctx context.Context, taskID string) error
}
