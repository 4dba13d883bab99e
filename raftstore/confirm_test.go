package raftstore

import (
	"context"
	"errors"
	"testing"
	"time"

	pb "github.com/shoal-cluster/shoal/proto"
)

// deposed is a committer standing for a leader that has not yet heard of
// its successor: it still believes it may write, its commits would fail,
// and a quorum would tell it it no longer leads.
type deposed struct{ confirms int }

func (d *deposed) awaitWritable(context.Context) error { return nil }
func (d *deposed) commit(context.Context, *pb.Transaction) (*applyResult, error) {
	return nil, ErrNotLeader
}
func (d *deposed) confirm(context.Context) error { d.confirms++; return ErrNotLeader }
func (d *deposed) now() time.Time                { return time.Now() }

// An Update that finds nothing to change is a read: for a client's call
// it answers only after the quorum confirms the leadership, so a deposed
// leader answers "not the leader" rather than "done" from its stale state.
// A refusal is returned as it is, for the caller to confirm.
func TestAnswersThatCommitNothingAreConfirmed(t *testing.T) {
	h := newFSMHarness(t)
	h.commit("seed", func(tx *Tx) error { return tx.Services().Create(testService("s1", "web")) })
	refuse := func(tx *Tx) error {
		if _, ok := tx.Services().Get("s1"); ok {
			return ErrExists
		}
		return nil
	}
	nothing := func(*Tx) error { return nil }
	cases := []struct {
		name     string
		client   bool
		fn       func(*Tx) error
		want     error
		confirms int
	}{
		{"a client's refusal", true, refuse, ErrExists, 0},
		{"a client's change of nothing", true, nothing, ErrNotLeader, 1},
		{"a leader loop's refusal", false, refuse, ErrExists, 0},
		{"a leader loop's change of nothing", false, nothing, nil, 0},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			ctx := context.Background()
			if tc.client {
				ctx = WithConfirmedAnswers(ctx)
			}
			d := &deposed{}
			_, err := update(ctx, h.f, make(chan struct{}, 1), d, tc.fn)
			if !errors.Is(err, tc.want) || (tc.want == nil && err != nil) {
				t.Fatalf("Update = %v, want %v", err, tc.want)
			}
			if d.confirms != tc.confirms {
				t.Fatalf("%d leadership confirmations, want %d", d.confirms, tc.confirms)
			}
		})
	}
}
