// Package faultreport is the file the chaos suite writes with each round's
// data-plane figures (shoal-chaos -rounds-json) and make bench reads back:
// one format, kept in one place.
package faultreport

import (
	"encoding/json"
	"fmt"
	"os"
)

// Round is one chaos round's figures: the requests clients sent to the
// published port of every live node, how many failed, the longest time a
// client saw nothing succeed, the writes through the surviving managers,
// and the control plane's side effects.
type Round struct {
	Fault         string  `json:"fault"`
	Requests      int     `json:"requests"`
	Failed        int     `json:"failed"`
	LongestOutage float64 `json:"longest_outage_s"`
	Writes        int     `json:"writes"`
	WriteErrors   int     `json:"write_errors"`
	MaxWrite      float64 `json:"max_write_s"`
	WorkersDown   int     `json:"workers_down"`
	Replaced      int     `json:"tasks_replaced"`
	Anomalies     int     `json:"anomalies"`
}

// Write writes rounds to path as JSON.
func Write(path string, rounds []Round) error {
	data, err := json.MarshalIndent(rounds, "", "  ")
	if err != nil {
		return fmt.Errorf("encode the rounds' figures: %w", err)
	}
	if err := os.WriteFile(path, append(data, '\n'), 0o644); err != nil {
		return fmt.Errorf("write the rounds' figures: %w", err)
	}
	return nil
}

// Read reads the rounds Write wrote to path.
func Read(path string) ([]Round, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("read the rounds' figures: %w", err)
	}
	var rounds []Round
	if err := json.Unmarshal(data, &rounds); err != nil {
		return nil, fmt.Errorf("read the rounds' figures from %s: %w", path, err)
	}
	return rounds, nil
}
