package docker

import (
	"archive/tar"
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"syscall"
	"testing"
	"time"

	cerrdefs "github.com/containerd/errdefs"
	"github.com/moby/moby/client"
	pb "github.com/shoal-cluster/shoal/proto"
	"github.com/shoal-cluster/shoal/worker"
	"github.com/shoal-cluster/shoal/worker/runtimetest"
)

// TestConformance runs the runtime conformance suite against the docker
// runtime: each behaviour as a node of its own on the local Engine, the
// "agent restarting" being a second Runtime for that node, and the tasks
// containers of the conformance task program's image.
func TestConformance(t *testing.T) {
	cli := engine(t)
	image := conformanceImage(t, cli)
	runtimetest.Run(t, runtimetest.Factory{
		Fresh: func(t *testing.T) runtimetest.Opener {
			node := "node-" + randomID()
			t.Cleanup(func() { removeNodeContainers(cli, node) })
			return func(t *testing.T) worker.Runtime { return openRuntime(t, Config{NodeID: node}) }
		},
		Spec: func(_ *testing.T, p runtimetest.Program) *pb.ContainerSpec {
			return &pb.ContainerSpec{Image: image, Args: p.Args()}
		},
		// An image the node lacks is pulled, and a failed pull is not
		// permanent (a registry may come back): what can never run is an
		// image no registry could hold.
		Missing: func(*testing.T) *pb.ContainerSpec {
			return &pb.ContainerSpec{Image: "shoal/No-Such-Image:v0"}
		},
	})
}

const conformanceProgram = "github.com/shoal-cluster/shoal/worker/runtimetest/cmd/conformance-task"

var (
	conformanceOnce  sync.Once
	conformanceRef   string
	conformanceError error
)

// conformanceImage is the conformance task program as an image: a static
// build of it alone (FROM scratch, as it were), tagged with the binary's
// digest, so runs that share the Engine share the image and a changed
// program gets a new one. It is imported once per test binary.
func conformanceImage(t *testing.T, cli *client.Client) string {
	t.Helper()
	conformanceOnce.Do(func() { conformanceRef, conformanceError = buildConformanceImage(cli) })
	if conformanceError != nil {
		t.Fatalf("the conformance task image: %v", conformanceError)
	}
	return conformanceRef
}

func buildConformanceImage(cli *client.Client) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	arch := "amd64"
	if v, err := cli.ServerVersion(ctx, client.ServerVersionOptions{}); err == nil && v.Arch != "" {
		arch = v.Arch
	}
	dir, err := os.MkdirTemp("", "shoal-conformance-")
	if err != nil {
		return "", err
	}
	defer os.RemoveAll(dir)
	bin := filepath.Join(dir, "conformance-task")
	build := exec.CommandContext(ctx, "go", "build", "-trimpath", "-buildvcs=false", "-ldflags=-s -w", "-o", bin, conformanceProgram)
	build.Env = append(os.Environ(), "CGO_ENABLED=0", "GOOS=linux", "GOARCH="+arch)
	if out, err := build.CombinedOutput(); err != nil {
		return "", fmt.Errorf("go build %s: %v\n%s", conformanceProgram, err, out)
	}
	data, err := os.ReadFile(bin)
	if err != nil {
		return "", err
	}
	sum := sha256.Sum256(data)
	ref := "shoal/conformance-task:" + hex.EncodeToString(sum[:6])
	if _, err := cli.ImageInspect(ctx, ref); err == nil {
		return ref, nil
	} else if !cerrdefs.IsNotFound(err) {
		return "", err
	}

	// One import at a time across test binaries (and scripts/images.sh's
	// builds): a second one then finds the image.
	lock, err := os.OpenFile(filepath.Join(os.TempDir(), "shoal-images.lock"), os.O_RDWR|os.O_CREATE, 0o666)
	if err != nil {
		return "", err
	}
	defer lock.Close()
	if err := syscall.Flock(int(lock.Fd()), syscall.LOCK_EX); err != nil {
		return "", err
	}
	if _, err := cli.ImageInspect(ctx, ref); err == nil {
		return ref, nil
	}

	var rootfs bytes.Buffer
	tw := tar.NewWriter(&rootfs)
	if err := tw.WriteHeader(&tar.Header{Name: "conformance-task", Mode: 0o755, Size: int64(len(data)), ModTime: time.Unix(0, 0)}); err != nil {
		return "", err
	}
	if _, err := tw.Write(data); err != nil {
		return "", err
	}
	if err := tw.Close(); err != nil {
		return "", err
	}
	res, err := cli.ImageImport(ctx, client.ImageImportSource{Source: &rootfs, SourceName: "-"}, ref,
		client.ImageImportOptions{Changes: []string{`ENTRYPOINT ["/conformance-task"]`}})
	if err != nil {
		return "", fmt.Errorf("import %s: %w", ref, err)
	}
	defer res.Close()
	dec := json.NewDecoder(res)
	for {
		var msg struct {
			Error       string `json:"error"`
			ErrorDetail struct {
				Message string `json:"message"`
			} `json:"errorDetail"`
		}
		if err := dec.Decode(&msg); errors.Is(err, io.EOF) {
			break
		} else if err != nil {
			return "", fmt.Errorf("import %s: %w", ref, err)
		}
		if msg.Error != "" || msg.ErrorDetail.Message != "" {
			return "", fmt.Errorf("import %s: %s%s", ref, msg.Error, msg.ErrorDetail.Message)
		}
	}
	if _, err := cli.ImageInspect(ctx, ref); err != nil {
		return "", fmt.Errorf("import %s: %w", ref, err)
	}
	return ref, nil
}
