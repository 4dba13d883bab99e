package dashboard

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strings"
	"time"

	pb "github.com/shoal-cluster/shoal/proto"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
)

// MaxReplicas is the most replicas the scale control accepts, as
// `service scale`.
const MaxReplicas = 100000

// actionTimeout bounds one action, failovers included.
const actionTimeout = 15 * time.Second

// actionRequest is the body of a POST: each action reads the fields it
// needs.
type actionRequest struct {
	Replicas     *int64 `json:"replicas"`
	Image        string `json:"image"`
	Availability string `json:"availability"`
}

// badRequest is an error in what the page sent: 400, with the message.
type badRequest struct{ msg string }

func (e badRequest) Error() string { return e.msg }

func badf(format string, args ...any) error { return badRequest{fmt.Sprintf(format, args...)} }

// action wraps a handler of a POST: it decodes the body, runs the action
// against the cluster, and answers {"message": ...} or {"error": ...}
// with a status that says whose fault it is.
func (s *Server) action(do func(ctx context.Context, id string, req actionRequest) (string, error)) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		var req actionRequest
		body, err := io.ReadAll(io.LimitReader(r.Body, 1<<16))
		if err == nil && len(strings.TrimSpace(string(body))) > 0 {
			err = json.Unmarshal(body, &req)
		}
		if err != nil {
			writeJSON(w, http.StatusBadRequest, map[string]string{"error": "the request is not JSON: " + err.Error()})
			return
		}
		ctx, cancel := context.WithTimeout(r.Context(), actionTimeout)
		defer cancel()
		msg, err := do(ctx, r.PathValue("id"), req)
		if err != nil {
			code, text := httpError(err)
			s.log.Info("action refused", "path", r.URL.Path, "err", text)
			writeJSON(w, code, map[string]string{"error": text})
			return
		}
		s.log.Info("action", "path", r.URL.Path, "result", msg)
		s.poke()
		writeJSON(w, http.StatusOK, map[string]string{"message": msg})
	}
}

// httpError maps an action's error to an HTTP status and one line.
func httpError(err error) (int, string) {
	var br badRequest
	if errors.As(err, &br) {
		return http.StatusBadRequest, br.msg
	}
	st, ok := status.FromError(err)
	if !ok {
		return http.StatusBadGateway, err.Error()
	}
	switch st.Code() {
	case codes.InvalidArgument, codes.OutOfRange:
		return http.StatusBadRequest, st.Message()
	case codes.NotFound:
		return http.StatusNotFound, st.Message()
	case codes.AlreadyExists, codes.Aborted, codes.FailedPrecondition:
		return http.StatusConflict, st.Message()
	case codes.PermissionDenied, codes.Unauthenticated:
		return http.StatusForbidden, st.Message()
	case codes.Unavailable, codes.DeadlineExceeded:
		return http.StatusServiceUnavailable, "the cluster does not answer (is a majority of managers up?): " + st.Message()
	}
	return http.StatusBadGateway, st.Message()
}

// updateService reads a service, lets change edit a copy of its spec and
// writes it back with the version read; a concurrent change (Aborted) is
// retried on the fresh spec, as `service scale` does.
func (s *Server) updateService(ctx context.Context, id string, change func(*pb.Service, *pb.ServiceSpec) error) (*pb.Service, error) {
	for attempt := 1; ; attempt++ {
		var svc *pb.Service
		if _, err := s.mgrs.do(ctx, func(ctx context.Context, c pb.ControlClient) error {
			resp, err := c.GetService(ctx, &pb.GetServiceRequest{Ref: id})
			svc = resp.GetService()
			return err
		}); err != nil {
			return nil, err
		}
		spec := proto.Clone(svc.GetSpec()).(*pb.ServiceSpec)
		if err := change(svc, spec); err != nil {
			return nil, err
		}
		if proto.Equal(spec, svc.GetSpec()) {
			return svc, nil
		}
		_, err := s.mgrs.do(ctx, func(ctx context.Context, c pb.ControlClient) error {
			_, err := c.UpdateService(ctx, &pb.UpdateServiceRequest{Ref: svc.GetId(), Version: svc.GetMeta().GetVersion(), Spec: spec})
			return err
		})
		if status.Code(err) == codes.Aborted && attempt < 3 {
			continue
		}
		return svc, err
	}
}

func (s *Server) scale(ctx context.Context, id string, req actionRequest) (string, error) {
	if req.Replicas == nil {
		return "", badf("give the number of replicas")
	}
	n := *req.Replicas
	if n < 0 || n > MaxReplicas {
		return "", badf("replicas must be from 0 to %d", MaxReplicas)
	}
	svc, err := s.updateService(ctx, id, func(svc *pb.Service, spec *pb.ServiceSpec) error {
		r := spec.GetReplicated()
		if r == nil {
			return badf("service %s is %s; only replicated services can be scaled", svc.GetSpec().GetAnnotations().GetName(), mode(spec))
		}
		r.Replicas = uint64(n)
		return nil
	})
	if err != nil {
		return "", err
	}
	return fmt.Sprintf("%s scaled to %d", svc.GetSpec().GetAnnotations().GetName(), n), nil
}

func (s *Server) setImage(ctx context.Context, id string, req actionRequest) (string, error) {
	image := strings.TrimSpace(req.Image)
	if image == "" || strings.ContainsAny(image, " \t\r\n") {
		return "", badf("give an image (such as shoal/hello:v2) or, for the process runtime, an absolute path, without spaces")
	}
	svc, err := s.updateService(ctx, id, func(_ *pb.Service, spec *pb.ServiceSpec) error {
		if spec.Task == nil {
			spec.Task = &pb.TaskSpec{}
		}
		if spec.Task.Container == nil {
			spec.Task.Container = &pb.ContainerSpec{}
		}
		spec.Task.Container.Image = image
		return nil
	})
	if err != nil {
		return "", err
	}
	return fmt.Sprintf("%s updating to %s", svc.GetSpec().GetAnnotations().GetName(), image), nil
}

func (s *Server) redeploy(ctx context.Context, id string, _ actionRequest) (string, error) {
	svc, err := s.updateService(ctx, id, func(_ *pb.Service, spec *pb.ServiceSpec) error {
		if spec.Task == nil {
			spec.Task = &pb.TaskSpec{}
		}
		spec.Task.ForceUpdate++
		return nil
	})
	if err != nil {
		return "", err
	}
	return fmt.Sprintf("%s: every task is being replaced", svc.GetSpec().GetAnnotations().GetName()), nil
}

func (s *Server) rollback(ctx context.Context, id string, _ actionRequest) (string, error) {
	var svc *pb.Service
	if _, err := s.mgrs.do(ctx, func(ctx context.Context, c pb.ControlClient) error {
		resp, err := c.GetService(ctx, &pb.GetServiceRequest{Ref: id})
		svc = resp.GetService()
		return err
	}); err != nil {
		return "", err
	}
	name := svc.GetSpec().GetAnnotations().GetName()
	if svc.GetPreviousSpec() == nil {
		return "", badf("service %s has no previous spec to roll back to: it was never updated", name)
	}
	if _, err := s.mgrs.do(ctx, func(ctx context.Context, c pb.ControlClient) error {
		_, err := c.UpdateService(ctx, &pb.UpdateServiceRequest{Ref: svc.GetId(), Version: svc.GetMeta().GetVersion(), Rollback: true})
		return err
	}); err != nil {
		return "", err
	}
	return fmt.Sprintf("%s rolling back", name), nil
}

func (s *Server) remove(ctx context.Context, id string, _ actionRequest) (string, error) {
	if _, err := s.mgrs.do(ctx, func(ctx context.Context, c pb.ControlClient) error {
		_, err := c.RemoveService(ctx, &pb.RemoveServiceRequest{Ref: id})
		return err
	}); err != nil {
		return "", err
	}
	return fmt.Sprintf("service %s removed", id), nil
}

// availabilities are the words the node buttons send.
var availabilities = map[string]pb.NodeAvailability{
	"active": pb.NodeAvailability_NODE_AVAILABILITY_ACTIVE,
	"pause":  pb.NodeAvailability_NODE_AVAILABILITY_PAUSE,
	"drain":  pb.NodeAvailability_NODE_AVAILABILITY_DRAIN,
}

func (s *Server) availability(ctx context.Context, id string, req actionRequest) (string, error) {
	av, ok := availabilities[req.Availability]
	if !ok {
		return "", badf("availability %q: use active, pause or drain", req.Availability)
	}
	for attempt := 1; ; attempt++ {
		var n *pb.Node
		if _, err := s.mgrs.do(ctx, func(ctx context.Context, c pb.ControlClient) error {
			resp, err := c.GetNode(ctx, &pb.GetNodeRequest{Ref: id})
			n = resp.GetNode()
			return err
		}); err != nil {
			return "", err
		}
		name := n.GetDescription().GetHostname()
		if n.GetSpec().GetAvailability() == av {
			return fmt.Sprintf("%s is already %s", name, req.Availability), nil
		}
		spec := &pb.NodeSpec{}
		if n.GetSpec() != nil {
			spec = proto.Clone(n.GetSpec()).(*pb.NodeSpec)
		}
		spec.Availability = av
		_, err := s.mgrs.do(ctx, func(ctx context.Context, c pb.ControlClient) error {
			_, err := c.UpdateNode(ctx, &pb.UpdateNodeRequest{Ref: n.GetId(), Version: n.GetMeta().GetVersion(), Spec: spec})
			return err
		})
		if status.Code(err) == codes.Aborted && attempt < 3 {
			continue
		}
		if err != nil {
			return "", err
		}
		return fmt.Sprintf("%s set to %s", name, req.Availability), nil
	}
}
