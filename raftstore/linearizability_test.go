package raftstore

import (
	"context"
	"errors"
	"fmt"
	"math"
	"math/rand/v2"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/anishathalye/porcupine"
	pb "github.com/shoal-cluster/shoal/proto"
)

// registerInput is one operation on one register: a label on a node object.
type registerInput struct {
	key   string
	write bool
	value string
}

// registerModel is a set of registers, one per key, initially "".
var registerModel = porcupine.Model{
	Partition: func(history []porcupine.Operation) [][]porcupine.Operation {
		byKey := map[string][]porcupine.Operation{}
		var keys []string
		for _, op := range history {
			k := op.Input.(registerInput).key
			if _, ok := byKey[k]; !ok {
				keys = append(keys, k)
			}
			byKey[k] = append(byKey[k], op)
		}
		out := make([][]porcupine.Operation, 0, len(keys))
		for _, k := range keys {
			out = append(out, byKey[k])
		}
		return out
	},
	Init: func() any { return "" },
	Step: func(state, input, output any) (bool, any) {
		in := input.(registerInput)
		if in.write {
			return true, in.value
		}
		return output.(string) == state.(string), state
	},
	DescribeOperation: func(input, output any) string {
		in := input.(registerInput)
		if in.write {
			return fmt.Sprintf("put(%s, %s)", in.key, in.value)
		}
		return fmt.Sprintf("get(%s) -> %q", in.key, output)
	},
}

const registerLabel = "v"

func setRegister(key, value string) func(tx *Tx) error {
	return func(tx *Tx) error {
		n, ok := tx.Nodes().Get(key)
		if !ok {
			return ErrNotFound
		}
		if n.Spec == nil {
			n.Spec = &pb.NodeSpec{}
		}
		if n.Spec.Annotations == nil {
			n.Spec.Annotations = &pb.Annotations{}
		}
		if n.Spec.Annotations.Labels == nil {
			n.Spec.Annotations.Labels = map[string]string{}
		}
		n.Spec.Annotations.Labels[registerLabel] = value
		return tx.Nodes().Update(n)
	}
}

// history collects operations from concurrent clients.
type history struct {
	start time.Time
	mu    sync.Mutex
	ops   []porcupine.Operation
	stats map[string]int
}

func (h *history) now() int64 { return int64(time.Since(h.start)) }

func (h *history) add(op porcupine.Operation, stat string) {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.ops = append(h.ops, op)
	h.stats[stat]++
}

func (h *history) count(stat string) {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.stats[stat]++
}

// definitelyNotApplied reports whether a failed Update certainly had no
// effect: it was refused before it reached the log.
func definitelyNotApplied(err error) bool {
	return errors.Is(err, ErrNotLeader) || errors.Is(err, ErrNoLeader)
}

// runClient issues reads and writes against the members, moving to another
// member when the one it uses does not lead, until stop closes.
func runClient(c *testCluster, client int, keys []string, h *history, stop <-chan struct{}) {
	rng := rand.New(rand.NewPCG(uint64(client), 42))
	target := client % len(c.members)
	for seq := 0; ; seq++ {
		select {
		case <-stop:
			return
		default:
		}
		s := c.members[target].store
		key := keys[rng.IntN(len(keys))]
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		if rng.IntN(2) == 0 {
			in := registerInput{key: key, write: true, value: fmt.Sprintf("c%d-%d", client, seq)}
			call := h.now()
			_, err := s.Update(ctx, setRegister(key, in.value))
			ret := h.now()
			switch {
			case err == nil:
				h.add(porcupine.Operation{ClientId: client, Input: in, Call: call, Output: "", Return: ret}, "write ok")
			case definitelyNotApplied(err):
				h.count("write refused")
			default:
				// Outcome unknown: it may take effect at any time from its
				// call on, so it never returns.
				h.add(porcupine.Operation{ClientId: client, Input: in, Call: call, Output: "", Return: math.MaxInt64}, "write unknown")
			}
			if err != nil {
				target = (target + 1) % len(c.members)
			}
		} else {
			in := registerInput{key: key}
			var got string
			call := h.now()
			err := s.ViewConsistent(ctx, func(tx *Tx) {
				n, _ := tx.Nodes().Get(key)
				got = n.GetSpec().GetAnnotations().GetLabels()[registerLabel]
			})
			ret := h.now()
			if err == nil {
				h.add(porcupine.Operation{ClientId: client, Input: in, Call: call, Output: got, Return: ret}, "read ok")
			} else {
				// A failed read has no effect: leave it out.
				h.count("read failed")
				target = (target + 1) % len(c.members)
			}
		}
		cancel()
		// Pace the clients to keep the history small.
		time.Sleep(time.Duration(2+rng.IntN(6)) * time.Millisecond)
	}
}

// Concurrent clients read (ViewConsistent) and write (Update) registers
// while the leader is cut off from the others and healed, twice; the
// history must be linearizable.
func TestLinearizableUnderLeaderPartitions(t *testing.T) {
	if testing.Short() {
		t.Skip("slow")
	}
	c := newTestCluster(t, 3, clusterOptions{faults: true})
	keys := []string{"k0", "k1", "k2"}
	for _, k := range keys {
		c.mustUpdate(func(tx *Tx) error { return tx.Nodes().Create(testNode(k, k)) })
	}
	c.waitApplied(c.sync(10*time.Second), 10*time.Second)

	h := &history{start: time.Now(), stats: map[string]int{}}
	stop := make(chan struct{})
	var wg sync.WaitGroup
	const clients = 4
	for i := 0; i < clients; i++ {
		wg.Add(1)
		go func() { defer wg.Done(); runClient(c, i, keys, h, stop) }()
	}
	stopped := false
	stopClients := func() {
		if !stopped {
			stopped = true
			close(stop)
			wg.Wait()
		}
	}
	defer stopClients()

	pause := func(d time.Duration) {
		// Let the clients run; nothing waits on this.
		time.Sleep(d)
	}
	pause(700 * time.Millisecond)
	for round := 0; round < 2; round++ {
		old := c.waitLeader(10 * time.Second)
		var others []string
		for _, m := range c.members {
			if m != old {
				others = append(others, m.addr)
			}
		}
		old.layer.Partition(others...)
		var nl *testMember
		waitFor(t, 10*time.Second, "a leader on the majority side", func() bool {
			nl = c.leader()
			return nl != nil && nl != old
		})
		t.Logf("round %d: %s cut off, %s leads", round, old.id, nl.id)
		pause(700 * time.Millisecond)
		old.layer.Heal()
		pause(700 * time.Millisecond)
	}
	stopClients()

	h.mu.Lock()
	ops, stats := h.ops, h.stats
	h.mu.Unlock()
	t.Logf("%d operations recorded: %v", len(ops), stats)
	if stats["write ok"] == 0 || stats["read ok"] == 0 {
		t.Fatalf("the clients achieved nothing: %v", stats)
	}
	res, info := porcupine.CheckOperationsVerbose(registerModel, ops, 30*time.Second)
	if res != porcupine.Ok {
		path := filepath.Join(os.TempDir(), fmt.Sprintf("raftstore-linearizability-%d.html", time.Now().UnixNano()))
		if err := porcupine.VisualizePath(registerModel, info, path); err == nil {
			t.Logf("visualization: %s", path)
		}
		t.Fatalf("history is not linearizable: %v", res)
	}
}
