// Package taskhealth holds the one rule for whether a task is up: the
// rolling updater waits for it before moving on, and the routing mesh
// sends connections only to tasks that pass it.
package taskhealth

import pb "github.com/shoal-cluster/shoal/proto"

// Up reports whether a task is up: observed RUNNING and, when its health
// is checked, HEALTHY. A task without any health check is up as soon as
// it runs.
func Up(t *pb.Task) bool {
	if t.GetStatus().GetState() != pb.TaskState_TASK_STATE_RUNNING {
		return false
	}
	return !checked(t) || t.GetStatus().GetHealth() == pb.HealthState_HEALTH_STATE_HEALTHY
}

// checked reports whether a task's health is checked: its spec has a
// probe that is not disabled, or its status reports a health, as a
// container image's own HEALTHCHECK makes it do.
func checked(t *pb.Task) bool {
	hc := t.GetSpec().GetContainer().GetHealthcheck()
	probed := hc != nil && !hc.GetDisable() && (len(hc.GetCommand()) > 0 || hc.GetHttpGet() != "" || hc.GetTcpSocket() != 0)
	return probed || t.GetStatus().GetHealth() != pb.HealthState_HEALTH_STATE_NONE
}
