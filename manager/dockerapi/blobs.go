package dockerapi

import (
	"context"
	"net/http"
	"strings"
	"time"

	"github.com/moby/moby/api/types/swarm"
	"github.com/shoal-cluster/shoal/manager/controlapi"
	pb "github.com/shoal-cluster/shoal/proto"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

func (s *Server) createSecret(w http.ResponseWriter, r *http.Request) error {
	var d swarm.SecretSpec
	if err := decode(r, &d); err != nil {
		return err
	}
	if d.Driver != nil && d.Driver.Name != "" {
		return badRequest("Shoal keeps secrets itself: secret drivers (--driver) are not supported")
	}
	if d.Templating != nil && d.Templating.Name != "" {
		return badRequest("Shoal does not template secrets (--template-driver)")
	}
	resp, err := s.cfg.Control.CreateSecret(r.Context(), &pb.CreateSecretRequest{Spec: &pb.SecretSpec{
		Annotations: &pb.Annotations{Name: d.Name, Labels: d.Labels}, Data: d.Data}})
	if err != nil {
		return err
	}
	return writeJSON(w, http.StatusCreated, swarm.SecretCreateResponse{ID: resp.GetSecret().GetId()})
}

func secretToDocker(sec *pb.Secret) swarm.Secret {
	return swarm.Secret{ID: sec.GetId(), Meta: meta(sec.GetMeta()), Spec: swarm.SecretSpec{
		Annotations: swarm.Annotations{Name: sec.GetSpec().GetAnnotations().GetName(), Labels: orEmpty(sec.GetSpec().GetAnnotations().GetLabels())}}}
}

func (s *Server) listSecrets(w http.ResponseWriter, r *http.Request) error {
	f, err := parseFilters(r, "id", "label", "name", "names")
	if err != nil {
		return err
	}
	resp, err := s.cfg.Control.ListSecrets(r.Context(), &pb.ListSecretsRequest{})
	if err != nil {
		return err
	}
	out := []swarm.Secret{}
	for _, sec := range resp.GetSecrets() {
		d := secretToDocker(sec)
		if f.prefix("id", d.ID) && f.prefix("name", d.Spec.Name) && f.exact("names", d.Spec.Name) && f.labels("label", d.Spec.Labels) {
			out = append(out, d)
		}
	}
	return writeJSON(w, http.StatusOK, out)
}

func (s *Server) getSecret(w http.ResponseWriter, r *http.Request) error {
	resp, err := s.cfg.Control.GetSecret(r.Context(), &pb.GetSecretRequest{Ref: r.PathValue("id")})
	if err != nil {
		return err
	}
	return writeJSON(w, http.StatusOK, secretToDocker(resp.GetSecret()))
}

// updateSecret changes a secret's labels; its name and value cannot
// change (as Docker's), but a spec that repeats them is accepted, as
// docker stack deploy sends on every deploy.
func (s *Server) updateSecret(w http.ResponseWriter, r *http.Request) error {
	version, err := queryVersion(r)
	if err != nil {
		return err
	}
	var d swarm.SecretSpec
	if err := decode(r, &d); err != nil {
		return err
	}
	if d.Driver != nil && d.Driver.Name != "" {
		return badRequest("Shoal keeps secrets itself: secret drivers (--driver) are not supported")
	}
	if d.Templating != nil && d.Templating.Name != "" {
		return badRequest("Shoal does not template secrets (--template-driver)")
	}
	if _, err := s.cfg.Control.UpdateSecret(r.Context(), &pb.UpdateSecretRequest{Ref: r.PathValue("id"), Version: version,
		Spec: &pb.SecretSpec{Annotations: &pb.Annotations{Name: d.Name, Labels: d.Labels}, Data: d.Data}}); err != nil {
		return err
	}
	w.WriteHeader(http.StatusOK)
	return nil
}

func (s *Server) removeSecret(w http.ResponseWriter, r *http.Request) error {
	if err := whenTasksStopped(r.Context(), func() error {
		_, err := s.cfg.Control.RemoveSecret(r.Context(), &pb.RemoveSecretRequest{Ref: r.PathValue("id")})
		return err
	}); err != nil {
		return err
	}
	w.WriteHeader(http.StatusNoContent)
	return nil
}

func (s *Server) createConfig(w http.ResponseWriter, r *http.Request) error {
	var d swarm.ConfigSpec
	if err := decode(r, &d); err != nil {
		return err
	}
	if d.Templating != nil && d.Templating.Name != "" {
		return badRequest("Shoal does not template configs (--template-driver)")
	}
	resp, err := s.cfg.Control.CreateConfig(r.Context(), &pb.CreateConfigRequest{Spec: &pb.ConfigSpec{
		Annotations: &pb.Annotations{Name: d.Name, Labels: d.Labels}, Data: d.Data}})
	if err != nil {
		return err
	}
	return writeJSON(w, http.StatusCreated, swarm.ConfigCreateResponse{ID: resp.GetConfig().GetId()})
}

func configToDocker(c *pb.Config) swarm.Config {
	return swarm.Config{ID: c.GetId(), Meta: meta(c.GetMeta()), Spec: swarm.ConfigSpec{
		Annotations: swarm.Annotations{Name: c.GetSpec().GetAnnotations().GetName(), Labels: orEmpty(c.GetSpec().GetAnnotations().GetLabels())},
		Data:        c.GetSpec().GetData()}}
}

func (s *Server) listConfigs(w http.ResponseWriter, r *http.Request) error {
	f, err := parseFilters(r, "id", "label", "name", "names")
	if err != nil {
		return err
	}
	resp, err := s.cfg.Control.ListConfigs(r.Context(), &pb.ListConfigsRequest{})
	if err != nil {
		return err
	}
	out := []swarm.Config{}
	for _, c := range resp.GetConfigs() {
		d := configToDocker(c)
		if f.prefix("id", d.ID) && f.prefix("name", d.Spec.Name) && f.exact("names", d.Spec.Name) && f.labels("label", d.Spec.Labels) {
			out = append(out, d)
		}
	}
	return writeJSON(w, http.StatusOK, out)
}

func (s *Server) getConfig(w http.ResponseWriter, r *http.Request) error {
	resp, err := s.cfg.Control.GetConfig(r.Context(), &pb.GetConfigRequest{Ref: r.PathValue("id")})
	if err != nil {
		return err
	}
	return writeJSON(w, http.StatusOK, configToDocker(resp.GetConfig()))
}

// updateConfig changes a config's labels; its name and data cannot change
// (as Docker's), but a spec that repeats them is accepted.
func (s *Server) updateConfig(w http.ResponseWriter, r *http.Request) error {
	version, err := queryVersion(r)
	if err != nil {
		return err
	}
	var d swarm.ConfigSpec
	if err := decode(r, &d); err != nil {
		return err
	}
	if d.Templating != nil && d.Templating.Name != "" {
		return badRequest("Shoal does not template configs (--template-driver)")
	}
	if _, err := s.cfg.Control.UpdateConfig(r.Context(), &pb.UpdateConfigRequest{Ref: r.PathValue("id"), Version: version,
		Spec: &pb.ConfigSpec{Annotations: &pb.Annotations{Name: d.Name, Labels: d.Labels}, Data: d.Data}}); err != nil {
		return err
	}
	w.WriteHeader(http.StatusOK)
	return nil
}

func (s *Server) removeConfig(w http.ResponseWriter, r *http.Request) error {
	if err := whenTasksStopped(r.Context(), func() error {
		_, err := s.cfg.Control.RemoveConfig(r.Context(), &pb.RemoveConfigRequest{Ref: r.PathValue("id")})
		return err
	}); err != nil {
		return err
	}
	w.WriteHeader(http.StatusNoContent)
	return nil
}

// tasksStopWait bounds how long a remove waits for the tasks of removed
// services to stop.
const tasksStopWait = 60 * time.Second

// whenTasksStopped runs remove, again while it is refused only because
// tasks still run that use the object (no service does): Docker removes a
// secret or config once no service uses it, and `docker stack rm` removes
// a stack's secrets and configs right after its services. The tasks stop
// within their stop grace period; Shoal keeps an object until they have.
// A remove whose outcome is unknown (the leader changed under it) is
// tried again, and "not found" then means the first one did it.
func whenTasksStopped(ctx context.Context, remove func() error) error {
	ctx, cancel := context.WithTimeout(ctx, tasksStopWait)
	defer cancel()
	tick := time.NewTicker(250 * time.Millisecond)
	defer tick.Stop()
	unknown := false
	for {
		err := remove()
		switch {
		case unknown && isNotFound(err):
			return nil
		case status.Code(err) == codes.Unavailable:
			unknown = true
		case status.Code(err) != codes.FailedPrecondition || !strings.Contains(status.Convert(err).Message(), controlapi.StillUsedByTasks):
			return err
		}
		select {
		case <-ctx.Done():
			return err
		case <-tick.C:
		}
	}
}
