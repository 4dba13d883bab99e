package main

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/cookiejar"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/shoal-cluster/shoal/internal/poll"
)

// buildDemo builds shoal, hello and this tour into one directory.
func buildDemo(t *testing.T) string {
	t.Helper()
	dir := t.TempDir()
	for _, b := range []struct{ out, pkg string }{
		{"shoal", "../shoal"}, {"shoal-supervise", "../shoal-supervise"}, {"hello", "../hello"}, {"shoal-demo", "."},
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
				{"a plaintext client refused", `plaintext gRPC client: refused \(Unavailable\)`},
				{"a gossip outsider refused", `gossip member without the cluster's key: not admitted`},
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

// TestTourDashboard runs the tour as `DEMO_DASHBOARD=1 make demo` does: at
// the end it prints the dashboard's login URL and keeps the cluster
// running; the URL logs in and shows the tour's service scaled to 9; Ctrl-C
// stops everything.
func TestTourDashboard(t *testing.T) {
	if testing.Short() {
		t.Skip("the tour starts six daemons")
	}
	bin := buildDemo(t)
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, filepath.Join(bin, "shoal-demo"), "-bin", bin, "-runtime", "process")
	cmd.Env = append(os.Environ(), "DEMO_DASHBOARD=1")
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	var errOut strings.Builder
	cmd.Stderr = &errOut
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	var out strings.Builder
	lines := bufio.NewScanner(stdout)
	t.Cleanup(func() {
		if cmd.ProcessState == nil { // the test failed before its Ctrl-C
			_ = cmd.Process.Signal(os.Interrupt)
			_, _ = io.Copy(io.Discard, stdout)
			_ = cmd.Wait()
		}
	})
	loginRE := regexp.MustCompile(`^Open (http://127\.0\.0\.1:\d+)/\?token=\S+`)
	var login, base string
	for login == "" && lines.Scan() {
		out.WriteString(lines.Text() + "\n")
		if m := loginRE.FindStringSubmatch(lines.Text()); m != nil {
			login, base = strings.TrimPrefix(m[0], "Open "), m[1]
		}
	}
	if login == "" {
		_ = cmd.Wait()
		t.Fatalf("the tour printed no dashboard URL:\n%s\n%s", out.String(), errOut.String())
	}

	// The URL logs in; the dashboard shows the tour's service.
	jar, _ := cookiejar.New(nil)
	client := &http.Client{Jar: jar, Timeout: 5 * time.Second}
	resp, err := client.Get(login)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("the login URL: %s", resp.Status)
	}
	var state struct {
		Services []struct {
			Name    string `json:"name"`
			Desired int    `json:"desired"`
		} `json:"services"`
	}
	// The first read of the cluster may still be on its way.
	poll.Until(t, 10*time.Second, "hello with 9 replicas on the dashboard", func() (bool, string) {
		resp, err := client.Get(base + "/api/state")
		if err != nil {
			return false, err.Error()
		}
		err = json.NewDecoder(resp.Body).Decode(&state)
		resp.Body.Close()
		return err == nil && len(state.Services) == 1 && state.Services[0].Name == "hello" && state.Services[0].Desired == 9,
			fmt.Sprintf("%s: %v %+v", resp.Status, err, state)
	})

	// Ctrl-C: everything stops.
	_ = cmd.Process.Signal(os.Interrupt)
	for lines.Scan() { // to the end of the output: the tour exited
		out.WriteString(lines.Text() + "\n")
	}
	if err := cmd.Wait(); err != nil {
		t.Fatalf("the tour after Ctrl-C: %v\n%s\n%s", err, out.String(), errOut.String())
	}
	if !strings.Contains(out.String(), "every process stopped") {
		t.Errorf("no clean end after Ctrl-C:\n%s", out.String())
	}
	if m := regexp.MustCompile(`logs are in (\S+)`).FindStringSubmatch(out.String()); m != nil {
		if left := processesUnder(m[1]); len(left) > 0 {
			t.Errorf("processes left running after the tour: %v", left)
		}
		if !t.Failed() {
			os.RemoveAll(m[1])
		}
	}
}
