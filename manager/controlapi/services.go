package controlapi

import (
	"context"
	"fmt"
	"maps"
	"path/filepath"
	"regexp"
	"slices"
	"sort"
	"strings"
	"time"

	"github.com/shoal-cluster/shoal/internal/registry"
	"github.com/shoal-cluster/shoal/manager/endpoints"
	"github.com/shoal-cluster/shoal/manager/scheduler"
	pb "github.com/shoal-cluster/shoal/proto"
	"github.com/shoal-cluster/shoal/raftstore"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
)

// Limits on what a service may ask for.
const (
	maxReplicas       = 100000
	maxServiceNameLen = 63
)

// serviceName is a DNS label: lower-case letters, digits, '-' and '_'
// (Docker's stacks name their services STACK_SERVICE), starting with a
// letter and ending with a letter or digit.
var serviceName = regexp.MustCompile(`^[a-z]([a-z0-9_-]*[a-z0-9])?$`)

// knownRuntimes are the runtimes a task may ask for.
var knownRuntimes = map[string]bool{"process": true, "docker": true, "container": true}

// CreateService stores a new service; the orchestrator makes its tasks.
func (s *Server) CreateService(ctx context.Context, req *pb.CreateServiceRequest) (*pb.CreateServiceResponse, error) {
	spec := proto.Clone(req.GetSpec()).(*pb.ServiceSpec)
	if spec == nil {
		return nil, status.Error(codes.InvalidArgument, "create service: a spec is required")
	}
	defaultServiceSpec(spec)
	auth, err := s.registryAuthFor(spec, req.GetRegistryAuth(), nil)
	if err != nil {
		return nil, err
	}
	// A spec the cluster refuses is refused before the registry is asked
	// (the write checks it again). A name or port already taken is left to
	// the write: it may be this very request, retried after it committed
	// (the write recognises its request ID; a read cannot).
	s.store.View(func(tx *raftstore.Tx) { err = validateServiceSpec(tx, spec, "") })
	if err != nil && status.Code(err) != codes.AlreadyExists {
		return nil, err
	}
	warnings, err := s.pinImage(ctx, spec, nil, req.GetResolveImage(), auth)
	if err != nil {
		return nil, err
	}
	var id string
	_, err = s.store.Update(ctx, func(tx *raftstore.Tx) error {
		if err := validateServiceSpec(tx, spec, ""); err != nil {
			return err
		}
		if err := endpoints.CheckHostPorts(s.advertiseIP, spec, nil); err != nil {
			return err
		}
		vip, err := endpoints.AllocateVIP(tx, s.clusterID)
		if err != nil {
			return err
		}
		id = tx.NewID()
		if spec.Annotations.Name == "" {
			spec.Annotations.Name = "svc-" + id[:6]
		}
		svc := &pb.Service{
			Id:          id,
			Spec:        spec,
			SpecVersion: 1,
			Endpoint:    &pb.Endpoint{Spec: spec.GetEndpoint(), Ports: spec.GetEndpoint().GetPorts(), VirtualAddr: vip},
		}
		if auth != nil {
			if err := s.sealRegistryAuth(svc, auth); err != nil {
				return err
			}
		}
		if isJob(spec) {
			svc.JobStatus = &pb.JobStatus{JobIteration: 1, LastExecution: time.Now().UnixNano()}
		}
		return tx.Services().Create(svc)
	})
	if err != nil {
		return nil, err
	}
	if id == "" {
		// A retry of a create that already committed: find what it made.
		s.store.View(func(tx *raftstore.Tx) {
			if found := tx.Services().Find(raftstore.IndexName, spec.GetAnnotations().GetName()); len(found) == 1 {
				id = found[0].GetId()
			}
		})
	}
	svc, err := s.readService(id)
	if err != nil {
		return nil, err
	}
	s.store.View(func(tx *raftstore.Tx) { warnings = append(warnings, aliasWarnings(tx, svc.GetSpec(), id)...) })
	warnings = append(warnings, portWarnings(svc.GetSpec())...)
	s.log.Info("service created", "service", svc.GetSpec().GetAnnotations().GetName(), "id", id, "image", svc.GetSpec().GetTask().GetContainer().GetImage())
	return &pb.CreateServiceResponse{Service: svc, Warnings: warnings}, nil
}

// readService reads a service back after a write (a retried request that
// already committed does not run its function again, so responses are
// built from the store).
func (s *Server) readService(id string) (*pb.Service, error) {
	var svc *pb.Service
	s.store.View(func(tx *raftstore.Tx) { svc, _ = tx.Services().Get(id) })
	if svc == nil {
		return nil, status.Errorf(codes.NotFound, "service %s was removed meanwhile", id)
	}
	return redacted(svc), nil
}

// defaultServiceSpec fills what a spec leaves out.
func defaultServiceSpec(spec *pb.ServiceSpec) {
	if spec.Annotations == nil {
		spec.Annotations = &pb.Annotations{}
	}
	if spec.Task == nil {
		spec.Task = &pb.TaskSpec{}
	}
	if spec.Task.Container == nil {
		spec.Task.Container = &pb.ContainerSpec{}
	}
	if spec.Task.Runtime == "" {
		// The runtime follows the image, as a Docker user expects: a path
		// runs as a process, anything else is a container image (whose name
		// never starts with '/', '.' or '~').
		spec.Task.Runtime = "docker"
		if img := spec.Task.Container.GetImage(); img == "" || strings.ContainsAny(img[:1], "/.~") {
			spec.Task.Runtime = "process"
		}
	}
	if spec.Mode == nil {
		spec.Mode = &pb.ServiceSpec_Replicated{Replicated: &pb.ReplicatedService{Replicas: 1}}
	}
	if j := spec.GetReplicatedJob(); j != nil {
		// As Docker's: one task at a time, and as many completions as
		// tasks at once unless told.
		if j.MaxConcurrent == 0 {
			j.MaxConcurrent = 1
		}
		if j.TotalCompletions == 0 {
			j.TotalCompletions = j.MaxConcurrent
		}
	}
	if isJob(spec) && spec.Task.Restart == nil {
		// A job's task that exits 0 is done: Docker's default for jobs.
		spec.Task.Restart = &pb.RestartPolicy{Condition: pb.RestartCondition_RESTART_CONDITION_ON_FAILURE, Delay: int64(5 * time.Second)}
	}
	if spec.Update == nil {
		spec.Update = &pb.UpdateConfig{Parallelism: 1, Monitor: int64(5 * time.Second)}
	}
	if spec.Rollback == nil {
		spec.Rollback = &pb.UpdateConfig{Parallelism: 1, Monitor: int64(5 * time.Second)}
	}
	if spec.Endpoint == nil {
		spec.Endpoint = &pb.EndpointSpec{}
	}
}

// validateServiceSpec checks a spec against the cluster; selfID is the
// service being updated ("" for a new one).
func validateServiceSpec(tx *raftstore.Tx, spec *pb.ServiceSpec, selfID string) error {
	bad := func(format string, args ...any) error {
		return status.Errorf(codes.InvalidArgument, format, args...)
	}
	name := spec.GetAnnotations().GetName()
	if name != "" && (len(name) > maxServiceNameLen || !serviceName.MatchString(name)) {
		return bad("service name %q is not DNS-safe: use 1-63 lower-case letters, digits, '-' and '_', starting with a letter and ending with a letter or digit", name)
	}
	if name != "" {
		for _, other := range tx.Services().Find(raftstore.IndexName, name) {
			if other.GetId() != selfID {
				return status.Errorf(codes.AlreadyExists, "a service named %q already exists (%s); pick another name or update it", name, other.GetId())
			}
		}
	}
	if err := validateAutoscale(spec); err != nil {
		return err
	}
	switch m := spec.GetMode().(type) {
	case *pb.ServiceSpec_Replicated:
		if m.Replicated.GetReplicas() > maxReplicas {
			return bad("%d replicas is more than the %d a service may have", m.Replicated.GetReplicas(), maxReplicas)
		}
	case *pb.ServiceSpec_Global:
	case *pb.ServiceSpec_ReplicatedJob:
		j := m.ReplicatedJob
		if j.GetMaxConcurrent() > maxReplicas || j.GetTotalCompletions() > maxReplicas {
			return bad("a replicated job may run at most %d tasks at once and ask for at most %d completions", maxReplicas, maxReplicas)
		}
	case *pb.ServiceSpec_GlobalJob:
	default:
		return bad("the service needs a mode: replicated or global")
	}
	task := spec.GetTask()
	rt := task.GetRuntime()
	if !knownRuntimes[rt] {
		return bad("unknown runtime %q: use process, docker or container", rt)
	}
	if err := runtimeOffered(tx, rt, selfID); err != nil {
		return err
	}
	c := task.GetContainer()
	switch {
	case c.GetImage() == "" && len(c.GetCommand()) == 0:
		return bad("the service needs an image (docker) or an executable path (process)")
	case rt == "process" && c.GetImage() != "" && !filepath.IsAbs(c.GetImage()):
		return bad("with the process runtime the image must be an absolute path to an executable on the workers, got %q", c.GetImage())
	}
	for _, kv := range c.GetEnv() {
		if k, _, ok := strings.Cut(kv, "="); !ok || k == "" {
			return bad("environment entry %q must be KEY=VALUE", kv)
		}
	}
	secretPaths, err := resolveSecretRefs(tx, c)
	if err != nil {
		return err
	}
	if err := resolveConfigRefs(tx, c, secretPaths); err != nil {
		return err
	}
	if err := resolveNetworkAttachments(tx, task); err != nil {
		return err
	}
	if _, err := scheduler.ParseConstraints(task.GetPlacement().GetConstraints()); err != nil {
		return bad("%v", err)
	}
	if err := scheduler.ValidatePreferences(task.GetPlacement().GetPreferences()); err != nil {
		return bad("%v", err)
	}
	res := task.GetResources()
	for what, v := range map[string]int64{
		"CPU reservation": res.GetReservations().GetNanoCpus(), "memory reservation": res.GetReservations().GetMemoryBytes(),
		"CPU limit": res.GetLimits().GetNanoCpus(), "memory limit": res.GetLimits().GetMemoryBytes(),
	} {
		if v < 0 {
			return bad("%s must not be negative", what)
		}
	}
	if err := fitsSomeNode(tx, res.GetReservations()); err != nil {
		return err
	}
	if p := task.GetRestart(); p != nil && (p.GetDelay() < 0 || p.GetWindow() < 0) {
		return bad("restart delay and window must not be negative")
	}
	for _, u := range []*pb.UpdateConfig{spec.GetUpdate(), spec.GetRollback()} {
		if u.GetDelay() < 0 || u.GetMonitor() < 0 || u.GetMaxFailureRatio() < 0 || u.GetMaxFailureRatio() > 1 {
			return bad("update delay and monitor must not be negative and the max failure ratio must be between 0 and 1")
		}
	}
	if hc := c.GetHealthcheck(); hc != nil {
		n := 0
		if len(hc.GetCommand()) > 0 {
			n++
		}
		if hc.GetHttpGet() != "" {
			n++
		}
		if hc.GetTcpSocket() != 0 {
			n++
		}
		if n > 1 {
			return bad("a health check is one of a command, an HTTP path or a TCP port, not several")
		}
		if hc.GetInterval() < 0 || hc.GetTimeout() < 0 || hc.GetStartPeriod() < 0 {
			return bad("health check durations must not be negative")
		}
	}
	return validatePorts(tx, spec, selfID)
}

// runtimeOffered refuses a runtime no worker offers, saying which offer
// what. With no worker yet the service is accepted and its tasks wait, as
// Swarm's do; an update checks only a runtime it changes, so that a service
// can still be scaled or changed while its runtime is away.
func runtimeOffered(tx *raftstore.Tx, rt, selfID string) error {
	if old, ok := tx.Services().Get(selfID); ok && old.GetSpec().GetTask().GetRuntime() == rt {
		return nil
	}
	offers := map[string][]string{} // runtimes offered -> hostnames
	for _, n := range tx.Nodes().List() {
		rts := n.GetDescription().GetRuntimes()
		if slices.Contains(rts, rt) {
			return nil
		}
		if len(rts) > 0 {
			key := strings.Join(rts, ", ")
			offers[key] = append(offers[key], n.GetDescription().GetHostname())
		}
	}
	if len(offers) == 0 {
		return nil // no worker yet: tasks wait for one
	}
	var who []string
	for _, rts := range slices.Sorted(maps.Keys(offers)) {
		hosts := offers[rts]
		sort.Strings(hosts)
		verb := "offers"
		if len(hosts) > 1 {
			verb = "offer"
		}
		if len(hosts) > 5 {
			hosts = append(hosts[:5], fmt.Sprintf("%d more", len(hosts)-5))
		}
		who = append(who, fmt.Sprintf("%s %s %s", strings.Join(hosts, ", "), verb, rts))
	}
	hint := "join a worker that offers it"
	switch rt {
	case "docker":
		hint = "start the Docker Engine on a worker or use --runtime process with an absolute path"
	case "container":
		hint = "run a worker as root on a kernel with OverlayFS and with runc installed (apt-get install runc); `shoal node inspect` says why a worker does not offer it"
	}
	return status.Errorf(codes.FailedPrecondition, "no node offers the %s runtime (%s; %s)", rt, strings.Join(who, "; "), hint)
}

// fitsSomeNode refuses reservations no node could ever satisfy.
func fitsSomeNode(tx *raftstore.Tx, r *pb.Resources) error {
	if r.GetNanoCpus() == 0 && r.GetMemoryBytes() == 0 {
		return nil
	}
	var maxCPU, maxMem int64
	workers := 0
	for _, n := range tx.Nodes().List() {
		if len(n.GetDescription().GetRuntimes()) == 0 {
			continue
		}
		workers++
		maxCPU = max(maxCPU, n.GetDescription().GetResources().GetNanoCpus())
		maxMem = max(maxMem, n.GetDescription().GetResources().GetMemoryBytes())
	}
	if workers == 0 {
		return nil // nothing to compare with yet: tasks wait for a node
	}
	if r.GetNanoCpus() > maxCPU {
		return status.Errorf(codes.InvalidArgument, "a CPU reservation of %g is more than any node has (largest: %g CPUs)", float64(r.GetNanoCpus())/1e9, float64(maxCPU)/1e9)
	}
	if r.GetMemoryBytes() > maxMem {
		return status.Errorf(codes.InvalidArgument, "a memory reservation of %d bytes is more than any node has (largest: %d bytes)", r.GetMemoryBytes(), maxMem)
	}
	return nil
}

// validatePorts checks published ports: valid numbers, no duplicates, and
// no ingress port another service already publishes.
func validatePorts(tx *raftstore.Tx, spec *pb.ServiceSpec, selfID string) error {
	seen := map[string]bool{}
	for _, p := range spec.GetEndpoint().GetPorts() {
		if p.GetTargetPort() == 0 || p.GetTargetPort() > 65535 || p.GetPublishedPort() > 65535 {
			return status.Errorf(codes.InvalidArgument, "port %d:%d is out of range (1-65535)", p.GetPublishedPort(), p.GetTargetPort())
		}
		if p.GetPublishedPort() == 0 {
			continue
		}
		key := fmt.Sprintf("%d/%s", p.GetPublishedPort(), strings.ToLower(strings.TrimPrefix(p.GetProtocol().String(), "PORT_PROTOCOL_")))
		if seen[key] {
			return status.Errorf(codes.InvalidArgument, "port %s is published twice", key)
		}
		seen[key] = true
	}
	for _, other := range tx.Services().List() {
		if other.GetId() == selfID {
			continue
		}
		for _, op := range other.GetSpec().GetEndpoint().GetPorts() {
			for _, p := range spec.GetEndpoint().GetPorts() {
				if p.GetPublishedPort() != 0 && p.GetPublishedPort() == op.GetPublishedPort() && p.GetProtocol() == op.GetProtocol() &&
					(p.GetPublishMode() == pb.PublishMode_PUBLISH_MODE_INGRESS || op.GetPublishMode() == pb.PublishMode_PUBLISH_MODE_INGRESS) {
					return status.Errorf(codes.AlreadyExists, "port %d is already published by service %s", p.GetPublishedPort(), other.GetSpec().GetAnnotations().GetName())
				}
			}
		}
	}
	return nil
}

// GetService returns one service.
func (s *Server) GetService(ctx context.Context, req *pb.GetServiceRequest) (*pb.GetServiceResponse, error) {
	var (
		svc *pb.Service
		err error
	)
	if verr := s.store.ViewConsistent(ctx, func(tx *raftstore.Tx) { svc, err = resolveService(tx, req.GetRef()) }); verr != nil {
		return nil, verr
	}
	if err != nil {
		return nil, err
	}
	return &pb.GetServiceResponse{Service: redacted(svc)}, nil
}

// ListServices returns every service with its task counts.
func (s *Server) ListServices(ctx context.Context, _ *pb.ListServicesRequest) (*pb.ListServicesResponse, error) {
	resp := &pb.ListServicesResponse{}
	err := s.store.ViewConsistent(ctx, func(tx *raftstore.Tx) {
		for _, svc := range tx.Services().List() {
			resp.Services = append(resp.Services, redacted(svc))
			resp.Counts = append(resp.Counts, countTasks(svc, tx.Tasks().Find(raftstore.IndexService, svc.GetId())))
		}
	})
	if err != nil {
		return nil, err
	}
	return resp, nil
}

// countTasks counts a service's running and desired tasks; for a job, the
// tasks of its current iteration only, as Docker's: desired are those still
// meant to run, completed those that exited 0.
func countTasks(svc *pb.Service, tasks []*pb.Task) *pb.ServiceTaskCounts {
	c := &pb.ServiceTaskCounts{ServiceId: svc.GetId()}
	checked := hasHealthCheck(svc.GetSpec().GetTask())
	job := isJob(svc.GetSpec())
	for _, t := range tasks {
		if job && t.GetJobIteration() != svc.GetJobStatus().GetJobIteration() {
			continue
		}
		if t.GetDesiredState() <= pb.TaskState_TASK_STATE_RUNNING {
			c.Desired++
		}
		if t.GetStatus().GetState() == pb.TaskState_TASK_STATE_COMPLETE {
			c.Completed++
		}
		health := t.GetStatus().GetHealth()
		if t.GetDesiredState() <= pb.TaskState_TASK_STATE_RUNNING && t.GetStatus().GetState() == pb.TaskState_TASK_STATE_RUNNING &&
			((!checked && health == pb.HealthState_HEALTH_STATE_NONE) || health == pb.HealthState_HEALTH_STATE_HEALTHY) {
			c.Running++
		}
	}
	if r := svc.GetSpec().GetReplicated(); r != nil {
		c.Desired = r.GetReplicas()
	}
	return c
}

// hasHealthCheck reports whether tasks of this spec are health-checked.
func hasHealthCheck(t *pb.TaskSpec) bool {
	hc := t.GetContainer().GetHealthcheck()
	return hc != nil && !hc.GetDisable() && (len(hc.GetCommand()) > 0 || hc.GetHttpGet() != "" || hc.GetTcpSocket() != 0)
}

// UpdateService changes a service's spec, or rolls it back.
func (s *Server) UpdateService(ctx context.Context, req *pb.UpdateServiceRequest) (*pb.UpdateServiceResponse, error) {
	var (
		id   string
		cur  *pb.Service
		err  error
		spec *pb.ServiceSpec // the new spec, its image pinned
		auth *pb.RegistryAuth
		warn []string
	)
	s.store.View(func(tx *raftstore.Tx) {
		if cur, err = resolveService(tx, req.GetRef()); err == nil {
			id = cur.GetId()
		}
	})
	if err != nil {
		return nil, err
	}
	if !req.GetRollback() && req.GetSpec() != nil {
		// Pin the image before the write: it asks the registry.
		spec = proto.Clone(req.GetSpec()).(*pb.ServiceSpec)
		defaultServiceSpec(spec)
		if auth, err = s.registryAuthFor(spec, req.GetRegistryAuth(), cur); err != nil {
			return nil, err
		}
		if spec.GetTask().GetRuntime() == "docker" && !registry.HasDigest(spec.GetTask().GetContainer().GetImage()) {
			// Refused before the registry is asked (the write checks again).
			s.store.View(func(tx *raftstore.Tx) { err = validateServiceSpec(tx, spec, id) })
			if err != nil {
				return nil, err
			}
		}
		if warn, err = s.pinImage(ctx, spec, cur.GetSpec(), req.GetResolveImage(), auth); err != nil {
			return nil, err
		}
	}
	_, err = s.store.Update(ctx, func(tx *raftstore.Tx) error {
		svc, ok := tx.Services().Get(id)
		if !ok {
			return status.Errorf(codes.NotFound, "service %s was removed meanwhile", req.GetRef())
		}
		if req.GetVersion() != 0 && req.GetVersion() != svc.GetMeta().GetVersion() {
			return status.Errorf(codes.Aborted, "service %s was changed by someone else since version %d (now %d); read it again and retry",
				svc.GetSpec().GetAnnotations().GetName(), req.GetVersion(), svc.GetMeta().GetVersion())
		}
		var next *pb.ServiceSpec
		if req.GetRollback() {
			if svc.GetPreviousSpec() == nil {
				return status.Errorf(codes.FailedPrecondition, "service %s has no previous spec to roll back to", svc.GetSpec().GetAnnotations().GetName())
			}
			next = proto.Clone(svc.GetPreviousSpec()).(*pb.ServiceSpec)
		} else {
			if spec == nil {
				return status.Error(codes.InvalidArgument, "update service: a spec is required")
			}
			next = proto.Clone(spec).(*pb.ServiceSpec)
			if req.GetRegistryAuth() != nil {
				if err := s.sealRegistryAuth(svc, req.GetRegistryAuth()); err != nil {
					return err
				}
			}
		}
		defaultServiceSpec(next)
		if next.GetAnnotations().GetName() == "" {
			next.Annotations.Name = svc.GetSpec().GetAnnotations().GetName()
		}
		if from, to := modeName(svc.GetSpec()), modeName(next); from != to {
			return status.Errorf(codes.InvalidArgument, "a service's mode cannot change (%s to %s); create a new service", from, to)
		}
		if err := autoscaledReplicas(svc, next, req.GetRollback()); err != nil {
			return err
		}
		if err := validateServiceSpec(tx, next, svc.GetId()); err != nil {
			return err
		}
		if err := endpoints.CheckHostPorts(s.advertiseIP, next, svc.GetSpec()); err != nil {
			return err
		}
		applySpecChange(svc, next, req.GetRollback(), time.Now())
		return tx.Services().Update(svc)
	})
	if err != nil {
		return nil, err
	}
	svc, err := s.readService(id)
	if err != nil {
		return nil, err
	}
	if !req.GetRollback() {
		s.store.View(func(tx *raftstore.Tx) { warn = append(warn, aliasWarnings(tx, svc.GetSpec(), id)...) })
		warn = append(warn, portWarnings(svc.GetSpec())...)
	}
	return &pb.UpdateServiceResponse{Service: svc, Warnings: warn}, nil
}

// applySpecChange installs a new spec. A change to the task template bumps
// the spec version, which starts a rolling update; a change of replicas
// alone does not.
//
// A job has no rolling update: as Docker's, every update of a job
// (`--force` included) starts its next iteration, which runs it again from
// the start under the new spec; the orchestrator stops what the previous
// iteration still runs.
func applySpecChange(svc *pb.Service, next *pb.ServiceSpec, rollback bool, now time.Time) {
	taskChanged := !proto.Equal(svc.GetSpec().GetTask(), next.GetTask())
	svc.PreviousSpec = svc.GetSpec()
	svc.Spec = next
	svc.Endpoint = &pb.Endpoint{Spec: next.GetEndpoint(), Ports: next.GetEndpoint().GetPorts(), VirtualAddr: svc.GetEndpoint().GetVirtualAddr()}
	if isJob(next) {
		if taskChanged {
			svc.SpecVersion++
		}
		svc.JobStatus = &pb.JobStatus{JobIteration: svc.GetJobStatus().GetJobIteration() + 1, LastExecution: now.UnixNano()}
		return
	}
	if !taskChanged {
		return
	}
	svc.SpecVersion++
	state := pb.UpdateState_UPDATE_STATE_UPDATING
	msg := "update in progress"
	if rollback {
		state, msg = pb.UpdateState_UPDATE_STATE_ROLLBACK_STARTED, "manually requested rollback"
	}
	svc.UpdateStatus = &pb.UpdateStatus{State: state, StartedAt: now.UnixNano(), Message: msg}
}

// RemoveService deletes a service; the orchestrator stops its tasks.
func (s *Server) RemoveService(ctx context.Context, req *pb.RemoveServiceRequest) (*pb.RemoveServiceResponse, error) {
	_, err := s.store.Update(ctx, func(tx *raftstore.Tx) error {
		svc, err := resolveService(tx, req.GetRef())
		if err != nil {
			return err
		}
		return tx.Services().Delete(svc.GetId())
	})
	if err != nil {
		return nil, err
	}
	return &pb.RemoveServiceResponse{}, nil
}

// ListTasks returns tasks, filtered by service and node.
func (s *Server) ListTasks(ctx context.Context, req *pb.ListTasksRequest) (*pb.ListTasksResponse, error) {
	resp := &pb.ListTasksResponse{}
	var ferr error
	err := s.store.ViewConsistent(ctx, func(tx *raftstore.Tx) {
		var tasks []*pb.Task
		switch {
		case req.GetServiceRef() != "":
			svc, err := resolveService(tx, req.GetServiceRef())
			if err != nil {
				ferr = err
				return
			}
			tasks = tx.Tasks().Find(raftstore.IndexService, svc.GetId())
		case req.GetNodeRef() != "":
			n, err := resolveNode(tx, req.GetNodeRef())
			if err != nil {
				ferr = err
				return
			}
			tasks = tx.Tasks().Find(raftstore.IndexNode, n.GetId())
		default:
			tasks = tx.Tasks().List()
		}
		var nodeID string
		if req.GetNodeRef() != "" && req.GetServiceRef() != "" {
			n, err := resolveNode(tx, req.GetNodeRef())
			if err != nil {
				ferr = err
				return
			}
			nodeID = n.GetId()
		}
		for _, t := range tasks {
			if nodeID != "" && t.GetNodeId() != nodeID {
				continue
			}
			if req.GetRunningOnly() && t.GetDesiredState() > pb.TaskState_TASK_STATE_RUNNING {
				continue
			}
			resp.Tasks = append(resp.Tasks, t)
		}
	})
	if err != nil {
		return nil, err
	}
	if ferr != nil {
		return nil, ferr
	}
	sort.Slice(resp.Tasks, func(i, j int) bool {
		a, b := resp.Tasks[i], resp.Tasks[j]
		if a.GetSlot() != b.GetSlot() {
			return a.GetSlot() < b.GetSlot()
		}
		if a.GetNodeId() != b.GetNodeId() {
			return a.GetNodeId() < b.GetNodeId()
		}
		return a.GetMeta().GetCreatedAt() > b.GetMeta().GetCreatedAt()
	})
	return resp, nil
}

// resolveService finds a service by ID, unique ID prefix or name.
func resolveService(tx *raftstore.Tx, ref string) (*pb.Service, error) {
	return resolveRef(tx.Services(), "service", ref)
}

// resolveRef finds an object by ID, name or unique ID prefix, as users
// name services, secrets and configs on the command line.
func resolveRef[T raftstore.Object](table raftstore.Table[T], noun, ref string) (T, error) {
	var zero T
	if ref == "" {
		return zero, status.Errorf(codes.InvalidArgument, "a %s name or ID is required", noun)
	}
	if o, ok := table.Get(ref); ok {
		return o, nil
	}
	if byName := table.Find(raftstore.IndexName, ref); len(byName) == 1 {
		return byName[0], nil
	}
	var matches []T
	for _, o := range table.List() {
		if strings.HasPrefix(o.GetId(), ref) {
			matches = append(matches, o)
		}
	}
	switch len(matches) {
	case 0:
		return zero, status.Errorf(codes.NotFound, "no %s %q; list %ss with `shoal %s ls`", noun, ref, noun, noun)
	case 1:
		return matches[0], nil
	}
	return zero, status.Errorf(codes.InvalidArgument, "%q matches %d %ss; use a longer ID or the name", ref, len(matches), noun)
}

// isJob reports whether a spec is a job: its tasks run to completion.
func isJob(spec *pb.ServiceSpec) bool {
	return spec.GetReplicatedJob() != nil || spec.GetGlobalJob() != nil
}

// modeName names a spec's mode as --mode does.
func modeName(spec *pb.ServiceSpec) string {
	switch spec.GetMode().(type) {
	case *pb.ServiceSpec_Global:
		return "global"
	case *pb.ServiceSpec_ReplicatedJob:
		return "replicated-job"
	case *pb.ServiceSpec_GlobalJob:
		return "global-job"
	}
	return "replicated"
}
