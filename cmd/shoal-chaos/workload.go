package main

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"math/rand/v2"
	"slices"
	"strings"
	"sync"
	"time"

	pb "github.com/shoal-cluster/shoal/proto"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// opTimeout bounds one control-API call; a call that runs out has an
// unknown outcome.
const opTimeout = 3 * time.Second

// versionEnv is the variable the service's version lives in: changing it
// changes the task spec, so it starts a rolling update.
const versionEnv = "HELLO_VERSION"

// workload drives the control API during a round and records the history.
type workload struct {
	c     *cluster
	hello string // the task executable
	start time.Time

	mu      sync.Mutex
	history []record
	counts  map[opKind]int
	unknown int
	// docker counts the calls answered through the Docker Engine API.
	docker int
	errs   []string // calls refused for a reason the model does not expect
}

func newWorkload(c *cluster, hello string) *workload {
	return &workload{c: c, hello: hello, start: time.Now(), counts: map[opKind]int{}}
}

// spec builds the service spec a state stands for.
func (w *workload) spec(name string, s svcState) *pb.ServiceSpec {
	return &pb.ServiceSpec{
		Annotations: &pb.Annotations{Name: name},
		Task: &pb.TaskSpec{
			Runtime: "process",
			Container: &pb.ContainerSpec{
				Image: w.hello,
				Args:  []string{"-listen", "127.0.0.1:0"},
				Env:   []string{versionEnv + "=" + s.Version},
			},
			Restart: &pb.RestartPolicy{Delay: int64(200 * time.Millisecond)},
		},
		Mode:   &pb.ServiceSpec_Replicated{Replicated: &pb.ReplicatedService{Replicas: s.Replicas}},
		Update: &pb.UpdateConfig{Parallelism: 2, Monitor: int64(500 * time.Millisecond)},
	}
}

// stateOf reads a service's state back from its spec.
func stateOf(svc *pb.Service) svcState {
	s := svcState{Exists: true, Replicas: svc.GetSpec().GetReplicated().GetReplicas()}
	for _, kv := range svc.GetSpec().GetTask().GetContainer().GetEnv() {
		if v, ok := strings.CutPrefix(kv, versionEnv+"="); ok {
			s.Version = v
		}
	}
	return s
}

// seed records the state each name has at the start of the round.
func (w *workload) seed(states map[string]svcState) {
	for name, s := range states {
		w.history = append(w.history, record{Client: -1, Input: opInput{Kind: opSeed, Name: name, State: s}})
	}
}

// do performs one call against manager m and records it.
func (w *workload) do(ctx context.Context, client int, m *node, in opInput) opOutput {
	cl, err := w.c.control(m)
	if err != nil {
		panic(err) // rpc.Dial only fails on a malformed address
	}
	// The call has its own deadline and is not cut short when the round
	// ends: a call cancelled in flight may still commit afterwards, which
	// would blur what the round's final reads saw.
	cctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), opTimeout)
	defer cancel()
	call := time.Since(w.start)
	var out opOutput
	if client%2 == 1 {
		// Odd clients go through the Docker Engine API, as the docker CLI
		// does; the others (and the final reads) use the control API.
		var unexpected string
		out, unexpected = w.dockerDo(cctx, m, in)
		if out.Outcome != outUnknown {
			w.mu.Lock()
			w.docker++
			w.mu.Unlock()
		}
		return w.record(client, in, out, call, unexpected)
	}
	switch in.Kind {
	case opCreate:
		_, err = cl.CreateService(cctx, &pb.CreateServiceRequest{Spec: w.spec(in.Name, in.State)})
	case opScale, opUpdate:
		_, err = cl.UpdateService(cctx, &pb.UpdateServiceRequest{Ref: in.Name, Spec: w.spec(in.Name, in.State)})
	case opRemove:
		_, err = cl.RemoveService(cctx, &pb.RemoveServiceRequest{Ref: in.Name})
	case opInspect:
		var resp *pb.GetServiceResponse
		resp, err = cl.GetService(cctx, &pb.GetServiceRequest{Ref: in.Name})
		if err == nil {
			out.State = stateOf(resp.GetService())
		}
	}
	var unexpected string
	switch status.Code(err) {
	case codes.OK:
		out.Outcome = outOK
	case codes.AlreadyExists:
		out.Outcome = outExists
	case codes.NotFound:
		out.Outcome = outNotFound
	case codes.Unavailable, codes.DeadlineExceeded, codes.Canceled, codes.Aborted, codes.Unknown, codes.Internal:
		out.Outcome = outUnknown
	default:
		out.Outcome = outUnknown
		unexpected = fmt.Sprintf("%s on %s: %v", opNames[in.Kind], m.name, err)
	}
	return w.record(client, in, out, call, unexpected)
}

// record adds a call's answer to the history; unexpected (if any) is an
// answer the model does not expect, reported with the round.
func (w *workload) record(client int, in opInput, out opOutput, call time.Duration, unexpected string) opOutput {
	ret := time.Since(w.start)
	w.mu.Lock()
	defer w.mu.Unlock()
	if unexpected != "" {
		w.errs = append(w.errs, unexpected)
	}
	w.counts[in.Kind]++
	if out.Outcome == outUnknown {
		w.unknown++
		if in.Kind == opInspect {
			return out // a read that did not answer tells nothing
		}
	}
	w.history = append(w.history, record{Client: client, Input: in, Output: out, Call: call, Return: ret})
	return out
}

// run drives the names until ctx ends: one writer per name (its writes are
// sequential, which checkAcknowledged relies on) and readers inspecting
// any name, each call sent to a random manager. believed is what the
// writers start from (the state read before the round); each writer
// chooses its next call from the last answer it got.
func (w *workload) run(ctx context.Context, rng *rand.Rand, believed map[string]svcState, readers int) {
	var wg sync.WaitGroup
	names := sortedNames(believed)
	client := 0
	for _, name := range names {
		seed1, seed2 := rng.Uint64(), rng.Uint64()
		id := client
		client++
		state := believed[name]
		wg.Go(func() {
			r := rand.New(rand.NewPCG(seed1, seed2))
			for ctx.Err() == nil {
				in := nextWrite(r, name, state)
				out := w.do(ctx, id, w.pick(r), in)
				if out.Outcome != outUnknown {
					_, state = step(state, in, out)
				}
				sleep(ctx, time.Duration(100+r.IntN(200))*time.Millisecond)
			}
		})
	}
	for range readers {
		seed1, seed2 := rng.Uint64(), rng.Uint64()
		id := client
		client++
		wg.Go(func() {
			r := rand.New(rand.NewPCG(seed1, seed2))
			for ctx.Err() == nil {
				w.do(ctx, id, w.pick(r), opInput{Kind: opInspect, Name: names[r.IntN(len(names))]})
				sleep(ctx, time.Duration(50+r.IntN(100))*time.Millisecond)
			}
		})
	}
	wg.Wait()
}

// pick chooses a manager at random, running or not: a call to a dead,
// paused or isolated manager is part of the test.
func (w *workload) pick(r *rand.Rand) *node {
	return w.c.managers[r.IntN(len(w.c.managers))]
}

// nextWrite chooses a writer's next call from what it believes the state is.
func nextWrite(r *rand.Rand, name string, s svcState) opInput {
	newState := svcState{Exists: true, Replicas: uint64(r.IntN(4)), Version: fmt.Sprintf("v%d", 1+r.IntN(9))}
	p := r.IntN(100)
	if !s.Exists {
		switch {
		case p < 75:
			return opInput{Kind: opCreate, Name: name, State: newState}
		case p < 90:
			return opInput{Kind: opScale, Name: name, State: newState}
		default:
			return opInput{Kind: opRemove, Name: name}
		}
	}
	switch {
	case p < 45:
		return opInput{Kind: opScale, Name: name, State: svcState{Exists: true, Replicas: newState.Replicas, Version: s.Version}}
	case p < 75:
		return opInput{Kind: opUpdate, Name: name, State: svcState{Exists: true, Replicas: s.Replicas, Version: newState.Version}}
	case p < 92:
		return opInput{Kind: opRemove, Name: name}
	default:
		return opInput{Kind: opCreate, Name: name, State: newState}
	}
}

// readStates reads every name's state through the cluster (after the
// faults healed, with no other client running), retrying until each read
// answers; the reads join the history.
func (w *workload) readStates(ctx context.Context, names []string) (map[string]svcState, error) {
	states := map[string]svcState{}
	for _, name := range names {
		err := waitFor(ctx, 30*time.Second, "a read of "+name, func(ctx context.Context) error {
			for _, m := range w.c.managers {
				out := w.do(ctx, -2, m, opInput{Kind: opInspect, Name: name})
				if out.Outcome != outUnknown {
					states[name] = out.State
					return nil
				}
			}
			return errors.New("no manager answered")
		})
		if err != nil {
			return nil, err
		}
	}
	return states, nil
}

func sortedNames(m map[string]svcState) []string { return slices.Sorted(maps.Keys(m)) }

func sleep(ctx context.Context, d time.Duration) {
	select {
	case <-ctx.Done():
	case <-time.After(d):
	}
}
