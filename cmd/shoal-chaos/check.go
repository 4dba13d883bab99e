package main

import (
	"fmt"
	"maps"
	"math"
	"slices"
	"sort"
	"time"

	"github.com/anishathalye/porcupine"
)

// svcState is what the control API says about one service name: whether it
// exists, its replica count and the version its tasks run (HELLO_VERSION).
type svcState struct {
	Exists   bool
	Replicas uint64
	Version  string
}

func (s svcState) String() string {
	if !s.Exists {
		return "absent"
	}
	return fmt.Sprintf("%d×%s", s.Replicas, s.Version)
}

// opKind is a control-API operation on one service name.
type opKind int

const (
	opSeed    opKind = iota // the state observed before the round (not an API call)
	opCreate                // CreateService
	opScale                 // UpdateService changing the replica count
	opUpdate                // UpdateService changing the task spec (a rolling update)
	opRemove                // RemoveService
	opInspect               // GetService
)

var opNames = map[opKind]string{opSeed: "seed", opCreate: "create", opScale: "scale", opUpdate: "update", opRemove: "rm", opInspect: "inspect"}

// opInput is one call: for create, scale and update the spec it writes.
type opInput struct {
	Kind  opKind
	Name  string
	State svcState // create/scale/update/seed: the state the call writes
}

// outcome is how a call ended.
type outcome int

const (
	outOK       outcome = iota // acknowledged
	outExists                  // AlreadyExists: a definite refusal
	outNotFound                // NotFound: a definite refusal
	outUnknown                 // timeout, lost leadership, unreachable: may or may not have happened
)

// opOutput is a call's result; State is what an inspect read.
type opOutput struct {
	Outcome outcome
	State   svcState
}

// writes reports whether the call can change the state.
func (in opInput) writes() bool { return in.Kind != opInspect }

// step applies one call to a state: ok says whether the call's result is
// possible from that state, next is the state after it. A call whose
// outcome is unknown is taken as having happened (porcupine may place it
// at any time after its call, including after every observation, which is
// the same as not happening).
func step(state svcState, in opInput, out opOutput) (bool, svcState) {
	switch in.Kind {
	case opSeed:
		return true, in.State
	case opInspect:
		if out.Outcome == outNotFound {
			return !state.Exists, state
		}
		return out.Outcome == outOK && out.State == state, state
	case opCreate:
		switch out.Outcome {
		case outOK:
			return !state.Exists, in.State
		case outExists:
			return state.Exists, state
		case outUnknown:
			if state.Exists {
				return true, state
			}
			return true, in.State
		}
	case opScale, opUpdate:
		switch out.Outcome {
		case outOK:
			return state.Exists, in.State
		case outNotFound:
			return !state.Exists, state
		case outUnknown:
			if state.Exists {
				return true, in.State
			}
			return true, state
		}
	case opRemove:
		switch out.Outcome {
		case outOK:
			return state.Exists, svcState{}
		case outNotFound:
			return !state.Exists, state
		case outUnknown:
			return true, svcState{}
		}
	}
	return false, state
}

// serviceModel is the control API's service table as porcupine sees it:
// one independent register-like object per service name.
var serviceModel = porcupine.Model{
	Partition: func(history []porcupine.Operation) [][]porcupine.Operation {
		byName := map[string][]porcupine.Operation{}
		var names []string
		for _, op := range history {
			name := op.Input.(opInput).Name
			if _, ok := byName[name]; !ok {
				names = append(names, name)
			}
			byName[name] = append(byName[name], op)
		}
		out := make([][]porcupine.Operation, 0, len(names))
		for _, n := range names {
			out = append(out, byName[n])
		}
		return out
	},
	Init: func() any { return svcState{} },
	Step: func(state, input, output any) (bool, any) {
		return step(state.(svcState), input.(opInput), output.(opOutput))
	},
	Equal: func(a, b any) bool { return a.(svcState) == b.(svcState) },
	DescribeOperation: func(input, output any) string {
		in, out := input.(opInput), output.(opOutput)
		res := map[outcome]string{outOK: "ok", outExists: "exists", outNotFound: "not found", outUnknown: "unknown"}[out.Outcome]
		switch in.Kind {
		case opInspect:
			if out.Outcome == outOK {
				res = out.State.String()
			}
			return fmt.Sprintf("inspect(%s) -> %s", in.Name, res)
		case opRemove:
			return fmt.Sprintf("rm(%s) -> %s", in.Name, res)
		default:
			return fmt.Sprintf("%s(%s, %s) -> %s", opNames[in.Kind], in.Name, in.State, res)
		}
	},
}

// record is one call in the history, with its times relative to the
// history's start; an unknown outcome has no return time.
type record struct {
	Client int
	Input  opInput
	Output opOutput
	Call   time.Duration
	Return time.Duration
}

// checkLinearizable checks a history against serviceModel. It returns a
// description of the violation, or "" when the history is linearizable;
// when vizPath is set, a violation is also drawn there (porcupine's HTML
// view of the history).
func checkLinearizable(history []record, timeout time.Duration, vizPath string) string {
	ops := make([]porcupine.Operation, 0, len(history))
	for _, r := range history {
		ret := int64(r.Return)
		if r.Output.Outcome == outUnknown {
			ret = math.MaxInt64
		}
		ops = append(ops, porcupine.Operation{ClientId: r.Client, Input: r.Input, Call: int64(r.Call), Output: r.Output, Return: ret})
	}
	res, info := porcupine.CheckOperationsVerbose(serviceModel, ops, timeout)
	switch res {
	case porcupine.Ok:
		return ""
	case porcupine.Unknown:
		return fmt.Sprintf("the linearizability check of %d operations did not finish within %s", len(ops), timeout)
	}
	// Name the services whose histories fail on their own.
	var bad []string
	for _, part := range serviceModel.Partition(ops) {
		if !porcupine.CheckOperations(serviceModel, part) {
			bad = append(bad, part[0].Input.(opInput).Name)
		}
	}
	msg := fmt.Sprintf("the control-API history (%d operations) is not linearizable for services %v", len(ops), bad)
	if vizPath != "" {
		if err := porcupine.VisualizePath(serviceModel, info, vizPath); err == nil {
			msg += "; see " + vizPath
		}
	}
	return msg
}

// maxUnknownWrites bounds the outcomes checkAcknowledged enumerates per name.
const maxUnknownWrites = 12

// checkAcknowledged checks that every acknowledged change is present at the
// end: per service name, its writes (one client per name, so they are
// sequential) are replayed with each unknown-outcome write either applied
// in place or not at all; the final state read after the faults healed
// must be one of the results. It returns one line per name that fails, and
// how many names it could not check (too many unknown outcomes).
// maxLateUnknown is how many writes of unknown outcome per name the check
// places at every later point (a call that timed out may land late: a
// manager frozen with the request resumes and applies it).
const maxLateUnknown = 3

// acknowledgedStates replays writes: every acknowledged one in call order,
// and each unknown one either not at all or, when late is set, at its
// call's place or any later one (else at its call's place only). It
// returns the final states the replays that explain every acknowledged
// answer end in.
func acknowledgedStates(writes []record, unknown int, late bool) map[svcState]bool {
	var unknownAt []int
	for i, w := range writes {
		if w.Output.Outcome == outUnknown {
			unknownAt = append(unknownAt, i)
		}
	}
	candidates := map[svcState]bool{}
	slot := make([]int, unknown) // where each applied unknown write lands
	var place func(mask, k int)
	replay := func(mask int) {
		state := svcState{}
		apply := func(w record) bool {
			var good bool
			good, state = step(state, w.Input, w.Output)
			return good
		}
		for pos := 0; pos <= len(writes); pos++ {
			for u, i := range unknownAt {
				if mask&(1<<u) != 0 && slot[u] == pos && !apply(writes[i]) {
					return
				}
			}
			if pos < len(writes) && writes[pos].Output.Outcome != outUnknown && !apply(writes[pos]) {
				return
			}
		}
		candidates[state] = true
	}
	place = func(mask, k int) {
		if k == unknown {
			replay(mask)
			return
		}
		if mask&(1<<k) == 0 || !late {
			slot[k] = unknownAt[k]
			place(mask, k+1)
			return
		}
		for s := unknownAt[k]; s <= len(writes); s++ {
			slot[k] = s
			place(mask, k+1)
		}
	}
	for mask := 0; mask < 1<<unknown; mask++ {
		place(mask, 0)
	}
	return candidates
}

func checkAcknowledged(history []record, final map[string]svcState) (anomalies []string, skipped int) {
	byName := map[string][]record{}
	for _, r := range history {
		if r.Input.writes() {
			byName[r.Input.Name] = append(byName[r.Input.Name], r)
		}
	}
	names := make([]string, 0, len(byName))
	for n := range byName {
		names = append(names, n)
	}
	sort.Strings(names)
	for _, name := range names {
		writes := byName[name]
		sort.SliceStable(writes, func(i, j int) bool { return writes[i].Call < writes[j].Call })
		unknown := 0
		for _, w := range writes {
			if w.Output.Outcome == outUnknown {
				unknown++
			}
		}
		if unknown > maxUnknownWrites {
			skipped++
			continue
		}
		if unknown > maxLateUnknown {
			// Too many to place anywhere: each unknown write applies at
			// its call's place or not at all.
			candidates := acknowledgedStates(writes, unknown, false)
			if !candidates[final[name]] {
				skipped++ // left to (a), which places them anywhere
			}
			continue
		}
		candidates := acknowledgedStates(writes, unknown, true)
		got := final[name]
		if !candidates[got] {
			want := make([]string, 0, len(candidates))
			for s := range candidates {
				want = append(want, s.String())
			}
			slices.Sort(want)
			anomalies = append(anomalies, fmt.Sprintf("service %s: after the faults healed it is %s, but its acknowledged changes leave it %v (%d writes, %d of unknown outcome)",
				name, got, want, len(writes), unknown))
		}
	}
	return anomalies, skipped
}

// taskFact is a task the store says is running.
type taskFact struct {
	ID      string
	Service string
	Slot    uint64
	Node    string
	Version string
}

// procFact is a task process found on a worker (a hello process, by its
// environment).
type procFact struct {
	PID     int
	TaskID  string
	Service string
	Slot    uint64
	Version string
}

// supervisorFact is a task supervisor process and the task it runs.
type supervisorFact struct {
	PID    int
	TaskID string
}

// checkPlacement compares the store with the machine once faults healed:
// each service has exactly one running task per slot 1..replicas at its
// current version, and nothing else runs: every task process and every
// supervisor belongs to a task the store says is running, and every such
// task has exactly one process. It returns one line per problem.
func checkPlacement(services map[string]svcState, tasks []taskFact, procs []procFact, sups []supervisorFact) []string {
	var problems []string
	bySlot := map[string]map[uint64][]taskFact{}
	running := map[string]bool{}
	for _, t := range tasks {
		if bySlot[t.Service] == nil {
			bySlot[t.Service] = map[uint64][]taskFact{}
		}
		bySlot[t.Service][t.Slot] = append(bySlot[t.Service][t.Slot], t)
		running[t.ID] = true
	}
	names := make([]string, 0, len(services))
	for n := range services {
		names = append(names, n)
	}
	sort.Strings(names)
	for _, name := range names {
		want := services[name]
		if !want.Exists {
			if len(bySlot[name]) > 0 {
				problems = append(problems, fmt.Sprintf("service %s was removed but %d slots still have running tasks", name, len(bySlot[name])))
			}
			continue
		}
		// Slots need not be 1..N: a scale-down removes the slots that cost
		// least (unplaced ones first), so the survivors keep their numbers.
		slots := make([]uint64, 0, len(bySlot[name]))
		for slot := range bySlot[name] {
			slots = append(slots, slot)
		}
		sort.Slice(slots, func(i, j int) bool { return slots[i] < slots[j] })
		for _, slot := range slots {
			ts := bySlot[name][slot]
			switch {
			case slot == 0:
				problems = append(problems, fmt.Sprintf("service %s has %d running tasks without a slot", name, len(ts)))
			case len(ts) > 1:
				problems = append(problems, fmt.Sprintf("service %s slot %d runs twice in the store (tasks %s and %s)", name, slot, ts[0].ID, ts[1].ID))
			case ts[0].Version != want.Version:
				problems = append(problems, fmt.Sprintf("service %s slot %d runs version %s, want %s", name, slot, ts[0].Version, want.Version))
			}
		}
		if uint64(len(slots)) != want.Replicas {
			problems = append(problems, fmt.Sprintf("service %s runs tasks in %d slots %v, want %d replicas", name, len(slots), slots, want.Replicas))
		}
	}
	for svc := range bySlot {
		if _, ok := services[svc]; !ok {
			problems = append(problems, fmt.Sprintf("running tasks of unknown service %s", svc))
		}
	}
	procsOf := map[string][]procFact{}
	procsBySlot := map[string]int{}
	for _, p := range procs {
		procsOf[p.TaskID] = append(procsOf[p.TaskID], p)
		procsBySlot[fmt.Sprintf("%s.%d", p.Service, p.Slot)]++
		if !running[p.TaskID] {
			problems = append(problems, fmt.Sprintf("orphaned task process pid %d (%s.%d, task %s) runs but the store has no such running task", p.PID, p.Service, p.Slot, p.TaskID))
		}
	}
	for slot, n := range procsBySlot {
		if n > 1 {
			problems = append(problems, fmt.Sprintf("slot %s runs %d processes on the cluster", slot, n))
		}
	}
	for _, t := range tasks {
		if len(procsOf[t.ID]) == 0 {
			problems = append(problems, fmt.Sprintf("task %s (%s.%d on %s) is running in the store but no process runs it", t.ID, t.Service, t.Slot, t.Node))
		}
	}
	for _, s := range sups {
		if !running[s.TaskID] {
			problems = append(problems, fmt.Sprintf("orphaned supervisor pid %d for task %s", s.PID, s.TaskID))
		}
	}
	sort.Strings(problems)
	return problems
}

// explainedLater reports whether a service's state read again after the
// convergence check (no client running since the final read) is the final
// state, or the final state with one or two of the name's unknown-outcome
// writes landing late (a call that timed out may still commit).
func explainedLater(history []record, name string, final, later svcState) bool {
	reach := map[svcState]bool{final: true}
	for range 2 {
		for st := range maps.Clone(reach) {
			for _, r := range history {
				if r.Input.Name == name && r.Input.writes() && r.Output.Outcome == outUnknown {
					_, next := step(st, r.Input, r.Output)
					reach[next] = true
				}
			}
		}
	}
	return reach[later]
}
