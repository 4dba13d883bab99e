// Package dockerapi serves the swarm subset of the Docker Engine API, so
// the unmodified docker CLI manages a Shoal cluster: `docker node`,
// `service`, `secret`, `config` and `stack`. It translates Docker's types
// (github.com/moby/moby/api) to Shoal's and calls the Control API through
// an in-process connection that runs each call as a gRPC call to this
// manager would run: on the leader, forwarded there from a follower.
//
// What Shoal cannot honour is refused with an error naming it, never
// accepted and dropped: container endpoints, plugins, swarm init/join,
// unsupported fields of a service spec.
package dockerapi

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"regexp"
	"runtime"
	"strconv"
	"strings"
	"time"

	"github.com/moby/moby/api/types/common"
	"github.com/moby/moby/api/types/swarm"
	"github.com/moby/moby/api/types/system"
	"github.com/shoal-cluster/shoal/internal/pki"
	"github.com/shoal-cluster/shoal/manager/authz"
	pb "github.com/shoal-cluster/shoal/proto"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// APIVersion is the Engine API version served: the docker CLI uses the
// lower of this and its own (1.50 for 28.x).
const APIVersion = "1.51"

// MinAPIVersion is the oldest API version accepted in a /v1.xx/ prefix.
const MinAPIVersion = "1.24"

// Logs streams a service's output from this manager's replica, as
// controlapi.Server.Logs does.
type Logs func(ctx context.Context, req *pb.ServiceLogsRequest, send func(*pb.LogLine) error) error

// Config is what a Server needs.
type Config struct {
	// Control is the Control API, through the leader-forwarding path.
	Control pb.ControlClient
	// Logs streams a service's logs.
	Logs Logs
	// Events streams the cluster's events (nil: /events is not served).
	Events Events
	// NodeID, Hostname and AdvertiseIP describe this manager.
	NodeID      string
	Hostname    string
	AdvertiseIP string
	// Version is Shoal's version, shown by `docker version`.
	Version string
	Log     *slog.Logger
}

// Server is the Engine API's HTTP handler.
type Server struct {
	cfg Config
	mux *http.ServeMux
	log *slog.Logger
}

// New returns a Server.
func New(cfg Config) *Server {
	if cfg.Log == nil {
		cfg.Log = slog.Default()
	}
	if cfg.Version == "" {
		cfg.Version = "dev"
	}
	s := &Server{cfg: cfg, mux: http.NewServeMux(), log: cfg.Log}
	s.routes()
	return s
}

// callerKey carries the authenticated client's identity in a request's
// context (set by the listener's connection hook).
type callerKey struct{}

// WithClient returns ctx naming the client a connection authenticated.
func WithClient(ctx context.Context, id pki.Identity) context.Context {
	return context.WithValue(ctx, callerKey{}, id)
}

func clientOf(ctx context.Context) (pki.Identity, bool) {
	id, ok := ctx.Value(callerKey{}).(pki.Identity)
	return id, ok
}

// versionPrefix is the optional /v1.xx prefix of every path.
var versionPrefix = regexp.MustCompile(`^/v(\d+)\.(\d+)(/.*)$`)

// ServeHTTP strips the version prefix, checks it, and routes the request.
func (s *Server) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	w.Header().Set("Api-Version", APIVersion)
	w.Header().Set("Ostype", runtime.GOOS)
	w.Header().Set("Server", "Shoal/"+s.cfg.Version+" ("+runtime.GOOS+")")
	id, ok := clientOf(r.Context())
	if !ok || id.Role != pki.RoleAdmin {
		writeError(w, http.StatusForbidden, "this endpoint needs an admin client certificate of the cluster (`shoal cluster client-config --docker DIR`)")
		return
	}
	if m := versionPrefix.FindStringSubmatch(r.URL.Path); m != nil {
		v := m[1] + "." + m[2]
		if compareVersions(v, MinAPIVersion) < 0 || compareVersions(v, APIVersion) > 0 {
			writeError(w, http.StatusBadRequest, fmt.Sprintf("client version %s is not supported: Shoal serves API versions %s to %s", v, MinAPIVersion, APIVersion))
			return
		}
		r2 := r.Clone(r.Context())
		r2.URL.Path = m[3]
		r2.URL.RawPath = ""
		r = r2
	}
	r = r.WithContext(authz.WithCaller(r.Context(), id))
	if strings.HasPrefix(r.URL.Path, "/distribution/") && r.Method == http.MethodGet {
		// Image references hold slashes (and a process path starts with
		// one): not a path for the mux to clean.
		if err := s.distribution(w, r); err != nil {
			s.fail(w, r, err)
		}
		return
	}
	s.mux.ServeHTTP(w, r)
}

// compareVersions compares two "major.minor" versions.
func compareVersions(a, b string) int {
	pa, pb := strings.SplitN(a, ".", 2), strings.SplitN(b, ".", 2)
	for i := range 2 {
		x, _ := strconv.Atoi(at(pa, i))
		y, _ := strconv.Atoi(at(pb, i))
		if x != y {
			if x < y {
				return -1
			}
			return 1
		}
	}
	return 0
}

func at(s []string, i int) string {
	if i < len(s) {
		return s[i]
	}
	return ""
}

// handler is an endpoint: it returns an error to answer with, or nil once
// it has written its answer.
type handler func(w http.ResponseWriter, r *http.Request) error

func (s *Server) handle(pattern string, h handler) {
	s.mux.HandleFunc(pattern, func(w http.ResponseWriter, r *http.Request) {
		if err := s.retryReads(w, r, h); err != nil {
			s.fail(w, r, err)
		}
	})
}

// readRetry bounds how long a read waits out an election: a manager that
// stops leading while it answers fails the call as Unavailable, and the
// CLI's wait loops (service create, stack deploy) give up on one error.
const (
	readRetry      = 5 * time.Second
	readRetryPause = 100 * time.Millisecond
)

// retryReads runs a GET handler again while it fails as Unavailable (no
// leader, or the leader changed under the call) before answering
// anything, for up to readRetry. Writes are never retried here: the
// router already resends them to a new leader under one request ID.
func (s *Server) retryReads(w http.ResponseWriter, r *http.Request, h handler) error {
	if r.Method != http.MethodGet {
		return h(w, r)
	}
	deadline := time.Now().Add(readRetry)
	for {
		tw := &trackingWriter{ResponseWriter: w}
		err := h(tw, r)
		if err == nil || tw.wrote || status.Code(err) != codes.Unavailable || time.Now().After(deadline) {
			return err
		}
		select {
		case <-r.Context().Done():
			return err
		case <-time.After(readRetryPause):
		}
	}
}

// trackingWriter notes whether a handler has answered.
type trackingWriter struct {
	http.ResponseWriter
	wrote bool
}

func (t *trackingWriter) WriteHeader(code int) {
	t.wrote = true
	t.ResponseWriter.WriteHeader(code)
}

func (t *trackingWriter) Write(b []byte) (int, error) {
	t.wrote = true
	return t.ResponseWriter.Write(b)
}

// Flush passes a streaming handler's flushes on.
func (t *trackingWriter) Flush() {
	if f, ok := t.ResponseWriter.(http.Flusher); ok {
		f.Flush()
	}
}

func (s *Server) routes() {
	s.mux.HandleFunc("GET /_ping", s.ping)
	s.mux.HandleFunc("HEAD /_ping", s.ping)
	s.handle("GET /version", s.version)
	s.handle("GET /info", s.info)

	s.handle("GET /nodes", s.listNodes)
	s.handle("GET /nodes/{id}", s.getNode)
	s.handle("POST /nodes/{id}/update", s.updateNode)
	s.handle("DELETE /nodes/{id}", s.removeNode)

	s.handle("POST /services/create", s.createService)
	s.handle("GET /services", s.listServices)
	s.handle("GET /services/{id}", s.getService)
	s.handle("POST /services/{id}/update", s.updateService)
	s.handle("DELETE /services/{id}", s.removeService)
	s.handle("GET /services/{id}/logs", s.serviceLogs)

	s.handle("GET /tasks", s.listTasks)
	s.handle("GET /tasks/{id}", s.getTask)
	s.handle("GET /tasks/{id}/logs", s.taskLogs)

	s.handle("POST /secrets/create", s.createSecret)
	s.handle("GET /secrets", s.listSecrets)
	s.handle("GET /secrets/{id}", s.getSecret)
	s.handle("POST /secrets/{id}/update", s.updateSecret)
	s.handle("DELETE /secrets/{id}", s.removeSecret)

	s.handle("POST /configs/create", s.createConfig)
	s.handle("GET /configs", s.listConfigs)
	s.handle("GET /configs/{id}", s.getConfig)
	s.handle("POST /configs/{id}/update", s.updateConfig)
	s.handle("DELETE /configs/{id}", s.removeConfig)

	s.handle("GET /networks", s.listNetworks)
	s.handle("GET /networks/{id}", s.getNetwork)
	s.handle("POST /networks/create", s.createNetwork)
	s.handle("DELETE /networks/{id}", s.removeNetwork)

	s.handle("GET /swarm", s.getSwarm)
	s.handle("GET /events", s.events)

	// Everything else: say what Shoal is and is not.
	s.handle("/", s.unsupported)
}

// ping answers the CLI's handshake: the API version and that this is an
// active swarm manager.
func (s *Server) ping(w http.ResponseWriter, r *http.Request) {
	h := w.Header()
	h.Set("Swarm", "active/manager")
	h.Set("Docker-Experimental", "false")
	h.Set("Cache-Control", "no-cache, no-store, must-revalidate")
	h.Set("Pragma", "no-cache")
	h.Set("Content-Type", "text/plain; charset=utf-8")
	w.WriteHeader(http.StatusOK)
	if r.Method == http.MethodGet {
		_, _ = io.WriteString(w, "OK")
	}
}

func (s *Server) version(w http.ResponseWriter, _ *http.Request) error {
	v := system.VersionResponse{
		Platform:      system.PlatformInfo{Name: "Shoal"},
		Version:       s.cfg.Version,
		APIVersion:    APIVersion,
		MinAPIVersion: MinAPIVersion,
		Os:            runtime.GOOS,
		Arch:          runtime.GOARCH,
		GoVersion:     runtime.Version(),
	}
	return writeJSON(w, http.StatusOK, v)
}

func (s *Server) info(w http.ResponseWriter, r *http.Request) error {
	ctx := r.Context()
	cl, err := s.cfg.Control.GetCluster(ctx, &pb.GetClusterRequest{})
	if err != nil {
		return err
	}
	info := system.Info{
		ID:              s.cfg.NodeID,
		Name:            s.cfg.Hostname,
		ServerVersion:   s.cfg.Version,
		OperatingSystem: "Shoal",
		OSType:          runtime.GOOS,
		Architecture:    runtime.GOARCH,
		NCPU:            runtime.NumCPU(),
		Driver:          "shoal",
		Swarm: swarm.Info{
			NodeID:           s.cfg.NodeID,
			NodeAddr:         s.cfg.AdvertiseIP,
			LocalNodeState:   swarm.LocalNodeStateActive,
			ControlAvailable: true,
			Cluster:          clusterInfo(cl.GetCluster()),
		},
	}
	for _, m := range cl.GetManagers() {
		info.Swarm.RemoteManagers = append(info.Swarm.RemoteManagers, swarm.Peer{NodeID: m.GetNodeId(), Addr: m.GetApiAddr()})
	}
	if nodes, err := s.cfg.Control.ListNodes(ctx, &pb.ListNodesRequest{}); err == nil {
		info.Swarm.Nodes = len(nodes.GetNodes())
		for _, n := range nodes.GetNodes() {
			if n.GetRole() == pb.NodeRole_NODE_ROLE_MANAGER {
				info.Swarm.Managers++
			}
		}
	} else {
		info.Swarm.Error = status.Convert(err).Message()
		info.Swarm.Managers = len(cl.GetManagers())
	}
	return writeJSON(w, http.StatusOK, info)
}

func clusterInfo(c *pb.Cluster) *swarm.ClusterInfo {
	if c == nil {
		return nil
	}
	return &swarm.ClusterInfo{
		ID:   c.GetId(),
		Meta: meta(c.GetMeta()),
		Spec: swarm.Spec{
			Annotations:   swarm.Annotations{Name: "default", Labels: c.GetSpec().GetAnnotations().GetLabels()},
			Orchestration: swarm.OrchestrationConfig{TaskHistoryRetentionLimit: ptr(c.GetSpec().GetTaskHistoryLimit())},
			Dispatcher:    swarm.DispatcherConfig{HeartbeatPeriod: time.Duration(c.GetSpec().GetHeartbeatPeriod())},
			CAConfig:      swarm.CAConfig{NodeCertExpiry: time.Duration(c.GetSpec().GetCertExpiry())},
		},
		TLSInfo: swarm.TLSInfo{TrustRoot: string(c.GetRootCa().GetTrustBundle())},
	}
}

func (s *Server) getSwarm(w http.ResponseWriter, r *http.Request) error {
	cl, err := s.cfg.Control.GetCluster(r.Context(), &pb.GetClusterRequest{})
	if err != nil {
		return err
	}
	return writeJSON(w, http.StatusOK, swarm.Swarm{ClusterInfo: *clusterInfo(cl.GetCluster())})
}

// unsupported answers every endpoint Shoal does not serve, naming it.
func (s *Server) unsupported(_ http.ResponseWriter, r *http.Request) error {
	p := r.URL.Path
	first := strings.SplitN(strings.TrimPrefix(p, "/"), "/", 2)[0]
	switch first {
	case "containers", "exec", "commit":
		return notImplemented("Shoal runs containers only as services: use docker service create (%s %s is not served)", r.Method, p)
	case "images", "build", "images-search", "auth", "volumes", "plugins", "system", "session", "grpc":
		return notImplemented("Shoal does not serve /%s: it is a cluster manager, not a Docker Engine (%s %s)", first, r.Method, p)
	case "swarm":
		return notImplemented("Shoal clusters are formed with `shoal init` and `shoal join`, not docker swarm (%s %s)", r.Method, p)
	case "nodes", "services", "tasks", "secrets", "configs", "networks":
		return &apiError{code: http.StatusNotFound, msg: fmt.Sprintf("page not found: %s %s", r.Method, p)}
	}
	return notImplemented("Shoal does not serve %s %s", r.Method, p)
}

// apiError is an answer with an HTTP status of the API's choosing.
type apiError struct {
	code int
	msg  string
}

func (e *apiError) Error() string { return e.msg }

func badRequest(format string, args ...any) error {
	return &apiError{code: http.StatusBadRequest, msg: fmt.Sprintf(format, args...)}
}

func notImplemented(format string, args ...any) error {
	return &apiError{code: http.StatusNotImplemented, msg: fmt.Sprintf(format, args...)}
}

func notFound(format string, args ...any) error {
	return &apiError{code: http.StatusNotFound, msg: fmt.Sprintf(format, args...)}
}

// fail writes err as Docker does: {"message": ...} with a status code
// from the error's kind.
func (s *Server) fail(w http.ResponseWriter, r *http.Request, err error) {
	code, msg := http.StatusInternalServerError, err.Error()
	var ae *apiError
	if errors.As(err, &ae) {
		code = ae.code
	} else if st, ok := status.FromError(err); ok {
		msg = dockerWords(st.Message())
		code = httpCode(st.Code())
	} else if errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded) {
		code = http.StatusServiceUnavailable
	}
	if code >= 500 {
		s.log.Warn("docker API request failed", "method", r.Method, "path", r.URL.Path, "code", code, "err", msg)
	}
	writeError(w, code, msg)
}

// httpCode maps a gRPC code to the HTTP status Docker uses for that kind
// of error.
func httpCode(c codes.Code) int {
	switch c {
	case codes.InvalidArgument, codes.OutOfRange:
		return http.StatusBadRequest
	case codes.NotFound:
		return http.StatusNotFound
	case codes.AlreadyExists, codes.Aborted, codes.FailedPrecondition:
		return http.StatusConflict
	case codes.PermissionDenied:
		return http.StatusForbidden
	case codes.Unauthenticated:
		return http.StatusUnauthorized
	case codes.Unimplemented:
		return http.StatusNotImplemented
	case codes.Unavailable, codes.DeadlineExceeded, codes.Canceled:
		return http.StatusServiceUnavailable
	case codes.ResourceExhausted:
		return http.StatusRequestEntityTooLarge
	}
	return http.StatusInternalServerError
}

// dockerWords points Shoal's hints at the docker commands that do the
// same thing.
func dockerWords(msg string) string { return strings.ReplaceAll(msg, "`shoal ", "`docker ") }

// writeError writes Docker's error body. The CLI compares the content
// type with "application/json" exactly.
func writeError(w http.ResponseWriter, code int, msg string) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	_ = json.NewEncoder(w).Encode(common.ErrorResponse{Message: msg})
}

func writeJSON(w http.ResponseWriter, code int, v any) error {
	body, err := json.Marshal(v)
	if err != nil {
		return err
	}
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	_, _ = w.Write(append(body, '\n'))
	return nil
}

// maxBody bounds a request body: a secret or config (1000 KiB, base64)
// is the largest.
const maxBody = 4 << 20

// decode reads a JSON body into v, refusing fields v does not have: a
// field Shoal does not know is never silently dropped.
func decode(r *http.Request, v any) error {
	dec := json.NewDecoder(http.MaxBytesReader(nil, r.Body, maxBody))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		if errors.Is(err, io.EOF) {
			return badRequest("the request needs a JSON body")
		}
		return badRequest("invalid JSON in the request body: %v", err)
	}
	if dec.More() {
		return badRequest("invalid JSON in the request body: more than one value")
	}
	return nil
}

// queryVersion reads the version=N every update carries.
func queryVersion(r *http.Request) (uint64, error) {
	v := r.URL.Query().Get("version")
	if v == "" {
		return 0, badRequest("the update needs ?version=N: the object's Version.Index as read")
	}
	n, err := strconv.ParseUint(v, 10, 64)
	if err != nil || n == 0 {
		return 0, badRequest("invalid version %q: give the object's Version.Index as read", v)
	}
	return n, nil
}

// boolQuery reads a boolean query parameter as the Engine does.
func boolQuery(r *http.Request, name string) bool {
	switch strings.ToLower(r.URL.Query().Get(name)) {
	case "", "0", "no", "false", "none":
		return false
	}
	return true
}

func meta(m *pb.Meta) swarm.Meta {
	return swarm.Meta{Version: swarm.Version{Index: m.GetVersion()}, CreatedAt: unixTime(m.GetCreatedAt()), UpdatedAt: unixTime(m.GetUpdatedAt())}
}

func unixTime(ns int64) time.Time {
	if ns == 0 {
		return time.Time{}
	}
	return time.Unix(0, ns).UTC()
}

func ptr[T any](v T) *T { return &v }
