package main

// `shoal service`: create, ls, ps, inspect, scale, update, rollback, logs
// and rm, modelled on `docker service`. See service_spec.go for how the
// flags become a ServiceSpec, and service_progress.go for the progress
// create, scale, update and rollback show until the service converges.

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/signal"
	"strconv"
	"strings"
	"time"

	pb "github.com/shoal-cluster/shoal/proto"
	"github.com/spf13/cobra"
	"github.com/spf13/pflag"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
)

// progressTimeout is the default --timeout of the commands that wait for a
// service to converge.
const progressTimeout = 2 * time.Minute

// serviceCommand is `shoal service`, as `docker service`.
func serviceCommand(g *globalFlags) *cobra.Command {
	return group("service", "Manage services",
		serviceCreateCommand(g, &createOptions{}), serviceLsCommand(g), servicePsCommand(g), serviceInspectCommand(g),
		serviceScaleCommand(g), serviceUpdateCommand(g, &updateOptions{}), serviceRollbackCommand(g), serviceLogsCommand(g), statsCommand(g, "service"),
		removeCommand(g, "service", func(s *session, ref string) error {
			_, err := s.control.RemoveService(s.ctx, &pb.RemoveServiceRequest{Ref: ref})
			return err
		}))
}

// registerProgressClient registers the client flags of a command that
// waits for convergence: --timeout covers the wait and defaults to 2m.
func registerProgressClient(c *clientFlags, fs *pflag.FlagSet) {
	c.register(fs, false)
	c.timeout = progressTimeout
	f := fs.Lookup("timeout")
	f.DefValue = progressTimeout.String()
	f.Usage = "how long to wait for the cluster and, unless --detach, for the service to converge"
}

// aborted turns a failed optimistic-concurrency check into advice.
func aborted(s *session, err error, name string) error {
	if status.Code(err) == codes.Aborted {
		return fmt.Errorf("service %s was changed by someone else; run the command again", name)
	}
	return s.explain(err)
}

func serviceName(svc *pb.Service) string {
	if n := svc.GetSpec().GetAnnotations().GetName(); n != "" {
		return n
	}
	return svc.GetId()
}

// ---------------------------------------------------------------- create

// serviceCreateCommand is `service create`; its flags land in o.
func serviceCreateCommand(g *globalFlags, o *createOptions) *cobra.Command {
	c := &clientFlags{globalFlags: g}
	cmd := &cobra.Command{
		Use:   "create [OPTIONS] IMAGE [COMMAND] [ARG...]",
		Short: "Create a service",
		Long: "Create a service. IMAGE is an absolute path to an executable on the workers (the process\n" +
			"runtime) or a container image (the docker runtime); unless --runtime says otherwise, a path runs\n" +
			"as a process and anything else as a container. Options go before IMAGE: what follows it is\n" +
			"the task's command line.",
		Annotations: map[string]string{verbatimArgs: "true"},
		RunE: func(cmd *cobra.Command, pos []string) error {
			return runServiceCreate(c, o, changedFlags(cmd), pos)
		},
	}
	cmd.Flags().SetInterspersed(false)
	registerProgressClient(c, cmd.Flags())
	o.register(cmd.Flags())
	return cmd
}

func runServiceCreate(c *clientFlags, o *createOptions, set map[string]bool, pos []string) error {
	spec, err := o.spec(set, pos)
	if err != nil {
		return err
	}
	mode, err := o.registry.mode()
	if err != nil {
		return err
	}
	auth, err := o.registry.auth(spec)
	if err != nil {
		return err
	}
	s, err := c.connect()
	if err != nil {
		return err
	}
	defer s.close()
	resp, err := s.control.CreateService(s.ctx, &pb.CreateServiceRequest{Spec: spec, ResolveImage: mode, RegistryAuth: auth})
	if err != nil {
		return s.explain(err)
	}
	printWarnings(resp.GetWarnings())
	svc := resp.GetService()
	fmt.Println(svc.GetId())
	if o.detach {
		return nil
	}
	return watchService(s, svc, progressOpts{}, o.quiet, c.timeout)
}

// ---------------------------------------------------------------- ls

func serviceLsCommand(g *globalFlags) *cobra.Command {
	c := &clientFlags{globalFlags: g}
	var quiet bool
	cmd := &cobra.Command{
		Use:   "ls [OPTIONS]",
		Short: "List services",
		Args:  noArgs("service ls takes no arguments"),
		RunE:  func(*cobra.Command, []string) error { return runServiceLs(c, quiet) },
	}
	c.register(cmd.Flags(), true)
	cmd.Flags().BoolVarP(&quiet, "quiet", "q", false, "print service IDs only")
	return cmd
}

func runServiceLs(c *clientFlags, quiet bool) error {
	s, err := c.connect()
	if err != nil {
		return err
	}
	defer s.close()
	resp, err := s.control.ListServices(s.ctx, &pb.ListServicesRequest{})
	if err != nil {
		return s.explain(err)
	}
	services := resp.GetServices()
	sortServices(services)
	switch {
	case quiet:
		for _, svc := range services {
			fmt.Println(svc.GetId())
		}
		return nil
	case c.format == "json":
		return printServicesJSON(os.Stdout, services, resp.GetCounts())
	}
	renderServiceList(os.Stdout, services, resp.GetCounts())
	return nil
}

// printServicesJSON prints the services as a JSON array, each with its
// task counts as "task_counts".
func printServicesJSON(w io.Writer, services []*pb.Service, counts []*pb.ServiceTaskCounts) error {
	byID := map[string]*pb.ServiceTaskCounts{}
	for _, c := range counts {
		byID[c.GetServiceId()] = c
	}
	opts := protojson.MarshalOptions{UseProtoNames: true}
	raw := make([]json.RawMessage, 0, len(services))
	for _, svc := range services {
		b, err := opts.Marshal(svc)
		if err != nil {
			return err
		}
		c := byID[svc.GetId()]
		if c == nil {
			c = &pb.ServiceTaskCounts{ServiceId: svc.GetId()}
		}
		cb, err := protojson.MarshalOptions{UseProtoNames: true, EmitUnpopulated: true}.Marshal(c)
		if err != nil {
			return err
		}
		body := strings.TrimSuffix(strings.TrimSpace(string(b)), "}")
		if strings.TrimSpace(body) != "{" {
			body += ","
		}
		raw = append(raw, json.RawMessage(body+`"task_counts":`+string(cb)+"}"))
	}
	out, err := json.MarshalIndent(raw, "", "    ")
	if err != nil {
		return err
	}
	_, err = fmt.Fprintln(w, string(out))
	return err
}

// ---------------------------------------------------------------- ps

// servicePsFlags are the flags of `service ps`.
type servicePsFlags struct {
	quiet, noTrunc bool
	filters        []string
}

func servicePsCommand(g *globalFlags) *cobra.Command {
	c := &clientFlags{globalFlags: g}
	var f servicePsFlags
	cmd := &cobra.Command{
		Use:   "ps [OPTIONS] SERVICE [SERVICE...]",
		Short: "List the tasks of one or more services",
		Args:  minArgs(1, "service ps needs at least one service name or ID"),
		RunE:  func(_ *cobra.Command, pos []string) error { return runServicePs(c, &f, pos) },
	}
	c.register(cmd.Flags(), true)
	cmd.Flags().BoolVarP(&f.quiet, "quiet", "q", false, "print task IDs only")
	cmd.Flags().BoolVar(&f.noTrunc, "no-trunc", false, "do not shorten IDs and errors, and show image digests")
	cmd.Flags().StringArrayVarP(&f.filters, "filter", "f", nil, "show only tasks that match `KEY=VALUE`: desired-state=running|shutdown|..., node=NODE, id=PREFIX, name=web.1 (repeatable)")
	return cmd
}

func runServicePs(c *clientFlags, f *servicePsFlags, pos []string) error {
	filter, err := parseTaskFilters(f.filters)
	if err != nil {
		return err
	}
	s, err := c.connect()
	if err != nil {
		return err
	}
	defer s.close()
	nresp, err := s.control.ListNodes(s.ctx, &pb.ListNodesRequest{})
	if err != nil {
		return s.explain(err)
	}
	nodes := hostnames(nresp.GetNodes())
	var tasks []*pb.Task
	for _, ref := range pos {
		got, err := s.control.GetService(s.ctx, &pb.GetServiceRequest{Ref: ref})
		if err != nil {
			return s.explain(err)
		}
		resp, err := s.control.ListTasks(s.ctx, &pb.ListTasksRequest{ServiceRef: got.GetService().GetId()})
		if err != nil {
			return s.explain(err)
		}
		for _, t := range resp.GetTasks() {
			if filter.match(t, nodes) {
				tasks = append(tasks, t)
			}
		}
	}
	sortTasks(tasks)
	switch {
	case f.quiet:
		for _, t := range tasks {
			fmt.Println(t.GetId())
		}
		return nil
	case c.format == "json":
		return printJSON(tasks)
	}
	renderTaskList(os.Stdout, tasks, nodes, f.noTrunc, time.Now())
	return nil
}

// ---------------------------------------------------------------- inspect

func serviceInspectCommand(g *globalFlags) *cobra.Command {
	return inspectCommand(g, "service", "Show one or more services in detail", func(s *session, ref string) (*pb.Service, error) {
		resp, err := s.control.GetService(s.ctx, &pb.GetServiceRequest{Ref: ref})
		return resp.GetService(), err
	}, renderServicePretty)
}

// ---------------------------------------------------------------- scale

type scaleTarget struct {
	ref      string
	replicas uint64
}

func parseScaleArgs(pos []string) ([]scaleTarget, error) {
	if len(pos) == 0 {
		return nil, usagef("service scale needs SERVICE=REPLICAS, e.g. web=5")
	}
	var out []scaleTarget
	for _, arg := range pos {
		ref, n, ok := strings.Cut(arg, "=")
		v, err := strconv.ParseInt(n, 10, 64)
		if !ok || ref == "" || err != nil {
			return nil, usagef("scale: %q: use SERVICE=REPLICAS, e.g. web=5", arg)
		}
		if v < 0 || v > maxReplicas {
			return nil, usagef("scale: %q: replicas must be from 0 to %d", arg, maxReplicas)
		}
		out = append(out, scaleTarget{ref, uint64(v)})
	}
	return out, nil
}

// scaleSpec sets the replicas of a spec; only replicated services (and
// replicated jobs: their completions) can be scaled.
func scaleSpec(spec *pb.ServiceSpec, n uint64) error {
	switch m := spec.GetMode().(type) {
	case *pb.ServiceSpec_Replicated:
		m.Replicated.Replicas = n
	case *pb.ServiceSpec_ReplicatedJob:
		if n == 0 {
			return errNoCompletions("scale: " + spec.GetAnnotations().GetName() + "=0")
		}
		m.ReplicatedJob.TotalCompletions = n
	default:
		return fmt.Errorf("scale: service %s is %s (one task on every eligible node); only replicated services and replicated jobs can be scaled", spec.GetAnnotations().GetName(), modeWord(spec))
	}
	return nil
}

func serviceScaleCommand(g *globalFlags) *cobra.Command {
	c := &clientFlags{globalFlags: g}
	var detach, quiet bool
	cmd := &cobra.Command{
		Use:   "scale [OPTIONS] SERVICE=REPLICAS [SERVICE=REPLICAS...]",
		Short: "Change the number of replicas of services",
		RunE:  func(_ *cobra.Command, pos []string) error { return runServiceScale(c, detach, quiet, pos) },
	}
	registerProgressClient(c, cmd.Flags())
	registerDetach(cmd.Flags(), &detach, &quiet)
	return cmd
}

func runServiceScale(c *clientFlags, detach, quiet bool, pos []string) error {
	targets, err := parseScaleArgs(pos)
	if err != nil {
		return err
	}
	s, err := c.connect()
	if err != nil {
		return err
	}
	defer s.close()
	type scaled struct {
		svc    *pb.Service
		before *pb.UpdateStatus
	}
	var done []scaled
	for _, target := range targets {
		// Scaling sets the replicas whatever they were, so a concurrent
		// change is retried on the fresh spec rather than reported.
		for attempt := 1; ; attempt++ {
			got, err := s.control.GetService(s.ctx, &pb.GetServiceRequest{Ref: target.ref})
			if err != nil {
				return s.explain(err)
			}
			svc := got.GetService()
			spec := proto.Clone(svc.GetSpec()).(*pb.ServiceSpec)
			if spec.GetAnnotations().GetName() == "" {
				spec.Annotations = &pb.Annotations{Name: target.ref}
			}
			if err := scaleSpec(spec, target.replicas); err != nil {
				return err
			}
			if !proto.Equal(spec, svc.GetSpec()) {
				resp, err := s.control.UpdateService(s.ctx, &pb.UpdateServiceRequest{Ref: svc.GetId(), Version: svc.GetMeta().GetVersion(), Spec: spec})
				if status.Code(err) == codes.Aborted && attempt < 3 {
					continue
				}
				if err != nil {
					return aborted(s, err, target.ref)
				}
				done = append(done, scaled{resp.GetService(), svc.GetUpdateStatus()})
			} else {
				done = append(done, scaled{svc, svc.GetUpdateStatus()})
			}
			fmt.Printf("%s scaled to %d\n", target.ref, target.replicas)
			break
		}
	}
	if detach {
		return nil
	}
	for _, d := range done {
		if err := watchService(s, d.svc, progressOpts{update: true, before: d.before}, quiet, c.timeout); err != nil {
			return err
		}
	}
	return nil
}

// ---------------------------------------------------------------- update

// serviceUpdateCommand is `service update`; its flags land in o.
func serviceUpdateCommand(g *globalFlags, o *updateOptions) *cobra.Command {
	c := &clientFlags{globalFlags: g}
	cmd := &cobra.Command{
		Use:   "update [OPTIONS] SERVICE",
		Short: "Change a service (rolling update)",
		Args:  exactArgs(1, "service update needs exactly one service name or ID"),
		RunE: func(cmd *cobra.Command, pos []string) error {
			o.set = changedFlags(cmd)
			return runServiceUpdate(c, o, pos[0])
		},
	}
	registerProgressClient(c, cmd.Flags())
	o.register(cmd.Flags())
	return cmd
}

func runServiceUpdate(c *clientFlags, o *updateOptions, ref string) error {
	if !o.changes() {
		return usagef("nothing to update: give an option to change (see --help), or --force to replace the tasks as they are")
	}
	s, svc, err := c.readService(ref)
	if err != nil {
		return err
	}
	defer s.close()
	name := serviceName(svc)
	spec := proto.Clone(svc.GetSpec()).(*pb.ServiceSpec)
	if spec == nil {
		spec = &pb.ServiceSpec{}
	}
	if err := o.apply(spec); err != nil {
		return err
	}
	mode, err := o.registry.mode()
	if err != nil {
		return err
	}
	auth, err := o.registry.auth(spec)
	if err != nil {
		return err
	}
	updated := svc
	if !proto.Equal(spec, svc.GetSpec()) || auth != nil {
		resp, err := s.control.UpdateService(s.ctx, &pb.UpdateServiceRequest{Ref: svc.GetId(), Version: svc.GetMeta().GetVersion(), Spec: spec,
			ResolveImage: mode, RegistryAuth: auth})
		if err != nil {
			return aborted(s, err, name)
		}
		printWarnings(resp.GetWarnings())
		updated = resp.GetService()
	}
	fmt.Println(name)
	if o.detach {
		return nil
	}
	return watchService(s, updated, progressOpts{update: true, before: svc.GetUpdateStatus()}, o.quiet, c.timeout)
}

// ---------------------------------------------------------------- rollback

func serviceRollbackCommand(g *globalFlags) *cobra.Command {
	c := &clientFlags{globalFlags: g}
	var detach, quiet bool
	cmd := &cobra.Command{
		Use:   "rollback [OPTIONS] SERVICE",
		Short: "Return a service to its previous spec",
		Args:  exactArgs(1, "service rollback needs exactly one service name or ID"),
		RunE:  func(_ *cobra.Command, pos []string) error { return runServiceRollback(c, detach, quiet, pos[0]) },
	}
	registerProgressClient(c, cmd.Flags())
	registerDetach(cmd.Flags(), &detach, &quiet)
	return cmd
}

func runServiceRollback(c *clientFlags, detach, quiet bool, ref string) error {
	s, svc, err := c.readService(ref)
	if err != nil {
		return err
	}
	defer s.close()
	name := serviceName(svc)
	if svc.GetPreviousSpec() == nil {
		return fmt.Errorf("service %s has no previous spec to roll back to: it was never updated", name)
	}
	resp, err := s.control.UpdateService(s.ctx, &pb.UpdateServiceRequest{Ref: svc.GetId(), Version: svc.GetMeta().GetVersion(), Rollback: true})
	if err != nil {
		return aborted(s, err, name)
	}
	fmt.Println(name)
	if detach {
		return nil
	}
	return watchService(s, resp.GetService(), progressOpts{update: true, rollback: true, before: svc.GetUpdateStatus()}, quiet, c.timeout)
}

// ---------------------------------------------------------------- logs

// logPrinter writes log lines with Docker's prefix, "web.1.abcdef123456@w1    | ".
type logPrinter struct {
	w         io.Writer
	nodes     map[string]string
	noTaskIDs bool
	raw       bool
	width     int
}

func (p *logPrinter) prefix(l *pb.LogLine) string {
	name := l.GetServiceName()
	if l.GetSlot() != 0 || l.GetNodeId() == "" {
		name += "." + strconv.FormatUint(l.GetSlot(), 10)
	} else {
		name += "." + shortID(l.GetNodeId())
	}
	if !p.noTaskIDs && l.GetTaskId() != "" {
		name += "." + shortID(l.GetTaskId())
	}
	if n := nodeName(p.nodes, l.GetNodeId()); n != "" {
		name += "@" + n
	}
	return name
}

func (p *logPrinter) print(l *pb.LogLine) error {
	data := strings.TrimSuffix(string(l.GetData()), "\n")
	var b strings.Builder
	if p.raw {
		b.WriteString(data + "\n")
	} else {
		prefix := p.prefix(l)
		p.width = max(p.width, len(prefix))
		for _, line := range strings.Split(data, "\n") {
			fmt.Fprintf(&b, "%-*s    | %s\n", p.width, prefix, line)
		}
	}
	_, err := io.WriteString(p.w, b.String())
	return err
}

func parseTail(s string) (int32, error) {
	if s == "all" || s == "" {
		return 0, nil
	}
	n, err := strconv.ParseInt(s, 10, 32)
	if err != nil || n < 0 {
		return 0, usagef("--tail %q: use a number of lines, or all", s)
	}
	return int32(n), nil
}

// serviceLogsFlags are the flags of `service logs`.
type serviceLogsFlags struct {
	follow, noTaskIDs, raw bool
	tail                   string
}

func serviceLogsCommand(g *globalFlags) *cobra.Command {
	c := &clientFlags{globalFlags: g}
	var f serviceLogsFlags
	cmd := &cobra.Command{
		Use:   "logs [OPTIONS] SERVICE",
		Short: "Show the output of a service's tasks",
		Args:  exactArgs(1, "service logs needs exactly one service name or ID"),
		RunE:  func(_ *cobra.Command, pos []string) error { return runServiceLogs(c, &f, pos[0]) },
	}
	c.register(cmd.Flags(), false)
	cmd.Flags().BoolVarP(&f.follow, "follow", "f", false, "keep printing new output until Ctrl-C")
	cmd.Flags().StringVarP(&f.tail, "tail", "n", "all", "`lines` to show from the end of each task's output, or all")
	cmd.Flags().BoolVar(&f.noTaskIDs, "no-task-ids", false, "leave task IDs out of the prefix")
	cmd.Flags().BoolVar(&f.raw, "raw", false, "print the output alone, without prefixes")
	return cmd
}

func runServiceLogs(c *clientFlags, f *serviceLogsFlags, ref string) error {
	follow := f.follow
	n, err := parseTail(f.tail)
	if err != nil {
		return err
	}
	s, err := c.connect()
	if err != nil {
		return err
	}
	defer s.close()
	p := &logPrinter{w: os.Stdout, noTaskIDs: f.noTaskIDs, raw: f.raw}
	if nresp, err := s.control.ListNodes(s.ctx, &pb.ListNodesRequest{}); err == nil {
		p.nodes = hostnames(nresp.GetNodes())
	} else if status.Code(err) == codes.Unavailable || status.Code(err) == codes.DeadlineExceeded {
		return s.explain(err)
	}
	// Following has no deadline: it runs until Ctrl-C.
	parent := s.ctx
	if follow {
		parent = context.Background()
	}
	ctx, stop := signal.NotifyContext(parent, os.Interrupt)
	defer stop()
	stream, err := s.control.ServiceLogs(ctx, &pb.ServiceLogsRequest{Ref: ref, Follow: follow, Tail: n})
	if err != nil {
		return s.explain(err)
	}
	for {
		line, err := stream.Recv()
		if errors.Is(err, io.EOF) {
			return nil
		}
		if err != nil {
			if ctx.Err() != nil && !errors.Is(ctx.Err(), context.DeadlineExceeded) {
				return nil // Ctrl-C
			}
			return s.explain(err)
		}
		if err := p.print(line); err != nil {
			return err
		}
	}
}

// readService connects and reads one service; the caller closes the
// session.
func (c *clientFlags) readService(ref string) (*session, *pb.Service, error) {
	s, err := c.connect()
	if err != nil {
		return nil, nil, err
	}
	got, err := s.control.GetService(s.ctx, &pb.GetServiceRequest{Ref: ref})
	if err != nil {
		s.close()
		return nil, nil, s.explain(err)
	}
	return s, got.GetService(), nil
}
