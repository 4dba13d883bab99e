// Command hello is Shoal's sample web app: it answers every request with
// the name of the task (or host) that served it and its version, and has
// a health endpoint. It runs under the process runtime (listening on $PORT)
// and in a container (FROM scratch, listening on :80).
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/signal"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"time"
)

// version is set at build time: -ldflags "-X main.version=v2".
var version = "v1"

func main() {
	addr := flag.String("listen", "", "address to listen on (default :$PORT, else :80)")
	ver := flag.String("version", envOr("HELLO_VERSION", version), "version to report")
	versionFile := flag.String("version-file", os.Getenv("HELLO_VERSION_FILE"), "read the version to report from this file at each request (a config file given to the task)")
	unhealthy := flag.Bool("unhealthy", os.Getenv("HELLO_UNHEALTHY") != "", "fail the health check (for update and rollback tests)")
	healthcheck := flag.String("healthcheck", "", "probe URL and exit 0 if healthy (for a container HEALTHCHECK)")
	healthyAfter := flag.Duration("healthy-after", envDuration("HELLO_HEALTHY_AFTER"), "fail the health check until this long after start (a slow start)")
	drain := flag.Duration("drain", envDuration("HELLO_DRAIN"), "keep serving this long after SIGTERM before shutting down, as an app draining its clients would")
	flag.Parse()
	if *healthcheck != "" {
		os.Exit(probe(*healthcheck))
	}
	if *addr == "" {
		// Under the process runtime the port was allocated on the node's
		// address: listen there only, not on every address.
		*addr = ":80"
		if port := os.Getenv("PORT"); port != "" {
			*addr = os.Getenv("SHOAL_HOST_IP") + ":" + port
		}
	}
	name := os.Getenv("SHOAL_TASK_NAME")
	if name == "" {
		if svc, slot := os.Getenv("SHOAL_SERVICE_NAME"), os.Getenv("SHOAL_TASK_SLOT"); svc != "" {
			name = svc + "." + slot
		} else {
			name, _ = os.Hostname()
		}
	}
	log := slog.New(slog.NewTextHandler(os.Stdout, nil))
	mux := http.NewServeMux()
	var sick atomic.Bool
	sick.Store(*unhealthy)
	healthyFrom := time.Now().Add(*healthyAfter)
	// POST /admin/unhealthy makes the health check fail from now on, to
	// show a replica leaving the mesh's rotation.
	mux.HandleFunc("POST /admin/unhealthy", func(w http.ResponseWriter, r *http.Request) {
		sick.Store(true)
		fmt.Fprintln(w, "unhealthy from now on")
	})
	mux.HandleFunc("/healthz", func(w http.ResponseWriter, r *http.Request) {
		if sick.Load() {
			http.Error(w, "unhealthy on purpose", http.StatusServiceUnavailable)
			return
		}
		if time.Now().Before(healthyFrom) {
			http.Error(w, "still starting", http.StatusServiceUnavailable)
			return
		}
		fmt.Fprintln(w, "ok")
	})
	// /call/<service>[/path] asks another service by name, through the
	// node's resolver and the service's virtual IP, and relays its answer.
	client := upstreamClient()
	mux.HandleFunc("/call/{service}/{path...}", func(w http.ResponseWriter, r *http.Request) {
		port := r.URL.Query().Get("port")
		if port == "" {
			port = "80"
		}
		url := "http://" + net.JoinHostPort(r.PathValue("service"), port) + "/" + r.PathValue("path")
		resp, err := client.Get(url)
		if err != nil {
			http.Error(w, fmt.Sprintf("%s: %v", url, err), http.StatusBadGateway)
			return
		}
		defer resp.Body.Close()
		w.WriteHeader(resp.StatusCode)
		fmt.Fprintf(w, "%s -> ", name)
		_, _ = io.Copy(w, resp.Body)
	})
	// /work?ms=50 burns 50ms of CPU before answering: load for the
	// autoscaler.
	mux.HandleFunc("/work", func(w http.ResponseWriter, r *http.Request) {
		d, err := workDuration(r.URL.Query().Get("ms"))
		if err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		burn(d)
		w.Header().Set("X-Served-By", name)
		fmt.Fprintf(w, "%s worked %s\n", name, d)
	})
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		v := *ver
		if *versionFile != "" {
			b, err := os.ReadFile(*versionFile)
			if err != nil {
				http.Error(w, fmt.Sprintf("read the version file: %v", err), http.StatusInternalServerError)
				return
			}
			v = strings.TrimSpace(string(b))
		}
		w.Header().Set("X-Served-By", name)
		// Where the connection came from and arrived: the routing mesh's
		// tests check that a client's address is kept.
		w.Header().Set("X-Client-Addr", r.RemoteAddr)
		if a, ok := r.Context().Value(http.LocalAddrContextKey).(net.Addr); ok {
			w.Header().Set("X-Served-At", a.String())
		}
		fmt.Fprintf(w, "hello from %s (%s)\n", name, v)
	})
	srv := &http.Server{Addr: *addr, Handler: mux, ReadHeaderTimeout: 5 * time.Second}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	go func() {
		<-ctx.Done()
		if *drain > 0 {
			log.Info("draining before shutdown", "for", *drain)
			time.Sleep(*drain)
		}
		sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_ = srv.Shutdown(sctx)
	}()
	log.Info("hello listening", "addr", *addr, "name", name, "version", *ver, "unhealthy", *unhealthy)
	if err := srv.ListenAndServe(); err != nil && !errors.Is(err, http.ErrServerClosed) {
		log.Error("serve", "err", err)
		os.Exit(1)
	}
	log.Info("hello stopped")
}

// maxWork bounds one /work request.
const maxWork = 10 * time.Second

// workDuration reads /work's ms parameter (default 50).
func workDuration(ms string) (time.Duration, error) {
	if ms == "" {
		return 50 * time.Millisecond, nil
	}
	n, err := strconv.Atoi(ms)
	if err != nil || n < 0 || time.Duration(n)*time.Millisecond > maxWork {
		return 0, fmt.Errorf("ms=%q: use milliseconds of CPU from 0 to %d", ms, maxWork.Milliseconds())
	}
	return time.Duration(n) * time.Millisecond, nil
}

// burn keeps a CPU busy for about d of this thread's time.
func burn(d time.Duration) {
	end := time.Now().Add(d)
	x := 0
	for time.Now().Before(end) {
		for i := range 1000 {
			x += i
		}
	}
	sink.Store(int64(x))
}

var sink atomic.Int64

// probe asks a URL and returns 0 when it answers 2xx.
func probe(url string) int {
	c := http.Client{Timeout: 3 * time.Second}
	resp, err := c.Get(url)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	resp.Body.Close()
	if resp.StatusCode/100 != 2 {
		return 1
	}
	return 0
}

// upstreamClient resolves names through the node's service resolver when
// the process runtime names one in SHOAL_DNS; in a container the system
// resolver already is the node's.
func upstreamClient() *http.Client {
	dialer := &net.Dialer{Timeout: 3 * time.Second}
	if dns := os.Getenv("SHOAL_DNS"); dns != "" {
		dialer.Resolver = &net.Resolver{
			PreferGo: true,
			Dial: func(ctx context.Context, network, _ string) (net.Conn, error) {
				var d net.Dialer
				return d.DialContext(ctx, network, dns)
			},
		}
	}
	return &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{DialContext: dialer.DialContext, DisableKeepAlives: true}}
}

// envDuration reads a duration from the environment (unset is 0).
func envDuration(k string) time.Duration {
	v := os.Getenv(k)
	if v == "" {
		return 0
	}
	d, err := time.ParseDuration(v)
	if err != nil {
		fmt.Fprintf(os.Stderr, "hello: %s: %v\n", k, err)
		os.Exit(2)
	}
	return d
}

func envOr(k, def string) string {
	if v := os.Getenv(k); v != "" {
		return v
	}
	return def
}
