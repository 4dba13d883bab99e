package imagestore

import (
	"errors"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

// TestRemove: `docker rmi` semantics. A tag of an image with others only
// untags; an image a task uses is refused (Docker's words) unless forced,
// and then only untagged; an ID with several tags needs force; a removed
// image takes the layers no one else uses and leaves the shared base.
func TestRemove(t *testing.T) {
	s := openStore(t)
	ctx := t.Context()
	base := layerOf(t, file("base", strings.Repeat("b", 4000)))
	a := imageOf(t, "/a", base, layerOf(t, file("a", "a")))
	b := imageOf(t, "/b", base, layerOf(t, file("b", "b")))
	if _, err := s.Load(ctx, saveTar(t, a, "test/a:v1")); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Load(ctx, saveTar(t, a, "test/a:latest")); err != nil {
		t.Fatal(err)
	}
	bi, err := s.Load(ctx, saveTar(t, b, "test/b:v1"))
	if err != nil {
		t.Fatal(err)
	}
	ai, err := s.Resolve("test/a:v1")
	if err != nil {
		t.Fatal(err)
	}
	if len(ai.Refs) != 2 {
		t.Fatalf("a's refs %v, want two", ai.Refs)
	}

	// By ID with two tags: force needed.
	if err := s.Remove(ai.ShortID(), false); err == nil || !strings.Contains(err.Error(), "referenced in multiple repositories") {
		t.Fatalf("rm by ID with two tags: %v", err)
	}
	// A tag of two: untagged only.
	rep, err := s.RemoveImage("test/a:latest", false)
	if err != nil || !slices.Equal(rep.Untagged, []string{"test/a:latest"}) || len(rep.Deleted) != 0 {
		t.Fatalf("rm a tag of two: %+v, %v", rep, err)
	}

	// In use by a task.
	if _, err := s.MountRootFS(ctx, "user", ai, false); err != nil {
		t.Fatal(err)
	}
	err = s.Remove("test/a:v1", false)
	want := `conflict: unable to remove repository reference "test/a:v1" (must force) - task user is using its referenced image ` + ai.ShortID()
	if err == nil || err.Error() != want {
		t.Fatalf("rm an image in use: %v\nwant %s", err, want)
	}
	if err := s.Remove(ai.ID, false); err == nil || !strings.Contains(err.Error(), "image is being used by task user") {
		t.Fatalf("rm by ID an image in use: %v", err)
	}
	// Prune keeps it: tagged, and in use.
	if rep, err := s.Prune(); err != nil || len(rep.ImagesDeleted)+len(rep.LayersDeleted) != 0 {
		t.Fatalf("prune with everything in use: %+v, %v", rep, err)
	}
	// Forced: untagged, kept while the task runs.
	rep, err = s.RemoveImage("test/a:v1", true)
	if err != nil || !slices.Equal(rep.Untagged, []string{"test/a:v1"}) || len(rep.Deleted) != 0 {
		t.Fatalf("rm -f an image in use: %+v, %v", rep, err)
	}
	if _, err := s.Resolve("test/a:v1"); !errors.Is(err, ErrImageNotFound) {
		t.Fatalf("the tag stays after rm -f: %v", err)
	}
	if _, err := s.Resolve(ai.ID); err != nil {
		t.Fatalf("the image went from under its task: %v", err)
	}
	// Still in use: prune keeps it; the task gone, prune takes it and its
	// own layer, not the base b uses.
	if rep, err := s.Prune(); err != nil || len(rep.ImagesDeleted) != 0 {
		t.Fatalf("prune of an untagged image in use: %+v, %v", rep, err)
	}
	if err := s.UnmountRootFS(ctx, "user"); err != nil {
		t.Fatal(err)
	}
	prep, err := s.Prune()
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(prep.ImagesDeleted, []string{ai.ID}) || !slices.Equal(prep.LayersDeleted, []string{ai.Layers[1]}) || prep.SpaceReclaimed != 1 {
		t.Fatalf("prune: %+v; want image %s and its layer %s (1 byte)", prep, ai.ID, ai.Layers[1])
	}
	if got := names(t, filepath.Join(s.Root(), "layers")); len(got) != 2 {
		t.Fatalf("layers after prune: %v, want b's two", got)
	}

	// Removing the last tag deletes the image and its layers.
	rep, err = s.RemoveImage("test/b:v1", false)
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(rep.Untagged, []string{"test/b:v1"}) || len(rep.Deleted) != 3 || rep.Deleted[0] != bi[0].ID {
		t.Fatalf("rm the last tag: %+v", rep)
	}
	if got := names(t, filepath.Join(s.Root(), "layers")); len(got) != 0 {
		t.Fatalf("layers left: %v", got)
	}
	if err := s.Remove("test/b:v1", false); !errors.Is(err, ErrImageNotFound) {
		t.Fatalf("rm again: %v", err)
	}
	if got := names(t, filepath.Join(s.Root(), "tmp")); len(got) != 0 {
		t.Fatalf("tmp/ holds %v", got)
	}
}
