package main

import (
	"context"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/shoal-cluster/shoal/worker/process/supervise"
)

// The standalone supervisor answers the protocol check, and links none of
// shoal's heavy dependencies: they are what make shoal itself slow to
// start as a supervisor.
func TestStandaloneSupervisor(t *testing.T) {
	bin := filepath.Join(t.TempDir(), supervise.Binary)
	build := exec.Command("go", "build", "-o", bin, ".")
	build.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("go build: %v: %s", err, out)
	}
	if err := supervise.CheckStandalone(context.Background(), bin); err != nil {
		t.Fatalf("check: %v", err)
	}
	out, err := exec.Command(bin, "-protocol").Output()
	if err != nil || strings.TrimSpace(string(out)) != supervise.Protocol {
		t.Fatalf("-protocol: %q, %v", out, err)
	}

	// Bad input: usage errors exit 2 and say how to call it.
	for _, args := range [][]string{{}, {"relative/dir"}, {"-grace", "soon", "/tmp/x"}} {
		cmd := exec.Command(bin, args...)
		out, err := cmd.CombinedOutput()
		if ee, ok := err.(*exec.ExitError); !ok || ee.ExitCode() != 2 {
			t.Errorf("%v: exit %v, want 2 (output %q)", args, err, out)
		}
	}

	deps, err := exec.Command("go", "list", "-deps", ".").Output()
	if err != nil {
		t.Fatal(err)
	}
	for _, heavy := range []string{"google.golang.org/protobuf", "google.golang.org/grpc", "github.com/shoal-cluster/shoal/proto"} {
		if strings.Contains(string(deps), heavy) {
			t.Errorf("shoal-supervise links %s; the supervisor must stay small", heavy)
		}
	}
}

// A supervisor from another version, or something else by that name, is
// refused with a message saying what to do.
func TestCheckStandaloneRefuses(t *testing.T) {
	dir := t.TempDir()
	for name, script := range map[string]string{
		"other-version": "#!/bin/sh\necho shoal-supervise/0\n",
		"fails":         "#!/bin/sh\necho broken >&2\nexit 1\n",
	} {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(script), 0o755); err != nil {
			t.Fatal(err)
		}
		err := supervise.CheckStandalone(context.Background(), p)
		if err == nil {
			t.Errorf("%s: accepted", name)
			continue
		}
		if name == "other-version" && !strings.Contains(err.Error(), "install the shoal-supervise built with this shoal") {
			t.Errorf("%s: %v", name, err)
		}
		if name == "fails" && !strings.Contains(err.Error(), "broken") {
			t.Errorf("%s: %v", name, err)
		}
	}
	if err := supervise.CheckStandalone(context.Background(), filepath.Join(dir, "missing")); err == nil {
		t.Error("a missing binary was accepted")
	}
}

// CommandLine picks the standalone supervisor next to shoal when it speaks
// this protocol, and shoal __supervise otherwise, saying why.
func TestCommandLine(t *testing.T) {
	dir := t.TempDir()
	shoal := filepath.Join(dir, "shoal")
	cmd, err := supervise.CommandLine(context.Background(), shoal)
	if !errors.Is(err, os.ErrNotExist) || len(cmd) != 2 || cmd[0] != shoal || cmd[1] != supervise.SupervisorSubcommand {
		t.Fatalf("without a standalone supervisor: %q, %v", cmd, err)
	}
	standalone := filepath.Join(dir, supervise.Binary)
	if err := os.WriteFile(standalone, []byte("#!/bin/sh\necho shoal-supervise/0\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	if cmd, err := supervise.CommandLine(context.Background(), shoal); err == nil || cmd[0] != shoal {
		t.Fatalf("with a standalone supervisor of another version: %q, %v", cmd, err)
	}
	if err := os.WriteFile(standalone, []byte("#!/bin/sh\necho "+supervise.Protocol+"\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	if cmd, err := supervise.CommandLine(context.Background(), shoal); err != nil || len(cmd) != 1 || cmd[0] != standalone {
		t.Fatalf("with the standalone supervisor: %q, %v", cmd, err)
	}
}
