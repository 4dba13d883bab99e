package tests

import (
	"fmt"
	"os"
	"strings"
)

// readEnviron reads a process's environment.
func readEnviron(pid int) (map[string]string, error) {
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/environ", pid))
	if err != nil {
		return nil, err
	}
	env := map[string]string{}
	for _, kv := range strings.Split(string(data), "\x00") {
		if k, v, ok := strings.Cut(kv, "="); ok {
			env[k] = v
		}
	}
	return env, nil
}

func writeFile(path, content string) error { return os.WriteFile(path, []byte(content), 0o600) }
