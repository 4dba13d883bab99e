package container

import "context"

// Network gives each task a network namespace of its own, with its own
// address, on the node's task network.
type Network interface {
	// Attach makes (or finds, when called again) the task's network
	// namespace.
	Attach(ctx context.Context, taskID string) (Attachment, error)
	// Detach removes the task's namespace and frees its address; an
	// unknown task is already detached.
	Detach(ctx context.Context, taskID string) error
}

// Attachment is a task's place on the node's task network.
type Attachment struct {
	// NetNSPath is the task's network namespace (a bind-mounted nsfs file).
	NetNSPath string
	// IP is the task's own address: its ports are reachable there.
	IP string
	// ResolvConf is the task's /etc/resolv.conf (the node's resolver for
	// service names); empty: the node's own.
	ResolvConf []byte
}
