package worker

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync/atomic"
	"time"

	"github.com/shoal-cluster/shoal/internal/rpc"
	pb "github.com/shoal-cluster/shoal/proto"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// managerLeaderTrailer and managerAcceptedHeader mirror the manager's
// dispatcher.LeaderTrailer and dispatcher.AcceptedHeader (a worker never
// imports the manager).
const (
	managerLeaderTrailer  = "shoal-leader"
	managerAcceptedHeader = "shoal-session"
)

// firstMessageBound is how many heartbeat periods an accepted session's
// first message may take: it carries every assignment and endpoint of the
// node, which takes a while over a slow link.
const firstMessageBound = 10

// defaultPeriod bounds session attempts before any leader has said what
// the heartbeat period is.
const defaultPeriod = time.Second

// hintHeadStart is how long the manager a follower named as the leader is
// tried alone before every other known manager is tried too.
const hintHeadStart = 100 * time.Millisecond

// Backoff between rounds in which no manager gave a session (an election
// in progress, every manager unreachable).
const (
	minRetry = 50 * time.Millisecond
	maxRetry = time.Second
)

// sessionLoop keeps one session open with the leader. Finding the leader
// never waits on one address: every attempt is bounded by the heartbeat
// period, and all known managers are tried at once (see findLeader).
func (a *Agent) sessionLoop() {
	defer a.wg.Done()
	retry := minRetry
	misses := 0 // searches in a row that opened no session
	for a.ctx.Err() == nil {
		s, err := a.findLeader(misses)
		if err == nil {
			retry, misses = minRetry, 0
			err = a.serveSession(s)
			if a.ctx.Err() != nil {
				return
			}
			a.log.Info("session ended", "manager", s.addr, "err", err)
		} else {
			if a.ctx.Err() != nil {
				return
			}
			a.log.Info("no session with the leader yet", "err", err)
			misses++
		}
		select {
		case <-a.ctx.Done():
			return
		case <-time.After(retry):
		}
		if err != nil {
			retry = min(retry*2, maxRetry)
		}
	}
}

// openedSession is a session a manager accepted: it sent its first message.
type openedSession struct {
	addr    string
	conn    *grpc.ClientConn
	stream  grpc.ServerStreamingClient[pb.SessionMessage]
	first   *pb.SessionMessage
	offered []string
	ctx     context.Context // the session's; cancel ends it
	cancel  context.CancelFunc
}

func (s *openedSession) close() {
	s.cancel()
	s.conn.Close()
}

// attempt is the outcome of one try at opening a session.
type attempt struct {
	addr     string
	s        *openedSession
	redirect string // the leader a follower named
	err      error
}

// findLeader opens a session with the leader. A follower's word on where
// the leader is is only a hint: that manager is tried first, and after
// hintHeadStart (or at once when there is no hint, or the hint fails)
// every manager the node knows of is tried in parallel, each attempt
// bounded by the heartbeat period, so one unreachable address never holds
// the search up. Leaders named by followers during the search join it.
// misses is how many searches in a row found no leader: each doubles the
// bound (see attemptBound).
func (a *Agent) findLeader(misses int) (*openedSession, error) {
	a.mu.Lock()
	hint := a.leaderHint
	a.leaderHint = ""
	a.mu.Unlock()
	cands := a.managerCandidates()
	if len(cands) == 0 {
		return nil, errors.New("no manager known yet; waiting for gossip")
	}
	bound := a.attemptBound() << min(misses, maxBoundDoublings)

	race, stop := context.WithCancel(a.ctx)
	defer stop()
	results := make(chan attempt)
	tried := map[string]bool{}
	running := 0
	launch := func(addr string) {
		if addr == "" || tried[addr] {
			return
		}
		tried[addr] = true
		running++
		go func() {
			s, redirect, err := a.openSession(race, addr, bound)
			results <- attempt{addr: addr, s: s, redirect: redirect, err: err}
		}()
	}
	launchAll := func() {
		for _, c := range cands {
			launch(c)
		}
	}

	var headStart <-chan time.Time
	if hint != "" {
		launch(hint)
		t := time.NewTimer(hintHeadStart)
		defer t.Stop()
		headStart = t.C
	} else {
		launchAll()
	}
	var won *openedSession
	var errs []error
	for running > 0 {
		select {
		case <-headStart:
			headStart = nil
			if won == nil {
				launchAll()
			}
			continue
		case r := <-results:
			running--
			switch {
			case r.err == nil && won == nil:
				won = r.s
				stop() // the others give up
			case r.err == nil:
				r.s.close() // a second manager accepted (leadership moving): keep one
			default:
				errs = append(errs, fmt.Errorf("%s: %w", r.addr, r.err))
				if won == nil {
					launch(r.redirect)
					if headStart != nil {
						headStart = nil
						launchAll()
					}
				}
			}
		}
	}
	if won != nil {
		return won, nil
	}
	return nil, errors.Join(errs...)
}

// attemptBound is how long one attempt to open a session may take: the
// heartbeat period the leader last asked for, but no less than
// minAttempt (a TLS handshake and a Raft write on a loaded machine).
func (a *Agent) attemptBound() time.Duration {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.period > 0 {
		return max(a.period, minAttempt)
	}
	return defaultPeriod
}

// minAttempt is the shortest bound on an attempt to open a session.
const minAttempt = 250 * time.Millisecond

// maxBoundDoublings caps how far searches that keep finding no leader
// stretch the attempt bound (8×). A leader behind a slow, lossy link may
// need longer than a period for the TLS handshake alone; the longer bound
// costs nothing when a leader answers (it wins the race at once), only
// when none does.
const maxBoundDoublings = 3

// openSession asks one manager for a session and waits, at most bound
// (dial, TLS handshake and the leader's acceptance header), for it to
// accept, then up to firstMessageBound periods for the first message. A
// follower refuses and names the leader (redirect). Cancelling race
// abandons the attempt unless it already succeeded.
func (a *Agent) openSession(race context.Context, addr string, bound time.Duration) (*openedSession, string, error) {
	conn, err := rpc.Dial(addr, a.creds.Creds())
	if err != nil {
		return nil, "", err
	}
	ctx, cancel := context.WithCancelCause(a.ctx)
	abandon := context.AfterFunc(race, func() { cancel(errors.New("another manager answered first")) })
	var timeoutErr atomic.Pointer[error]
	noAnswer := fmt.Errorf("no answer within %s", bound)
	timeoutErr.Store(&noAnswer)
	timeout := time.AfterFunc(bound, func() { cancel(*timeoutErr.Load()) })
	fail := func(err error) (*openedSession, string, error) {
		abandon()
		timeout.Stop()
		if cause := context.Cause(ctx); cause != nil && ctx.Err() != nil {
			err = cause
		}
		cancel(nil)
		conn.Close()
		return nil, "", err
	}
	offered := a.offered()
	desc := describe(&a.cfg, offered, a.taskNet != nil)
	desc.MeshDatapath = MeshDatapathOf(a.mesh)
	stream, err := pb.NewDispatcherClient(conn).Session(ctx, &pb.SessionRequest{
		NodeId: a.id.NodeID, Description: desc,
	})
	if err != nil {
		return fail(err)
	}
	if md, err := stream.Header(); err == nil && len(md.Get(managerAcceptedHeader)) > 0 {
		// Accepted: the first message gets longer (a timer that already
		// fired has cancelled the attempt, and Recv says so).
		slow := fmt.Errorf("accepted, but the first message took over %s", firstMessageBound*bound)
		timeoutErr.Store(&slow)
		timeout.Reset(firstMessageBound * bound)
	}
	first, err := stream.Recv()
	if err != nil {
		redirect := ""
		if v := stream.Trailer().Get(managerLeaderTrailer); len(v) > 0 && v[0] != addr {
			redirect = v[0]
		}
		a.noteRefusal(err)
		_, _, err = fail(err)
		return nil, redirect, err
	}
	// Accepted: from here on only the session's own end stops it.
	if !abandon() || !timeout.Stop() {
		return fail(errors.New("abandoned"))
	}
	return &openedSession{addr: addr, conn: conn, stream: stream, first: first, offered: offered,
		ctx: ctx, cancel: func() { cancel(nil) }}, "", nil
}

// noteRefusal acts on a manager's refusal that no other manager would
// change: this node was removed from the cluster.
func (a *Agent) noteRefusal(err error) {
	code := status.Code(err)
	if code != codes.PermissionDenied && code != codes.NotFound {
		return
	}
	a.log.Error("the cluster refused this node", "err", status.Convert(err).Message())
	if strings.Contains(status.Convert(err).Message(), "removed") || code == codes.NotFound {
		// Tracked by wg (the session loop holds it): Close waits.
		a.wg.Add(1)
		go func() {
			defer a.wg.Done()
			a.forgetCluster()
		}()
	}
}

// serveSession serves an open session until it fails: assignments,
// secrets, endpoints and node updates in, heartbeats out.
func (a *Agent) serveSession(o *openedSession) error {
	defer o.close()
	first := o.first
	sess := &activeSession{id: first.GetSessionId(), conn: o.conn, addr: o.addr, period: time.Duration(first.GetHeartbeatPeriod())}
	if err := a.db.saveManagers(first.GetManagers()); err != nil {
		a.log.Warn("remember managers", "err", err)
	}
	a.rememberManagers(first.GetManagers())
	a.applyValues("secret", a.secrets, first.GetSecrets())
	a.applyValues("config", a.configs, first.GetConfigs())
	a.applyAssignments(first.GetAssignments())
	a.mesh.Apply(first.GetEndpoints())
	a.noteNode(first.GetNode())
	a.noteTaskNetworks(first.GetNode(), first.GetTaskNetworks())
	a.noteSecurity(first.GetSecurity())
	a.mu.Lock()
	a.session = sess
	if sess.period > 0 {
		a.period = sess.period
	}
	for id, t := range a.tasks { // the new leader hears every status again
		a.pending[id] = t.GetStatus()
	}
	select {
	case <-a.connected:
	default:
		close(a.connected)
	}
	a.mu.Unlock()
	a.log.Info("session open", "manager", o.addr, "session", sess.id, "heartbeat", sess.period)
	defer func() {
		a.mu.Lock()
		if a.session == sess {
			a.session = nil
		}
		a.mu.Unlock()
	}()

	ctx, cancel := context.WithCancel(o.ctx)
	defer cancel()
	hbErr := make(chan error, 1)
	go func() { hbErr <- a.heartbeat(ctx, o.conn, sess) }()
	go a.watchRuntimes(ctx, cancel, o.offered)
	msgs := make(chan *pb.SessionMessage)
	recvErr := make(chan error, 1)
	go func() {
		for {
			m, err := o.stream.Recv()
			if err != nil {
				recvErr <- err
				return
			}
			select {
			case msgs <- m:
			case <-ctx.Done():
				return
			}
		}
	}()
	for {
		select {
		case err := <-hbErr:
			return fmt.Errorf("heartbeat: %w", err)
		case err := <-recvErr:
			a.noteRedirect(o.stream.Trailer().Get(managerLeaderTrailer))
			return err
		case m := <-msgs:
			a.applyValues("secret", a.secrets, m.GetSecrets())
			a.applyValues("config", a.configs, m.GetConfigs())
			a.applyAssignments(m.GetAssignments())
			a.mesh.Apply(m.GetEndpoints())
			a.noteNode(m.GetNode())
			a.noteTaskNetworks(m.GetNode(), m.GetTaskNetworks())
			a.noteSecurity(m.GetSecurity())
		case <-a.ctx.Done():
			return nil
		}
	}
}

// noteRedirect keeps the leader a manager named, for the next search.
func (a *Agent) noteRedirect(v []string) {
	if len(v) == 0 || v[0] == "" {
		return
	}
	a.mu.Lock()
	a.leaderHint = v[0]
	a.mu.Unlock()
}

// heartbeat beats at the period the manager asks for, counted from one
// beat's start to the next. Each call may take up to two periods, so a
// slow link (a call now and then over one period) keeps its session, while
// a leader that went silent ends it within three periods of the last beat
// it answered: the leader marks a node Down after three, a new leader
// gives it five from the start of its term.
func (a *Agent) heartbeat(ctx context.Context, conn *grpc.ClientConn, sess *activeSession) error {
	client := pb.NewDispatcherClient(conn)
	period := sess.period
	if period <= 0 {
		period = defaultPeriod
	}
	next := time.Now().Add(period)
	for {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(time.Until(next)):
		}
		next = time.Now().Add(period)
		usage := a.sampleUsage(ctx, min(sampleBound, period/2))
		hctx, cancel := context.WithTimeout(ctx, 2*period)
		resp, err := client.Heartbeat(hctx, &pb.HeartbeatRequest{SessionId: sess.id, NodeId: a.id.NodeID, Usage: usage})
		cancel()
		if err != nil {
			return err
		}
		if p := time.Duration(resp.GetPeriod()); p > 0 && p != period {
			next = next.Add(p - period)
			period = p
		}
	}
}
