// Package gossip is Shoal's membership layer: every node runs one
// hashicorp/memberlist member bound to its advertised address. It tells
// who is alive, which nodes are managers and where their APIs are, and
// gives an early warning when a node dies. It is not the source of truth
// for task placement: the managers' heartbeat deadline is.
package gossip

import (
	"bytes"
	"crypto/rand"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log"
	"log/slog"
	"net"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/hashicorp/memberlist"
)

// Roles carried in the metadata.
const (
	RoleManager = "manager"
	RoleWorker  = "worker"
)

// Meta is what a member tells the others about itself. It must stay well
// under memberlist's 512-byte limit: only fixed-size fields.
type Meta struct {
	NodeID string `json:"i"`
	Role   string `json:"r"`
	// API is the node's gRPC address (host:port).
	API string `json:"a"`
	// Leaving is set just before a graceful leave, so the others can tell a
	// leave from a death (memberlist's leave callback does not say which).
	Leaving bool `json:"l,omitempty"`
}

// maxMetaSize is memberlist's limit on node metadata.
const maxMetaSize = memberlist.MetaMaxSize

// Member is a node gossip knows of.
type Member struct {
	Meta
	// Addr is the member's gossip address.
	Addr string
	// Alive is false for a member that announced it is leaving.
	Alive bool
}

// EventKind says what happened to a member.
type EventKind int

// Event kinds.
const (
	EventJoin EventKind = iota + 1
	EventUpdate
	// EventLeave is a graceful leave.
	EventLeave
	// EventDead is a member that stopped answering (after suspicion).
	EventDead
)

func (k EventKind) String() string {
	switch k {
	case EventJoin:
		return "join"
	case EventUpdate:
		return "update"
	case EventLeave:
		return "leave"
	case EventDead:
		return "dead"
	}
	return "unknown"
}

// Event is a membership change.
type Event struct {
	Kind   EventKind
	Member Member
}

// Config configures a member.
type Config struct {
	Meta Meta
	// BindIP and BindPort are where memberlist listens (TCP and UDP).
	BindIP   string
	BindPort int
	// AdvertiseIP and AdvertisePort are what others dial (default: bind).
	AdvertiseIP   string
	AdvertisePort int
	// ClusterID labels every packet, keeping two clusters on one network apart.
	ClusterID string
	// Keys encrypt gossip (AES-GCM; 16, 24 or 32 bytes each), the primary
	// key first: packets are sent with it and accepted with any of them.
	// At least one is required: gossip is never plaintext.
	Keys [][]byte
	// Fast uses LAN-local timings (probe every 500ms, suspicion ~1.5s),
	// for loopback clusters and tests.
	Fast   bool
	Logger *slog.Logger
}

// Gossip is this node's membership in the cluster's gossip network.
type Gossip struct {
	ml     *memberlist.Memberlist
	ring   *memberlist.Keyring
	cfg    Meta
	metaMu sync.Mutex
	meta   []byte
	log    *slog.Logger
	events chan Event
	// msgs holds the user messages others sent this member (Messages).
	msgs chan []byte

	mu       sync.Mutex
	shutdown bool
	// members is this node's own copy of the membership, kept by the event
	// callbacks (which memberlist calls under its lock): the nodes its
	// Members() returns are shared with memberlist's packet handlers.
	members map[string]Member
}

// New starts a member; call Join to meet the others.
func New(cfg Config) (*Gossip, error) {
	if cfg.Meta.NodeID == "" || cfg.BindIP == "" {
		return nil, fmt.Errorf("gossip: node ID and bind IP are required")
	}
	meta, err := json.Marshal(cfg.Meta)
	if err != nil {
		return nil, fmt.Errorf("gossip: encode metadata: %w", err)
	}
	if len(meta) > maxMetaSize {
		return nil, fmt.Errorf("gossip: metadata is %d bytes, over memberlist's %d-byte limit", len(meta), maxMetaSize)
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	g := &Gossip{cfg: cfg.Meta, meta: meta, log: cfg.Logger.With("component", "gossip"), events: make(chan Event, 1024),
		msgs: make(chan []byte, 1024), members: map[string]Member{}}

	mc := memberlist.DefaultLANConfig()
	if cfg.Fast {
		// Quick, but with room for a loaded machine: a probe that waits
		// too little marks live nodes dead.
		mc = memberlist.DefaultLocalConfig()
		mc.ProbeInterval = 500 * time.Millisecond
		mc.ProbeTimeout = 400 * time.Millisecond
		mc.SuspicionMult = 3
	}
	mc.Name = cfg.Meta.NodeID
	mc.BindAddr = cfg.BindIP
	mc.BindPort = cfg.BindPort
	mc.AdvertiseAddr = cfg.AdvertiseIP
	if mc.AdvertiseAddr == "" {
		mc.AdvertiseAddr = cfg.BindIP
	}
	mc.AdvertisePort = cfg.AdvertisePort
	if mc.AdvertisePort == 0 {
		mc.AdvertisePort = cfg.BindPort
	}
	mc.Label = "shoal/" + cfg.ClusterID
	if len(cfg.Keys) == 0 {
		return nil, fmt.Errorf("gossip: an encryption key is required")
	}
	ring, err := memberlist.NewKeyring(cfg.Keys[1:], cfg.Keys[0])
	if err != nil {
		return nil, fmt.Errorf("gossip: keys: %w", err)
	}
	mc.Keyring = ring
	g.ring = ring
	mc.GossipVerifyIncoming = true
	mc.GossipVerifyOutgoing = true
	mc.Delegate = &delegate{g: g}
	mc.Events = &eventDelegate{g: g}
	mc.DeadNodeReclaimTime = time.Second
	mc.LogOutput = nil
	mc.Logger = log.New(&logWriter{l: g.log}, "", 0)
	ml, err := memberlist.Create(mc)
	if err != nil {
		return nil, fmt.Errorf("gossip: listen on %s: %w", net.JoinHostPort(cfg.BindIP, strconv.Itoa(cfg.BindPort)), err)
	}
	g.ml = ml
	return g, nil
}

// SetKeys replaces the gossip keys, the primary first (a rotation): the
// new keys are installed, the primary is used, the rest removed.
func (g *Gossip) SetKeys(keys [][]byte) error {
	if len(keys) == 0 {
		return fmt.Errorf("gossip: an encryption key is required")
	}
	ring := g.ring
	for _, k := range keys {
		if err := ring.AddKey(k); err != nil {
			return fmt.Errorf("gossip: add key: %w", err)
		}
	}
	if err := ring.UseKey(keys[0]); err != nil {
		return fmt.Errorf("gossip: use key: %w", err)
	}
	for _, old := range ring.GetKeys() {
		if !slices.ContainsFunc(keys, func(k []byte) bool { return bytes.Equal(k, old) }) {
			if err := ring.RemoveKey(old); err != nil {
				return fmt.Errorf("gossip: remove key: %w", err)
			}
		}
	}
	return nil
}

// SameKeys reports whether two key lists are the same keys in the same
// order: the primary (the first) included, so a rotation counts as a
// change.
func SameKeys(a, b [][]byte) bool { return slices.EqualFunc(a, b, bytes.Equal) }

// NewKey returns a fresh 32-byte gossip key (AES-256).
func NewKey() []byte {
	k := make([]byte, 32)
	if _, err := rand.Read(k); err != nil {
		panic("gossip: no randomness: " + err.Error())
	}
	return k
}

// Join contacts the given gossip addresses (host:port) and returns how
// many answered. One is enough.
func (g *Gossip) Join(addrs []string) (int, error) {
	if len(addrs) == 0 {
		return 0, nil
	}
	n, err := g.ml.Join(addrs)
	if err != nil && n == 0 {
		return 0, fmt.Errorf("gossip: join %s: %w", strings.Join(addrs, ", "), err)
	}
	return n, nil
}

// Members returns every member currently alive, this one included.
func (g *Gossip) Members() []Member {
	g.mu.Lock()
	defer g.mu.Unlock()
	out := make([]Member, 0, len(g.members))
	for _, m := range g.members {
		if m.Alive {
			out = append(out, m)
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].NodeID < out[j].NodeID })
	return out
}

// Managers returns the alive members that are managers.
func (g *Gossip) Managers() []Member {
	var out []Member
	for _, m := range g.Members() {
		if m.Role == RoleManager {
			out = append(out, m)
		}
	}
	return out
}

// Events delivers membership changes. Events are dropped (with a log line)
// when nobody reads: Members is always the current truth.
func (g *Gossip) Events() <-chan Event { return g.events }

// Leave announces a graceful departure and stops the member.
func (g *Gossip) Leave(timeout time.Duration) error {
	leaving := g.cfg
	leaving.Leaving = true
	if meta, err := json.Marshal(leaving); err == nil {
		g.metaMu.Lock()
		g.meta = meta
		g.metaMu.Unlock()
		if err := g.ml.UpdateNode(timeout); err != nil {
			g.log.Warn("gossip: announce leave", "err", err)
		}
	}
	if err := g.ml.Leave(timeout); err != nil {
		g.log.Warn("gossip leave", "err", err)
	}
	return g.Shutdown()
}

// Shutdown stops the member without announcing it (others see it dead).
func (g *Gossip) Shutdown() error {
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.shutdown {
		return nil
	}
	g.shutdown = true
	if err := g.ml.Shutdown(); err != nil {
		return fmt.Errorf("gossip: shutdown: %w", err)
	}
	return nil
}

// LocalAddr is this member's advertised gossip address.
func (g *Gossip) LocalAddr() string {
	n := g.ml.LocalNode()
	return net.JoinHostPort(n.Addr.String(), strconv.Itoa(int(n.Port)))
}

func toMember(n *memberlist.Node) (Member, bool) {
	var meta Meta
	if err := json.Unmarshal(n.Meta, &meta); err != nil || meta.NodeID == "" {
		return Member{}, false
	}
	return Member{
		Meta:  meta,
		Addr:  net.JoinHostPort(n.Addr.String(), strconv.Itoa(int(n.Port))),
		Alive: !meta.Leaving,
	}, true
}

func (g *Gossip) emit(kind EventKind, n *memberlist.Node) {
	m, ok := toMember(n)
	if !ok {
		return
	}
	g.mu.Lock()
	if kind == EventLeave || kind == EventDead {
		delete(g.members, m.NodeID)
	} else {
		g.members[m.NodeID] = m
	}
	g.mu.Unlock()
	select {
	case g.events <- Event{Kind: kind, Member: m}:
	default:
		g.log.Warn("gossip event dropped: nobody is reading", "event", kind.String(), "node", m.NodeID)
	}
}

// MaxMessage is the largest user message SendToAll sends: one UDP packet
// with room for memberlist's framing and encryption.
const MaxMessage = 1024

// SendToAll sends msg to every other live member, best effort: one UDP
// packet each, encrypted with the cluster's gossip key, neither retried
// nor relayed (what must arrive goes through the managers too). It
// returns how many members it was sent to.
func (g *Gossip) SendToAll(msg []byte) (int, error) {
	if len(msg) == 0 || len(msg) > MaxMessage {
		return 0, fmt.Errorf("gossip: a message is 1 to %d bytes, not %d", MaxMessage, len(msg))
	}
	g.mu.Lock()
	down := g.shutdown
	g.mu.Unlock()
	if down {
		return 0, fmt.Errorf("gossip: send: this member has shut down")
	}
	self := g.ml.LocalNode().Name
	sent := 0
	var errs []error
	for _, n := range g.ml.Members() {
		if n.Name == self {
			continue
		}
		if err := g.ml.SendBestEffort(n, msg); err != nil {
			errs = append(errs, fmt.Errorf("to %s: %w", n.Name, err))
			continue
		}
		sent++
	}
	if len(errs) > 0 {
		return sent, fmt.Errorf("gossip: send: %w", errors.Join(errs...))
	}
	return sent, nil
}

// Messages delivers the messages other members sent with SendToAll. A
// message that arrives while 1024 wait unread is dropped.
func (g *Gossip) Messages() <-chan []byte { return g.msgs }

// delegate serves this member's metadata and takes in user messages.
type delegate struct{ g *Gossip }

func (d *delegate) NodeMeta(limit int) []byte {
	d.g.metaMu.Lock()
	defer d.g.metaMu.Unlock()
	if len(d.g.meta) > limit {
		return nil
	}
	return d.g.meta
}
func (d *delegate) NotifyMsg(b []byte) {
	if len(b) == 0 {
		return
	}
	msg := append([]byte(nil), b...) // memberlist reuses b
	select {
	case d.g.msgs <- msg:
	default:
		d.g.log.Warn("gossip message dropped: nobody is reading")
	}
}
func (d *delegate) GetBroadcasts(overhead, limit int) [][]byte { return nil }
func (d *delegate) LocalState(join bool) []byte                { return nil }
func (d *delegate) MergeRemoteState(buf []byte, join bool)     {}

// eventDelegate turns memberlist callbacks into Events.
type eventDelegate struct{ g *Gossip }

func (e *eventDelegate) NotifyJoin(n *memberlist.Node)   { e.g.emit(EventJoin, n) }
func (e *eventDelegate) NotifyUpdate(n *memberlist.Node) { e.g.emit(EventUpdate, n) }
func (e *eventDelegate) NotifyLeave(n *memberlist.Node) {
	e.g.mu.Lock()
	last, known := e.g.members[n.Name]
	e.g.mu.Unlock()
	if m, ok := toMember(n); (ok && m.Leaving) || (known && last.Leaving) {
		e.g.emit(EventLeave, n)
		return
	}
	e.g.emit(EventDead, n)
}

// logWriter routes memberlist's log lines into slog.
type logWriter struct{ l *slog.Logger }

var _ io.Writer = (*logWriter)(nil)

func (w *logWriter) Write(p []byte) (int, error) {
	line := strings.TrimSpace(string(p))
	switch {
	case strings.Contains(line, "[DEBUG]"):
		w.l.Debug(strings.TrimPrefix(line, "[DEBUG] memberlist: "))
	case strings.Contains(line, "[ERR]"):
		w.l.Error(strings.TrimPrefix(line, "[ERR] memberlist: "))
	case strings.Contains(line, "[WARN]"):
		w.l.Warn(strings.TrimPrefix(line, "[WARN] memberlist: "))
	default:
		w.l.Info(strings.TrimPrefix(strings.TrimPrefix(line, "[INFO] "), "memberlist: "))
	}
	return len(p), nil
}
