package main

// `shoal events`, as `docker events`: what happens in the cluster, the
// recent past (--since) and then live, until Ctrl-C or --until. When the
// manager it reads from goes away it carries on from another manager,
// resuming after the last event it printed (events carry their Raft
// index, so nothing is shown twice or skipped).

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/signal"
	"slices"
	"sort"
	"strings"
	"time"

	"github.com/shoal-cluster/shoal/internal/rpc"
	"github.com/shoal-cluster/shoal/manager/events"
	pb "github.com/shoal-cluster/shoal/proto"
	"github.com/spf13/cobra"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/encoding/protojson"
)

type eventsFlags struct {
	since, until string
	filters      []string
}

func eventsCommand(g *globalFlags) *cobra.Command {
	c := &clientFlags{globalFlags: g}
	var f eventsFlags
	cmd := &cobra.Command{
		Use:   "events [OPTIONS]",
		Short: "Show what happens in the cluster, as it happens",
		Long: "Show the cluster's events: services created, updated, scaled, rolled back and removed; tasks\n" +
			"changing state; nodes joining, going down or ready, drained, promoted; leader changes. Without\n" +
			"--until it follows new events until Ctrl-C, moving to another manager if this one goes away.",
		Args: noArgs("events takes no arguments: filter with --filter type=service|node|task|secret|config"),
		RunE: func(*cobra.Command, []string) error { return runEvents(c, &f, os.Stdout) },
	}
	c.register(cmd.Flags(), true)
	cmd.Flags().StringVar(&f.since, "since", "", "show events from this long ago (`DURATION` such as 10m) or since a time (RFC 3339)")
	cmd.Flags().StringVar(&f.until, "until", "", "stop at this time (RFC 3339) or `DURATION` from now")
	cmd.Flags().StringArrayVarP(&f.filters, "filter", "f", nil, "keep events matching `KEY=VALUE`: type=service|node|task|secret|config, service=NAME, node=ID (repeatable)")
	return cmd
}

// eventFilter is what --filter selects beyond the type, which the manager
// filters itself.
type eventFilter struct {
	types    []string
	services []string
	nodes    []string
}

func parseEventFilters(raw []string) (eventFilter, error) {
	var f eventFilter
	for _, kv := range raw {
		k, v, ok := strings.Cut(kv, "=")
		if !ok || v == "" {
			return f, usagef("--filter %q: use KEY=VALUE, such as type=service", kv)
		}
		switch k {
		case "type":
			if !slices.Contains(events.Types, v) {
				return f, usagef("--filter type=%s: use one of %s", v, strings.Join(events.Types, ", "))
			}
			f.types = append(f.types, v)
		case "service":
			f.services = append(f.services, v)
		case "node":
			f.nodes = append(f.nodes, v)
		default:
			return f, usagef("--filter %q: unknown key %q; use type, service or node", kv, k)
		}
	}
	return f, nil
}

// keep reports whether e passes the service and node filters.
func (f eventFilter) keep(e *pb.ClusterEvent) bool {
	if len(f.services) > 0 {
		svc := e.GetAttributes()["service"]
		if e.GetType() == "service" {
			svc = e.GetName()
		}
		if !slices.Contains(f.services, svc) && !slices.Contains(f.services, e.GetId()) {
			return false
		}
	}
	if len(f.nodes) > 0 {
		node := e.GetAttributes()["node"]
		if e.GetType() == "node" {
			node = e.GetId()
		}
		if !slices.ContainsFunc(f.nodes, func(n string) bool {
			return n != "" && strings.HasPrefix(node, n) || n == e.GetName() && e.GetType() == "node"
		}) {
			return false
		}
	}
	return true
}

// parseEventTime reads --since or --until: a duration back from now (since)
// or forward from now (until), or an RFC 3339 time.
func parseEventTime(flag, v string, now time.Time, forward bool) (int64, error) {
	if v == "" {
		return 0, nil
	}
	if d, err := time.ParseDuration(v); err == nil {
		if d < 0 {
			return 0, usagef("--%s %q: use a positive duration", flag, v)
		}
		if forward {
			return now.Add(d).UnixNano(), nil
		}
		return now.Add(-d).UnixNano(), nil
	}
	if t, err := time.Parse(time.RFC3339Nano, v); err == nil {
		return t.UnixNano(), nil
	}
	return 0, usagef("--%s %q: use a duration such as 10m, or a time such as 2026-12-06T20:00:00Z", flag, v)
}

func runEvents(c *clientFlags, f *eventsFlags, out io.Writer) error {
	filter, err := parseEventFilters(f.filters)
	if err != nil {
		return err
	}
	now := time.Now()
	since, err := parseEventTime("since", f.since, now, false)
	if err != nil {
		return err
	}
	until, err := parseEventTime("until", f.until, now, true)
	if err != nil {
		return err
	}
	s, err := c.connect()
	if err != nil {
		return err
	}
	defer s.close()
	// The other managers, to carry on from when this one goes away.
	addrs := []string{s.addr}
	if nresp, err := s.control.ListNodes(s.ctx, &pb.ListNodesRequest{}); err == nil {
		for _, n := range nresp.GetNodes() {
			if a := n.GetManagerStatus().GetApiAddr(); a != "" && !slices.Contains(addrs, a) {
				addrs = append(addrs, a)
			}
		}
	} else {
		return s.explain(err)
	}
	creds, err := c.credentials()
	if err != nil {
		return err
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt)
	defer stop()
	if since == 0 {
		// From now, by the clock: a move to another manager before the
		// first event then misses nothing either.
		since = now.UnixNano()
	}
	req := &pb.EventsRequest{Since: since, Until: until, Types: filter.types}
	emit := func(e *pb.ClusterEvent) error {
		if !filter.keep(e) {
			return nil
		}
		if c.format == "json" {
			b, err := protojson.MarshalOptions{UseProtoNames: true}.Marshal(e)
			if err != nil {
				return err
			}
			_, err = fmt.Fprintf(out, "%s\n", b)
			return err
		}
		_, err := fmt.Fprintln(out, formatEvent(e))
		return err
	}
	// Follow, moving to the next manager when one goes away; a move gives
	// up after c.timeout without any manager answering.
	var lastErr error
	failedSince := time.Time{}
	for i := 0; ; i = (i + 1) % len(addrs) {
		if ctx.Err() != nil {
			return nil
		}
		got, err := streamEvents(ctx, addrs[i], creds, req, emit)
		if err == nil || ctx.Err() != nil {
			return nil
		}
		switch status.Code(err) {
		case codes.Unavailable, codes.Canceled, codes.DeadlineExceeded, codes.Unimplemented, codes.Internal:
		default:
			return s.explain(err)
		}
		if got {
			failedSince = time.Time{}
		}
		if failedSince.IsZero() {
			failedSince = time.Now()
		}
		lastErr = err
		if time.Since(failedSince) > c.timeout {
			return fmt.Errorf("no manager answers for events (tried %s): %w", strings.Join(addrs, ", "), s.explain(lastErr))
		}
		select {
		case <-ctx.Done():
			return nil
		case <-time.After(200 * time.Millisecond):
		}
	}
}

// streamEvents follows one manager's events, moving req's resume position
// with each event received; it reports whether any arrived.
func streamEvents(ctx context.Context, addr string, creds *rpc.Credentials, req *pb.EventsRequest, print func(*pb.ClusterEvent) error) (bool, error) {
	conn, err := rpc.Dial(addr, creds)
	if err != nil {
		return false, status.Error(codes.Unavailable, err.Error())
	}
	defer conn.Close()
	stream, err := pb.NewControlClient(conn).Events(ctx, req)
	if err != nil {
		return false, err
	}
	got := false
	for {
		e, err := stream.Recv()
		if errors.Is(err, io.EOF) {
			return got, nil
		}
		if err != nil {
			return got, err
		}
		got = true
		req.SinceIndex, req.SinceSeq = e.GetIndex(), e.GetSeq()
		if err := print(e); err != nil {
			return got, err
		}
	}
}

// formatEvent prints an event as `docker events` does:
// TIME TYPE ACTION ID (key=value, ...).
func formatEvent(e *pb.ClusterEvent) string {
	var b strings.Builder
	b.WriteString(time.Unix(0, e.GetTime()).UTC().Format("2006-01-02T15:04:05.000000000Z07:00"))
	fmt.Fprintf(&b, " %s %s %s", e.GetType(), e.GetAction(), e.GetId())
	attrs := e.GetAttributes()
	keys := make([]string, 0, len(attrs)+1)
	for k, v := range attrs {
		if v != "" {
			keys = append(keys, k)
		}
	}
	sort.Strings(keys)
	parts := make([]string, 0, len(keys)+1)
	if e.GetName() != "" {
		parts = append(parts, "name="+e.GetName())
	}
	for _, k := range keys {
		parts = append(parts, k+"="+attrs[k])
	}
	if len(parts) > 0 {
		fmt.Fprintf(&b, " (%s)", strings.Join(parts, ", "))
	}
	return b.String()
}
