//go:build !linux

package spreaddir

func mark(string) error { return nil }
