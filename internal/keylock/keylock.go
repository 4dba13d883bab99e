// Package keylock provides mutexes by key (a task ID, say) whose Lock
// honours a context.
package keylock

import (
	"context"
	"sync"
)

// Map is a set of mutexes by key. A key's mutex is forgotten once nobody
// holds or waits for it, so a Map does not grow with every key it has
// seen. The zero value is ready to use; a Map must not be copied.
type Map struct {
	mu sync.Mutex
	m  map[string]*entry
}

type entry struct {
	sem  chan struct{}
	refs int
}

// Lock waits for key's mutex, or for ctx to end (then it returns ctx's
// error and holds nothing). On success it returns the function that
// unlocks; call it exactly once.
func (k *Map) Lock(ctx context.Context, key string) (unlock func(), err error) {
	k.mu.Lock()
	if k.m == nil {
		k.m = map[string]*entry{}
	}
	e := k.m[key]
	if e == nil {
		e = &entry{sem: make(chan struct{}, 1)}
		k.m[key] = e
	}
	e.refs++
	k.mu.Unlock()
	release := func() {
		k.mu.Lock()
		if e.refs--; e.refs == 0 {
			delete(k.m, key)
		}
		k.mu.Unlock()
	}
	select {
	case e.sem <- struct{}{}:
		return func() { <-e.sem; release() }, nil
	case <-ctx.Done():
		release()
		return nil, ctx.Err()
	}
}

// held reports how many keys have a holder or a waiter (for tests).
func (k *Map) held() int {
	k.mu.Lock()
	defer k.mu.Unlock()
	return len(k.m)
}
