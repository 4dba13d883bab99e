package tasknet

import (
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
)

// state is what a network keeps in StateDir/state.json.
type state struct {
	Subnet netip.Prefix `json:"subnet"`
	Bridge string       `json:"bridge"`
	// Tasks are the allocations: task ID -> address.
	Tasks map[string]netip.Addr `json:"tasks"`
	// Last is the address handed out last: the next allocation starts
	// after it, so a freed address is not reused at once (a peer's ARP
	// cache or conntrack entry may still point at it).
	Last netip.Addr `json:"last,omitzero"`
	// Routes are the peer routes this network installed: subnet -> via.
	Routes map[netip.Prefix]netip.Addr `json:"routes,omitempty"`
}

const stateFile = "state.json"

func loadState(dir string) (*state, error) {
	data, err := os.ReadFile(filepath.Join(dir, stateFile))
	if errors.Is(err, os.ErrNotExist) {
		return &state{}, nil
	}
	if err != nil {
		return nil, fmt.Errorf("tasknet: read state: %w", err)
	}
	var st state
	if err := json.Unmarshal(data, &st); err != nil {
		return nil, fmt.Errorf("tasknet: %s is damaged (%v): remove it and the tasks' namespaces under %s to start afresh", filepath.Join(dir, stateFile), err, filepath.Join(dir, "netns"))
	}
	return &st, nil
}

// save writes the state atomically (a new file renamed over the old one).
func (s *state) save(dir string) error {
	data, err := json.MarshalIndent(s, "", "  ")
	if err != nil {
		return fmt.Errorf("tasknet: encode state: %w", err)
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return fmt.Errorf("tasknet: create %s: %w", dir, err)
	}
	tmp, err := os.CreateTemp(dir, stateFile+".*")
	if err != nil {
		return fmt.Errorf("tasknet: write state: %w", err)
	}
	if _, err = tmp.Write(data); err == nil {
		err = tmp.Sync()
	}
	if cerr := tmp.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(tmp.Name(), filepath.Join(dir, stateFile))
	}
	if err != nil {
		_ = os.Remove(tmp.Name())
		return fmt.Errorf("tasknet: write state: %w", err)
	}
	return nil
}

// allocate picks a free address of subnet: not the network address, the
// gateway or the broadcast address, the first free one after Last.
func (s *state) allocate(subnet netip.Prefix) (netip.Addr, error) {
	used := make(map[netip.Addr]bool, len(s.Tasks))
	for _, ip := range s.Tasks {
		used[ip] = true
	}
	first := Gateway(subnet).Next()
	last := broadcast(subnet).Prev()
	start := first
	if s.Last.IsValid() && subnet.Contains(s.Last) && s.Last.Compare(first) >= 0 && s.Last.Compare(last) < 0 {
		start = s.Last.Next()
	}
	ip := start
	for {
		if !used[ip] {
			s.Last = ip
			return ip, nil
		}
		ip = ip.Next()
		if ip.Compare(last) > 0 {
			ip = first
		}
		if ip == start {
			return netip.Addr{}, fmt.Errorf("tasknet: subnet %s is full (%d tasks attached): detach tasks first", subnet, len(s.Tasks))
		}
	}
}

// broadcast is a subnet's last address.
func broadcast(p netip.Prefix) netip.Addr {
	a := p.Masked().Addr().As4()
	bits := p.Bits()
	for i := range 4 {
		for b := range 8 {
			if i*8+b >= bits {
				a[i] |= 0x80 >> b
			}
		}
	}
	return netip.AddrFrom4(a)
}
