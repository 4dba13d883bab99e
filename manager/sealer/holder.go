package sealer

import (
	"fmt"
	"sync/atomic"
)

// Holder is the secrets key one manager holds, if any: loaded from its
// data dir at start, or received when it joins. It is safe for concurrent
// use.
type Holder struct {
	key    atomic.Pointer[Key]
	nodeID string
	dir    string
}

// NewHolder returns an empty holder for the manager nodeID whose data dir
// is dir (named in the error Key returns while it holds no key).
func NewHolder(nodeID, dir string) *Holder { return &Holder{nodeID: nodeID, dir: dir} }

// Set installs the key.
func (h *Holder) Set(k *Key) { h.key.Store(k) }

// Key returns the cluster's secrets key, or an error saying why this
// manager has none.
func (h *Holder) Key() (*Key, error) {
	if k := h.key.Load(); k != nil {
		return k, nil
	}
	return nil, fmt.Errorf("manager %s has no secrets key (%s is missing from its data dir %s): restore the file from another manager's data dir", h.nodeID, FileName, h.dir)
}

// ForJoin is the raw key handed to a node joining as a manager; nil when
// this manager holds none.
func (h *Holder) ForJoin() []byte {
	if k := h.key.Load(); k != nil {
		return k.Raw()
	}
	return nil
}
