package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"strings"
	"time"

	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/google/go-containerregistry/pkg/name"
	"github.com/shoal-cluster/shoal/internal/datadir"
	dockerrt "github.com/shoal-cluster/shoal/worker/docker"
	"github.com/shoal-cluster/shoal/worker/imagestore"
	"github.com/spf13/cobra"
)

// imageHelp says where `shoal image` acts.
const imageHelp = "Images are per node: these commands act on the image store of the node whose --data-dir\n" +
	"they are given (DATA/worker/images), on the machine where they run, as root. The container\n" +
	"runtime runs its tasks from that store; `image load --docker` loads into the Docker Engine instead."

// imageCommand is `shoal image`.
func imageCommand(g *globalFlags) *cobra.Command {
	var host string
	var docker bool
	load := &cobra.Command{
		Use:   "load [OPTIONS] FILE|-",
		Short: "Load an image (docker save tarball or OCI layout) into this node's image store",
		Long: "Load the images of a `docker save` tarball or an OCI image layout (a directory, or a tar of one;\n" +
			"gzipped or not; - reads standard input) into this node's image store, for the container runtime.\n" +
			"Layers the store has already are kept, not unpacked again. With --docker (or --docker-host), load\n" +
			"a tarball into this machine's Docker Engine instead, for the docker runtime.\n\n" + imageHelp,
		Args:    exactArgs(1, "image load takes one FILE (a `docker save` tarball or an OCI image layout, or - for standard input); it loads into this node's image store only"),
		PreRunE: refuseClientFlags("image load loads into this node's image store (see --data-dir), or with --docker into the Docker Engine of this machine"),
		RunE: func(c *cobra.Command, pos []string) error {
			if docker || c.Flags().Changed("docker-host") {
				return runImageLoad(host, pos[0])
			}
			return runStoreLoad(g.dataDir, pos[0])
		},
	}
	load.Flags().BoolVar(&docker, "docker", false, "load into this machine's Docker Engine (the docker runtime's images), not the node's image store")
	load.Flags().StringVar(&host, "docker-host", "", "the Docker Engine to load into, implies --docker (default $DOCKER_HOST, else the local socket)")

	pull := &cobra.Command{
		Use:   "pull IMAGE",
		Short: "Pull an image from its registry into this node's image store",
		Long: "Pull an image (name:tag, name@digest or name:tag@digest) from its registry into this node's\n" +
			"image store, for this machine's platform, with the credentials the Docker client config holds for\n" +
			"its registry (`docker login`), if any; a TLS registry's CA is trusted from\n" +
			"/etc/docker/certs.d/HOST:PORT/, as the Docker Engine does. Tasks pull what they lack themselves:\n" +
			"this fills a node ahead of them.\n\n" + imageHelp,
		Args:    exactArgs(1, "image pull takes one IMAGE reference"),
		PreRunE: refuseClientFlags("image pull pulls into this node's image store (see --data-dir)"),
		RunE:    func(_ *cobra.Command, pos []string) error { return runImagePull(g.dataDir, pos[0]) },
	}

	var quiet bool
	ls := &cobra.Command{
		Use:     "ls [OPTIONS]",
		Short:   "List the images in this node's image store",
		Long:    "List the images in this node's image store, newest first.\n\n" + imageHelp,
		Args:    noArgs("image ls takes no arguments"),
		PreRunE: refuseClientFlags("image ls lists this node's image store (see --data-dir)"),
		RunE:    func(*cobra.Command, []string) error { return runImageList(g.dataDir, quiet) },
	}
	ls.Flags().BoolVarP(&quiet, "quiet", "q", false, "print only image IDs")

	var force bool
	rm := &cobra.Command{
		Use:   "rm [OPTIONS] IMAGE [IMAGE...]",
		Short: "Remove images from this node's image store",
		Long: "Remove images from this node's image store, by reference or ID, as `docker rmi`: a tag of an\n" +
			"image with other tags is only untagged; an image a task's root filesystem uses is refused unless\n" +
			"--force, and then only untagged (prune removes it once the task is gone). Layers other images\n" +
			"use stay.\n\n" + imageHelp,
		Args:    minArgs(1, "image rm needs at least one image reference or ID"),
		PreRunE: refuseClientFlags("image rm removes from this node's image store (see --data-dir)"),
		RunE:    func(_ *cobra.Command, pos []string) error { return runImageRemove(g.dataDir, pos, force) },
	}
	rm.Flags().BoolVarP(&force, "force", "f", false, "untag an image tasks use, and remove an image by ID whatever its tags")

	prune := &cobra.Command{
		Use:     "prune",
		Short:   "Remove untagged images no task uses, and unused layers, from this node's store",
		Long:    "Remove the images of this node's store that have no tag and that no task uses, and every layer\nno image and no task uses.\n\n" + imageHelp,
		Args:    noArgs("image prune takes no arguments"),
		PreRunE: refuseClientFlags("image prune acts on this node's image store (see --data-dir)"),
		RunE:    func(*cobra.Command, []string) error { return runImagePrune(g.dataDir) },
	}
	df := &cobra.Command{
		Use:   "df",
		Short: "Show the disk use of this node's image store: shared and unique bytes per image",
		Long: "Show the disk use of this node's image store, as `docker system df -v`: each image's size, the\n" +
			"bytes it shares with other images (layers stored once) and those only it holds, then each task's\n" +
			"writes.\n\n" + imageHelp,
		Args:    noArgs("image df takes no arguments"),
		PreRunE: refuseClientFlags("image df reports on this node's image store (see --data-dir)"),
		RunE:    func(*cobra.Command, []string) error { return runImageDF(g.dataDir) },
	}
	return group("image", "Manage this node's images (load, pull, ls, rm, prune, df)", load, pull, ls, rm, prune, df)
}

// openImageStore opens the image store of the node in dataDir. create
// makes one when the data dir has none yet (load); otherwise a missing
// store is an error that says why there may be none.
func openImageStore(dataDir string, create bool) (*imagestore.Store, error) {
	if dataDir == "" {
		return nil, usagef("give the node's data dir with --data-dir (or SHOAL_DATA_DIR): images are per node")
	}
	dir := imagestore.Dir(dataDir)
	if os.Geteuid() != 0 {
		return nil, fmt.Errorf("the image store (%s) needs root: its layers keep their files' owners and task roots are overlay mounts; run this as root on the node", dir)
	}
	if _, err := os.Stat(dataDir); err != nil {
		return nil, fmt.Errorf("data dir %s: %w; give the node's --data-dir (images are per node: run this on the node)", dataDir, err)
	}
	if !create {
		if _, err := os.Stat(dir); errors.Is(err, os.ErrNotExist) {
			msg := fmt.Sprintf("no image store in data dir %s (%s): this node has no image yet; `shoal image load FILE` on this node adds one", dataDir, dir)
			if _, err := datadir.Load(dataDir); err != nil {
				msg += ", or --data-dir is not a node's data dir"
			}
			return nil, errors.New(msg)
		}
	}
	level := slog.LevelWarn
	if os.Getenv("SHOAL_DEBUG") != "" {
		level = slog.LevelDebug
	}
	return imagestore.Open(dir, slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: level})))
}

// runStoreLoad loads FILE (or standard input) into the node's store.
func runStoreLoad(dataDir, file string) error {
	s, err := openImageStore(dataDir, true)
	if err != nil {
		return err
	}
	defer s.Close()
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt)
	defer stop()
	var imgs []imagestore.Image
	if file == "-" {
		imgs, err = s.LoadReader(ctx, os.Stdin)
	} else {
		imgs, err = s.Load(ctx, file)
	}
	if err != nil {
		return fmt.Errorf("image load: %w", err)
	}
	for _, img := range imgs {
		if len(img.Refs) == 0 {
			fmt.Println("Loaded image ID:", img.ID)
		}
		for _, r := range img.Refs {
			fmt.Println("Loaded image:", imagestore.FamiliarRef(r))
		}
	}
	fmt.Fprintf(os.Stderr, "Loaded into the image store of this node only (%s): load it on every node that runs its tasks.\n", s.Root())
	return nil
}

// runImagePull pulls ref into the node's store with the user's Docker
// client credentials for its registry, if any.
func runImagePull(dataDir, ref string) error {
	r, err := name.ParseReference(ref)
	if err != nil {
		return usagef("image pull: %q is not a valid image reference: %v", ref, err)
	}
	auth, err := authn.DefaultKeychain.Resolve(r.Context())
	if err != nil {
		return fmt.Errorf("image pull: read the Docker client config: %w", err)
	}
	if auth == authn.Anonymous {
		auth = nil
	}
	s, err := openImageStore(dataDir, true)
	if err != nil {
		return err
	}
	defer s.Close()
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt)
	defer stop()
	ctx = imagestore.WithProgress(ctx, func(msg string) { fmt.Fprintln(os.Stderr, msg) })
	img, err := s.Pull(ctx, ref, auth)
	if err != nil {
		return err
	}
	for _, d := range img.Digests {
		fmt.Println("Digest:", imagestore.FamiliarRef(d))
	}
	fmt.Println("Pulled:", imagestore.FamiliarRef(r.Name()), img.ID)
	return nil
}

// runImageLoad loads an image tarball (as `docker save` writes it; "-"
// reads standard input) into the Docker Engine of the node where the
// command runs, like `docker load`. There is no registry: run it on every
// node that should run the image's tasks.
func runImageLoad(host, file string) error {
	var in io.Reader = os.Stdin
	if file != "-" {
		f, err := os.Open(file)
		if err != nil {
			return fmt.Errorf("image load: %w", err)
		}
		defer f.Close()
		in = f
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt)
	defer stop()
	out, err := dockerrt.LoadImage(ctx, host, in)
	if out != "" {
		fmt.Println(out)
	}
	if err != nil {
		return err
	}
	if !strings.Contains(out, "Loaded") {
		fmt.Println("Image loaded.")
	}
	fmt.Fprintln(os.Stderr, "Loaded into this node's Docker Engine only: load it on every node that runs its tasks.")
	return nil
}

// repoTag splits a normalised reference for display: "shoal/hello", "v1".
func repoTag(ref string) (string, string) {
	f := imagestore.FamiliarRef(ref)
	if i := strings.LastIndex(f, ":"); i > strings.LastIndex(f, "/") {
		return f[:i], f[i+1:]
	}
	return f, "<none>"
}

// imageRows are an image's rows in a listing: one per tag, or one
// "<none>" row.
func imageRows(img imagestore.Image) [][2]string {
	if len(img.Refs) == 0 {
		return [][2]string{{"<none>", "<none>"}}
	}
	var out [][2]string
	for _, r := range img.Refs {
		repo, tag := repoTag(r)
		out = append(out, [2]string{repo, tag})
	}
	return out
}

func created(t time.Time) string {
	if t.IsZero() {
		return "N/A"
	}
	return ago(t.UnixNano())
}

func runImageList(dataDir string, quiet bool) error {
	s, err := openImageStore(dataDir, false)
	if err != nil {
		return err
	}
	defer s.Close()
	imgs, err := s.List()
	if err != nil {
		return err
	}
	if quiet {
		for _, img := range imgs {
			fmt.Println(img.ShortID())
		}
		return nil
	}
	t := newTable("REPOSITORY", "TAG", "IMAGE ID", "CREATED", "SIZE")
	for _, img := range imgs {
		for _, rt := range imageRows(img) {
			t.row(rt[0], rt[1], img.ShortID(), created(img.Created), humanBytes(img.Size))
		}
	}
	t.flush()
	return nil
}

func runImageRemove(dataDir string, refs []string, force bool) error {
	s, err := openImageStore(dataDir, false)
	if err != nil {
		return err
	}
	defer s.Close()
	var errs []string
	for _, ref := range refs {
		rep, err := s.RemoveImage(ref, force)
		for _, u := range rep.Untagged {
			fmt.Println("Untagged:", u)
		}
		for _, d := range rep.Deleted {
			fmt.Println("Deleted:", d)
		}
		if err != nil {
			if errors.Is(err, imagestore.ErrImageNotFound) {
				err = fmt.Errorf("no such image: %s (see `shoal image ls` on this node)", ref)
			}
			errs = append(errs, err.Error())
		}
	}
	if len(errs) > 0 {
		return errors.New(strings.Join(errs, "; "))
	}
	return nil
}

func runImagePrune(dataDir string) error {
	s, err := openImageStore(dataDir, false)
	if err != nil {
		return err
	}
	defer s.Close()
	rep, err := s.Prune()
	printDeleted("Deleted Images:", rep.ImagesDeleted)
	printDeleted("Deleted Layers:", rep.LayersDeleted)
	fmt.Println("Total reclaimed space:", humanBytes(rep.SpaceReclaimed))
	return err
}

// printDeleted lists what a prune deleted under its heading, as docker
// image prune does; nothing when ids is empty.
func printDeleted(heading string, ids []string) {
	if len(ids) == 0 {
		return
	}
	fmt.Println(heading)
	for _, id := range ids {
		fmt.Println("deleted:", id)
	}
	fmt.Println()
}

func runImageDF(dataDir string) error {
	s, err := openImageStore(dataDir, false)
	if err != nil {
		return err
	}
	defer s.Close()
	du, err := s.DiskUsage()
	if err != nil {
		return err
	}
	fmt.Printf("Images space usage: %d layers, %s on disk (each layer once), %s reclaimable (no task uses it)\n\n",
		du.Layers, humanBytes(du.LayersSize), humanBytes(du.Reclaimable))
	t := newTable("REPOSITORY", "TAG", "IMAGE ID", "CREATED", "SIZE", "SHARED SIZE", "UNIQUE SIZE", "TASKS")
	for _, iu := range du.Images {
		for _, rt := range imageRows(iu.Image) {
			t.row(rt[0], rt[1], iu.ShortID(), created(iu.Created), humanBytes(iu.Size), humanBytes(iu.SharedSize), humanBytes(iu.UniqueSize), fmt.Sprint(iu.Tasks))
		}
	}
	t.flush()
	fmt.Println("\nTasks space usage:")
	t = newTable("TASK ID", "IMAGE ID", "SIZE", "MOUNTED")
	for _, tu := range du.Tasks {
		mounted := "no"
		if tu.Mounted {
			mounted = "yes"
		}
		t.row(tu.TaskID, strings.TrimPrefix(tu.ImageID, "sha256:")[:12], humanBytes(tu.Size), mounted)
	}
	t.flush()
	return nil
}
