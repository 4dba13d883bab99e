package controlapi

import (
	"context"
	"errors"
	"fmt"

	"github.com/shoal-cluster/shoal/internal/registry"
	pb "github.com/shoal-cluster/shoal/proto"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
)

// Resolver pins an image tag to the digest its registry holds (see
// registry.Resolve, the default).
type Resolver func(ctx context.Context, image string, auth *pb.RegistryAuth) (string, error)

// pinImage pins the image of a docker-runtime spec to its digest, as mode
// says (cur is the service's spec before an update, nil at create). It
// returns warnings when the registry could not tell (the image then runs
// unpinned, as Docker's does), and refuses an image the registry says it
// does not have.
func (s *Server) pinImage(ctx context.Context, spec, cur *pb.ServiceSpec, mode pb.ResolveImage, auth *pb.RegistryAuth) ([]string, error) {
	c := spec.GetTask().GetContainer()
	image := c.GetImage()
	if spec.GetTask().GetRuntime() != "docker" || image == "" || mode == pb.ResolveImage_RESOLVE_IMAGE_NEVER || registry.HasDigest(image) {
		return nil, nil
	}
	if curImage := cur.GetTask().GetContainer().GetImage(); cur != nil && mode == pb.ResolveImage_RESOLVE_IMAGE_CHANGED &&
		registry.StripDigest(curImage) == image {
		c.Image = curImage // unchanged: keep the digest it had
		return nil, nil
	}
	pinned, err := s.resolve(ctx, image, auth)
	switch {
	case err == nil:
		c.Image = pinned
		return nil, nil
	case errors.Is(err, registry.ErrInvalidReference):
		return nil, status.Error(codes.InvalidArgument, err.Error())
	case errors.Is(err, registry.ErrNotFound):
		return nil, status.Errorf(codes.InvalidArgument, "%v; push it first, or pass --resolve-image never for an image every node has already", err)
	case errors.Is(err, registry.ErrUnauthorized) && auth != nil:
		// Credentials were sent and refused: every task would fail to
		// pull, so nothing is changed.
		return nil, status.Errorf(codes.InvalidArgument, "%v with the credentials sent by --with-registry-auth; log in again (`docker login %s`) and retry", err, registry.Host(image))
	case ctx.Err() != nil:
		return nil, status.FromContextError(ctx.Err()).Err()
	}
	s.log.Warn("image not pinned to a digest", "image", image, "err", err)
	return []string{fmt.Sprintf("image %s could not be accessed on a registry to record its digest (%v). Each node will access %s independently, possibly leading to different nodes running different versions of the image.", image, err, image)}, nil
}

// registryAuthFor returns the credentials a create or update resolves the
// image with, and those to seal for the workers: the request's, else (an
// update of a service that has some) the stored ones.
func (s *Server) registryAuthFor(spec *pb.ServiceSpec, req *pb.RegistryAuth, svc *pb.Service) (*pb.RegistryAuth, error) {
	c := spec.GetTask().GetContainer()
	if req != nil {
		if spec.GetTask().GetRuntime() != "docker" {
			return nil, status.Error(codes.InvalidArgument, "--with-registry-auth is for images (the docker runtime); this service runs a process")
		}
		c.WithRegistryAuth = true
		return req, nil
	}
	if !c.GetWithRegistryAuth() {
		return nil, nil
	}
	if len(svc.GetSealedRegistryAuth()) == 0 {
		return nil, status.Error(codes.InvalidArgument, "the spec asks for registry credentials but none were sent: pass --with-registry-auth (it reads them from your Docker client config)")
	}
	return s.openRegistryAuth(svc)
}

// openRegistryAuth unseals a service's stored registry credentials.
func (s *Server) openRegistryAuth(svc *pb.Service) (*pb.RegistryAuth, error) {
	key, err := s.keys.Key()
	if err != nil {
		return nil, status.Error(codes.FailedPrecondition, err.Error())
	}
	raw, err := key.Open(registry.AuthSecretID(svc.GetId()), svc.GetSealedRegistryAuth())
	if err != nil {
		return nil, status.Errorf(codes.Internal, "open the registry credentials of service %s: %v", svc.GetSpec().GetAnnotations().GetName(), err)
	}
	out := &pb.RegistryAuth{}
	if err := proto.Unmarshal(raw, out); err != nil {
		return nil, status.Errorf(codes.Internal, "read the registry credentials of service %s: %v", svc.GetSpec().GetAnnotations().GetName(), err)
	}
	return out, nil
}

// sealRegistryAuth stores auth, sealed with the cluster's secrets key and
// bound to the service, on svc.
func (s *Server) sealRegistryAuth(svc *pb.Service, auth *pb.RegistryAuth) error {
	key, err := s.keys.Key()
	if err != nil {
		return status.Error(codes.FailedPrecondition, err.Error())
	}
	raw, err := proto.Marshal(auth)
	if err != nil {
		return fmt.Errorf("encode registry credentials: %w", err)
	}
	sealed, err := key.Seal(registry.AuthSecretID(svc.GetId()), raw)
	if err != nil {
		return fmt.Errorf("seal registry credentials: %w", err)
	}
	svc.SealedRegistryAuth = sealed
	svc.RegistryAuthServer = auth.GetServer()
	return nil
}

// redacted is svc as the API shows it: never its sealed credentials.
func redacted(svc *pb.Service) *pb.Service {
	if svc == nil || len(svc.GetSealedRegistryAuth()) == 0 {
		return svc
	}
	out := proto.Clone(svc).(*pb.Service)
	out.SealedRegistryAuth = nil
	return out
}
