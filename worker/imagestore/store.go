// Package imagestore is a node's layered image store on OverlayFS: the
// images a daemonless container runtime runs, without a Docker Engine.
//
// Images are content-addressed. Each layer is unpacked once, into a
// directory named by its diffID (the digest of its uncompressed tar), with
// OCI whiteouts turned into what OverlayFS expects, and that directory is
// shared by every image and every task that uses the layer. A task's root
// filesystem is an overlay mount of its image's layers (read-only lower
// directories) under a fresh upper and work directory of its own, removed
// with the task.
//
// On disk, under the store's root (the worker's is DATA/worker/images):
//
//	lock                         flock: one writer at a time (agent and CLI)
//	repositories.json            reference → image ID
//	images/<hex>.json            an image: its config, layers (base first), size
//	layers/<hex>/diff/           a layer's files, whiteouts in OverlayFS form
//	layers/<hex>/layer.json      its diffID and size
//	tasks/<task>/task.json       the image a task's rootfs is made of
//	tasks/<task>/{upper,work}/   the task's writes, and OverlayFS's work dir
//	tasks/<task>/rootfs/         the overlay mount
//	tmp/                         layers being unpacked (cleaned at Open)
//
// Every metadata file is written to a temporary name, synced and renamed;
// a layer is unpacked into tmp/ and renamed into layers/ once complete,
// so a crash never leaves a half layer visible.
//
// Image formats and registry access are go-containerregistry's.
package imagestore

import (
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"golang.org/x/sys/unix"

	"github.com/shoal-cluster/shoal/internal/spreaddir"
)

// Dir is where a node keeps its image store in its data dir.
func Dir(dataDir string) string { return filepath.Join(dataDir, "worker", "images") }

// ErrImageNotFound means no stored image matches a reference or ID.
var ErrImageNotFound = errors.New("no such image")

// Image is one stored image.
type Image struct {
	// ID is the digest of the image's config, "sha256:…", as Docker's
	// image IDs.
	ID string `json:"id"`
	// Refs are the references that name it, normalised
	// ("index.docker.io/shoal/hello:v1").
	Refs []string `json:"refs,omitempty"`
	// Digests are the repository digests it was pulled or loaded by
	// ("127.0.0.1:5000/shoal/hello@sha256:…"), so that a reference pinned
	// to a digest finds it.
	Digests []string `json:"digests,omitempty"`
	// Layers are its layers' diffIDs, base first.
	Layers []string `json:"layers"`
	// Config is the image's run configuration (entrypoint, cmd, env,
	// user, working dir, health check, exposed ports, labels).
	Config v1.Config `json:"config"`
	// Created is when the image was built (zero when its config says not).
	Created time.Time `json:"created,omitzero"`
	// Size is the bytes of its layers' files.
	Size int64 `json:"size"`
}

// ShortID is the image ID's first 12 hex digits, as `docker images` shows.
func (i Image) ShortID() string { return shortID(i.ID) }

func shortID(id string) string {
	h := strings.TrimPrefix(id, "sha256:")
	if len(h) > 12 {
		h = h[:12]
	}
	return h
}

// Store is a node's image store. Its methods are safe for concurrent use,
// by goroutines and by processes (the agent and `shoal image`): changes
// hold an exclusive file lock on the store.
type Store struct {
	root string
	log  *slog.Logger

	mu   sync.Mutex // held with the file lock
	lock *os.File

	unpacking sync.Map // diffID → *sync.Mutex: one unpack of a layer at a time in this process
}

// Open opens the image store under root, creating it when missing, and
// removes what a crash left half done (layers being unpacked, layers
// being deleted).
func Open(root string, log *slog.Logger) (*Store, error) {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	if root == "" {
		return nil, errors.New("image store: no root directory given")
	}
	abs, err := filepath.Abs(root)
	if err != nil {
		return nil, fmt.Errorf("image store %s: %w", root, err)
	}
	for _, d := range []string{abs, filepath.Join(abs, "images"), filepath.Join(abs, "layers"), filepath.Join(abs, "tasks"), filepath.Join(abs, "tmp")} {
		if err := os.MkdirAll(d, 0o700); err != nil {
			return nil, fmt.Errorf("image store: create %s: %w", d, err)
		}
	}
	lf, err := os.OpenFile(filepath.Join(abs, "lock"), os.O_CREATE|os.O_RDWR, 0o600)
	if err != nil {
		return nil, fmt.Errorf("image store: open its lock: %w", err)
	}
	s := &Store{root: abs, log: log.With("component", "imagestore"), lock: lf}
	// A directory per task and per layer come and go in these.
	spreaddir.MarkAll(s.log, s.tasksDir(), s.layersDir(), s.tmpDir())
	if err := s.cleanTmp(); err != nil {
		lf.Close()
		return nil, err
	}
	return s, nil
}

// Root is the store's directory.
func (s *Store) Root() string { return s.root }

// Close releases the store's lock file. Mounted task root filesystems
// stay mounted.
func (s *Store) Close() error { return s.lock.Close() }

// cleanTmp removes what tmp/ holds: layers whose unpack, and layers or
// tasks whose removal, a crash interrupted. Unpacks run outside the
// store's lock, so an entry goes only when the process its name records
// is gone. It also removes task directories a crash left without their
// record.
func (s *Store) cleanTmp() error {
	if err := s.lockStore(); err != nil {
		return err
	}
	defer s.unlockStore()
	entries, err := os.ReadDir(s.tmpDir())
	if err != nil {
		return fmt.Errorf("image store: read %s: %w", s.tmpDir(), err)
	}
	for _, e := range entries {
		if pid := tmpOwner(e.Name()); pid > 0 && pid != os.Getpid() && processAlive(pid) {
			continue
		}
		p := filepath.Join(s.tmpDir(), e.Name())
		if err := os.RemoveAll(p); err != nil {
			return fmt.Errorf("image store: remove the leftover %s: %w", p, err)
		}
		s.log.Info("removed a leftover of an interrupted unpack or removal", "path", p)
	}
	// A task directory without its record is a mount a crash cut short
	// (MountRootFS sets one up wholly under the lock).
	tasks, err := os.ReadDir(s.tasksDir())
	if err != nil {
		return fmt.Errorf("image store: read %s: %w", s.tasksDir(), err)
	}
	for _, e := range tasks {
		dir := filepath.Join(s.tasksDir(), e.Name())
		if _, err := os.Stat(filepath.Join(dir, "task.json")); !errors.Is(err, os.ErrNotExist) || isOverlay(filepath.Join(dir, "rootfs")) {
			continue
		}
		if err := os.RemoveAll(dir); err != nil {
			return fmt.Errorf("image store: remove the leftover %s: %w", dir, err)
		}
		s.log.Info("removed a task directory a crash left half set up", "path", dir)
	}
	return nil
}

// lockStore takes the store's lock: the mutex for this process's
// goroutines, flock for other processes.
func (s *Store) lockStore() error {
	s.mu.Lock()
	if err := unix.Flock(int(s.lock.Fd()), unix.LOCK_EX); err != nil {
		s.mu.Unlock()
		return fmt.Errorf("image store: lock %s: %w", s.lock.Name(), err)
	}
	return nil
}

func (s *Store) unlockStore() {
	_ = unix.Flock(int(s.lock.Fd()), unix.LOCK_UN)
	s.mu.Unlock()
}

func (s *Store) tmpDir() string                { return filepath.Join(s.root, "tmp") }
func (s *Store) imagesDir() string             { return filepath.Join(s.root, "images") }
func (s *Store) layersDir() string             { return filepath.Join(s.root, "layers") }
func (s *Store) tasksDir() string              { return filepath.Join(s.root, "tasks") }
func (s *Store) reposFile() string             { return filepath.Join(s.root, "repositories.json") }
func (s *Store) layerDir(diffID string) string { return filepath.Join(s.layersDir(), hexOf(diffID)) }

// LayerDir is the directory holding a layer's files (an overlay lower
// directory), by diffID.
func (s *Store) LayerDir(diffID string) string { return filepath.Join(s.layerDir(diffID), "diff") }

// hexOf is a digest without its algorithm ("sha256:ab…" → "ab…").
func hexOf(digest string) string {
	_, h, ok := strings.Cut(digest, ":")
	if !ok {
		return digest
	}
	return h
}

// repositories maps normalised references to image IDs.
type repositories struct {
	Refs    map[string]string `json:"refs"`              // name:tag → ID
	Digests map[string]string `json:"digests,omitempty"` // name@sha256:… → ID
}

func (s *Store) readRepos() (repositories, error) {
	r := repositories{Refs: map[string]string{}, Digests: map[string]string{}}
	data, err := os.ReadFile(s.reposFile())
	if errors.Is(err, os.ErrNotExist) {
		return r, nil
	}
	if err != nil {
		return r, fmt.Errorf("image store: %w", err)
	}
	if err := json.Unmarshal(data, &r); err != nil {
		return r, fmt.Errorf("image store: %s is damaged: %w", s.reposFile(), err)
	}
	if r.Refs == nil {
		r.Refs = map[string]string{}
	}
	if r.Digests == nil {
		r.Digests = map[string]string{}
	}
	return r, nil
}

func (s *Store) writeRepos(r repositories) error {
	return writeJSON(s.reposFile(), r)
}

// storedImage is an image's file: the image without its references,
// which repositories.json holds.
type storedImage struct {
	ID      string    `json:"id"`
	Layers  []string  `json:"layers"`
	Config  v1.Config `json:"config"`
	Created time.Time `json:"created,omitzero"`
	Size    int64     `json:"size"`
}

func (s *Store) imageFile(id string) string {
	return filepath.Join(s.imagesDir(), hexOf(id)+".json")
}

func (s *Store) readImage(id string) (storedImage, error) {
	var si storedImage
	data, err := os.ReadFile(s.imageFile(id))
	if errors.Is(err, os.ErrNotExist) {
		return si, fmt.Errorf("image %s: %w", shortID(id), ErrImageNotFound)
	}
	if err != nil {
		return si, fmt.Errorf("image store: %w", err)
	}
	if err := json.Unmarshal(data, &si); err != nil {
		return si, fmt.Errorf("image store: %s is damaged: %w", s.imageFile(id), err)
	}
	return si, nil
}

// images reads every stored image with its references.
func (s *Store) images() ([]Image, repositories, error) {
	repos, err := s.readRepos()
	if err != nil {
		return nil, repos, err
	}
	entries, err := os.ReadDir(s.imagesDir())
	if err != nil {
		return nil, repos, fmt.Errorf("image store: %w", err)
	}
	refs := map[string][]string{}
	for ref, id := range repos.Refs {
		refs[id] = append(refs[id], ref)
	}
	digests := map[string][]string{}
	for d, id := range repos.Digests {
		digests[id] = append(digests[id], d)
	}
	var out []Image
	for _, e := range entries {
		h, ok := strings.CutSuffix(e.Name(), ".json")
		if !ok || strings.HasPrefix(h, ".") {
			continue
		}
		si, err := s.readImage("sha256:" + h)
		if errors.Is(err, ErrImageNotFound) {
			continue // removed meanwhile (readers take no lock)
		}
		if err != nil {
			return nil, repos, err
		}
		img := Image{ID: si.ID, Layers: si.Layers, Config: si.Config, Created: si.Created, Size: si.Size,
			Refs: refs[si.ID], Digests: digests[si.ID]}
		sort.Strings(img.Refs)
		sort.Strings(img.Digests)
		out = append(out, img)
	}
	sort.Slice(out, func(i, j int) bool {
		if !out[i].Created.Equal(out[j].Created) {
			return out[i].Created.After(out[j].Created)
		}
		return out[i].ID < out[j].ID
	})
	return out, repos, nil
}

// List returns the stored images, newest first.
func (s *Store) List() ([]Image, error) {
	imgs, _, err := s.images()
	return imgs, err
}

// Resolve finds an image by reference ("shoal/hello:v1", the registry's
// full name, "name@sha256:…", "name:tag@sha256:…"), by ID ("sha256:…") or
// by a unique prefix of its ID. Errors wrap ErrImageNotFound when nothing
// matches.
func (s *Store) Resolve(ref string) (Image, error) {
	imgs, repos, err := s.images()
	if err != nil {
		return Image{}, err
	}
	id, err := resolveID(ref, imgs, repos)
	if err != nil {
		return Image{}, err
	}
	for _, img := range imgs {
		if img.ID == id {
			return img, nil
		}
	}
	return Image{}, fmt.Errorf("image %s: %w", ref, ErrImageNotFound)
}

// resolveID is Resolve on what is read already.
func resolveID(ref string, imgs []Image, repos repositories) (string, error) {
	if ref == "" {
		return "", fmt.Errorf("empty image reference: %w", ErrImageNotFound)
	}
	for _, img := range imgs {
		if img.ID == ref {
			return img.ID, nil
		}
	}
	if strings.Contains(ref, "@") {
		// A digest names the content: "name:tag@sha256:…" is found by
		// name@sha256:… whatever the tag now names.
		before, dgst, _ := strings.Cut(ref, "@")
		if r, err := name.ParseReference(before); err == nil {
			key := r.Context().Name() + "@" + dgst
			if id, ok := repos.Digests[key]; ok {
				return id, nil
			}
		}
		return "", fmt.Errorf("image %s: %w", ref, ErrImageNotFound)
	}
	if r, err := name.ParseReference(ref); err == nil {
		if id, ok := repos.Refs[r.Name()]; ok {
			return id, nil
		}
	}
	h := strings.TrimPrefix(ref, "sha256:")
	if isHex(h) {
		var found []string
		for _, img := range imgs {
			if strings.HasPrefix(hexOf(img.ID), h) {
				found = append(found, img.ID)
			}
		}
		switch len(found) {
		case 1:
			return found[0], nil
		case 0:
		default:
			return "", fmt.Errorf("image ID prefix %s matches %d images: give more of it", ref, len(found))
		}
	}
	return "", fmt.Errorf("image %s: %w", ref, ErrImageNotFound)
}

func isHex(s string) bool {
	if s == "" || len(s) > 64 {
		return false
	}
	for _, c := range s {
		if !(c >= '0' && c <= '9' || c >= 'a' && c <= 'f') {
			return false
		}
	}
	return true
}

// NormalizeRef is how the store spells a reference:
// "shoal/hello:v1" → "index.docker.io/shoal/hello:v1".
func NormalizeRef(ref string) (string, error) {
	r, err := name.ParseReference(ref)
	if err != nil {
		return "", fmt.Errorf("%q is not a valid image reference: %w", ref, err)
	}
	return r.Name(), nil
}

// FamiliarRef is a normalised reference as `docker images` shows it:
// without Docker Hub's host and "library/".
func FamiliarRef(ref string) string {
	r := strings.TrimPrefix(ref, name.DefaultRegistry+"/")
	if r != ref {
		r = strings.TrimPrefix(r, "library/")
	}
	return r
}

// writeJSON writes v to path atomically and durably: a temporary file,
// synced, renamed over path, and the directory synced.
func writeJSON(path string, v any) error {
	data, err := json.MarshalIndent(v, "", "  ")
	if err != nil {
		return fmt.Errorf("encode %s: %w", path, err)
	}
	return writeFileAtomic(path, append(data, '\n'))
}

// writeJSONNoSync writes v to path atomically but not durably: for
// records a power loss makes moot (a task's mount does not survive one).
func writeJSONNoSync(path string, v any) error {
	data, err := json.MarshalIndent(v, "", "  ")
	if err != nil {
		return fmt.Errorf("encode %s: %w", path, err)
	}
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, append(data, '\n'), 0o600); err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	if err := os.Rename(tmp, path); err != nil {
		os.Remove(tmp)
		return fmt.Errorf("write %s: %w", path, err)
	}
	return nil
}

func writeFileAtomic(path string, data []byte) error {
	dir := filepath.Dir(path)
	f, err := os.CreateTemp(dir, "."+filepath.Base(path)+".tmp-*")
	if err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	tmp := f.Name()
	ok := false
	defer func() {
		if !ok {
			os.Remove(tmp)
		}
	}()
	if _, err := f.Write(data); err != nil {
		f.Close()
		return fmt.Errorf("write %s: %w", path, err)
	}
	if err := f.Chmod(0o600); err != nil {
		f.Close()
		return fmt.Errorf("write %s: %w", path, err)
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return fmt.Errorf("write %s: %w", path, err)
	}
	if err := f.Close(); err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	if err := os.Rename(tmp, path); err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	ok = true
	return syncDir(dir)
}

func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return fmt.Errorf("sync %s: %w", dir, err)
	}
	defer d.Close()
	if err := d.Sync(); err != nil {
		return fmt.Errorf("sync %s: %w", dir, err)
	}
	return nil
}

// addRefs points refs and digests at id, taking them from any image they
// named before; an image left with no reference stays (untagged, as
// Docker's "<none>"), for prune.
func addRefs(repos *repositories, id string, refs, digests []string) {
	for _, r := range refs {
		repos.Refs[r] = id
	}
	for _, d := range digests {
		repos.Digests[d] = id
	}
}

// refsOf lists the references (tags, then digests) naming id.
func refsOf(repos repositories, id string) (refs, digests []string) {
	for r, i := range repos.Refs {
		if i == id {
			refs = append(refs, r)
		}
	}
	for d, i := range repos.Digests {
		if i == id {
			digests = append(digests, d)
		}
	}
	slices.Sort(refs)
	slices.Sort(digests)
	return refs, digests
}
