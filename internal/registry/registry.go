// Package registry is what Shoal knows of image registries: pinning an
// image's tag to the digest its registry holds (the managers do it at
// service create and update), reading a user's credentials from the Docker
// client config (`--with-registry-auth`), and naming those credentials on
// their way to the workers. The registry protocol, manifests and the
// Docker config format are go-containerregistry's; nothing here speaks
// them by hand.
package registry

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/remote/transport"
	pb "github.com/shoal-cluster/shoal/proto"
)

// authSecretPrefix starts the ID under which a service's registry
// credentials travel among the secret values a worker receives; secret
// IDs never contain ':'.
const authSecretPrefix = "registry-auth:"

// AuthSecretID names a service's registry credentials among the secret
// values the managers send a worker.
func AuthSecretID(serviceID string) string { return authSecretPrefix + serviceID }

// AuthSecretService returns the service whose credentials id names, if it
// names any.
func AuthSecretService(id string) (string, bool) {
	return strings.CutPrefix(id, authSecretPrefix)
}

// CertsDir is where, as for the Docker Engine, the CA of a registry at
// host:port is trusted: CertsDir/host:port/*.crt.
var CertsDir = "/etc/docker/certs.d"

// ResolveTimeout bounds one tag resolution.
const ResolveTimeout = 10 * time.Second

// HasDigest reports whether image names a digest ("name@sha256:…").
func HasDigest(image string) bool { return strings.Contains(image, "@") }

// StripDigest returns image without its digest ("name:tag@sha256:…" gives
// "name:tag").
func StripDigest(image string) string {
	before, _, _ := strings.Cut(image, "@")
	return before
}

// Digest returns image's digest, or "".
func Digest(image string) string {
	_, after, _ := strings.Cut(image, "@")
	return after
}

// Host returns the registry an image is pulled from ("127.0.0.1:5000",
// "index.docker.io" for a bare name), or "" when image is not a valid
// reference.
func Host(image string) string {
	ref, err := name.ParseReference(image)
	if err != nil {
		return ""
	}
	return ref.Context().RegistryStr()
}

// ErrNotFound means the registry answered, and has no such repository or
// tag: the image cannot be pulled.
var ErrNotFound = errors.New("not found in the registry")

// ErrInvalidReference means an image name is not one a registry could
// hold.
var ErrInvalidReference = errors.New("is not a valid image reference")

// ErrUnauthorized means the registry refused the credentials (or wants
// some).
var ErrUnauthorized = errors.New("the registry refused access")

// Resolve returns image pinned to the digest its registry has for its tag:
// "name:tag@sha256:…". An image that has a digest already is returned as
// is. Errors wrap ErrNotFound or ErrUnauthorized when the registry said so;
// anything else means it could not be asked (unreachable, TLS).
func Resolve(ctx context.Context, image string, auth *pb.RegistryAuth) (string, error) {
	if HasDigest(image) {
		return image, nil
	}
	ref, err := name.ParseReference(image)
	if err != nil {
		return "", fmt.Errorf("image %q %w: %v", image, ErrInvalidReference, err)
	}
	tag, ok := ref.(name.Tag)
	if !ok {
		return image, nil
	}
	ctx, cancel := context.WithTimeout(ctx, ResolveTimeout)
	defer cancel()
	opts := []remote.Option{remote.WithContext(ctx), remote.WithTransport(Transport(tag.RegistryStr()))}
	if a := Authenticator(auth); a != nil {
		opts = append(opts, remote.WithAuth(a))
	}
	desc, err := remote.Head(tag, opts...)
	if err != nil {
		// Some registries answer HEAD poorly (no body, so no reason):
		// a GET says why.
		got, gerr := remote.Get(tag, opts...)
		if gerr != nil {
			return "", explain(image, tag.RegistryStr(), gerr)
		}
		return pinned(image, got.Digest.String()), nil
	}
	return pinned(image, desc.Digest.String()), nil
}

// pinned appends the digest to image as typed, keeping the user's spelling
// of the name and an implied ":latest" implicit.
func pinned(image, digest string) string { return image + "@" + digest }

// explain wraps a registry error with ErrNotFound or ErrUnauthorized when
// the registry's answer says so, keeping its reason.
func explain(image, host string, err error) error {
	var terr *transport.Error
	if errors.As(err, &terr) {
		switch {
		case terr.StatusCode == http.StatusNotFound:
			return fmt.Errorf("image %s: %w (%s): %s", image, ErrNotFound, host, reason(terr))
		case terr.StatusCode == http.StatusUnauthorized || terr.StatusCode == http.StatusForbidden:
			return fmt.Errorf("image %s: %w (%s): %s", image, ErrUnauthorized, host, reason(terr))
		}
		return fmt.Errorf("image %s: registry %s answered %d: %s", image, host, terr.StatusCode, reason(terr))
	}
	return fmt.Errorf("image %s: registry %s cannot be reached: %w", image, host, err)
}

// reason is the registry's own words for an error.
func reason(e *transport.Error) string {
	var parts []string
	for _, d := range e.Errors {
		s := string(d.Code)
		if d.Message != "" {
			s += ": " + d.Message
		}
		parts = append(parts, s)
	}
	if len(parts) == 0 {
		return http.StatusText(e.StatusCode)
	}
	return strings.Join(parts, "; ")
}

// Authenticator turns stored credentials into go-containerregistry's form
// (nil for none: anonymous).
func Authenticator(a *pb.RegistryAuth) authn.Authenticator {
	if a == nil || (a.GetUsername() == "" && a.GetPassword() == "" && a.GetIdentityToken() == "" && a.GetRegistryToken() == "") {
		return nil
	}
	return authn.FromConfig(authn.AuthConfig{
		Username: a.GetUsername(), Password: a.GetPassword(),
		IdentityToken: a.GetIdentityToken(), RegistryToken: a.GetRegistryToken(),
	})
}

// Transport is an HTTP transport for a registry at host that trusts, as
// the Docker Engine does, the system's roots and the CAs in
// CertsDir/host/*.crt.
func Transport(host string) http.RoundTripper {
	t := http.DefaultTransport.(*http.Transport).Clone()
	t.DialContext = (&net.Dialer{Timeout: 5 * time.Second, KeepAlive: 30 * time.Second}).DialContext
	pool, err := x509.SystemCertPool()
	if err != nil || pool == nil {
		pool = x509.NewCertPool()
	}
	crts, _ := filepath.Glob(filepath.Join(CertsDir, host, "*.crt"))
	for _, f := range crts {
		if pem, err := os.ReadFile(f); err == nil {
			pool.AppendCertsFromPEM(pem)
		}
	}
	t.TLSClientConfig = &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12}
	return t
}

// CredentialsFor reads, from the Docker client config of the user running
// this process ($DOCKER_CONFIG or ~/.docker/config.json, credential
// helpers included), the credentials for image's registry. It fails, with
// what to do next, when there are none.
func CredentialsFor(image string) (*pb.RegistryAuth, error) {
	ref, err := name.ParseReference(image)
	if err != nil {
		return nil, fmt.Errorf("image %q is not a valid reference: %w", image, err)
	}
	reg := ref.Context().Registry
	a, err := authn.DefaultKeychain.Resolve(reg)
	if err != nil {
		return nil, fmt.Errorf("read the Docker client config: %w", err)
	}
	if a == authn.Anonymous {
		return nil, fmt.Errorf("no credentials for %s in the Docker client config; run `docker login %s` first", reg.RegistryStr(), reg.RegistryStr())
	}
	cfg, err := a.Authorization()
	if err != nil {
		return nil, fmt.Errorf("read the credentials for %s: %w", reg.RegistryStr(), err)
	}
	out := &pb.RegistryAuth{Server: reg.RegistryStr(), Username: cfg.Username, Password: cfg.Password,
		IdentityToken: cfg.IdentityToken, RegistryToken: cfg.RegistryToken}
	if cfg.Auth != "" && cfg.Username == "" {
		// The config's "auth" field is base64(user:password); ask the
		// library's own decoder through its JSON form.
		var ac authn.AuthConfig
		field, _ := json.Marshal(map[string]string{"auth": cfg.Auth})
		if err := json.Unmarshal(field, &ac); err == nil {
			out.Username, out.Password = ac.Username, ac.Password
		}
	}
	return out, nil
}
