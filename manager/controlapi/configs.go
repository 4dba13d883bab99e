package controlapi

import (
	"bytes"
	"context"
	"path"
	"slices"
	"strconv"
	"strings"

	pb "github.com/shoal-cluster/shoal/proto"
	"github.com/shoal-cluster/shoal/raftstore"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
)

// Limits on configs.
const (
	// MaxConfigSize is the largest config: 1000 KiB, as Docker's.
	MaxConfigSize = 1000 * 1024
	// DefaultConfigMode is the file mode a config's file gets unless its
	// reference says otherwise (Docker's).
	DefaultConfigMode = 0o444
	// maxConfigTargetLen bounds a config's target path.
	maxConfigTargetLen = 1024
)

// configs is the config kind for the helpers secrets and configs share.
var configs = blobKind[*pb.Config]{
	noun:   "config",
	table:  (*raftstore.Tx).Configs,
	rmFlag: "--config-rm",
	nameOf: configName,
	listed: withoutData,
	uses: func(c *pb.ContainerSpec, id string) bool {
		return slices.ContainsFunc(c.GetConfigs(), func(r *pb.ConfigReference) bool { return r.GetConfigId() == id })
	},
}

func configName(c *pb.Config) string { return c.GetSpec().GetAnnotations().GetName() }

// CreateConfig stores a config. Configs are not sensitive: the data goes
// through Raft as it is, unsealed (Docker keeps them unencrypted too).
func (s *Server) CreateConfig(ctx context.Context, req *pb.CreateConfigRequest) (*pb.CreateConfigResponse, error) {
	spec := req.GetSpec()
	name, size := spec.GetAnnotations().GetName(), len(spec.GetData())
	if err := validateBlob("config", spec.GetAnnotations(), size, MaxConfigSize, "1000 KiB", "split it into several configs or ship it in the image"); err != nil {
		return nil, err
	}
	out, err := createBlob(ctx, s.store, configs, name, func(id string) (*pb.Config, error) {
		return &pb.Config{Id: id, Spec: proto.Clone(spec).(*pb.ConfigSpec), Size: uint64(size)}, nil
	})
	if err != nil {
		return nil, err
	}
	s.log.Info("config created", "config", name, "id", out.GetId(), "bytes", out.GetSize())
	return &pb.CreateConfigResponse{Config: withoutData(out)}, nil
}

// GetConfig returns a config, with its data, and the services using it.
func (s *Server) GetConfig(ctx context.Context, req *pb.GetConfigRequest) (*pb.GetConfigResponse, error) {
	cfg, users, err := getBlob(ctx, s.store, configs, req.GetRef())
	if err != nil {
		return nil, err
	}
	return &pb.GetConfigResponse{Config: cfg, Services: users}, nil
}

// ListConfigs returns every config without its data.
func (s *Server) ListConfigs(ctx context.Context, _ *pb.ListConfigsRequest) (*pb.ListConfigsResponse, error) {
	all, err := listBlobs(ctx, s.store, configs)
	if err != nil {
		return nil, err
	}
	return &pb.ListConfigsResponse{Configs: all}, nil
}

// RemoveConfig deletes a config no service or running task uses.
func (s *Server) RemoveConfig(ctx context.Context, req *pb.RemoveConfigRequest) (*pb.RemoveConfigResponse, error) {
	if err := removeBlob(ctx, s.store, s.log, configs, req.GetRef()); err != nil {
		return nil, err
	}
	return &pb.RemoveConfigResponse{}, nil
}

// withoutData is a copy of a stored config without its data (listings and
// create's answer; size still says how large it is).
func withoutData(c *pb.Config) *pb.Config {
	out := proto.Clone(c).(*pb.Config)
	if out.Spec != nil {
		out.Spec.Data = nil
	}
	return out
}

// resolveConfigRefs checks a service's config references and fills in
// each one's config ID (by name; by ID when no name is given), its target
// (default "/<name>") and mode (default 0444). taken holds the container
// paths the secrets use (path -> secret name): a config may not take one,
// nor a directory above one, nor another config's.
func resolveConfigRefs(tx *raftstore.Tx, c *pb.ContainerSpec, taken map[string]string) error {
	targets := map[string]string{} // target -> what uses it, as messages say it
	for p, name := range taken {
		targets[p] = "secret " + strconv.Quote(name)
	}
	for _, ref := range c.GetConfigs() {
		cfg, err := resolveBlobRef(tx, configs, ref.GetConfigName(), ref.GetConfigId())
		if err != nil {
			return err
		}
		ref.ConfigId = cfg.GetId()
		ref.ConfigName = configName(cfg)
		if ref.Target == "" {
			ref.Target = "/" + ref.ConfigName
		}
		if err := validateConfigTarget(ref.GetConfigName(), ref.GetTarget()); err != nil {
			return err
		}
		for other, what := range targets {
			if clash(ref.GetTarget(), other) {
				return status.Errorf(codes.InvalidArgument, "config %q and %s both use the path %s; give the config another target (--config source=%s,target=/OTHER/PATH)",
					ref.GetConfigName(), what, shorter(ref.GetTarget(), other), ref.GetConfigName())
			}
		}
		targets[ref.GetTarget()] = "config " + strconv.Quote(ref.GetConfigName())
		if ref.Mode == 0 {
			ref.Mode = DefaultConfigMode
		}
		if err := validateMode("config", ref.GetConfigName(), ref.GetMode()); err != nil {
			return err
		}
		for what, id := range map[string]string{"uid": ref.GetUid(), "gid": ref.GetGid()} {
			if _, err := strconv.ParseUint(id, 10, 32); id != "" && err != nil {
				return status.Errorf(codes.InvalidArgument, "config %q: %s %q is not a numeric ID", ref.GetConfigName(), what, id)
			}
		}
	}
	return nil
}

// clash reports whether two file paths cannot both be files: the same
// path, or one a directory above the other.
func clash(a, b string) bool {
	return a == b || strings.HasPrefix(a, b+"/") || strings.HasPrefix(b, a+"/")
}

func shorter(a, b string) string {
	if len(a) < len(b) {
		return a
	}
	return b
}

// validateConfigTarget checks a config's target: an absolute, clean path
// that is not the root.
func validateConfigTarget(name, target string) error {
	if len(target) > maxConfigTargetLen || !path.IsAbs(target) || path.Clean(target) != target || target == "/" || strings.ContainsAny(target, "\x00\\") {
		return status.Errorf(codes.InvalidArgument, "config %q: invalid target %q: use an absolute file path such as /etc/app.conf (no '..', no trailing '/'); a process task finds it under $SHOAL_CONFIGS_DIR", name, target)
	}
	return nil
}

// UpdateConfig changes a config's labels. The name and the data cannot
// change: a spec that repeats them (docker stack deploy sends the whole
// spec again) or leaves the data out is accepted.
func (s *Server) UpdateConfig(ctx context.Context, req *pb.UpdateConfigRequest) (*pb.UpdateConfigResponse, error) {
	data := req.GetSpec().GetData()
	out, err := updateBlob(ctx, s.store, configs, req.GetRef(), req.GetVersion(), req.GetSpec().GetAnnotations(),
		func(c *pb.Config) (bool, error) {
			return len(data) == 0 || bytes.Equal(c.GetSpec().GetData(), data), nil
		},
		func(c *pb.Config, labels map[string]string) *pb.Config {
			next := proto.Clone(c).(*pb.Config)
			next.Spec.Annotations.Labels = labels
			return next
		})
	if err != nil {
		return nil, err
	}
	return &pb.UpdateConfigResponse{Config: withoutData(out)}, nil
}
