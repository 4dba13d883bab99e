package controlapi

import (
	"context"
	"regexp"
	"sort"
	"strings"

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
	// maxSecretNameLen bounds a secret's name (it is also the default
	// file name a task sees).
	maxSecretNameLen = 64
	// DefaultSecretMode is the file mode a secret's file gets unless its
	// reference says otherwise.
	DefaultSecretMode = 0o400
)

// secretName is a secret's name: letters, digits, '-', '_' and '.',
// starting with a letter or digit (Docker's rule; it is a safe file name).
var secretName = regexp.MustCompile(`^[a-zA-Z0-9][a-zA-Z0-9_.-]*$`)

// secretTarget is the file name a task sees a secret under.
var secretTarget = regexp.MustCompile(`^[a-zA-Z0-9_.-]+$`)

// CreateSecret seals a secret's value and stores it. The value is never
// logged and never returned.
func (s *Server) CreateSecret(ctx context.Context, req *pb.CreateSecretRequest) (*pb.CreateSecretResponse, error) {
	spec := req.GetSpec()
	name := spec.GetAnnotations().GetName()
	if err := validateSecretName(name); err != nil {
		return nil, err
	}
	size := len(spec.GetData())
	switch {
	case size == 0:
		return nil, status.Errorf(codes.InvalidArgument, "secret %q is empty; give it a value (a file, or - for standard input)", name)
	case size > MaxSecretSize:
		s.log.Warn("secret refused: too large", "secret", name, "bytes", size, "limit", MaxSecretSize)
		return nil, status.Errorf(codes.InvalidArgument, "secret %q is %d bytes, more than the limit of %d bytes (500 KiB); store a smaller value (a key or a path, not a bundle)", name, size, MaxSecretSize)
	}
	for k := range spec.GetAnnotations().GetLabels() {
		if k == "" || strings.ContainsAny(k, " =\t\n") {
			return nil, status.Errorf(codes.InvalidArgument, "invalid label key %q: no spaces or '='", k)
		}
	}
	key, err := s.keys.Key()
	if err != nil {
		return nil, status.Error(codes.FailedPrecondition, err.Error())
	}
	var id string
	_, err = s.store.Update(ctx, func(tx *raftstore.Tx) error {
		if other := tx.Secrets().Find(raftstore.IndexName, name); len(other) > 0 {
			return status.Errorf(codes.AlreadyExists, "a secret named %q already exists (%s); secrets cannot change: create one under another name and move services to it with `shoal service update --secret-rm %s --secret-add NEW`", name, other[0].GetId(), name)
		}
		id = tx.NewID()
		sealed, err := key.Seal(id, spec.GetData())
		if err != nil {
			return err
		}
		return tx.Secrets().Create(&pb.Secret{
			Id:         id,
			Spec:       &pb.SecretSpec{Annotations: proto.Clone(spec.GetAnnotations()).(*pb.Annotations)},
			SealedData: sealed,
			Size:       uint64(size),
		})
	})
	if err != nil {
		return nil, err
	}
	var out *pb.Secret
	s.store.View(func(tx *raftstore.Tx) {
		// A retry of a create that already committed did not run the
		// function: find what it made by name.
		if found := tx.Secrets().Find(raftstore.IndexName, name); len(found) == 1 {
			out = found[0]
		}
	})
	if out == nil {
		return nil, status.Errorf(codes.NotFound, "secret %q was removed meanwhile", name)
	}
	s.log.Info("secret created", "secret", name, "id", out.GetId(), "bytes", out.GetSize())
	return &pb.CreateSecretResponse{Secret: withoutValue(out)}, nil
}

// GetSecret returns a secret's metadata and the services using it.
func (s *Server) GetSecret(ctx context.Context, req *pb.GetSecretRequest) (*pb.GetSecretResponse, error) {
	var (
		sec   *pb.Secret
		users []string
		err   error
	)
	verr := s.store.ViewConsistent(ctx, func(tx *raftstore.Tx) {
		if sec, err = resolveSecret(tx, req.GetRef()); err == nil {
			users = secretUsers(tx, sec.GetId())
		}
	})
	if verr != nil {
		return nil, verr
	}
	if err != nil {
		return nil, err
	}
	return &pb.GetSecretResponse{Secret: withoutValue(sec), Services: users}, nil
}

// ListSecrets returns every secret's metadata.
func (s *Server) ListSecrets(ctx context.Context, _ *pb.ListSecretsRequest) (*pb.ListSecretsResponse, error) {
	resp := &pb.ListSecretsResponse{}
	if err := s.store.ViewConsistent(ctx, func(tx *raftstore.Tx) {
		for _, sec := range tx.Secrets().List() {
			resp.Secrets = append(resp.Secrets, withoutValue(sec))
		}
	}); err != nil {
		return nil, err
	}
	sort.Slice(resp.Secrets, func(i, j int) bool {
		return resp.Secrets[i].GetSpec().GetAnnotations().GetName() < resp.Secrets[j].GetSpec().GetAnnotations().GetName()
	})
	return resp, nil
}

// RemoveSecret deletes a secret no service or running task uses.
func (s *Server) RemoveSecret(ctx context.Context, req *pb.RemoveSecretRequest) (*pb.RemoveSecretResponse, error) {
	var name, id string
	_, err := s.store.Update(ctx, func(tx *raftstore.Tx) error {
		sec, err := resolveSecret(tx, req.GetRef())
		if err != nil {
			return err
		}
		name, id = sec.GetSpec().GetAnnotations().GetName(), sec.GetId()
		if users := secretUsers(tx, sec.GetId()); len(users) > 0 {
			return status.Errorf(codes.FailedPrecondition, "secret %q is in use by %s %s; remove it from them first (`shoal service update --secret-rm %s SERVICE`)",
				name, plural(len(users), "service", "services"), strings.Join(users, ", "), name)
		}
		if n := liveTasksUsing(tx, sec.GetId()); n > 0 {
			return status.Errorf(codes.FailedPrecondition, "secret %q is still used by %d running %s; retry once they have stopped", name, n, plural(n, "task", "tasks"))
		}
		return tx.Secrets().Delete(sec.GetId())
	})
	if err != nil {
		return nil, err
	}
	if id != "" {
		s.log.Info("secret removed", "secret", name, "id", id)
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

// secretUsers lists, sorted, the names of the services whose spec uses a
// secret.
func secretUsers(tx *raftstore.Tx, secretID string) []string {
	var out []string
	for _, svc := range tx.Services().List() {
		for _, ref := range svc.GetSpec().GetTask().GetContainer().GetSecrets() {
			if ref.GetSecretId() == secretID {
				out = append(out, svc.GetSpec().GetAnnotations().GetName())
				break
			}
		}
	}
	sort.Strings(out)
	return out
}

// liveTasksUsing counts tasks that should run and use a secret.
func liveTasksUsing(tx *raftstore.Tx, secretID string) int {
	n := 0
	for _, t := range tx.Tasks().List() {
		if t.GetDesiredState() > pb.TaskState_TASK_STATE_RUNNING || t.GetStatus().GetState() >= pb.TaskState_TASK_STATE_COMPLETE {
			continue
		}
		for _, ref := range t.GetSpec().GetContainer().GetSecrets() {
			if ref.GetSecretId() == secretID {
				n++
				break
			}
		}
	}
	return n
}

func plural(n int, one, many string) string {
	if n == 1 {
		return one
	}
	return many
}

// validateSecretName checks a secret's name.
func validateSecretName(name string) error {
	if name == "" {
		return status.Error(codes.InvalidArgument, "a secret needs a name")
	}
	if len(name) > maxSecretNameLen || !secretName.MatchString(name) {
		return status.Errorf(codes.InvalidArgument, "invalid secret name %q: use 1-%d letters, digits, '-', '_' and '.', starting with a letter or digit", name, maxSecretNameLen)
	}
	return nil
}

// resolveSecretRefs checks a service's secret references and fills in
// each one's secret ID (by name; by ID when no name is given), its target
// (default: the secret's name) and mode (default 0400).
func resolveSecretRefs(tx *raftstore.Tx, c *pb.ContainerSpec) error {
	targets := map[string]string{}
	for _, ref := range c.GetSecrets() {
		var sec *pb.Secret
		switch {
		case ref.GetSecretName() != "":
			found := tx.Secrets().Find(raftstore.IndexName, ref.GetSecretName())
			if len(found) == 0 {
				return status.Errorf(codes.NotFound, "no secret %q; create it first with `shoal secret create %s FILE` (list them with `shoal secret ls`)", ref.GetSecretName(), ref.GetSecretName())
			}
			sec = found[0]
		case ref.GetSecretId() != "":
			var ok bool
			if sec, ok = tx.Secrets().Get(ref.GetSecretId()); !ok {
				return status.Errorf(codes.NotFound, "secret %s no longer exists; create it again and update the service", ref.GetSecretId())
			}
		default:
			return status.Error(codes.InvalidArgument, "a secret reference needs the secret's name")
		}
		ref.SecretId = sec.GetId()
		ref.SecretName = sec.GetSpec().GetAnnotations().GetName()
		if ref.Target == "" {
			ref.Target = ref.SecretName
		}
		if err := validateSecretTarget(ref.GetTarget()); err != nil {
			return err
		}
		if other, dup := targets[ref.GetTarget()]; dup {
			return status.Errorf(codes.InvalidArgument, "secrets %q and %q both use the target %q; give one another target (--secret %s,target=OTHER)", other, ref.GetSecretName(), ref.GetTarget(), ref.GetSecretName())
		}
		targets[ref.GetTarget()] = ref.GetSecretName()
		if ref.Mode == 0 {
			ref.Mode = DefaultSecretMode
		}
		if ref.GetMode() > 0o777 {
			return status.Errorf(codes.InvalidArgument, "secret %q: file mode %#o is not a permission mode (0000-0777)", ref.GetSecretName(), ref.GetMode())
		}
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

// resolveSecret finds a secret by ID, name or unique ID prefix.
func resolveSecret(tx *raftstore.Tx, ref string) (*pb.Secret, error) {
	return resolveRef(tx.Secrets(), "secret", ref)
}
