//go:build !linux

package worker

// isTmpfs cannot tell outside Linux: no directory counts as in-memory,
// so an operator names one with Config.SecretsDir.
func isTmpfs(string) bool { return false }
