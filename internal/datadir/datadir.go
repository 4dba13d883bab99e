// Package datadir reads and writes a node's identity file, node.json, the
// mark that a directory belongs to a Shoal node.
package datadir

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
)

// FileName is the identity file inside a data dir.
const FileName = "node.json"

// format is the version of node.json.
const format = 1

// Identity is who a node is and which cluster it belongs to.
type Identity struct {
	Format    int    `json:"format"`
	NodeID    string `json:"node_id"`
	ClusterID string `json:"cluster_id"`
	// Role is "manager" or "worker".
	Role string `json:"role"`
	// RaftID is the node's Raft server ID while it is a manager.
	RaftID string `json:"raft_id,omitempty"`
	// InitializedHere is true on the node whose `init` created the cluster.
	InitializedHere bool `json:"initialized_here,omitempty"`
	// Removed is set when the node learns it was removed from the cluster.
	Removed bool `json:"removed,omitempty"`
	// Hostname is the name the node registered with.
	Hostname string `json:"hostname,omitempty"`
	// Advertise is the node's advertised IP:PORT (API port).
	Advertise string `json:"advertise,omitempty"`
	// GossipKeys are the cluster's gossip encryption keys, primary first
	// (the file is private: 0600).
	GossipKeys [][]byte `json:"gossip_keys,omitempty"`
	// Managers are the manager API addresses a worker last heard of.
	Managers []string `json:"managers,omitempty"`
	// Revoked are the nodes whose certificates a worker refuses (removed
	// nodes, demoted managers), as the cluster last said.
	Revoked []string `json:"revoked,omitempty"`
}

// ErrNoIdentity means the directory holds no node.json.
var ErrNoIdentity = errors.New("no node identity in data dir")

// Load reads dir/node.json.
func Load(dir string) (*Identity, error) {
	data, err := os.ReadFile(filepath.Join(dir, FileName))
	if errors.Is(err, os.ErrNotExist) {
		return nil, ErrNoIdentity
	}
	if err != nil {
		return nil, fmt.Errorf("read %s: %w", filepath.Join(dir, FileName), err)
	}
	var id Identity
	if err := json.Unmarshal(data, &id); err != nil {
		return nil, fmt.Errorf("%s is corrupt: %w", filepath.Join(dir, FileName), err)
	}
	if id.Format != format || id.NodeID == "" || id.ClusterID == "" {
		return nil, fmt.Errorf("%s: unsupported format %d or missing IDs", filepath.Join(dir, FileName), id.Format)
	}
	return &id, nil
}

// Save writes dir/node.json atomically and durably.
func Save(dir string, id *Identity) error {
	id.Format = format
	data, err := json.MarshalIndent(id, "", "  ")
	if err != nil {
		return fmt.Errorf("encode identity: %w", err)
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return fmt.Errorf("create data dir %s: %w", dir, err)
	}
	tmp := filepath.Join(dir, FileName+".tmp")
	f, err := os.OpenFile(tmp, os.O_CREATE|os.O_TRUNC|os.O_WRONLY, 0o600)
	if err != nil {
		return fmt.Errorf("write identity: %w", err)
	}
	if _, err := f.Write(append(data, '\n')); err != nil {
		f.Close()
		return fmt.Errorf("write identity: %w", err)
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return fmt.Errorf("sync identity: %w", err)
	}
	if err := f.Close(); err != nil {
		return fmt.Errorf("close identity: %w", err)
	}
	if err := os.Rename(tmp, filepath.Join(dir, FileName)); err != nil {
		return fmt.Errorf("install identity: %w", err)
	}
	if d, err := os.Open(dir); err == nil {
		_ = d.Sync()
		d.Close()
	}
	return nil
}

// CheckUnused returns nil when dir does not exist or is empty, and an error
// that says what to do when it holds something that is not a fresh node.
func CheckUnused(dir string) error {
	if id, err := Load(dir); err == nil {
		return fmt.Errorf("data dir %s already belongs to node %s of cluster %s; restart that node with the same command, or pick an empty directory", dir, id.NodeID, id.ClusterID)
	}
	entries, err := os.ReadDir(dir)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("data dir %s: %w", dir, err)
	}
	if len(entries) > 0 {
		return fmt.Errorf("data dir %s is not empty and is not a Shoal data dir (no %s); pick an empty or new directory", dir, FileName)
	}
	return nil
}
