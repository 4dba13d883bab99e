package main

import (
	"context"
	"fmt"
	"io"
	"os"
	"os/signal"
	"strings"

	dockerrt "github.com/shoal-cluster/shoal/worker/docker"
)

const imageLoadUsage = "shoal image load [--docker-host ADDR] FILE|-"

// imageCommands are the `shoal image` subcommands.
func imageCommands() []*command {
	return []*command{
		{name: "load", summary: "Load an image tarball into this node's Docker Engine", run: runImageLoad},
	}
}

// runImageLoad loads an image tarball (as `docker save` writes it; "-"
// reads standard input) into the Docker Engine of the node where the
// command runs, like `docker load`. There is no registry: run it on every
// node that should run the image's tasks.
func runImageLoad(args []string) error {
	fs := newFlags("image load", imageLoadUsage)
	host := fs.String("docker-host", "", "the Docker Engine to load into (default $DOCKER_HOST, else the local socket)")
	pos, err := parseFlags(fs, imageLoadUsage, args)
	if err != nil {
		return err
	}
	if len(pos) != 1 {
		return usagef("image load takes one FILE (a tarball from `docker save`, or - for standard input); it loads into this node's Docker Engine only")
	}
	var in io.Reader = os.Stdin
	if pos[0] != "-" {
		f, err := os.Open(pos[0])
		if err != nil {
			return fmt.Errorf("image load: %w", err)
		}
		defer f.Close()
		in = f
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt)
	defer stop()
	out, err := dockerrt.LoadImage(ctx, *host, in)
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
