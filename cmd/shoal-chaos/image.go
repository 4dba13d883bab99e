package main

import (
	"archive/tar"
	"bytes"
	"context"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
	"github.com/moby/moby/client"
	"github.com/shoal-cluster/shoal/internal/registrytest"
	pb "github.com/shoal-cluster/shoal/proto"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// Each round also runs a service from a registry image no node has: the
// suite runs Debian's docker-registry on the host's loopback and, every
// round, pushes the sample app as a new image (a layer unique to the
// push) and creates a 3-replica docker service from it, across the fault.
// The workers' Engine pulls it while the managers and workers fail.
// Invariant (g): once the fault healed, every replica runs that image.
// The managers, each in its own network namespace, cannot reach the
// registry on the host's loopback, so they create the service unpinned
// (Docker's warning); the pulls are what is exercised.
const (
	imageReplicas = 3
	imageRepo     = "shoal/chaos-hello"
)

// registryWorkload is the suite's registry and what it pushes.
type registryWorkload struct {
	reg    *registrytest.Registry
	engine *client.Client
	base   v1.Image // the static hello binary as an image
}

// roundImage is one round's registry-backed service.
type roundImage struct {
	name, ref string
}

// startRegistry starts the registry workload when the mode allows it: on
// asks for it, auto runs it when the Engine answers and docker-registry is
// installed, and says why not otherwise. SHOAL_REQUIRE_DOCKER=1 makes auto
// insist, as the Go tests do.
func (s *suite) startRegistry(ctx context.Context, mode, bin string) error {
	if mode == "off" {
		return nil
	}
	required := mode == "on" || os.Getenv(registrytest.RequireEnv) == "1"
	why := func(err error) error {
		if required {
			return fmt.Errorf("the registry workload: %w", err)
		}
		fmt.Printf("== registry workload off: %v\n", err)
		return nil
	}
	if _, err := registrytest.Binary(); err != nil {
		return why(err)
	}
	engine, err := client.New(client.FromEnv)
	if err != nil {
		return why(fmt.Errorf("the Docker Engine: %w", err))
	}
	pctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	_, err = engine.Ping(pctx, client.PingOptions{})
	cancel()
	if err != nil {
		engine.Close()
		return why(fmt.Errorf("the Docker Engine does not answer: %w", err))
	}
	static := filepath.Join(bin, "hello-static")
	build := exec.CommandContext(ctx, "go", "build", "-o", static, "github.com/shoal-cluster/shoal/cmd/hello")
	build.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := build.CombinedOutput(); err != nil {
		engine.Close()
		return fmt.Errorf("build a static hello for the registry image: %w: %s", err, out)
	}
	base, err := helloImage(static)
	if err != nil {
		engine.Close()
		return err
	}
	reg, err := registrytest.Start(ctx, filepath.Join(s.dir, "registry"), registrytest.Options{})
	if err != nil {
		engine.Close()
		return why(err)
	}
	s.images = &registryWorkload{reg: reg, engine: engine, base: base}
	fmt.Printf("== registry workload: docker-registry at %s; each round pushes %s and runs %d replicas of it\n", reg.Host, imageRepo, imageReplicas)
	return nil
}

// stopRegistry removes what the workload pulled and stops the registry.
func (s *suite) stopRegistry() {
	if s.images == nil {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := s.images.reg.RemoveFromEngine(ctx, s.images.engine); err != nil {
		fmt.Printf("== registry workload: %v\n", err)
	}
	s.images.reg.Stop()
	s.images.engine.Close()
	s.images = nil
}

// helloImage is an image of one static binary, /hello, its entrypoint.
func helloImage(path string) (v1.Image, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	if err := tw.WriteHeader(&tar.Header{Name: "hello", Mode: 0o755, Size: int64(len(data)), ModTime: time.Unix(0, 0)}); err != nil {
		return nil, err
	}
	if _, err := tw.Write(data); err != nil {
		return nil, err
	}
	if err := tw.Close(); err != nil {
		return nil, err
	}
	raw := buf.Bytes()
	layer, err := tarball.LayerFromOpener(func() (io.ReadCloser, error) { return io.NopCloser(bytes.NewReader(raw)), nil })
	if err != nil {
		return nil, fmt.Errorf("the hello layer: %w", err)
	}
	img, err := mutate.AppendLayers(empty.Image, layer)
	if err != nil {
		return nil, err
	}
	cfg, err := img.ConfigFile()
	if err != nil {
		return nil, err
	}
	cfg = cfg.DeepCopy()
	cfg.OS, cfg.Architecture = "linux", "amd64"
	cfg.Config.Entrypoint = []string{"/hello"}
	return mutate.ConfigFile(img, cfg)
}

// startImage pushes this round's image and creates its service.
func (s *suite) startImage(ctx context.Context, round int) (*roundImage, error) {
	if s.images == nil {
		return nil, nil
	}
	tag := fmt.Sprintf("%s:r%d", imageRepo, round+1)
	img, err := mutate.AppendLayers(s.images.base, uniqueLayer(round))
	if err != nil {
		return nil, err
	}
	ref, _, err := s.images.reg.PushImage(ctx, img, tag, "", "")
	if err != nil {
		return nil, err
	}
	ri := &roundImage{name: fmt.Sprintf("img-r%d", round+1), ref: ref}
	spec := &pb.ServiceSpec{
		Annotations: &pb.Annotations{Name: ri.name},
		Task: &pb.TaskSpec{
			Runtime:   "docker",
			Container: &pb.ContainerSpec{Image: ref, StopGracePeriod: int64(time.Second)},
			Restart:   &pb.RestartPolicy{Condition: pb.RestartCondition_RESTART_CONDITION_ANY, Delay: int64(200 * time.Millisecond)},
		},
		Mode: &pb.ServiceSpec_Replicated{Replicated: &pb.ReplicatedService{Replicas: imageReplicas}},
	}
	err = waitFor(ctx, 30*time.Second, "creating "+ri.name, func(ctx context.Context) error {
		return s.anyManager(ctx, func(ctx context.Context, cl pb.ControlClient) error {
			_, err := cl.CreateService(ctx, &pb.CreateServiceRequest{Spec: spec})
			if status.Code(err) == codes.AlreadyExists {
				return nil
			}
			return err
		})
	})
	if err != nil {
		return nil, fmt.Errorf("create %s: %w", ri.name, err)
	}
	return ri, nil
}

// uniqueLayer is a layer only this round's image has, so no node has the
// image before the round pulls it.
func uniqueLayer(round int) v1.Layer {
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	body := []byte(fmt.Sprintf("round %d at %d\n", round+1, time.Now().UnixNano()))
	_ = tw.WriteHeader(&tar.Header{Name: "chaos-round", Mode: 0o644, Size: int64(len(body)), ModTime: time.Unix(0, 0)})
	_, _ = tw.Write(body)
	_ = tw.Close()
	raw := buf.Bytes()
	l, _ := tarball.LayerFromOpener(func() (io.ReadCloser, error) { return io.NopCloser(bytes.NewReader(raw)), nil })
	return l
}

// finishImage waits until the round's service runs its replicas from the
// pushed image (invariant (g)), then removes it and its image from the
// Engine. It returns one line per problem.
func (s *suite) finishImage(ctx context.Context, ri *roundImage) []string {
	if ri == nil {
		return nil
	}
	var problems []string
	err := waitFor(ctx, 90*time.Second, ri.name+" to run "+ri.ref, func(ctx context.Context) error {
		var tasks []*pb.Task
		err := s.anyManager(ctx, func(ctx context.Context, cl pb.ControlClient) error {
			resp, err := cl.ListTasks(ctx, &pb.ListTasksRequest{ServiceRef: ri.name})
			tasks = resp.GetTasks()
			return err
		})
		if err != nil {
			return err
		}
		return imageRunning(tasks, ri.ref)
	})
	if err != nil {
		problems = append(problems, err.Error())
	}
	if err := s.removeService(ctx, ri.name); err != nil {
		problems = append(problems, err.Error())
	}
	return problems
}

// imageRunning reports, as an error, why tasks are not imageReplicas
// running replicas of ref, one per slot.
func imageRunning(tasks []*pb.Task, ref string) error {
	running := map[uint64]bool{}
	var last string
	for _, t := range tasks {
		if t.GetDesiredState() != pb.TaskState_TASK_STATE_RUNNING {
			continue
		}
		if img := t.GetSpec().GetContainer().GetImage(); img != ref {
			return fmt.Errorf("task %s runs %s, not %s", t.GetId(), img, ref)
		}
		if t.GetStatus().GetState() == pb.TaskState_TASK_STATE_RUNNING {
			running[t.GetSlot()] = true
		} else if e := t.GetStatus().GetErr(); e != "" {
			last = e
		}
	}
	if len(running) != imageReplicas {
		err := fmt.Errorf("%d of %d replicas running", len(running), imageReplicas)
		if last != "" {
			err = fmt.Errorf("%w (last error: %s)", err, last)
		}
		return err
	}
	return nil
}

// removeService removes a service of the round (one already gone is fine).
func (s *suite) removeService(ctx context.Context, name string) error {
	return waitFor(ctx, 30*time.Second, "removing "+name, func(ctx context.Context) error {
		return s.anyManager(ctx, func(ctx context.Context, cl pb.ControlClient) error {
			_, err := cl.RemoveService(ctx, &pb.RemoveServiceRequest{Ref: name})
			if status.Code(err) == codes.NotFound || err != nil && strings.Contains(err.Error(), "no service") {
				return nil
			}
			return err
		})
	})
}
