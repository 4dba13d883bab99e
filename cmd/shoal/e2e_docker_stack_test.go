package main

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/shoal-cluster/shoal/internal/registrytest"
)

// needHelloImage makes sure the local Docker Engine has shoal/hello:v1
// (building it with scripts/images.sh), or skips when there is no Engine
// (fails with SHOAL_REQUIRE_DOCKER=1).
func needHelloImage(t *testing.T) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	if out, err := exec.CommandContext(ctx, "docker", "info", "--format", "{{.ServerVersion}}").CombinedOutput(); err != nil {
		if os.Getenv(registrytest.RequireEnv) == "1" {
			t.Fatalf("%s=1 but the Docker Engine does not answer: %v\n%s", registrytest.RequireEnv, err, out)
		}
		t.Skipf("no Docker Engine (set %s=1 to require one): %v", registrytest.RequireEnv, err)
	}
	if exec.CommandContext(ctx, "docker", "image", "inspect", "shoal/hello:v1").Run() == nil {
		return
	}
	if out, err := exec.Command("../../scripts/images.sh", "v1").CombinedOutput(); err != nil {
		t.Fatalf("build the sample image: %v\n%s", err, out)
	}
}

// TestDockerStack deploys a compose file with `docker stack deploy`
// (the real CLI converts it and calls the Engine API): a web service that
// calls an api service by name, on stack networks with aliases, with a
// secret, a config, resources, placement, update and restart policies, a
// health check and an ingress port; then stack ls, services and ps, and
// stack rm leaving nothing behind.
func TestDockerStack(t *testing.T) {
	needHelloImage(t)
	stack := fmt.Sprintf("stk%d", os.Getpid()%100000)
	// Runs last, after the daemons are gone: no container of the stack
	// outlives the test on the Engine.
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		out, _ := exec.CommandContext(ctx, "docker", "ps", "-aq", "--filter", "label=com.docker.stack.namespace="+stack).Output()
		if ids := strings.Fields(string(out)); len(ids) > 0 {
			_ = exec.CommandContext(ctx, "docker", append([]string{"rm", "-f"}, ids...)...).Run()
		}
	})
	ips := []string{"127.0.0.61", "127.0.0.62", "127.0.0.63", "127.0.0.64", "127.0.0.65"}
	c := startDockerAPICluster(t, ips)
	d := c.d
	webPort := freePort(t, ips...)

	dir := t.TempDir()
	for name, data := range map[string]string{
		"token.txt": "s3cr3t\n",
		"app.conf":  "stack-v1\n",
		"compose.yml": fmt.Sprintf(`services:
  web:
    image: shoal/hello:v1
    command: ["-version-file", "/app.conf"]
    labels:
      app: demo
    ports:
      - "%d:80"
    deploy:
      replicas: 2
      labels:
        tier: front
      placement:
        constraints: ["node.role == worker"]
      resources:
        limits: {cpus: "0.5", memory: 64M}
        reservations: {cpus: "0.01", memory: 8M}
      update_config:
        parallelism: 1
        delay: 0s
        monitor: 1s
        order: start-first
      restart_policy:
        condition: any
        delay: 1s
    healthcheck:
      test: ["CMD", "/hello", "-healthcheck", "http://127.0.0.1:80/healthz"]
      interval: 1s
      timeout: 2s
      retries: 3
    secrets:
      - token
    configs:
      - source: conf
        target: /app.conf
    networks:
      front:
        aliases: [www]
      back: {}
  api:
    image: shoal/hello:v1
    environment:
      HELLO_VERSION: api-v1
    # The port others reach it on by name: a target port without a
    # published one (Shoal publishes nothing for it).
    ports:
      - target: 80
    deploy:
      replicas: 2
    networks: [back]
networks:
  front: {}
  back:
    driver: overlay
    labels:
      layer: back
secrets:
  token:
    file: ./token.txt
configs:
  conf:
    file: ./app.conf
`, webPort),
	} {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(data), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	compose := filepath.Join(dir, "compose.yml")
	since := strconv.FormatInt(time.Now().Add(-2*time.Second).Unix(), 10)
	conv := 120 * time.Second
	d.step(dockerStep{name: "stack deploy", timeout: conv, args: []string{"stack", "deploy", "--detach=false", "-c", compose, stack},
		want: []string{`Creating network ` + stack + `_front`, `Creating network ` + stack + `_back`, `Creating secret ` + stack + `_token`,
			`Creating config ` + stack + `_conf`, `Creating service ` + stack + `_web`, `Creating service ` + stack + `_api`, `converged`}})

	q := regexp.QuoteMeta
	// A task the load on this machine made fail its health check is
	// replaced: all replicas are back within a few seconds.
	apiRow := regexp.MustCompile(stack + `_api +replicated +2/2 +shoal/hello:v1`)
	webRow := regexp.MustCompile(stack + `_web +replicated +2/2 +shoal/hello:v1 +\*:` + strconv.Itoa(webPort) + `->80/tcp`)
	eventually(t, 45*time.Second, "stack services with every replica running", func() (bool, string) {
		out, errOut, code := d.run(10*time.Second, "", "stack", "services", stack)
		return code == 0 && apiRow.MatchString(out) && webRow.MatchString(out), out + errOut
	})
	for _, s := range []dockerStep{
		{name: "stack ls", args: []string{"stack", "ls"}, want: []string{`(?m)^` + stack + ` +2$`}},
		{name: "stack ps", args: []string{"stack", "ps", "--filter", "desired-state=running", "--format", "{{.Name}} {{.Node}} {{.CurrentState}}", stack},
			want: []string{`(?m)^` + stack + `_web\.1 w[12] Running`, `(?m)^` + stack + `_web\.2 w[12] Running`, `(?m)^` + stack + `_api\.1 \S+ Running`, `(?m)^` + stack + `_api\.2 \S+ Running`}},
		{name: "stack networks", args: []string{"network", "ls", "--filter", "label=com.docker.stack.namespace=" + stack, "--format", "{{.Name}} {{.Driver}} {{.Scope}}"},
			want: []string{`^` + stack + `_back overlay swarm\n` + stack + `_front overlay swarm\n$`}},
		{name: "network labels", args: []string{"network", "inspect", "--format", "{{.Labels.layer}}", stack + "_back"}, want: []string{`^back\n$`}},
		{name: "service spec", args: []string{"service", "inspect", "--format",
			"{{.Spec.Labels.tier}} {{.Spec.TaskTemplate.ContainerSpec.Labels.app}} {{.Spec.TaskTemplate.Resources.Limits.MemoryBytes}} {{.Spec.TaskTemplate.Resources.Limits.NanoCPUs}} {{index .Spec.TaskTemplate.Placement.Constraints 0}} {{.Spec.UpdateConfig.Order}} {{.Spec.TaskTemplate.RestartPolicy.Delay}} {{index .Spec.TaskTemplate.ContainerSpec.Healthcheck.Test 0}} {{(index .Spec.TaskTemplate.ContainerSpec.Secrets 0).SecretName}}",
			stack + "_web"},
			want: []string{`^front demo 67108864 500000000 node.role == worker start-first 1s CMD ` + q(stack) + `_token\n$`}},
		{name: "attachments with aliases", args: []string{"service", "inspect", "--format", "{{range .Spec.TaskTemplate.Networks}}{{.Aliases}} {{end}}", stack + "_web"},
			want: []string{`\[web\]`, `\[www web\]`}},
	} {
		d.step(s)
	}

	get := func(path string) (string, error) {
		hc := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{DisableKeepAlives: true}}
		resp, err := hc.Get("http://" + net.JoinHostPort(ips[3], strconv.Itoa(webPort)) + path)
		if err != nil {
			return "", err
		}
		defer resp.Body.Close()
		b, err := io.ReadAll(resp.Body)
		if resp.StatusCode != http.StatusOK {
			return string(b), fmt.Errorf("status %s", resp.Status)
		}
		return string(b), err
	}
	// web serves its config's version, and calls api by its stack
	// name, its short name (the alias the CLI gives each service on its
	// networks) and itself by the alias www.
	for _, c := range []struct{ path, want string }{
		{"/", `hello from ` + stack + `_web\.[12]\.\w+ \(stack-v1\)`},
		{"/call/api/", `-> hello from ` + stack + `_api\.[12]\.\w+ \(api-v1\)`},
		{"/call/" + stack + "_api/", `-> hello from ` + stack + `_api\.[12]\.\w+ \(api-v1\)`},
		{"/call/www/", `-> hello from ` + stack + `_web\.[12]\.\w+ \(stack-v1\)`},
	} {
		re := regexp.MustCompile(c.want)
		eventually(t, 30*time.Second, "GET "+c.path+" through the ingress port", func() (bool, string) {
			body, err := get(c.path)
			return err == nil && re.MatchString(body), fmt.Sprintf("%q %v", body, err)
		})
	}

	// A second deploy of the same file: the secret and config are sent
	// again unchanged (accepted), the services updated in place.
	d.step(dockerStep{name: "stack deploy again", timeout: conv, args: []string{"stack", "deploy", "--detach=false", "-c", compose, stack},
		want: []string{`Updating service ` + stack + `_web`, `Updating service ` + stack + `_api`}, not: []string{`failed`}})
	d.step(dockerStep{name: "still two services", args: []string{"stack", "ls"}, want: []string{`(?m)^` + stack + ` +2$`}})

	// Logs of container tasks carry their times: --timestamps, --since,
	// --until and --tail as Docker's.
	for _, s := range []dockerStep{
		{name: "logs with timestamps", args: []string{"service", "logs", "--timestamps", "--since", "10m", "--tail", "1", stack + "_api"},
			want: []string{`(?m)^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{9}Z ` + stack + `_api\.[12]\.\w+@\w+ +\| .*hello listening`}},
		{name: "logs since later", args: []string{"service", "logs", "--since", "2099-01-01T00:00:00Z", stack + "_api"}, want: []string{`^$`}},
	} {
		d.step(s)
	}
	// The CLI has no --until for services; the API has.
	raw := rawDocker(t, filepath.Join(c.base, "m1", "docker.sock"))
	if resp, body := raw("GET", "/v1.50/services/"+stack+"_api/logs?stdout=1&stderr=1&until=1577836800", ""); resp.StatusCode != http.StatusOK || body != "" {
		t.Fatalf("logs until 2020: %d %q, want 200 and no line", resp.StatusCode, body)
	}
	if resp, body := raw("GET", "/v1.50/services/"+stack+"_api/logs?stdout=1&stderr=1&since=1577836800&timestamps=1", ""); resp.StatusCode != http.StatusOK || !strings.Contains(body, "hello listening") {
		t.Fatalf("logs since 2020: %d %q, want the lines", resp.StatusCode, body)
	}

	// A network in use by a service cannot be removed.
	d.step(dockerStep{name: "network rm in use", args: []string{"network", "rm", stack + "_back"}, code: 1,
		want: []string{`network ` + q(stack) + `_back is in use by services ` + q(stack) + `_api, ` + q(stack) + `_web`}})

	// stack rm removes the services, secret, config and networks.
	d.step(dockerStep{name: "stack rm", timeout: conv, args: []string{"stack", "rm", stack},
		want: []string{`Removing service ` + stack + `_api`, `Removing service ` + stack + `_web`, `Removing secret ` + stack + `_token`,
			`Removing config ` + stack + `_conf`, `Removing network ` + stack + `_front`, `Removing network ` + stack + `_back`},
		not: []string{`Failed to remove`}})
	for _, s := range []dockerStep{
		{name: "no stack", args: []string{"stack", "ls"}, want: []string{`^NAME +SERVICES\n$`}},
		{name: "no service", args: []string{"service", "ls", "-q"}, want: []string{`^$`}},
		{name: "no secret", args: []string{"secret", "ls", "-q"}, want: []string{`^$`}},
		{name: "no config", args: []string{"config", "ls", "-q"}, want: []string{`^$`}},
		{name: "only the mesh network", args: []string{"network", "ls", "--format", "{{.Name}}"}, want: []string{`^shoal\n$`}},
	} {
		d.step(s)
	}
	// docker events: the stack's history, in Docker's swarm event types.
	until := strconv.FormatInt(time.Now().Add(time.Second).Unix(), 10)
	d.step(dockerStep{name: "events", args: []string{"events", "--since", since, "--until", until, "--filter", "scope=swarm",
		"--format", "{{.Type}} {{.Action}} {{.Actor.Attributes.name}}"},
		want: []string{`(?m)^network create ` + stack + `_front$`, `(?m)^secret create ` + stack + `_token$`, `(?m)^config create ` + stack + `_conf$`,
			`(?m)^service create ` + stack + `_web$`, `(?m)^service create ` + stack + `_api$`, `(?m)^service remove ` + stack + `_web$`,
			`(?m)^secret remove ` + stack + `_token$`, `(?m)^config remove ` + stack + `_conf$`, `(?m)^network remove ` + stack + `_back$`},
		not: []string{`(?m)^task `}})
	d.step(dockerStep{name: "events filtered", args: []string{"events", "--since", since, "--until", until, "--filter", "type=service", "--filter", "event=remove",
		"--format", "{{.Type}} {{.Action}} {{.Actor.Attributes.name}}"},
		want: []string{`^service remove ` + stack + `_(api|web)\nservice remove ` + stack + `_(api|web)\n$`}})
	eventually(t, 60*time.Second, "the stack's containers gone from the Engine", func() (bool, string) {
		out, err := exec.Command("docker", "ps", "-aq", "--filter", "label=com.docker.stack.namespace="+stack).Output()
		return err == nil && strings.TrimSpace(string(out)) == "", string(out)
	})
}
