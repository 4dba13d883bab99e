package imagestore

import (
	"archive/tar"
	"bufio"
	"compress/gzip"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path"
	"path/filepath"
	"runtime"
	"strings"
	"sync"

	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/layout"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/remote/transport"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
	"github.com/shoal-cluster/shoal/internal/registry"
)

// ErrNotAnImage means a file or directory given to Load is neither a
// `docker save` tarball nor an OCI image layout.
var ErrNotAnImage = errors.New("is not an image: want a `docker save` tarball (manifest.json) or an OCI image layout (oci-layout, index.json), as a directory or a tar, optionally gzipped")

// OCI layout annotations that name an image.
const (
	annotationRefName        = "org.opencontainers.image.ref.name"
	annotationContainerdName = "io.containerd.image.name"
)

// Platform is the platform images are chosen for: linux on this
// machine's architecture.
func Platform() v1.Platform { return v1.Platform{OS: "linux", Architecture: runtime.GOARCH} }

// Load imports the images of a `docker save` tarball, or of an OCI image
// layout (a directory or a tar of one), gzipped or not, and returns them.
// Layers the store has already are not unpacked again.
func (s *Store) Load(ctx context.Context, p string) ([]Image, error) {
	fi, err := os.Stat(p)
	if err != nil {
		return nil, fmt.Errorf("load %s: %w", p, err)
	}
	if fi.IsDir() {
		switch {
		case exists(filepath.Join(p, "index.json")):
			return s.loadLayout(ctx, p)
		case exists(filepath.Join(p, "manifest.json")):
			return nil, fmt.Errorf("load %s: a `docker save` output must stay a tar file: give the tarball, not a directory unpacked from it", p)
		}
		return nil, fmt.Errorf("load %s: the directory %w", p, ErrNotAnImage)
	}
	gz, err := isGzip(p)
	if err != nil {
		return nil, fmt.Errorf("load %s: %w", p, err)
	}
	opener := func() (io.ReadCloser, error) { return openMaybeGzip(p, gz) }
	names, err := topNames(opener)
	if err != nil {
		return nil, fmt.Errorf("load %s: it %w (%v)", p, ErrNotAnImage, err)
	}
	switch {
	case names["manifest.json"]:
		return s.loadDockerSave(ctx, p, opener)
	case names["index.json"]:
		dir := filepath.Join(s.tmpDir(), tmpName("oci", "layout"))
		defer os.RemoveAll(dir)
		if err := extractTar(ctx, opener, dir); err != nil {
			return nil, fmt.Errorf("load %s: %w", p, err)
		}
		return s.loadLayout(ctx, dir)
	}
	return nil, fmt.Errorf("load %s: it %w", p, ErrNotAnImage)
}

func exists(p string) bool {
	_, err := os.Stat(p)
	return err == nil
}

func isGzip(p string) (bool, error) {
	f, err := os.Open(p)
	if err != nil {
		return false, err
	}
	defer f.Close()
	b, err := bufio.NewReader(f).Peek(2)
	if err != nil {
		return false, nil // too short for gzip; the tar reader says what is wrong
	}
	return b[0] == 0x1f && b[1] == 0x8b, nil
}

type gzipFile struct {
	*gzip.Reader
	f *os.File
}

func (g gzipFile) Close() error { g.Reader.Close(); return g.f.Close() }

func openMaybeGzip(p string, gz bool) (io.ReadCloser, error) {
	f, err := os.Open(p)
	if err != nil {
		return nil, err
	}
	if !gz {
		return f, nil
	}
	zr, err := gzip.NewReader(f)
	if err != nil {
		f.Close()
		return nil, err
	}
	return gzipFile{zr, f}, nil
}

// topNames lists the files at the top of a tar.
func topNames(opener tarball.Opener) (map[string]bool, error) {
	rc, err := opener()
	if err != nil {
		return nil, err
	}
	defer rc.Close()
	tr := tar.NewReader(rc)
	names := map[string]bool{}
	for {
		hdr, err := tr.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			return nil, err
		}
		n := strings.TrimPrefix(path.Clean("/"+hdr.Name), "/")
		if !strings.Contains(n, "/") {
			names[n] = true
		}
	}
	if len(names) == 0 {
		return nil, errors.New("an empty tar")
	}
	return names, nil
}

// extractTar writes a tar of an OCI layout under dir (regular files and
// directories only: a layout holds nothing else).
func extractTar(ctx context.Context, opener tarball.Opener, dir string) error {
	rc, err := opener()
	if err != nil {
		return err
	}
	defer rc.Close()
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return err
	}
	tr := tar.NewReader(rc)
	for {
		if err := ctx.Err(); err != nil {
			return err
		}
		hdr, err := tr.Next()
		if err == io.EOF {
			return nil
		}
		if err != nil {
			return fmt.Errorf("read the tar: %w", err)
		}
		rel := strings.TrimPrefix(path.Clean("/"+hdr.Name), "/")
		if rel == "" {
			continue
		}
		if err := mkdirParents(dir, path.Dir(rel)); err != nil {
			return err
		}
		target := filepath.Join(dir, filepath.FromSlash(rel))
		switch hdr.Typeflag {
		case tar.TypeDir:
			if err := os.MkdirAll(target, 0o700); err != nil {
				return err
			}
		case tar.TypeReg:
			f, err := os.OpenFile(target, os.O_CREATE|os.O_TRUNC|os.O_WRONLY, 0o600)
			if err != nil {
				return err
			}
			_, err = io.Copy(f, tr)
			if cerr := f.Close(); err == nil {
				err = cerr
			}
			if err != nil {
				return fmt.Errorf("extract %s: %w", hdr.Name, err)
			}
		}
	}
}

// loadDockerSave imports each image of a `docker save` tarball: by its
// first tag when it has tags.
func (s *Store) loadDockerSave(ctx context.Context, p string, opener tarball.Opener) ([]Image, error) {
	m, err := tarball.LoadManifest(opener)
	if err != nil {
		return nil, fmt.Errorf("load %s: read its manifest.json: %w", p, err)
	}
	if len(m) == 0 {
		return nil, fmt.Errorf("load %s: its manifest.json lists no image", p)
	}
	var out []Image
	for i, d := range m {
		var tag *name.Tag
		var refs []string
		for _, t := range d.RepoTags {
			nt, err := name.NewTag(t)
			if err != nil {
				return nil, fmt.Errorf("load %s: image %d is tagged %q: %w", p, i+1, t, err)
			}
			if tag == nil {
				tag = &nt
			}
			refs = append(refs, nt.Name())
		}
		if tag == nil && len(m) > 1 {
			return nil, fmt.Errorf("load %s: image %d of %d has no tag, and an untagged image of a tarball with several cannot be told apart: save the images with their tags (docker save NAME:TAG...)", p, i+1, len(m))
		}
		img, err := tarball.Image(opener, tag)
		if err != nil {
			return nil, fmt.Errorf("load %s: image %d: %w", p, i+1, err)
		}
		got, err := s.importImage(ctx, img, refs, nil)
		if err != nil {
			return nil, fmt.Errorf("load %s: %w", p, err)
		}
		out = append(out, got)
	}
	return out, nil
}

// loadLayout imports each image an OCI layout's index names, choosing
// this machine's platform from multi-platform indexes.
func (s *Store) loadLayout(ctx context.Context, dir string) ([]Image, error) {
	idx, err := layout.ImageIndexFromPath(dir)
	if err != nil {
		return nil, fmt.Errorf("load %s: read the OCI layout: %w", dir, err)
	}
	im, err := idx.IndexManifest()
	if err != nil {
		return nil, fmt.Errorf("load %s: read the OCI layout's index: %w", dir, err)
	}
	if len(im.Manifests) == 0 {
		return nil, fmt.Errorf("load %s: the OCI layout's index lists no image", dir)
	}
	var out []Image
	for _, d := range im.Manifests {
		var img v1.Image
		switch {
		case d.MediaType.IsImage():
			img, err = idx.Image(d.Digest)
		case d.MediaType.IsIndex():
			img, err = platformImage(idx, d.Digest)
		default:
			s.log.Info("OCI layout entry skipped: neither an image nor an index", "digest", d.Digest, "mediaType", d.MediaType)
			continue
		}
		if err != nil {
			return nil, fmt.Errorf("load %s: image %s: %w", dir, d.Digest, err)
		}
		var refs, digests []string
		if full := layoutName(d.Annotations); full != nil {
			if _, ok := full.(name.Tag); ok {
				refs = append(refs, full.Name())
			}
			digests = append(digests, full.Context().Name()+"@"+d.Digest.String())
		}
		got, err := s.importImage(ctx, img, refs, digests)
		if err != nil {
			return nil, fmt.Errorf("load %s: %w", dir, err)
		}
		out = append(out, got)
	}
	return out, nil
}

// layoutName is the full reference an OCI layout entry's annotations give
// it, or nil: containerd's name, else a ref.name that is a whole
// reference (one that is only a tag names no repository).
func layoutName(ann map[string]string) name.Reference {
	for _, k := range []string{annotationContainerdName, annotationRefName} {
		v := ann[k]
		if v == "" || (k == annotationRefName && !strings.ContainsAny(v, "/:")) {
			continue
		}
		if r, err := name.ParseReference(v); err == nil {
			return r
		}
	}
	return nil
}

// platformImage picks this machine's platform from an index.
func platformImage(idx v1.ImageIndex, h v1.Hash) (v1.Image, error) {
	child, err := idx.ImageIndex(h)
	if err != nil {
		return nil, err
	}
	im, err := child.IndexManifest()
	if err != nil {
		return nil, err
	}
	want := Platform()
	var have []string
	for _, d := range im.Manifests {
		if d.Platform == nil || !d.MediaType.IsImage() {
			continue
		}
		if d.Platform.Satisfies(want) {
			return child.Image(d.Digest)
		}
		have = append(have, d.Platform.String())
	}
	return nil, fmt.Errorf("no image for %s in it (it has %s)", want, strings.Join(have, ", "))
}

// Pull fetches an image from its registry (by tag, digest or
// "name:tag@digest"), for this machine's platform, with auth (nil:
// anonymous; a service's credentials are registry.Authenticator(
// TaskFiles.RegistryAuth)), trusting the registry's CA as the Docker
// Engine does (/etc/docker/certs.d). Layers the store has are not
// fetched; the others come a few at a time, reported through ctx (see
// WithProgress). Errors wrap registry.ErrNotFound or
// registry.ErrUnauthorized when the registry said so.
func (s *Store) Pull(ctx context.Context, ref string, auth authn.Authenticator) (Image, error) {
	r, err := name.ParseReference(ref)
	if err != nil {
		return Image{}, fmt.Errorf("pull %s: not a valid image reference: %w", ref, err)
	}
	opts := []remote.Option{remote.WithContext(ctx), remote.WithTransport(registry.Transport(r.Context().RegistryStr())),
		remote.WithPlatform(Platform())}
	if auth != nil {
		opts = append(opts, remote.WithAuth(auth))
	}
	reportProgress(ctx, "pulling "+ref)
	desc, err := remote.Get(r, opts...)
	if err != nil {
		return Image{}, pullError(ref, r.Context().RegistryStr(), err, auth != nil)
	}
	img, err := desc.Image()
	if err != nil {
		return Image{}, fmt.Errorf("pull %s: %w", ref, err)
	}
	var refs []string
	if before, _, ok := strings.Cut(ref, "@"); ok {
		if t, err := name.NewTag(before, name.StrictValidation); err == nil {
			refs = append(refs, t.Name()) // "name:tag@digest" tags name:tag too
		}
	} else {
		refs = append(refs, r.Name())
	}
	digests := []string{r.Context().Name() + "@" + desc.Digest.String()}
	if d, err := img.Digest(); err == nil && d != desc.Digest {
		// A multi-platform index: the platform's manifest names it too.
		digests = append(digests, r.Context().Name()+"@"+d.String())
	}
	got, err := s.importImage(ctx, img, refs, digests)
	if err != nil {
		return Image{}, pullError(ref, r.Context().RegistryStr(), err, auth != nil)
	}
	s.log.Info("image pulled", "ref", ref, "id", got.ID, "layers", len(got.Layers))
	return got, nil
}

// importImage unpacks an image's missing layers and records it, with refs
// (normalised) and digests pointing at it.
func (s *Store) importImage(ctx context.Context, img v1.Image, refs, digests []string) (Image, error) {
	cfgName, err := img.ConfigName()
	if err != nil {
		return Image{}, fmt.Errorf("image config: %w", err)
	}
	cf, err := img.ConfigFile()
	if err != nil {
		return Image{}, fmt.Errorf("image config %s: %w", cfgName, err)
	}
	id := cfgName.String()
	if cf.OS != "" && cf.OS != "linux" {
		return Image{}, fmt.Errorf("image %s is for %s, not linux", shortID(id), cf.OS)
	}
	if cf.Architecture != "" && cf.Architecture != runtime.GOARCH {
		s.log.Warn("image is for another architecture: its programs may not run here", "id", id, "arch", cf.Architecture, "node", runtime.GOARCH)
	}
	layers, err := img.Layers()
	if err != nil {
		return Image{}, fmt.Errorf("image %s: its layers: %w", shortID(id), err)
	}
	// Unpacking happens outside the store's lock; a prune meanwhile may
	// take a layer no image held yet, so check under the lock, and
	// unpack again what went.
	for attempt := 0; ; attempt++ {
		si := storedImage{ID: id, Config: cf.Config, Created: cf.Created.Time}
		metas, err := s.ensureLayers(ctx, layers)
		if err != nil {
			return Image{}, fmt.Errorf("image %s: %w", shortID(id), err)
		}
		for _, m := range metas {
			si.Layers = append(si.Layers, m.DiffID)
			si.Size += m.Size
		}
		if err := s.lockStore(); err != nil {
			return Image{}, err
		}
		missing := false
		for _, d := range si.Layers {
			if _, err := s.readLayer(d); err != nil {
				missing = true
			}
		}
		if missing && attempt < 3 {
			s.unlockStore()
			continue
		}
		img, err := s.commitImage(si, refs, digests)
		s.unlockStore()
		return img, err
	}
}

// parallelLayers is how many layers of an image are fetched and unpacked
// at once.
const parallelLayers = 3

// ensureLayers is ensureLayer for each layer, a few at a time, reporting
// "pulling N/M layers" through ctx (see WithProgress).
func (s *Store) ensureLayers(ctx context.Context, layers []v1.Layer) ([]layerMeta, error) {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	metas := make([]layerMeta, len(layers))
	errs := make([]error, len(layers))
	sem := make(chan struct{}, parallelLayers)
	var wg sync.WaitGroup
	var mu sync.Mutex
	done := 0
	reportProgress(ctx, fmt.Sprintf("pulling 0/%d layers", len(layers)))
	for i, l := range layers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			select {
			case sem <- struct{}{}:
			case <-ctx.Done():
				errs[i] = ctx.Err()
				return
			}
			defer func() { <-sem }()
			metas[i], errs[i] = s.ensureLayer(ctx, l)
			if errs[i] != nil {
				cancel()
				return
			}
			mu.Lock()
			done++
			reportProgress(ctx, fmt.Sprintf("pulling %d/%d layers", done, len(layers)))
			mu.Unlock()
		}()
	}
	wg.Wait()
	for _, err := range errs {
		if err != nil && !errors.Is(err, context.Canceled) {
			return nil, err
		}
	}
	if err := errors.Join(errs...); err != nil {
		return nil, err
	}
	return metas, nil
}

type progressKey struct{}

// WithProgress returns a context through which Pull and Load report
// their progress ("pulling 2/5 layers") to report.
func WithProgress(ctx context.Context, report func(msg string)) context.Context {
	return context.WithValue(ctx, progressKey{}, report)
}

func reportProgress(ctx context.Context, msg string) {
	if report, ok := ctx.Value(progressKey{}).(func(string)); ok && report != nil {
		report(msg)
	}
}

// pullError says which pull failed and why, in the registry's words:
// wrapping registry.ErrNotFound or registry.ErrUnauthorized when it said
// so, and, for a refusal of a pull without credentials, how to send some.
func pullError(ref, host string, err error, withAuth bool) error {
	var terr *transport.Error
	if !errors.As(err, &terr) {
		if errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded) {
			return fmt.Errorf("pull %s: %w", ref, err)
		}
		var nerr net.Error
		var oerr *net.OpError
		if errors.As(err, &nerr) || errors.As(err, &oerr) {
			return fmt.Errorf("pull %s: registry %s cannot be reached: %w", ref, host, err)
		}
		return fmt.Errorf("pull %s: %w", ref, err)
	}
	var words []string
	for _, d := range terr.Errors {
		w := string(d.Code)
		if d.Message != "" {
			w += ": " + d.Message
		}
		words = append(words, w)
	}
	reason := strings.Join(words, "; ")
	if reason == "" {
		reason = http.StatusText(terr.StatusCode)
	}
	switch terr.StatusCode {
	case http.StatusNotFound:
		return fmt.Errorf("pull %s: %w (%s): %s", ref, registry.ErrNotFound, host, reason)
	case http.StatusUnauthorized, http.StatusForbidden:
		hint := ""
		if !withAuth {
			hint = " (pulled without registry credentials: if the registry needs some, update the service with --with-registry-auth)"
		}
		return fmt.Errorf("pull %s: %w (%s): %s%s", ref, registry.ErrUnauthorized, host, reason, hint)
	}
	return fmt.Errorf("pull %s: registry %s answered %d: %s", ref, host, terr.StatusCode, reason)
}

// commitImage writes an image's file and points refs at it (the caller
// holds the lock).
func (s *Store) commitImage(si storedImage, refs, digests []string) (Image, error) {
	if err := writeJSON(s.imageFile(si.ID), si); err != nil {
		return Image{}, err
	}
	repos, err := s.readRepos()
	if err != nil {
		return Image{}, err
	}
	addRefs(&repos, si.ID, refs, digests)
	if err := s.writeRepos(repos); err != nil {
		return Image{}, err
	}
	r, d := refsOf(repos, si.ID)
	s.log.Info("image stored", "id", si.ID, "refs", r, "layers", len(si.Layers), "bytes", si.Size)
	return Image{ID: si.ID, Refs: r, Digests: d, Layers: si.Layers, Config: si.Config, Created: si.Created, Size: si.Size}, nil
}

// LoadReader is Load of a stream (`shoal image load -`): it is spooled to
// the store's tmp/ first, since both formats need to be read more than
// once.
func (s *Store) LoadReader(ctx context.Context, r io.Reader) ([]Image, error) {
	f, err := os.CreateTemp(s.tmpDir(), tmpName("stdin", "load")+"-*")
	if err != nil {
		return nil, fmt.Errorf("load: %w", err)
	}
	defer os.Remove(f.Name())
	_, err = io.Copy(f, readerCtx{ctx, r})
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return nil, fmt.Errorf("load: read the image: %w", err)
	}
	imgs, err := s.Load(ctx, f.Name())
	if err != nil {
		return nil, renamedErr{strings.Replace(err.Error(), f.Name(), "standard input", 1), err}
	}
	return imgs, nil
}

// readerCtx stops a copy when ctx ends.
type readerCtx struct {
	ctx context.Context
	r   io.Reader
}

func (r readerCtx) Read(p []byte) (int, error) {
	if err := r.ctx.Err(); err != nil {
		return 0, err
	}
	return r.r.Read(p)
}

// renamedErr is an error reworded, still wrapping what it was.
type renamedErr struct {
	msg string
	err error
}

func (e renamedErr) Error() string { return e.msg }
func (e renamedErr) Unwrap() error { return e.err }
