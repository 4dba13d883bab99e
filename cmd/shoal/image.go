package main

import (
	"context"
	"fmt"
	"io"
	"os"
	"os/signal"
	"strings"

	dockerrt "github.com/shoal-cluster/shoal/worker/docker"
	"github.com/spf13/cobra"
)

// imageCommand is `shoal image`.
func imageCommand() *cobra.Command {
	var host string
	load := &cobra.Command{
		Use:     "load [OPTIONS] FILE|-",
		Short:   "Load an image tarball into this node's Docker Engine",
		Args:    exactArgs(1, "image load takes one FILE (a tarball from `docker save`, or - for standard input); it loads into this node's Docker Engine only"),
		PreRunE: refuseClientFlags("image load loads into the Docker Engine of this machine (see --docker-host)"),
		RunE:    func(_ *cobra.Command, pos []string) error { return runImageLoad(host, pos[0]) },
	}
	load.Flags().StringVar(&host, "docker-host", "", "the Docker Engine to load into (default $DOCKER_HOST, else the local socket)")
	return group("image", "Load images into this node's Docker Engine", load)
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
