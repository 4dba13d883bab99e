package supervise

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"
)

// Binary is the standalone supervisor's executable name. Installed next
// to shoal, it is what the runtimes start for each task.
const Binary = "shoal-supervise"

// Protocol names the command line and the task directory layout this
// supervisor speaks. A standalone supervisor is used only when it prints
// the same: a binary left from another version of shoal is not.
const Protocol = "shoal-supervise/1"

// ProtocolFlag, as the only argument, makes a supervisor print Protocol
// and exit.
const ProtocolFlag = "-protocol"

// checkTimeout bounds CheckStandalone's run of the binary.
const checkTimeout = 5 * time.Second

// CheckStandalone runs the supervisor at path with ProtocolFlag and
// returns an error saying why it cannot be used when it does not print
// this Protocol.
func CheckStandalone(ctx context.Context, path string) error {
	ctx, cancel := context.WithTimeout(ctx, checkTimeout)
	defer cancel()
	var stderr bytes.Buffer
	cmd := exec.CommandContext(ctx, path, ProtocolFlag)
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		return fmt.Errorf("supervisor %s: %w: %s", path, err, strings.TrimSpace(stderr.String()))
	}
	if got := strings.TrimSpace(string(out)); got != Protocol {
		return fmt.Errorf("supervisor %s speaks %q, this shoal %q: install the %s built with this shoal", path, got, Protocol, Binary)
	}
	return nil
}

// CommandLine is the command line that starts a task's supervisor for the
// shoal binary at shoal: the standalone supervisor next to it (Binary)
// when it is there and speaks this Protocol, else shoal itself with
// SupervisorSubcommand, and why the standalone one is not used.
func CommandLine(ctx context.Context, shoal string) ([]string, error) {
	standalone := filepath.Join(filepath.Dir(shoal), Binary)
	if _, err := os.Stat(standalone); err != nil {
		return []string{shoal, SupervisorSubcommand}, fmt.Errorf("no %s next to %s: %w", Binary, shoal, err)
	}
	if err := CheckStandalone(ctx, standalone); err != nil {
		return []string{shoal, SupervisorSubcommand}, err
	}
	return []string{standalone}, nil
}
