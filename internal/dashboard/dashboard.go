// Package dashboard is Shoal's web dashboard, served by `shoal dashboard`:
// an HTTP server that talks to the cluster with the admin's credentials
// through any manager, and pages (plain HTML and JavaScript embedded in
// the binary) that show the cluster and act on it.
//
// Access: the server makes a one-time login token, printed in the URL it
// is started with. The first request that carries it gets a session
// cookie (HttpOnly, SameSite=Strict) and the token is spent; every page
// and API call without that cookie gets 401 and no data.
//
// Liveness: the server follows the cluster's event stream (Control.Events)
// and, on every change, reads the cluster again and pushes the new state
// and the new events to the open pages as server-sent events. When the
// manager it talks through dies it moves to another, resuming the event
// stream after the last event it had.
package dashboard

import (
	"context"
	"crypto/rand"
	"crypto/subtle"
	"embed"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"net"
	"net/http"
	"strings"
	"sync"
	"time"

	pb "github.com/shoal-cluster/shoal/proto"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

//go:embed static
var static embed.FS

// cookieName is the session cookie.
const cookieName = "shoal_dashboard"

// Config is what a Server needs.
type Config struct {
	// Managers are the addresses to reach the cluster through, at first;
	// the server learns the others' from the node list.
	Managers []string
	// Connect opens a Control client to one manager.
	Connect Connect
	// SecureCookie marks the session cookie Secure (serving over TLS).
	SecureCookie bool
	// Log gets the server's own messages; nil discards them.
	Log *slog.Logger
	// EventHistory is how far back the event list starts (default 1h).
	EventHistory time.Duration
	// RefreshEvery bounds how stale the Raft figures (terms, applied
	// indexes) may get between changes (default 2s).
	RefreshEvery time.Duration
}

// maxEvents is how many events the server keeps for the pages.
const maxEvents = 300

// Server is the dashboard's HTTP handler and its link to the cluster.
type Server struct {
	cfg  Config
	mgrs *managers
	log  *slog.Logger
	mux  *http.ServeMux

	authMu   sync.Mutex
	token    string          // the login token; "" once spent
	sessions map[string]bool // session cookie values

	mu       sync.Mutex
	state    *State
	stateRaw []byte
	content  []byte      // stateRaw without its version and time, to tell news
	events   []EventView // the latest, oldest first
	added    uint64      // events added so far: the last one's EventView.n
	changed  chan struct{}
	version  uint64

	refresh chan struct{} // asks the refresher for a new read
}

// New makes a server; Run connects it to the cluster. Token is the
// login URL's token.
func New(cfg Config) (*Server, error) {
	if len(cfg.Managers) == 0 || cfg.Connect == nil {
		return nil, errors.New("dashboard: no manager to talk to")
	}
	if cfg.Log == nil {
		cfg.Log = slog.New(slog.DiscardHandler)
	}
	if cfg.EventHistory == 0 {
		cfg.EventHistory = time.Hour
	}
	if cfg.RefreshEvery == 0 {
		cfg.RefreshEvery = 2 * time.Second
	}
	token, err := randomToken()
	if err != nil {
		return nil, err
	}
	s := &Server{cfg: cfg, mgrs: newManagers(cfg.Connect, cfg.Managers), log: cfg.Log, token: token,
		sessions: map[string]bool{}, changed: make(chan struct{}), refresh: make(chan struct{}, 1)}
	s.routes()
	return s, nil
}

// Token is the one-time login token, until it is spent.
func (s *Server) Token() string {
	s.authMu.Lock()
	defer s.authMu.Unlock()
	return s.token
}

// LoginURL is the URL that logs in to a server reached at base
// ("http://127.0.0.1:8080").
func (s *Server) LoginURL(base string) string {
	return strings.TrimSuffix(base, "/") + "/?token=" + s.Token()
}

func randomToken() (string, error) {
	b := make([]byte, 32)
	if _, err := rand.Read(b); err != nil {
		return "", fmt.Errorf("make a token: %w", err)
	}
	return base64.RawURLEncoding.EncodeToString(b), nil
}

// Run reads the cluster and follows its events until ctx ends.
func (s *Server) Run(ctx context.Context) {
	defer s.mgrs.close()
	var wg sync.WaitGroup
	wg.Add(2)
	go func() { defer wg.Done(); s.refresher(ctx) }()
	go func() { defer wg.Done(); s.followEvents(ctx) }()
	wg.Wait()
}

// Ready reports whether the server has read the cluster at least once.
func (s *Server) Ready() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.state != nil && s.state.Error == ""
}

// poke asks for a new read of the cluster.
func (s *Server) poke() {
	select {
	case s.refresh <- struct{}{}:
	default:
	}
}

// refresher reads the cluster when an event (or an action) asks, and at
// least every RefreshEvery, and publishes what it read.
func (s *Server) refresher(ctx context.Context) {
	tick := time.NewTicker(s.cfg.RefreshEvery)
	defer tick.Stop()
	for {
		rctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		st, err := read(rctx, s.mgrs)
		cancel()
		if ctx.Err() != nil {
			return
		}
		s.publishState(st, err)
		select {
		case <-ctx.Done():
			return
		case <-s.refresh:
		case <-tick.C:
		}
		// Gather a burst of events (a scale makes several) into one read.
		select {
		case <-ctx.Done():
			return
		case <-time.After(30 * time.Millisecond):
		}
	}
}

// publishState makes st the state the pages see; a failed read keeps
// the last state, marked with the error.
func (s *Server) publishState(st *State, err error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if err != nil {
		s.log.Warn("read the cluster", "err", err)
		if s.state == nil {
			st = &State{Nodes: []NodeView{}, Services: []ServiceView{}, Tasks: []TaskView{}, Secrets: []SecretView{}, Configs: []SecretView{}}
		} else {
			c := *s.state
			st = &c
		}
		st.Error = "the cluster does not answer: " + err.Error()
	}
	// A read that found nothing new is not news: the pages keep what they
	// show (and what the user is clicking on).
	st.Version, st.UpdatedAt = 0, 0
	content, merr := json.Marshal(st)
	if merr != nil {
		s.log.Error("encode the state", "err", merr)
		return
	}
	if s.state != nil && string(content) == string(s.content) {
		return
	}
	s.content = content
	s.version++
	st.Version, st.UpdatedAt = s.version, time.Now().UnixMilli()
	raw, _ := json.Marshal(st)
	s.state, s.stateRaw = st, raw
	s.notifyLocked()
}

func (s *Server) notifyLocked() {
	close(s.changed)
	s.changed = make(chan struct{})
}

// hostnames maps node IDs to hostnames, from the latest state.
func (s *Server) hostnames() map[string]string {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := map[string]string{}
	if s.state != nil {
		for _, n := range s.state.Nodes {
			out[n.ID] = n.Hostname
		}
	}
	return out
}

func (s *Server) addEvent(e *pb.ClusterEvent) {
	v := eventView(e, s.hostnames())
	s.mu.Lock()
	s.added++
	v.n = s.added
	s.events = append(s.events, v)
	if len(s.events) > maxEvents {
		s.events = append([]EventView(nil), s.events[len(s.events)-maxEvents:]...)
	}
	s.notifyLocked()
	s.mu.Unlock()
	s.poke()
}

// followEvents streams the cluster's events from one manager after
// another, resuming after the last one received.
func (s *Server) followEvents(ctx context.Context) {
	req := &pb.EventsRequest{Since: time.Now().Add(-s.cfg.EventHistory).UnixNano()}
	for ctx.Err() == nil {
		got := false
		var lastErr error
		for _, addr := range s.mgrs.order() {
			n, err := s.streamEvents(ctx, addr, req)
			if ctx.Err() != nil {
				return
			}
			if status.Code(err) == codes.OutOfRange {
				// This manager no longer holds the events after the last
				// one received: the state is read whole anyway, so follow
				// from now, and say so in the list.
				s.log.Warn("events lost in a move between managers", "err", err)
				*req = pb.EventsRequest{Since: time.Now().UnixNano()}
				s.addEvent(&pb.ClusterEvent{Time: time.Now().UnixNano(), Type: "dashboard", Action: "gap",
					Attributes: map[string]string{"message": "some events were missed while changing managers"}})
				got = true
				break
			}
			got = got || n > 0
			lastErr = err
			if n > 0 {
				break // start again from the current manager
			}
		}
		if !got {
			s.log.Warn("no manager streams events", "err", lastErr)
			select {
			case <-ctx.Done():
				return
			case <-time.After(500 * time.Millisecond):
			}
		}
	}
}

// streamEvents follows addr's events until the stream fails, and returns
// how many arrived.
func (s *Server) streamEvents(ctx context.Context, addr string, req *pb.EventsRequest) (int, error) {
	c, err := s.mgrs.client(addr)
	if err != nil {
		return 0, err
	}
	sctx, cancel := context.WithCancel(ctx)
	defer cancel()
	stream, err := c.Events(sctx, req)
	if err != nil {
		return 0, err
	}
	n := 0
	for {
		e, err := stream.Recv()
		if err != nil {
			if errors.Is(err, io.EOF) {
				err = nil
			}
			return n, err
		}
		if n == 0 {
			s.mgrs.answered(addr)
		}
		n++
		req.SinceIndex, req.SinceSeq = e.GetIndex(), e.GetSeq()
		s.addEvent(e)
	}
}

// ---------------------------------------------------------------- HTTP

// ServeHTTP serves the pages and the API, to logged-in browsers only.
func (s *Server) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	h := w.Header()
	h.Set("Content-Security-Policy", "default-src 'self'; img-src 'self' data:; frame-ancestors 'none'; base-uri 'none'; form-action 'self'")
	h.Set("X-Content-Type-Options", "nosniff")
	h.Set("X-Frame-Options", "DENY")
	h.Set("Referrer-Policy", "no-referrer")
	h.Set("Cache-Control", "no-store")
	authenticated := s.authenticated(r)
	if tok := r.URL.Query().Get("token"); tok != "" {
		if authenticated { // the login URL again, in the browser that used it
			http.Redirect(w, r, "/", http.StatusSeeOther)
			return
		}
		s.login(w, r, tok)
		return
	}
	if !authenticated {
		unauthorized(w)
		return
	}
	if r.Method != http.MethodGet && r.Method != http.MethodHead && !sameOrigin(r) {
		http.Error(w, "403: cross-site request refused", http.StatusForbidden)
		return
	}
	s.mux.ServeHTTP(w, r)
}

func unauthorized(w http.ResponseWriter) {
	http.Error(w, "401: log in with the URL `shoal dashboard` printed (its token works once); run it again for a new one", http.StatusUnauthorized)
}

// login spends the token for a session cookie and sends the browser to
// the overview, without the token in its address.
func (s *Server) login(w http.ResponseWriter, r *http.Request, tok string) {
	s.authMu.Lock()
	ok := s.token != "" && subtle.ConstantTimeCompare([]byte(tok), []byte(s.token)) == 1
	var session string
	if ok {
		var err error
		if session, err = randomToken(); err != nil {
			s.authMu.Unlock()
			http.Error(w, err.Error(), http.StatusInternalServerError)
			return
		}
		s.token = ""
		s.sessions[session] = true
	}
	s.authMu.Unlock()
	if !ok {
		s.log.Warn("refused a login with a wrong or spent token", "from", r.RemoteAddr)
		unauthorized(w)
		return
	}
	s.log.Info("logged in", "from", r.RemoteAddr)
	http.SetCookie(w, &http.Cookie{Name: cookieName, Value: session, Path: "/", HttpOnly: true,
		SameSite: http.SameSiteStrictMode, Secure: s.cfg.SecureCookie})
	http.Redirect(w, r, "/", http.StatusSeeOther)
}

func (s *Server) authenticated(r *http.Request) bool {
	c, err := r.Cookie(cookieName)
	if err != nil || c.Value == "" {
		return false
	}
	s.authMu.Lock()
	defer s.authMu.Unlock()
	return s.sessions[c.Value]
}

// sameOrigin reports whether a state-changing request comes from the
// dashboard's own pages: the browser's Origin matches the host it asked.
func sameOrigin(r *http.Request) bool {
	if site := r.Header.Get("Sec-Fetch-Site"); site != "" && site != "same-origin" {
		return false
	}
	origin := r.Header.Get("Origin")
	if origin == "" {
		return r.Header.Get("Sec-Fetch-Site") == "same-origin"
	}
	i := strings.Index(origin, "://")
	return i >= 0 && origin[i+3:] == r.Host
}

func (s *Server) routes() {
	sub, _ := fs.Sub(static, "static")
	files := http.FileServerFS(sub)
	s.mux = http.NewServeMux()
	s.mux.Handle("GET /static/", http.StripPrefix("/static/", files))
	s.mux.HandleFunc("GET /{$}", func(w http.ResponseWriter, r *http.Request) {
		http.ServeFileFS(w, r, sub, "index.html")
	})
	s.mux.HandleFunc("GET /api/state", s.getState)
	s.mux.HandleFunc("GET /api/events", s.getEvents)
	s.mux.HandleFunc("GET /api/stream", s.stream)
	s.mux.HandleFunc("GET /api/services/{id}/logs", s.logs)
	s.mux.HandleFunc("POST /api/services/{id}/scale", s.action(s.scale))
	s.mux.HandleFunc("POST /api/services/{id}/image", s.action(s.setImage))
	s.mux.HandleFunc("POST /api/services/{id}/rollback", s.action(s.rollback))
	s.mux.HandleFunc("POST /api/services/{id}/redeploy", s.action(s.redeploy))
	s.mux.HandleFunc("POST /api/services/{id}/remove", s.action(s.remove))
	s.mux.HandleFunc("POST /api/nodes/{id}/availability", s.action(s.availability))
}

func (s *Server) getState(w http.ResponseWriter, _ *http.Request) {
	s.mu.Lock()
	raw := s.stateRaw
	s.mu.Unlock()
	if raw == nil {
		writeJSON(w, http.StatusServiceUnavailable, map[string]string{"error": "the cluster has not answered yet"})
		return
	}
	w.Header().Set("Content-Type", "application/json")
	w.Write(raw)
}

func (s *Server) getEvents(w http.ResponseWriter, _ *http.Request) {
	s.mu.Lock()
	evs := append([]EventView{}, s.events...)
	s.mu.Unlock()
	writeJSON(w, http.StatusOK, evs)
}

// stream is the pages' live feed (server-sent events): "state" with the
// whole state whenever it changes, "events" with the events that
// arrived since the last message, and a comment every 15s to keep the
// connection open.
func (s *Server) stream(w http.ResponseWriter, r *http.Request) {
	flusher, ok := w.(http.Flusher)
	if !ok {
		http.Error(w, "streaming unsupported", http.StatusInternalServerError)
		return
	}
	w.Header().Set("Content-Type", "text/event-stream")
	w.Header().Set("X-Accel-Buffering", "no")
	w.WriteHeader(http.StatusOK)
	var sentVersion uint64
	var sentEvents uint64 // the n of the last event sent
	keepalive := time.NewTicker(15 * time.Second)
	defer keepalive.Stop()
	for {
		s.mu.Lock()
		raw, version, changed := s.stateRaw, s.version, s.changed
		var fresh []EventView
		for _, e := range s.events {
			if e.n > sentEvents {
				fresh = append(fresh, e)
			}
		}
		s.mu.Unlock()
		if len(fresh) > 0 {
			b, _ := json.Marshal(fresh)
			fmt.Fprintf(w, "event: events\ndata: %s\n\n", b)
			sentEvents = fresh[len(fresh)-1].n
		}
		if raw != nil && version != sentVersion {
			fmt.Fprintf(w, "event: state\ndata: %s\n\n", raw)
			sentVersion = version
		}
		flusher.Flush()
		select {
		case <-r.Context().Done():
			return
		case <-changed:
		case <-keepalive.C:
			fmt.Fprint(w, ": keepalive\n\n")
		}
	}
}

func writeJSON(w http.ResponseWriter, code int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	_ = json.NewEncoder(w).Encode(v)
}

// IsLoopback reports whether addr (host:port) is served on loopback only.
func IsLoopback(addr string) bool {
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		return false
	}
	if host == "localhost" {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}
