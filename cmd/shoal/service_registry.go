package main

import (
	"fmt"
	"os"

	"github.com/shoal-cluster/shoal/internal/registry"
	pb "github.com/shoal-cluster/shoal/proto"
	"github.com/spf13/pflag"
)

// registryOptions are the flags of `service create` and `update` about the
// image's registry. They shape the request, not the spec.
type registryOptions struct {
	resolveImage     string
	withRegistryAuth bool
}

func (o *registryOptions) register(fs *pflag.FlagSet) {
	inFlagGroup(fs, "Task", false, func(fs *pflag.FlagSet) {
		fs.StringVar(&o.resolveImage, "resolve-image", "always",
			"pin the image's tag to the digest its registry holds, so every node runs the same image: always, changed (only when the image changes) or never")
		fs.BoolVar(&o.withRegistryAuth, "with-registry-auth", false,
			"send your credentials for the image's registry (from your Docker client config, as `docker login` stored them); the managers keep them sealed and hand them only to nodes running the service's tasks")
	})
}

// mode is --resolve-image as the API takes it.
func (o *registryOptions) mode() (pb.ResolveImage, error) {
	switch o.resolveImage {
	case "", "always":
		return pb.ResolveImage_RESOLVE_IMAGE_ALWAYS, nil
	case "changed":
		return pb.ResolveImage_RESOLVE_IMAGE_CHANGED, nil
	case "never":
		return pb.ResolveImage_RESOLVE_IMAGE_NEVER, nil
	}
	return 0, usagef("--resolve-image %q: use always, changed or never", o.resolveImage)
}

// auth reads, with --with-registry-auth, the caller's credentials for the
// registry of spec's image.
func (o *registryOptions) auth(spec *pb.ServiceSpec) (*pb.RegistryAuth, error) {
	if !o.withRegistryAuth {
		return nil, nil
	}
	if rt := spec.GetTask().GetRuntime(); rt != "" && rt != runtimeDocker && rt != runtimeContainer {
		return nil, usagef("--with-registry-auth is for container images (the docker and container runtimes); this service runs on the %s runtime", rt)
	}
	image := registry.StripDigest(spec.GetTask().GetContainer().GetImage())
	auth, err := registry.CredentialsFor(image)
	if err != nil {
		return nil, fmt.Errorf("--with-registry-auth: %w", err)
	}
	return auth, nil
}

// printWarnings shows what the managers warned about, on stderr.
func printWarnings(warnings []string) {
	for _, w := range warnings {
		fmt.Fprintln(os.Stderr, "warning:", w)
	}
}
