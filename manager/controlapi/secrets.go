package controlapi

import (
	"context"
	"crypto/subtle"
	"regexp"
	"slices"

	pb "github.com/shoal-cluster/shoal/proto"
	"github.com/shoal-cluster/shoal/raftstore"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
)

// Limits on secrets.
const (
	// MaxSecretSize is the largest secret value: 500 KiB, as Docker's.
	MaxSecretSize = 500 * 1024
	// DefaultSecretMode is the file mode a secret's file gets unless its
	// reference says otherwise.
	DefaultSecretMode = 0o400
	// containerSecretsDir is where the docker runtime mounts secret files
	// (Docker's convention): a config may not take a path there.
	containerSecretsDir = "/run/secrets"
)

// secretTarget is the file name a task sees a secret under.
var secretTarget = regexp.MustCompile(`^[a-zA-Z0-9_.-]+$`)

// secrets is the secret kind for the helpers secrets and configs share.
var secrets = blobKind[*pb.Secret]{
	noun:   "secret",
	table:  (*raftstore.Tx).Secrets,
	rmFlag: "--secret-rm",
	nameOf: secretName,
	listed: withoutValue,
	uses: func(c *pb.ContainerSpec, id string) bool {
		return slices.ContainsFunc(c.GetSecrets(), func(r *pb.SecretReference) bool { return r.GetSecretId() == id })
	},
}

func secretName(s *pb.Secret) string { return s.GetSpec().GetAnnotations().GetName() }

// CreateSecret seals a secret's value and stores it. The value is never
// logged and never returned.
func (s *Server) CreateSecret(ctx context.Context, req *pb.CreateSecretRequest) (*pb.CreateSecretResponse, error) {
	spec := req.GetSpec()
	name, size := spec.GetAnnotations().GetName(), len(spec.GetData())
	if err := validateBlob("secret", spec.GetAnnotations(), size, MaxSecretSize, "500 KiB", "store a smaller value (a key or a path, not a bundle)"); err != nil {
		if size > MaxSecretSize {
			s.log.Warn("secret refused: too large", "secret", name, "bytes", size, "limit", MaxSecretSize)
		}
		return nil, err
	}
	key, err := s.keys.Key()
	if err != nil {
		return nil, status.Error(codes.FailedPrecondition, err.Error())
	}
	out, err := createBlob(ctx, s.store, secrets, name, func(id string) (*pb.Secret, error) {
		sealed, err := key.Seal(id, spec.GetData())
		if err != nil {
			return nil, err
		}
		return &pb.Secret{
			Id:         id,
			Spec:       &pb.SecretSpec{Annotations: proto.Clone(spec.GetAnnotations()).(*pb.Annotations)},
			SealedData: sealed,
			Size:       uint64(size),
		}, nil
	})
	if err != nil {
		return nil, err
	}
	s.log.Info("secret created", "secret", name, "id", out.GetId(), "bytes", out.GetSize())
	return &pb.CreateSecretResponse{Secret: withoutValue(out)}, nil
}

// GetSecret returns a secret's metadata and the services using it.
func (s *Server) GetSecret(ctx context.Context, req *pb.GetSecretRequest) (*pb.GetSecretResponse, error) {
	sec, users, err := getBlob(ctx, s.store, secrets, req.GetRef())
	if err != nil {
		return nil, err
	}
	return &pb.GetSecretResponse{Secret: withoutValue(sec), Services: users}, nil
}

// ListSecrets returns every secret's metadata.
func (s *Server) ListSecrets(ctx context.Context, _ *pb.ListSecretsRequest) (*pb.ListSecretsResponse, error) {
	all, err := listBlobs(ctx, s.store, secrets)
	if err != nil {
		return nil, err
	}
	return &pb.ListSecretsResponse{Secrets: all}, nil
}

// RemoveSecret deletes a secret no service or running task uses.
func (s *Server) RemoveSecret(ctx context.Context, req *pb.RemoveSecretRequest) (*pb.RemoveSecretResponse, error) {
	if err := removeBlob(ctx, s.store, s.log, secrets, req.GetRef()); err != nil {
		return nil, err
	}
	return &pb.RemoveSecretResponse{}, nil
}

// withoutValue is a copy of a stored secret fit for the control API: no
// value, sealed or not.
func withoutValue(s *pb.Secret) *pb.Secret {
	out := proto.Clone(s).(*pb.Secret)
	out.SealedData = nil
	if out.Spec != nil {
		out.Spec.Data = nil
	}
	return out
}

// resolveSecretRefs checks a service's secret references and fills in
// each one's secret ID (by name; by ID when no name is given), its target
// (default: the secret's name) and mode (default 0400). It returns the
// paths the secrets take in a container, for the configs' check.
func resolveSecretRefs(tx *raftstore.Tx, c *pb.ContainerSpec) (map[string]string, error) {
	targets := map[string]string{}
	for _, ref := range c.GetSecrets() {
		sec, err := resolveBlobRef(tx, secrets, ref.GetSecretName(), ref.GetSecretId())
		if err != nil {
			return nil, err
		}
		ref.SecretId = sec.GetId()
		ref.SecretName = secretName(sec)
		if ref.Target == "" {
			ref.Target = ref.SecretName
		}
		if err := validateSecretTarget(ref.GetTarget()); err != nil {
			return nil, err
		}
		if other, dup := targets[ref.GetTarget()]; dup {
			return nil, status.Errorf(codes.InvalidArgument, "secrets %q and %q both use the target %q; give one another target (--secret %s,target=OTHER)", other, ref.GetSecretName(), ref.GetTarget(), ref.GetSecretName())
		}
		targets[ref.GetTarget()] = ref.GetSecretName()
		if ref.Mode == 0 {
			ref.Mode = DefaultSecretMode
		}
		if err := validateMode("secret", ref.GetSecretName(), ref.GetMode()); err != nil {
			return nil, err
		}
	}
	paths := make(map[string]string, len(targets))
	for target, name := range targets {
		paths[containerSecretsDir+"/"+target] = name
	}
	return paths, nil
}

// validateMode checks a reference's file mode.
func validateMode(noun, name string, mode uint32) error {
	if mode > 0o777 {
		return status.Errorf(codes.InvalidArgument, "%s %q: file mode %#o is not a permission mode (0000-0777)", noun, name, mode)
	}
	return nil
}

// validateSecretTarget checks the file name a task sees a secret under.
func validateSecretTarget(target string) error {
	if len(target) > 255 || !secretTarget.MatchString(target) || target == "." || target == ".." {
		return status.Errorf(codes.InvalidArgument, "invalid secret target %q: a file name of letters, digits, '-', '_' and '.' (no '/'); the task finds it in $SHOAL_SECRETS_DIR (process) or /run/secrets (docker)", target)
	}
	return nil
}

// UpdateSecret changes a secret's labels. The name and the value cannot
// change: a spec that repeats them (docker stack deploy sends the whole
// spec again) or leaves the value out is accepted.
func (s *Server) UpdateSecret(ctx context.Context, req *pb.UpdateSecretRequest) (*pb.UpdateSecretResponse, error) {
	data := req.GetSpec().GetData()
	var key interface {
		Open(id string, sealed []byte) ([]byte, error)
	}
	if len(data) > 0 {
		k, err := s.keys.Key()
		if err != nil {
			return nil, status.Error(codes.FailedPrecondition, err.Error())
		}
		key = k
	}
	out, err := updateBlob(ctx, s.store, secrets, req.GetRef(), req.GetVersion(), req.GetSpec().GetAnnotations(),
		func(sec *pb.Secret) (bool, error) {
			if len(data) == 0 {
				return true, nil
			}
			plain, err := key.Open(sec.GetId(), sec.GetSealedData())
			if err != nil {
				return false, status.Errorf(codes.Internal, "open secret %s: %v", secretName(sec), err)
			}
			return subtle.ConstantTimeCompare(plain, data) == 1, nil
		},
		func(sec *pb.Secret, labels map[string]string) *pb.Secret {
			next := proto.Clone(sec).(*pb.Secret)
			next.Spec.Annotations.Labels = labels
			return next
		})
	if err != nil {
		return nil, err
	}
	return &pb.UpdateSecretResponse{Secret: withoutValue(out)}, nil
}
