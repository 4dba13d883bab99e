package dockerapi

import (
	"encoding/base64"
	"encoding/json"
	"net/http"
	"net/netip"
	"strconv"
	"strings"

	"github.com/moby/moby/api/types/registry"
	"github.com/moby/moby/api/types/swarm"
	pb "github.com/shoal-cluster/shoal/proto"
	"google.golang.org/protobuf/proto"
)

// registryAuth reads the credentials `--with-registry-auth` sends in the
// X-Registry-Auth header (base64url JSON); nil when none were sent.
func registryAuth(r *http.Request) (*pb.RegistryAuth, error) {
	h := r.Header.Get("X-Registry-Auth")
	if h == "" {
		return nil, nil
	}
	raw, err := base64.URLEncoding.DecodeString(h)
	if err != nil {
		if raw, err = base64.StdEncoding.DecodeString(h); err != nil {
			return nil, badRequest("invalid X-Registry-Auth header: not base64")
		}
	}
	var a registry.AuthConfig
	if err := json.Unmarshal(raw, &a); err != nil {
		return nil, badRequest("invalid X-Registry-Auth header: %v", err)
	}
	if a.Auth != "" && a.Username == "" && a.Password == "" {
		dec, err := base64.StdEncoding.DecodeString(a.Auth)
		if err != nil {
			return nil, badRequest("invalid X-Registry-Auth header: auth is not base64")
		}
		a.Username, a.Password, _ = strings.Cut(string(dec), ":")
	}
	out := &pb.RegistryAuth{Server: a.ServerAddress, Username: a.Username, Password: a.Password, IdentityToken: a.IdentityToken, RegistryToken: a.RegistryToken}
	if proto.Equal(out, &pb.RegistryAuth{}) {
		return nil, nil
	}
	return out, nil
}

func (s *Server) createService(w http.ResponseWriter, r *http.Request) error {
	auth, err := registryAuth(r)
	if err != nil {
		return err
	}
	var d swarm.ServiceSpec
	if err := decode(r, &d); err != nil {
		return err
	}
	spec, err := serviceSpecFromDocker(d)
	if err != nil {
		return err
	}
	// The managers pin the image to its digest (the CLI could not: Shoal
	// answers no /distribution request), as Docker's --resolve-image does.
	resp, err := s.cfg.Control.CreateService(r.Context(), &pb.CreateServiceRequest{Spec: spec, RegistryAuth: auth})
	if err != nil {
		return err
	}
	return writeJSON(w, http.StatusCreated, swarm.ServiceCreateResponse{ID: resp.GetService().GetId(), Warnings: resp.GetWarnings()})
}

func (s *Server) listServices(w http.ResponseWriter, r *http.Request) error {
	f, err := parseFilters(r, "id", "label", "mode", "name")
	if err != nil {
		return err
	}
	for _, m := range f["mode"] {
		if m != "replicated" && m != "global" && m != "replicated-job" && m != "global-job" {
			return badRequest("invalid filter 'mode=%s': use replicated, global, replicated-job or global-job", m)
		}
	}
	resp, err := s.cfg.Control.ListServices(r.Context(), &pb.ListServicesRequest{})
	if err != nil {
		return err
	}
	counts := map[string]*pb.ServiceTaskCounts{}
	for _, c := range resp.GetCounts() {
		counts[c.GetServiceId()] = c
	}
	withStatus := boolQuery(r, "status")
	out := []swarm.Service{}
	for _, svc := range resp.GetServices() {
		d := serviceToDocker(svc)
		if !f.prefix("id", d.ID) || !f.prefix("name", d.Spec.Name) || !f.labels("label", d.Spec.Labels) || !f.exact("mode", modeName(svc.GetSpec())) {
			continue
		}
		if c := counts[svc.GetId()]; withStatus && c != nil {
			d.ServiceStatus = &swarm.ServiceStatus{RunningTasks: c.GetRunning(), DesiredTasks: c.GetDesired(), CompletedTasks: c.GetCompleted()}
		}
		out = append(out, d)
	}
	return writeJSON(w, http.StatusOK, out)
}

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

func (s *Server) getService(w http.ResponseWriter, r *http.Request) error {
	resp, err := s.cfg.Control.GetService(r.Context(), &pb.GetServiceRequest{Ref: r.PathValue("id")})
	if err != nil {
		return err
	}
	return writeJSON(w, http.StatusOK, serviceToDocker(resp.GetService()))
}

func (s *Server) updateService(w http.ResponseWriter, r *http.Request) error {
	auth, err := registryAuth(r)
	if err != nil {
		return err
	}
	version, err := queryVersion(r)
	if err != nil {
		return err
	}
	q := r.URL.Query()
	switch q.Get("registryAuthFrom") {
	case "", string(swarm.RegistryAuthFromSpec), string(swarm.RegistryAuthFromPreviousSpec):
	default:
		return badRequest("invalid registryAuthFrom %q: use spec or previous-spec", q.Get("registryAuthFrom"))
	}
	req := &pb.UpdateServiceRequest{Ref: r.PathValue("id"), Version: version, RegistryAuth: auth}
	switch q.Get("rollback") {
	case "":
	case "previous":
		req.Rollback = true
	default:
		return badRequest("invalid rollback %q: the only value is previous", q.Get("rollback"))
	}
	var d swarm.ServiceSpec
	if err := decode(r, &d); err != nil {
		return err
	}
	if !req.Rollback {
		if req.Spec, err = serviceSpecFromDocker(d); err != nil {
			return err
		}
		// Docker's spec has no place for "pulls with stored credentials":
		// a service that has them keeps them unless new ones are sent.
		if auth == nil {
			cur, err := s.cfg.Control.GetService(r.Context(), &pb.GetServiceRequest{Ref: req.Ref})
			if err != nil {
				return err
			}
			req.Spec.Task.Container.WithRegistryAuth = cur.GetService().GetSpec().GetTask().GetContainer().GetWithRegistryAuth()
		}
	}
	resp, err := s.cfg.Control.UpdateService(r.Context(), req)
	if err != nil {
		return err
	}
	return writeJSON(w, http.StatusOK, swarm.ServiceUpdateResponse{Warnings: resp.GetWarnings()})
}

func (s *Server) removeService(w http.ResponseWriter, r *http.Request) error {
	if _, err := s.cfg.Control.RemoveService(r.Context(), &pb.RemoveServiceRequest{Ref: r.PathValue("id")}); err != nil {
		return err
	}
	w.WriteHeader(http.StatusOK)
	return nil
}

func serviceToDocker(svc *pb.Service) swarm.Service {
	d := swarm.Service{
		ID:   svc.GetId(),
		Meta: meta(svc.GetMeta()),
		Spec: serviceSpecToDocker(svc.GetSpec()),
	}
	if p := svc.GetPreviousSpec(); p != nil {
		ps := serviceSpecToDocker(p)
		d.PreviousSpec = &ps
	}
	d.Endpoint = swarm.Endpoint{Spec: *d.Spec.EndpointSpec, Ports: portsToDocker(svc.GetEndpoint().GetPorts())}
	if vip, err := netip.ParseAddr(svc.GetEndpoint().GetVirtualAddr()); err == nil {
		// One address, on the mesh and on every network the service is
		// attached to.
		d.Endpoint.VirtualIPs = []swarm.EndpointVirtualIP{{NetworkID: meshNetworkID, Addr: netip.PrefixFrom(vip, vip.BitLen())}}
		for _, n := range svc.GetSpec().GetTask().GetNetworks() {
			if n.GetNetworkId() != meshNetworkID {
				d.Endpoint.VirtualIPs = append(d.Endpoint.VirtualIPs, swarm.EndpointVirtualIP{NetworkID: n.GetNetworkId(), Addr: netip.PrefixFrom(vip, vip.BitLen())})
			}
		}
	}
	if u := svc.GetUpdateStatus(); u != nil && u.GetState() != pb.UpdateState_UPDATE_STATE_UNKNOWN {
		us := &swarm.UpdateStatus{Message: u.GetMessage()}
		switch u.GetState() {
		case pb.UpdateState_UPDATE_STATE_UPDATING:
			us.State = swarm.UpdateStateUpdating
		case pb.UpdateState_UPDATE_STATE_PAUSED:
			us.State = swarm.UpdateStatePaused
		case pb.UpdateState_UPDATE_STATE_COMPLETED:
			us.State = swarm.UpdateStateCompleted
		case pb.UpdateState_UPDATE_STATE_ROLLBACK_STARTED:
			us.State = swarm.UpdateStateRollbackStarted
		case pb.UpdateState_UPDATE_STATE_ROLLBACK_PAUSED:
			us.State = swarm.UpdateStateRollbackPaused
		case pb.UpdateState_UPDATE_STATE_ROLLBACK_COMPLETED:
			us.State = swarm.UpdateStateRollbackCompleted
		}
		if t := u.GetStartedAt(); t != 0 {
			us.StartedAt = ptr(unixTime(t))
		}
		if t := u.GetCompletedAt(); t != 0 {
			us.CompletedAt = ptr(unixTime(t))
		}
		d.UpdateStatus = us
	}
	if j := svc.GetJobStatus(); j != nil {
		d.JobStatus = &swarm.JobStatus{JobIteration: swarm.Version{Index: j.GetJobIteration()}, LastExecution: unixTime(j.GetLastExecution())}
	}
	return d
}

// taskToDocker converts a task; svc is its service, when known (for the
// task's spec version and job iteration).
func taskToDocker(t *pb.Task) swarm.Task {
	d := swarm.Task{
		ID:           t.GetId(),
		Meta:         meta(t.GetMeta()),
		Annotations:  swarm.Annotations{Labels: map[string]string{}},
		Spec:         taskSpecToDocker(t.GetSpec()),
		ServiceID:    t.GetServiceId(),
		Slot:         int(t.GetSlot()),
		NodeID:       t.GetNodeId(),
		DesiredState: taskState(t.GetDesiredState()),
		Status: swarm.TaskStatus{
			Timestamp: unixTime(t.GetStatus().GetTimestamp()),
			State:     taskState(t.GetStatus().GetState()),
			Message:   t.GetStatus().GetMessage(),
			Err:       t.GetStatus().GetErr(),
		},
	}
	if d.Status.Err == "" && t.GetPendingReason() != "" && t.GetStatus().GetState() <= pb.TaskState_TASK_STATE_PENDING {
		d.Status.Err = t.GetPendingReason()
	}
	if d.Status.Timestamp.IsZero() {
		d.Status.Timestamp = unixTime(t.GetMeta().GetUpdatedAt())
	}
	if st := t.GetStatus(); st.GetPid() != 0 || st.GetContainerId() != "" || st.GetState() >= pb.TaskState_TASK_STATE_COMPLETE {
		d.Status.ContainerStatus = &swarm.ContainerStatus{ContainerID: st.GetContainerId(), PID: int(st.GetPid()), ExitCode: int(st.GetExitCode())}
	}
	for _, p := range t.GetStatus().GetPorts() {
		pc := swarm.PortConfig{Protocol: "tcp", TargetPort: p.GetTargetPort(), PublishedPort: p.GetHostPort(), PublishMode: swarm.PortConfigPublishModeHost}
		if p.GetProtocol() == pb.PortProtocol_PORT_PROTOCOL_UDP {
			pc.Protocol = "udp"
		}
		d.Status.PortStatus.Ports = append(d.Status.PortStatus.Ports, pc)
	}
	if t.GetJobIteration() != 0 {
		d.JobIteration = &swarm.Version{Index: t.GetJobIteration()}
		if t.GetSlot() > 0 {
			// Docker numbers a replicated job's slots from 0 (the CLI's
			// progress looks for slots 0..completions-1); Shoal from 1.
			d.Slot = int(t.GetSlot()) - 1
		}
	}
	return d
}

func taskState(s pb.TaskState) swarm.TaskState {
	switch s {
	case pb.TaskState_TASK_STATE_NEW:
		return swarm.TaskStateNew
	case pb.TaskState_TASK_STATE_PENDING:
		return swarm.TaskStatePending
	case pb.TaskState_TASK_STATE_ASSIGNED:
		return swarm.TaskStateAssigned
	case pb.TaskState_TASK_STATE_ACCEPTED:
		return swarm.TaskStateAccepted
	case pb.TaskState_TASK_STATE_PREPARING:
		return swarm.TaskStatePreparing
	case pb.TaskState_TASK_STATE_READY:
		return swarm.TaskStateReady
	case pb.TaskState_TASK_STATE_STARTING:
		return swarm.TaskStateStarting
	case pb.TaskState_TASK_STATE_RUNNING:
		return swarm.TaskStateRunning
	case pb.TaskState_TASK_STATE_COMPLETE:
		return swarm.TaskStateComplete
	case pb.TaskState_TASK_STATE_SHUTDOWN:
		return swarm.TaskStateShutdown
	case pb.TaskState_TASK_STATE_FAILED:
		return swarm.TaskStateFailed
	case pb.TaskState_TASK_STATE_REJECTED:
		return swarm.TaskStateRejected
	case pb.TaskState_TASK_STATE_REMOVE:
		return swarm.TaskStateRemove
	case pb.TaskState_TASK_STATE_ORPHANED:
		return swarm.TaskStateOrphaned
	}
	return swarm.TaskState(strconv.Itoa(int(s)))
}

// desiredStateFilter maps the desired-state filter's values.
func desiredStateMatches(values []string, s pb.TaskState) (bool, error) {
	if len(values) == 0 {
		return true, nil
	}
	for _, v := range values {
		switch v {
		case "running":
			if s <= pb.TaskState_TASK_STATE_RUNNING && s != pb.TaskState_TASK_STATE_ACCEPTED {
				return true, nil
			}
		case "shutdown":
			if s > pb.TaskState_TASK_STATE_RUNNING {
				return true, nil
			}
		case "accepted":
			if s == pb.TaskState_TASK_STATE_ACCEPTED {
				return true, nil
			}
		default:
			return false, badRequest("invalid filter 'desired-state=%s': use running, shutdown or accepted", v)
		}
	}
	return false, nil
}

func (s *Server) listTasks(w http.ResponseWriter, r *http.Request) error {
	f, err := parseFilters(r, "id", "name", "label", "service", "node", "desired-state", "_up-to-date", "runtime")
	if err != nil {
		return err
	}
	ctx := r.Context()
	if _, err := desiredStateMatches(f["desired-state"], pb.TaskState_TASK_STATE_RUNNING); err != nil {
		return err
	}
	// Resolve the services and nodes named (an ID, a prefix or a name).
	services := map[string]*pb.Service{}
	var tasks []*pb.Task
	list := func(req *pb.ListTasksRequest) error {
		resp, err := s.cfg.Control.ListTasks(ctx, req)
		if err != nil {
			return err
		}
		tasks = append(tasks, resp.GetTasks()...)
		return nil
	}
	switch {
	case f.has("service"):
		for _, ref := range f["service"] {
			sresp, err := s.cfg.Control.GetService(ctx, &pb.GetServiceRequest{Ref: ref})
			if isNotFound(err) {
				continue // no such service: no tasks
			}
			if err != nil {
				return err
			}
			services[sresp.GetService().GetId()] = sresp.GetService()
			if err := list(&pb.ListTasksRequest{ServiceRef: sresp.GetService().GetId()}); err != nil {
				return err
			}
		}
	case f.has("node"):
		for _, ref := range f["node"] {
			err := list(&pb.ListTasksRequest{NodeRef: s.nodeRef(ref)})
			if isNotFound(err) {
				continue
			}
			if err != nil {
				return err
			}
		}
	default:
		if err := list(&pb.ListTasksRequest{}); err != nil {
			return err
		}
	}
	var nodeIDs map[string]bool
	if f.has("node") {
		nodeIDs = map[string]bool{}
		for _, ref := range f["node"] {
			if n, err := s.cfg.Control.GetNode(ctx, &pb.GetNodeRequest{Ref: s.nodeRef(ref)}); err == nil {
				nodeIDs[n.GetNode().GetId()] = true
			}
		}
	}
	upToDate := f.has("_up-to-date")
	if upToDate && len(services) == 0 {
		resp, err := s.cfg.Control.ListServices(ctx, &pb.ListServicesRequest{})
		if err != nil {
			return err
		}
		for _, svc := range resp.GetServices() {
			services[svc.GetId()] = svc
		}
	}
	out := []swarm.Task{}
	seen := map[string]bool{}
	for _, t := range tasks {
		if seen[t.GetId()] {
			continue
		}
		seen[t.GetId()] = true
		if nodeIDs != nil && !nodeIDs[t.GetNodeId()] {
			continue
		}
		if ok, _ := desiredStateMatches(f["desired-state"], t.GetDesiredState()); !ok {
			continue
		}
		if upToDate {
			svc := services[t.GetServiceId()]
			if svc == nil || t.GetSpecVersion() != svc.GetSpecVersion() ||
				(svc.GetJobStatus() != nil && t.GetJobIteration() != svc.GetJobStatus().GetJobIteration()) {
				continue
			}
		}
		d := taskToDocker(t)
		if !f.prefix("id", d.ID) || !f.exact("runtime", "container") || !f.labels("label", d.Spec.ContainerSpec.Labels) {
			continue
		}
		if f.has("name") && !f.prefix("name", taskName(t)) {
			continue
		}
		out = append(out, d)
	}
	return writeJSON(w, http.StatusOK, out)
}

// taskName is a task's name as Docker shows it: service.slot, or
// service.node for a global service's task.
func taskName(t *pb.Task) string {
	if slot := taskToDocker(t).Slot; slot != 0 {
		return t.GetServiceName() + "." + strconv.Itoa(slot)
	}
	return t.GetServiceName() + "." + t.GetNodeId()
}

func (s *Server) getTask(w http.ResponseWriter, r *http.Request) error {
	t, err := s.findTask(r, r.PathValue("id"))
	if err != nil {
		return err
	}
	return writeJSON(w, http.StatusOK, taskToDocker(t))
}

// findTask finds a task by ID or unique ID prefix.
func (s *Server) findTask(r *http.Request, ref string) (*pb.Task, error) {
	resp, err := s.cfg.Control.ListTasks(r.Context(), &pb.ListTasksRequest{})
	if err != nil {
		return nil, err
	}
	var match []*pb.Task
	for _, t := range resp.GetTasks() {
		if t.GetId() == ref {
			return t, nil
		}
		if len(ref) > 0 && len(t.GetId()) >= len(ref) && t.GetId()[:len(ref)] == ref {
			match = append(match, t)
		}
	}
	switch len(match) {
	case 0:
		return nil, notFound("no such task: %s", ref)
	case 1:
		return match[0], nil
	}
	return nil, badRequest("task %s is ambiguous (%d matches): use a longer ID", ref, len(match))
}
