//go:build !linux

package process

import (
	"context"
	"errors"
)

// watchPid needs a pidfd (Linux); elsewhere Wait polls.
func watchPid(context.Context, int) (<-chan struct{}, error) {
	return nil, errors.New("no pidfd on this system")
}
