package dockerapi

import (
	"context"
	"encoding/binary"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/shoal-cluster/shoal/internal/pki"
	pb "github.com/shoal-cluster/shoal/proto"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

func TestParseLogTime(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want int64
		err  bool
	}{
		{"", 0, false},
		{"0", 0, false},
		{"1700000000", 1700000000 * int64(time.Second), false},
		{"1700000000.5", 1700000000*int64(time.Second) + 5e8, false},
		{"1700000000.000000001", 1700000000*int64(time.Second) + 1, false},
		{"2023-11-14T22:13:20Z", 1700000000 * int64(time.Second), false},
		{"1700000000.0000000001", 0, true},
		{"yesterday", 0, true},
		{"-5", 0, true},
	} {
		got, err := parseLogTime(tc.in)
		if (err != nil) != tc.err || got != tc.want {
			t.Errorf("parseLogTime(%q) = %d, %v; want %d, error %v", tc.in, got, err, tc.want, tc.err)
		}
	}
}

// logsControl answers GetService for the logs endpoint.
type logsControl struct{ pb.ControlClient }

func (logsControl) GetService(_ context.Context, req *pb.GetServiceRequest, _ ...grpc.CallOption) (*pb.GetServiceResponse, error) {
	return &pb.GetServiceResponse{Service: &pb.Service{Id: "svc1", Spec: &pb.ServiceSpec{Annotations: &pb.Annotations{Name: req.GetRef()},
		Task: &pb.TaskSpec{Runtime: "docker", Container: &pb.ContainerSpec{Image: "x"}}}}}, nil
}

// TestLogsTimestamps: with timestamps=1 each line starts with its time in
// the Engine's fixed-width form, before the details the CLI parses; since
// and until reach the managers as Unix nanoseconds.
func TestLogsTimestamps(t *testing.T) {
	at := time.Date(2026, 12, 7, 0, 30, 1, 5000, time.UTC)
	var got *pb.ServiceLogsRequest
	s := New(Config{Control: logsControl{}, Logs: func(_ context.Context, req *pb.ServiceLogsRequest, send func(*pb.LogLine) error) error {
		got = req
		return send(&pb.LogLine{TaskId: "t1", NodeId: "n1", Data: []byte("hello listening"), Timestamp: at.UnixNano()})
	}})
	r := httptest.NewRequest(http.MethodGet, "/v1.50/services/web/logs?stdout=1&stderr=1&details=1&timestamps=1&since=1700000000.5&until=2023-11-14T22:13:21Z&tail=5", nil)
	r = r.WithContext(WithClient(r.Context(), pki.Identity{Role: pki.RoleAdmin}))
	w := httptest.NewRecorder()
	s.ServeHTTP(w, r)
	body, _ := io.ReadAll(w.Result().Body)
	if w.Code != http.StatusOK || len(body) < 8 {
		t.Fatalf("status %d, body %q", w.Code, body)
	}
	if size := binary.BigEndian.Uint32(body[4:8]); int(size) != len(body)-8 {
		t.Fatalf("frame size %d for %d bytes", size, len(body)-8)
	}
	line := string(body[8:])
	want := "2026-12-07T00:30:01.000005000Z com.docker.swarm.node.id=n1,com.docker.swarm.service.id=svc1,com.docker.swarm.task.id=t1 hello listening\n"
	if line != want {
		t.Fatalf("line %q\nwant %q", line, want)
	}
	if !got.GetTimestamps() || got.GetSince() != 1700000000*int64(time.Second)+5e8 || got.GetUntil() != 1700000001*int64(time.Second) || got.GetTail() != 5 {
		t.Fatalf("request to the managers: %v", got)
	}

	r = httptest.NewRequest(http.MethodGet, "/services/web/logs?stdout=1&since=soon", nil)
	r = r.WithContext(WithClient(r.Context(), pki.Identity{Role: pki.RoleAdmin}))
	w = httptest.NewRecorder()
	s.ServeHTTP(w, r)
	if w.Code != http.StatusBadRequest || !strings.Contains(w.Body.String(), `invalid since \"soon\"`) {
		t.Fatalf("bad since: %d %s", w.Code, w.Body.String())
	}
}

// flakyControl fails GetService as Unavailable a number of times first,
// as a manager does while an election runs.
type flakyControl struct {
	logsControl
	fails int
	calls int
}

func (f *flakyControl) GetService(ctx context.Context, req *pb.GetServiceRequest, opts ...grpc.CallOption) (*pb.GetServiceResponse, error) {
	f.calls++
	if f.calls <= f.fails {
		return nil, status.Error(codes.Unavailable, "this manager is not the Raft leader")
	}
	return f.logsControl.GetService(ctx, req, opts...)
}

// TestReadsWaitOutAnElection: a GET that fails as Unavailable is tried
// again until it answers (within readRetry); one that keeps failing
// answers 503.
func TestReadsWaitOutAnElection(t *testing.T) {
	for _, tc := range []struct {
		fails, code int
	}{
		{2, http.StatusOK},
		{1000, http.StatusServiceUnavailable},
	} {
		fc := &flakyControl{fails: tc.fails}
		s := New(Config{Control: fc})
		r := httptest.NewRequest(http.MethodGet, "/services/web", nil)
		r = r.WithContext(WithClient(r.Context(), pki.Identity{Role: pki.RoleAdmin}))
		w := httptest.NewRecorder()
		start := time.Now()
		s.ServeHTTP(w, r)
		if w.Code != tc.code {
			t.Fatalf("%d failures: status %d %s, want %d", tc.fails, w.Code, w.Body.String(), tc.code)
		}
		if tc.code == http.StatusServiceUnavailable && time.Since(start) < readRetry {
			t.Fatalf("gave up after %s, before %s", time.Since(start), readRetry)
		}
	}
}

// TestRemoveRetries: a remove refused while tasks still stop, or whose
// outcome is unknown, is tried again; "not found" after an unknown
// outcome is success; other refusals answer at once.
func TestRemoveRetries(t *testing.T) {
	tasks := status.Error(codes.FailedPrecondition, `secret "s" is still used by 1 running task; retry once they have stopped`)
	unknown := status.Error(codes.Unavailable, "leadership lost while the write was in flight; its outcome is unknown")
	gone := status.Error(codes.NotFound, "no secret")
	inUse := status.Error(codes.FailedPrecondition, "in use by service web")
	for _, tc := range []struct {
		name    string
		answers []error
		want    codes.Code
		calls   int
	}{
		{"tasks stop", []error{tasks, tasks, nil}, codes.OK, 3},
		{"unknown outcome, then gone", []error{unknown, gone}, codes.OK, 2},
		{"not found at first", []error{gone}, codes.NotFound, 1},
		{"in use by a service", []error{inUse}, codes.FailedPrecondition, 1},
	} {
		calls := 0
		err := whenTasksStopped(context.Background(), func() error {
			calls++
			return tc.answers[min(calls, len(tc.answers))-1]
		})
		if status.Code(err) != tc.want || calls != tc.calls {
			t.Errorf("%s: %v after %d calls, want %v after %d", tc.name, err, calls, tc.want, tc.calls)
		}
	}
}
