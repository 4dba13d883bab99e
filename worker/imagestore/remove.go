package imagestore

import (
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strings"
)

// RemoveReport is what a removal did, as `docker rmi` prints it.
type RemoveReport struct {
	// Untagged are the references removed ("shoal/hello:v1").
	Untagged []string
	// Deleted are the image's ID, then the layers deleted with it.
	Deleted []string
}

// Remove removes an image by reference or ID, as `docker rmi`: see
// RemoveImage.
func (s *Store) Remove(ref string, force bool) error {
	_, err := s.RemoveImage(ref, force)
	return err
}

// RemoveImage removes a reference, and the image with its layers when no
// reference is left, as `docker rmi`: a reference of an image that has
// others is only untagged; an image a task's root filesystem uses is
// refused unless force, and then only untagged (its layers stay while the
// task does); an ID naming an image with several references is refused
// unless force. Layers other images or tasks use stay.
func (s *Store) RemoveImage(ref string, force bool) (RemoveReport, error) {
	var rep RemoveReport
	if err := s.lockStore(); err != nil {
		return rep, err
	}
	defer s.unlockStore()
	imgs, repos, err := s.images()
	if err != nil {
		return rep, err
	}
	id, err := resolveID(ref, imgs, repos)
	if err != nil {
		return rep, err
	}
	refs, digests := refsOf(repos, id)
	// By reference (a tag or a digest, normalised), or by ID ("").
	var named string
	if isRef(ref, refs, digests) {
		named = normalizedAny(ref)
	}
	users, err := s.taskUsers(id)
	if err != nil {
		return rep, err
	}
	// A reference of an image others name too: only untagged.
	untag := false
	switch {
	case slices.Contains(refs, named) && len(refs) > 1:
		delete(repos.Refs, named)
		untag = true
	case slices.Contains(digests, named) && (len(refs) > 0 || len(digests) > 1):
		delete(repos.Digests, named)
		untag = true
	}
	if untag {
		if err := s.writeRepos(repos); err != nil {
			return rep, err
		}
		rep.Untagged = []string{FamiliarRef(named)}
		return rep, nil
	}
	if named == "" && len(refs) > 1 && !force {
		return rep, fmt.Errorf("conflict: unable to delete %s (must be forced) - image is referenced in multiple repositories", shortID(id))
	}
	if len(users) > 0 {
		if !force {
			if named != "" {
				return rep, fmt.Errorf("conflict: unable to remove repository reference %q (must force) - task %s is using its referenced image %s", ref, users[0], shortID(id))
			}
			return rep, fmt.Errorf("conflict: unable to delete %s (must be forced) - image is being used by task %s", shortID(id), users[0])
		}
		// Forced: untagged, kept while the tasks run (prune takes it after).
		for _, r := range refs {
			delete(repos.Refs, r)
			rep.Untagged = append(rep.Untagged, FamiliarRef(r))
		}
		for _, d := range digests {
			delete(repos.Digests, d)
			rep.Untagged = append(rep.Untagged, FamiliarRef(d))
		}
		if err := s.writeRepos(repos); err != nil {
			return rep, err
		}
		s.log.Info("image untagged, kept: tasks use it", "id", id, "tasks", users)
		return rep, nil
	}
	for _, r := range refs {
		delete(repos.Refs, r)
		rep.Untagged = append(rep.Untagged, FamiliarRef(r))
	}
	for _, d := range digests {
		delete(repos.Digests, d)
		rep.Untagged = append(rep.Untagged, FamiliarRef(d))
	}
	if err := s.writeRepos(repos); err != nil {
		return rep, err
	}
	deleted, _, err := s.deleteImages([]string{id})
	rep.Deleted = deleted
	return rep, err
}

// isRef reports whether ref names one of refs or digests.
func isRef(ref string, refs, digests []string) bool {
	n := normalizedAny(ref)
	return n != "" && (slices.Contains(refs, n) || slices.Contains(digests, n))
}

// normalizedAny normalises a tag or digest reference ("" when it is
// neither).
func normalizedAny(ref string) string {
	if before, dgst, ok := strings.Cut(ref, "@"); ok {
		r, err := NormalizeRef(before)
		if err != nil {
			return ""
		}
		repo, _, _ := strings.Cut(r, ":")
		if i := strings.LastIndex(r, ":"); i > strings.LastIndex(r, "/") {
			repo = r[:i]
		}
		return repo + "@" + dgst
	}
	r, err := NormalizeRef(ref)
	if err != nil {
		return ""
	}
	return r
}

// taskUsers lists the tasks whose root filesystem is made of image id.
func (s *Store) taskUsers(id string) ([]string, error) {
	tasks, err := s.Tasks()
	if err != nil {
		return nil, err
	}
	var out []string
	for _, t := range tasks {
		if t.ImageID == id {
			out = append(out, t.TaskID)
		}
	}
	return out, nil
}

// deleteImages deletes the images' files, then every layer no remaining
// image and no task uses (the caller holds the lock). It returns the IDs
// deleted (images, then layers) and the bytes reclaimed.
func (s *Store) deleteImages(ids []string) ([]string, int64, error) {
	var deleted []string
	for _, id := range ids {
		if err := os.Remove(s.imageFile(id)); err != nil && !os.IsNotExist(err) {
			return deleted, 0, fmt.Errorf("remove image %s: %w", shortID(id), err)
		}
		deleted = append(deleted, id)
		s.log.Info("image deleted", "id", id)
	}
	layers, bytes, err := s.deleteUnusedLayers()
	return append(deleted, layers...), bytes, err
}

// deleteUnusedLayers deletes the layers no image and no task uses (the
// caller holds the lock): each renamed into tmp/ first, so that it goes
// from layers/ at once.
func (s *Store) deleteUnusedLayers() ([]string, int64, error) {
	used, err := s.usedLayers()
	if err != nil {
		return nil, 0, err
	}
	entries, err := os.ReadDir(s.layersDir())
	if err != nil {
		return nil, 0, fmt.Errorf("image store: %w", err)
	}
	var deleted []string
	var bytes int64
	for _, e := range entries {
		diffID := "sha256:" + e.Name()
		if used[diffID] {
			continue
		}
		m, _ := s.readLayer(diffID)
		gone := filepath.Join(s.tmpDir(), tmpName("rmlayer", shortID(diffID)))
		if err := os.Rename(filepath.Join(s.layersDir(), e.Name()), gone); err != nil {
			return deleted, bytes, fmt.Errorf("remove layer %s: %w", shortID(diffID), err)
		}
		if err := os.RemoveAll(gone); err != nil {
			return deleted, bytes, fmt.Errorf("remove layer %s: %w", shortID(diffID), err)
		}
		deleted = append(deleted, diffID)
		bytes += m.Size
		s.log.Info("layer deleted", "layer", diffID, "bytes", m.Size)
	}
	return deleted, bytes, nil
}

// usedLayers are the layers of every stored image and every task.
func (s *Store) usedLayers() (map[string]bool, error) {
	imgs, _, err := s.images()
	if err != nil {
		return nil, err
	}
	tasks, err := s.Tasks()
	if err != nil {
		return nil, err
	}
	used := map[string]bool{}
	for _, img := range imgs {
		for _, l := range img.Layers {
			used[l] = true
		}
	}
	for _, t := range tasks {
		for _, l := range t.Layers {
			used[l] = true
		}
	}
	return used, nil
}

// PruneReport is what Prune deleted.
type PruneReport struct {
	// ImagesDeleted are the untagged images deleted.
	ImagesDeleted []string
	// LayersDeleted are the layers deleted: theirs, and any no image used.
	LayersDeleted []string
	// SpaceReclaimed is the bytes of the layers deleted.
	SpaceReclaimed int64
}

// Prune deletes the images without a tag that no task uses (Docker's
// dangling images), and every layer no image and no task uses.
func (s *Store) Prune() (PruneReport, error) {
	var rep PruneReport
	if err := s.lockStore(); err != nil {
		return rep, err
	}
	defer s.unlockStore()
	imgs, repos, err := s.images()
	if err != nil {
		return rep, err
	}
	var dangling []string
	for _, img := range imgs {
		if len(img.Refs) > 0 {
			continue
		}
		users, err := s.taskUsers(img.ID)
		if err != nil {
			return rep, err
		}
		if len(users) == 0 {
			dangling = append(dangling, img.ID)
		}
	}
	if len(dangling) > 0 {
		for d, id := range repos.Digests {
			if slices.Contains(dangling, id) {
				delete(repos.Digests, d)
			}
		}
		if err := s.writeRepos(repos); err != nil {
			return rep, err
		}
	}
	deleted, bytes, err := s.deleteImages(dangling)
	rep.ImagesDeleted = deleted[:min(len(dangling), len(deleted))]
	rep.LayersDeleted = deleted[len(rep.ImagesDeleted):]
	rep.SpaceReclaimed = bytes
	return rep, err
}

// DiskUsage is the store's disk use, as `docker system df -v`.
type DiskUsage struct {
	// Images are the stored images, newest first.
	Images []ImageUsage
	// Tasks are the task root filesystems and their writes.
	Tasks []TaskUsage
	// LayersSize is the bytes of all layers, each counted once, as stored.
	LayersSize int64
	// Layers is how many layer directories there are.
	Layers int
	// Reclaimable is the bytes prune would free, or more with image
	// removals: the layers of images no task uses.
	Reclaimable int64
}

// ImageUsage is one image's share of the disk.
type ImageUsage struct {
	Image
	// SharedSize is the bytes of its layers other images use too.
	SharedSize int64
	// UniqueSize is the bytes of its layers only it uses.
	UniqueSize int64
	// Tasks is how many task root filesystems use it.
	Tasks int
}

// TaskUsage is one task's root filesystem.
type TaskUsage struct {
	TaskID  string
	ImageID string
	// Size is the bytes the task wrote (its upper directory).
	Size    int64
	Mounted bool
}

// DiskUsage reports the bytes each image shares with others and holds
// alone, the layers' total (each once), and each task's writes.
func (s *Store) DiskUsage() (DiskUsage, error) {
	var du DiskUsage
	imgs, _, err := s.images()
	if err != nil {
		return du, err
	}
	tasks, err := s.Tasks()
	if err != nil {
		return du, err
	}
	users := map[string]int{} // layer → images using it
	for _, img := range imgs {
		for _, l := range uniq(img.Layers) {
			users[l]++
		}
	}
	sizes := map[string]int64{}
	entries, err := os.ReadDir(s.layersDir())
	if err != nil {
		return du, fmt.Errorf("image store: %w", err)
	}
	for _, e := range entries {
		m, err := s.readLayer("sha256:" + e.Name())
		if err != nil {
			continue
		}
		sizes[m.DiffID] = m.Size
		du.LayersSize += m.Size
		du.Layers++
	}
	taskCount := map[string]int{}
	for _, t := range tasks {
		taskCount[t.ImageID]++
		tu := TaskUsage{TaskID: t.TaskID, ImageID: t.ImageID, Mounted: t.Mounted}
		tu.Size, _ = dirBytes(filepath.Join(s.taskDir(t.TaskID), "upper"))
		du.Tasks = append(du.Tasks, tu)
	}
	inUse := map[string]bool{}
	for _, t := range tasks {
		for _, l := range t.Layers {
			inUse[l] = true
		}
	}
	for _, img := range imgs {
		iu := ImageUsage{Image: img, Tasks: taskCount[img.ID]}
		for _, l := range uniq(img.Layers) {
			if users[l] > 1 {
				iu.SharedSize += sizes[l]
			} else {
				iu.UniqueSize += sizes[l]
			}
		}
		du.Images = append(du.Images, iu)
	}
	for l, n := range sizes {
		if !inUse[l] {
			du.Reclaimable += n
		}
	}
	sort.SliceStable(du.Tasks, func(i, j int) bool { return du.Tasks[i].TaskID < du.Tasks[j].TaskID })
	return du, nil
}

func uniq(xs []string) []string {
	out := slices.Clone(xs)
	slices.Sort(out)
	return slices.Compact(out)
}

// dirBytes is the bytes of the regular files under dir.
func dirBytes(dir string) (int64, error) {
	var n int64
	err := filepath.WalkDir(dir, func(_ string, d fs.DirEntry, err error) error {
		if err != nil {
			if os.IsNotExist(err) {
				return nil
			}
			return err
		}
		if d.Type().IsRegular() {
			if fi, err := d.Info(); err == nil {
				n += fi.Size()
			}
		}
		return nil
	})
	return n, err
}
