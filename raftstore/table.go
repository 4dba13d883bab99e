package raftstore

import (
	"sort"

	pb "github.com/shoal-cluster/shoal/proto"
	"google.golang.org/protobuf/proto"
)

// Object is a stored object: a protobuf message with an ID and a Meta.
type Object interface {
	proto.Message
	GetId() string
	GetMeta() *pb.Meta
}

// Index names used by the tables.
const (
	// IndexName indexes nodes by hostname and services, secrets, configs
	// and networks by name.
	IndexName = "name"
	// IndexService indexes tasks by service ID.
	IndexService = "service"
	// IndexNode indexes tasks by node ID.
	IndexNode = "node"
)

// indexDef derives one secondary key from an object; an empty key is not
// indexed. Unique indexes refuse two objects with the same key.
type indexDef[T Object] struct {
	name   string
	unique bool
	key    func(T) string
}

// table holds one kind of object by ID plus its secondary indexes. Stored
// objects are immutable: a change replaces the pointer, so snapshots and
// readers may share them without copying.
type table[T Object] struct {
	byID    map[string]T
	defs    []indexDef[T]
	indexes map[string]map[string]map[string]struct{} // index -> key -> IDs
}

func newTable[T Object](defs ...indexDef[T]) *table[T] {
	t := &table[T]{byID: map[string]T{}, defs: defs, indexes: map[string]map[string]map[string]struct{}{}}
	for _, d := range defs {
		t.indexes[d.name] = map[string]map[string]struct{}{}
	}
	return t
}

func (t *table[T]) get(id string) (T, bool) {
	o, ok := t.byID[id]
	return o, ok
}

func (t *table[T]) len() int { return len(t.byID) }

// conflict returns the ID of another object that holds one of o's unique keys.
func (t *table[T]) conflict(o T) (string, string, bool) {
	for _, d := range t.defs {
		if !d.unique {
			continue
		}
		k := d.key(o)
		if k == "" {
			continue
		}
		for id := range t.indexes[d.name][k] {
			if id != o.GetId() {
				return d.name, k, true
			}
		}
	}
	return "", "", false
}

func (t *table[T]) put(o T) {
	if old, ok := t.byID[o.GetId()]; ok {
		t.unindex(old)
	}
	t.byID[o.GetId()] = o
	for _, d := range t.defs {
		k := d.key(o)
		if k == "" {
			continue
		}
		set := t.indexes[d.name][k]
		if set == nil {
			set = map[string]struct{}{}
			t.indexes[d.name][k] = set
		}
		set[o.GetId()] = struct{}{}
	}
}

func (t *table[T]) remove(id string) {
	if old, ok := t.byID[id]; ok {
		t.unindex(old)
		delete(t.byID, id)
	}
}

func (t *table[T]) unindex(o T) {
	for _, d := range t.defs {
		k := d.key(o)
		if k == "" {
			continue
		}
		set := t.indexes[d.name][k]
		delete(set, o.GetId())
		if len(set) == 0 {
			delete(t.indexes[d.name], k)
		}
	}
}

// all returns every object, sorted by ID so callers see a stable order.
func (t *table[T]) all() []T {
	out := make([]T, 0, len(t.byID))
	for _, o := range t.byID {
		out = append(out, o)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].GetId() < out[j].GetId() })
	return out
}

// lookup returns the objects whose index key equals key, sorted by ID.
func (t *table[T]) lookup(index, key string) []T {
	set := t.indexes[index][key]
	out := make([]T, 0, len(set))
	for id := range set {
		out = append(out, t.byID[id])
	}
	sort.Slice(out, func(i, j int) bool { return out[i].GetId() < out[j].GetId() })
	return out
}

// state is the whole in-memory cluster state the FSM applies to.
type state struct {
	nodes    *table[*pb.Node]
	services *table[*pb.Service]
	tasks    *table[*pb.Task]
	clusters *table[*pb.Cluster]
	secrets  *table[*pb.Secret]
	configs  *table[*pb.Config]
	networks *table[*pb.Network]
	requests *requestLog
	index    uint64
}

func newState() *state {
	return &state{
		nodes: newTable(indexDef[*pb.Node]{name: IndexName, key: func(n *pb.Node) string {
			return n.GetDescription().GetHostname()
		}}),
		services: newTable(indexDef[*pb.Service]{name: IndexName, unique: true, key: func(s *pb.Service) string {
			return s.GetSpec().GetAnnotations().GetName()
		}}),
		tasks: newTable(
			indexDef[*pb.Task]{name: IndexService, key: func(t *pb.Task) string { return t.GetServiceId() }},
			indexDef[*pb.Task]{name: IndexNode, key: func(t *pb.Task) string { return t.GetNodeId() }},
		),
		clusters: newTable[*pb.Cluster](),
		secrets: newTable(indexDef[*pb.Secret]{name: IndexName, unique: true, key: func(s *pb.Secret) string {
			return s.GetSpec().GetAnnotations().GetName()
		}}),
		configs: newTable(indexDef[*pb.Config]{name: IndexName, unique: true, key: func(c *pb.Config) string {
			return c.GetSpec().GetAnnotations().GetName()
		}}),
		networks: newTable(indexDef[*pb.Network]{name: IndexName, unique: true, key: func(n *pb.Network) string {
			return n.GetSpec().GetAnnotations().GetName()
		}}),
		requests: newRequestLog(requestLogSize),
	}
}

// requestLogSize bounds how many applied request IDs the FSM remembers.
const requestLogSize = 16384

// requestLog remembers the most recent applied request IDs, oldest evicted
// first. Every replica applies the same entries, so every replica evicts
// alike and the log is part of the snapshot.
type requestLog struct {
	max   int
	order []string
	byID  map[string]uint64
}

func newRequestLog(max int) *requestLog {
	return &requestLog{max: max, byID: map[string]uint64{}}
}

func (l *requestLog) lookup(id string) (uint64, bool) {
	idx, ok := l.byID[id]
	return idx, ok
}

func (l *requestLog) add(id string, index uint64) {
	if id == "" {
		return
	}
	if _, ok := l.byID[id]; ok {
		return
	}
	l.byID[id] = index
	l.order = append(l.order, id)
	if len(l.order) > l.max {
		drop := l.order[0]
		l.order = l.order[1:]
		delete(l.byID, drop)
	}
}

func (l *requestLog) entries() []*pb.AppliedRequest {
	out := make([]*pb.AppliedRequest, 0, len(l.order))
	for _, id := range l.order {
		out = append(out, &pb.AppliedRequest{RequestId: id, Index: l.byID[id]})
	}
	return out
}
