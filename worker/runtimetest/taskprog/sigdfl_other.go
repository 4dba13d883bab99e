//go:build !linux

package taskprog

import (
	"errors"
	"syscall"
)

func defaultAction(syscall.Signal) (func(), error) {
	return nil, errors.New("late-trap needs Linux")
}
