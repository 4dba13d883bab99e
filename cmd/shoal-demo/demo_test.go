package main

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"
)

// buildDemo builds shoal, hello and this tour into one directory.
func buildDemo(t *testing.T) string {
	t.Helper()
	dir := t.TempDir()
	for _, b := range []struct{ out, pkg string }{
		{"shoal", "../shoal"}, {"hello", "../hello"}, {"shoal-demo", "."},
	} {
		cmd := exec.Command("go", "build", "-o", filepath.Join(dir, b.out), b.pkg)
		cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("build %s: %v\n%s", b.pkg, err, out)
		}
	}
	return dir
}

// dockerReady reports whether the tour can run with containers, building
// the sample images when they are missing. Without an Engine the docker
// tour is skipped, unless SHOAL_REQUIRE_DOCKER=1 (as CI sets it).
func dockerReady(t *testing.T) {
	t.Helper()
	if out, err := exec.Command("docker", "info", "--format", "{{.ServerVersion}}").CombinedOutput(); err != nil {
		if os.Getenv("SHOAL_REQUIRE_DOCKER") == "1" {
			t.Fatalf("SHOAL_REQUIRE_DOCKER=1 but the Docker Engine does not answer: %v: %s", err, out)
		}
		t.Skipf("no Docker Engine (set SHOAL_REQUIRE_DOCKER=1 to require one): %s", out)
	}
	if exec.Command("docker", "image", "inspect", "shoal/hello:v1").Run() != nil {
		if out, err := exec.Command("../../scripts/images.sh").CombinedOutput(); err != nil {
			t.Fatalf("scripts/images.sh: %v\n%s", err, out)
		}
	}
}

// TestTour runs `make demo`'s tour as a user would and checks what it
// prints: every replica answering through the published port, the leader
// change, the scale to 9, and nothing left running.
func TestTour(t *testing.T) {
	if testing.Short() {
		t.Skip("the tour starts six daemons")
	}
	for _, runtime := range []string{"process", "docker"} {
		t.Run(runtime, func(t *testing.T) {
			if runtime == "docker" {
				dockerReady(t)
			}
			bin := buildDemo(t)
			ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
			defer cancel()
			cmd := exec.CommandContext(ctx, filepath.Join(bin, "shoal-demo"), "-bin", bin, "-runtime", runtime)
			raw, err := cmd.CombinedOutput()
			out := string(raw)
			if err != nil {
				t.Fatalf("the tour failed: %v\n%s", err, out)
			}
			checks := []struct{ what, re string }{
				{"6 replicas answering every request before the kill", `6 replicas answered 120 of 120 requests \(0 failed\)`},
				{"the service answering after the kill", `6 replicas answered 60 of 60 requests \(0 failed\)`},
				{"9 replicas answering after the scale", `9 replicas answered 180 of 180 requests \(0 failed\)`},
				{"a clean end", `every process stopped`},
			}
			for _, c := range checks {
				if !regexp.MustCompile(c.re).MatchString(out) {
					t.Errorf("output lacks %s (%s):\n%s", c.what, c.re, out)
				}
			}
			killed := regexp.MustCompile(`killing the leader (m\d)`).FindStringSubmatch(out)
			elected := regexp.MustCompile(`new leader: (m\d), [0-9.]+m?s after the kill`).FindStringSubmatch(out)
			if killed == nil || elected == nil || killed[1] == elected[1] {
				t.Errorf("output lacks a leader change (killed %v, elected %v):\n%s", killed, elected, out)
			}
			// Each of the 9 replicas answered its even share through the mesh.
			if n := len(regexp.MustCompile(`(?m)^\s+20  hello from hello\.\d`).FindAllString(out, -1)); n != 9 {
				t.Errorf("want 9 replicas with 20 requests each, got %d:\n%s", n, out)
			}
			if m := regexp.MustCompile(`logs are in (\S+)`).FindStringSubmatch(out); m != nil {
				if left := processesUnder(m[1]); len(left) > 0 {
					t.Errorf("processes left running after the tour: %v", left)
				}
				if !t.Failed() {
					os.RemoveAll(m[1])
				}
			} else {
				t.Errorf("output does not say where the logs are:\n%s", out)
			}
			if t.Failed() {
				t.Logf("tour output:\n%s", strings.TrimSpace(out))
			}
		})
	}
}
