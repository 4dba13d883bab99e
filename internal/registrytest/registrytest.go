// Package registrytest runs real image registries for tests and
// benchmarks: Debian's docker-registry (the distribution registry) on
// loopback, in plain HTTP or behind TLS with htpasswd users, each with its
// own config and storage in a directory of the caller's. It also pushes
// images from the local Docker Engine to them (through
// go-containerregistry) and makes the Engine trust a TLS registry's CA the
// way Docker documents (/etc/docker/certs.d/HOST:PORT/ca.crt).
package registrytest

import (
	"archive/tar"
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/base64"
	"encoding/hex"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"math/big"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
	"github.com/moby/moby/client"
	"golang.org/x/crypto/bcrypt"
)

// BinaryName is the registry's executable, from Debian's docker-registry
// package.
const BinaryName = "docker-registry"

// Binary returns the registry's executable, or an error that says how to
// install it.
func Binary() (string, error) {
	path, err := exec.LookPath(BinaryName)
	if err != nil {
		return "", fmt.Errorf("%s is not installed: run scripts/test-deps.sh as root (apt-get install docker-registry)", BinaryName)
	}
	return path, nil
}

// Options configure a registry.
type Options struct {
	// TLS serves HTTPS with a certificate for 127.0.0.1 from a CA made
	// for this registry (Registry.CA).
	TLS bool
	// Users, when set, require HTTP basic auth (htpasswd, bcrypt).
	Users map[string]string
	// Log receives the registry's output (default: discarded).
	Log io.Writer
}

// Registry is a running registry.
type Registry struct {
	// Host is where it listens: "127.0.0.1:PORT", as images name it.
	Host string
	// CA is the PEM certificate of its CA (TLS only).
	CA []byte

	dir     string
	cmd     *exec.Cmd
	exited  chan struct{}
	trusted string // the certs.d directory Trust made
}

// Start runs a registry whose config, storage and certificates live in
// dir, on a free port of 127.0.0.1, and returns once it answers.
func Start(ctx context.Context, dir string, opts Options) (*Registry, error) {
	bin, err := Binary()
	if err != nil {
		return nil, err
	}
	port, err := freePort()
	if err != nil {
		return nil, err
	}
	r := &Registry{Host: "127.0.0.1:" + strconv.Itoa(port), dir: dir, exited: make(chan struct{})}
	if err := os.MkdirAll(filepath.Join(dir, "data"), 0o700); err != nil {
		return nil, fmt.Errorf("registry dir: %w", err)
	}
	var cfg strings.Builder
	fmt.Fprintf(&cfg, "version: 0.1\nlog:\n  level: warn\n  accesslog:\n    disabled: true\n")
	fmt.Fprintf(&cfg, "storage:\n  filesystem:\n    rootdirectory: %s\n  delete:\n    enabled: true\n", filepath.Join(dir, "data"))
	fmt.Fprintf(&cfg, "http:\n  addr: %s\n  secret: %s\n", r.Host, randomHex(16))
	if opts.TLS {
		crt, key, err := r.makeCerts()
		if err != nil {
			return nil, err
		}
		fmt.Fprintf(&cfg, "  tls:\n    certificate: %s\n    key: %s\n", crt, key)
	}
	if len(opts.Users) > 0 {
		path, err := writeHtpasswd(dir, opts.Users)
		if err != nil {
			return nil, err
		}
		fmt.Fprintf(&cfg, "auth:\n  htpasswd:\n    realm: shoal-test\n    path: %s\n", path)
	}
	cfgPath := filepath.Join(dir, "config.yml")
	if err := os.WriteFile(cfgPath, []byte(cfg.String()), 0o600); err != nil {
		return nil, fmt.Errorf("registry config: %w", err)
	}
	r.cmd = exec.Command(bin, "serve", cfgPath)
	out := opts.Log
	if out == nil {
		out = io.Discard
	}
	r.cmd.Stdout, r.cmd.Stderr = out, out
	if err := r.cmd.Start(); err != nil {
		return nil, fmt.Errorf("start %s: %w", bin, err)
	}
	go func() { _ = r.cmd.Wait(); close(r.exited) }()
	if err := r.waitReady(ctx); err != nil {
		r.Stop()
		return nil, err
	}
	return r, nil
}

// waitReady polls /v2/ until the registry answers (200, or 401 with auth).
func (r *Registry) waitReady(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(ctx, 20*time.Second)
	defer cancel()
	hc := &http.Client{Transport: r.Transport(), Timeout: time.Second}
	tick := time.NewTicker(50 * time.Millisecond)
	defer tick.Stop()
	var last error
	for {
		resp, err := hc.Get(r.URL() + "/v2/")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK || resp.StatusCode == http.StatusUnauthorized {
				return nil
			}
			err = fmt.Errorf("GET /v2/: %s", resp.Status)
		}
		last = err
		select {
		case <-r.exited:
			return fmt.Errorf("the registry exited at start (%v); see its log", r.cmd.ProcessState)
		case <-ctx.Done():
			return fmt.Errorf("the registry on %s did not answer within 20s: %v", r.Host, last)
		case <-tick.C:
		}
	}
}

// URL is the registry's base URL.
func (r *Registry) URL() string {
	if r.CA != nil {
		return "https://" + r.Host
	}
	return "http://" + r.Host
}

// Transport is an HTTP transport that trusts the registry's CA.
func (r *Registry) Transport() *http.Transport {
	t := http.DefaultTransport.(*http.Transport).Clone()
	if r.CA != nil {
		pool := x509.NewCertPool()
		pool.AppendCertsFromPEM(r.CA)
		t.TLSClientConfig = &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12}
	}
	return t
}

// Stop stops the registry (its storage stays in its directory) and
// removes the trust Trust placed.
func (r *Registry) Stop() {
	if r.cmd != nil && r.cmd.Process != nil {
		_ = r.cmd.Process.Kill()
		<-r.exited
	}
	r.Untrust()
}

// Trust makes the Docker Engine of this machine trust the registry's CA,
// as Docker documents: certsDir/HOST:PORT/ca.crt (certsDir is normally
// /etc/docker/certs.d). Untrust (or Stop) removes it.
func (r *Registry) Trust(certsDir string) error {
	if r.CA == nil {
		return errors.New("the registry has no TLS: nothing to trust")
	}
	dir := filepath.Join(certsDir, r.Host)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return fmt.Errorf("trust the registry's CA: %w", err)
	}
	r.trusted = dir
	if err := os.WriteFile(filepath.Join(dir, "ca.crt"), r.CA, 0o644); err != nil {
		return fmt.Errorf("trust the registry's CA: %w", err)
	}
	return nil
}

// Untrust removes what Trust placed.
func (r *Registry) Untrust() {
	if r.trusted != "" {
		os.RemoveAll(r.trusted)
		r.trusted = ""
	}
}

// Push copies localImage from the Docker Engine behind cli to the registry
// as repoTag ("shoal/hello:v1"), adding a layer with a file unique to this
// push (so the image is one no node has yet), with basic auth when user is
// set. It returns the full reference and the manifest's digest.
func (r *Registry) Push(ctx context.Context, cli *client.Client, localImage, repoTag, user, password string) (ref, digest string, err error) {
	tarPath := filepath.Join(r.dir, "push-"+randomHex(6)+".tar")
	defer os.Remove(tarPath)
	if err := saveImage(ctx, cli, localImage, tarPath); err != nil {
		return "", "", err
	}
	tag, err := name.NewTag(localImage)
	if err != nil {
		return "", "", err
	}
	img, err := tarball.ImageFromPath(tarPath, &tag)
	if err != nil {
		return "", "", fmt.Errorf("read %s as saved: %w", localImage, err)
	}
	layer, err := uniqueLayer()
	if err != nil {
		return "", "", err
	}
	if img, err = mutate.AppendLayers(img, layer); err != nil {
		return "", "", fmt.Errorf("add a layer: %w", err)
	}
	return r.PushImage(ctx, img, repoTag, user, password)
}

// PushImage pushes img to the registry as repoTag, with basic auth when
// user is set, and returns the full reference and the manifest's digest.
func (r *Registry) PushImage(ctx context.Context, img v1.Image, repoTag, user, password string) (ref, digest string, err error) {
	ref = r.Host + "/" + repoTag
	dst, err := name.NewTag(ref)
	if err != nil {
		return "", "", err
	}
	opts := []remote.Option{remote.WithContext(ctx), remote.WithTransport(r.Transport())}
	if user != "" {
		opts = append(opts, remote.WithAuth(&authn.Basic{Username: user, Password: password}))
	}
	if err := remote.Write(dst, img, opts...); err != nil {
		return "", "", fmt.Errorf("push %s: %w", ref, err)
	}
	d, err := img.Digest()
	if err != nil {
		return "", "", err
	}
	return ref, d.String(), nil
}

// saveImage writes `docker save IMAGE` to path.
func saveImage(ctx context.Context, cli *client.Client, image, path string) error {
	res, err := cli.ImageSave(ctx, []string{image})
	if err != nil {
		return fmt.Errorf("save %s from the Engine: %w", image, err)
	}
	defer res.Close()
	f, err := os.Create(path)
	if err != nil {
		return err
	}
	if _, err := io.Copy(f, res); err != nil {
		f.Close()
		return fmt.Errorf("save %s from the Engine: %w", image, err)
	}
	return f.Close()
}

// uniqueLayer is a layer holding one file with random content.
func uniqueLayer() (v1.Layer, error) {
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	body := []byte(randomHex(16) + "\n")
	if err := tw.WriteHeader(&tar.Header{Name: "shoal-push-id", Mode: 0o644, Size: int64(len(body)), ModTime: time.Unix(0, 0)}); err != nil {
		return nil, err
	}
	if _, err := tw.Write(body); err != nil {
		return nil, err
	}
	if err := tw.Close(); err != nil {
		return nil, err
	}
	data := buf.Bytes()
	return tarball.LayerFromOpener(func() (io.ReadCloser, error) { return io.NopCloser(bytes.NewReader(data)), nil })
}

// RemoveFromEngine removes images pulled from the registry from the
// Engine (by reference; the images they name go when nothing else names
// them).
func (r *Registry) RemoveFromEngine(ctx context.Context, cli *client.Client) error {
	res, err := cli.ImageList(ctx, client.ImageListOptions{All: true})
	if err != nil {
		return fmt.Errorf("list images: %w", err)
	}
	var ids []string
	for _, img := range res.Items {
		for _, ref := range append(append([]string(nil), img.RepoTags...), img.RepoDigests...) {
			if strings.HasPrefix(ref, r.Host+"/") {
				ids = append(ids, img.ID)
				break
			}
		}
	}
	sort.Strings(ids)
	var errs []error
	for _, id := range ids {
		if _, err := cli.ImageRemove(ctx, id, client.ImageRemoveOptions{Force: true, PruneChildren: true}); err != nil {
			errs = append(errs, fmt.Errorf("remove image %s: %w", id, err))
		}
	}
	return errors.Join(errs...)
}

// makeCerts makes a CA and a server certificate for 127.0.0.1 in r.dir.
func (r *Registry) makeCerts() (crtPath, keyPath string, err error) {
	caKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return "", "", err
	}
	now := time.Now()
	caTmpl := &x509.Certificate{
		SerialNumber: serial(), Subject: pkix.Name{CommonName: "shoal test registry CA"},
		NotBefore: now.Add(-time.Hour), NotAfter: now.Add(24 * time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign | x509.KeyUsageDigitalSignature,
	}
	caDER, err := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, &caKey.PublicKey, caKey)
	if err != nil {
		return "", "", err
	}
	caCert, err := x509.ParseCertificate(caDER)
	if err != nil {
		return "", "", err
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return "", "", err
	}
	tmpl := &x509.Certificate{
		SerialNumber: serial(), Subject: pkix.Name{CommonName: "127.0.0.1"},
		NotBefore: now.Add(-time.Hour), NotAfter: now.Add(24 * time.Hour),
		IPAddresses: []net.IP{net.IPv4(127, 0, 0, 1)}, DNSNames: []string{"localhost"},
		KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, caCert, &key.PublicKey, caKey)
	if err != nil {
		return "", "", err
	}
	keyDER, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		return "", "", err
	}
	r.CA = pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: caDER})
	crtPath, keyPath = filepath.Join(r.dir, "server.crt"), filepath.Join(r.dir, "server.key")
	if err := os.WriteFile(crtPath, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o644); err != nil {
		return "", "", err
	}
	if err := os.WriteFile(keyPath, pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: keyDER}), 0o600); err != nil {
		return "", "", err
	}
	return crtPath, keyPath, nil
}

// writeHtpasswd writes users as an htpasswd file (bcrypt, the cheapest
// cost: the registry checks it on every request).
func writeHtpasswd(dir string, users map[string]string) (string, error) {
	var b strings.Builder
	names := make([]string, 0, len(users))
	for u := range users {
		names = append(names, u)
	}
	sort.Strings(names)
	for _, u := range names {
		h, err := bcrypt.GenerateFromPassword([]byte(users[u]), bcrypt.MinCost)
		if err != nil {
			return "", err
		}
		fmt.Fprintf(&b, "%s:%s\n", u, h)
	}
	path := filepath.Join(dir, "htpasswd")
	return path, os.WriteFile(path, []byte(b.String()), 0o600)
}

// DockerConfig writes a Docker client config (config.json) in dir holding
// user's credentials for the registry, as `docker login` would, and
// returns dir (for DOCKER_CONFIG).
func (r *Registry) DockerConfig(dir, user, password string) (string, error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return "", err
	}
	cfg := fmt.Sprintf(`{"auths":{%q:{"auth":%q}}}`, r.Host, basicAuth(user, password))
	return dir, os.WriteFile(filepath.Join(dir, "config.json"), []byte(cfg), 0o600)
}

func freePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, fmt.Errorf("find a free port: %w", err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}

func serial() *big.Int {
	n, _ := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 62))
	return n
}

func randomHex(n int) string {
	b := make([]byte, n)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}

// basicAuth is the Docker config's "auth" field: base64 of user:password.
func basicAuth(user, password string) string {
	return base64.StdEncoding.EncodeToString([]byte(user + ":" + password))
}
