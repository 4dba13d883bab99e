// Package mesh is the data plane every Shoal node runs: a user-space TCP
// proxy that makes each published port reachable on the node (the routing
// mesh), a proxy on each service's virtual IP, and a DNS resolver that
// answers service names; as root with nftables, kernel NAT rules forward
// TCP connections in front of the proxy (kernel.go). It is fed endpoint
// sets by the managers and never reads the store itself.
package mesh

import (
	"net"
	"sort"
	"strconv"

	pb "github.com/shoal-cluster/shoal/proto"
	"google.golang.org/protobuf/proto"
)

// table is the endpoint set a node knows, by service ID.
type table map[string]*pb.ServiceEndpoints

// apply folds an update into the table and returns the new table; t is not
// modified, so readers holding the old one need no lock.
func (t table) apply(u *pb.EndpointUpdate) table {
	next := table{}
	if !u.GetComplete() {
		for id, s := range t {
			next[id] = s
		}
	}
	for _, id := range u.GetRemoved() {
		delete(next, id)
	}
	for _, s := range u.GetUpdated() {
		next[s.GetServiceId()] = proto.Clone(s).(*pb.ServiceEndpoints)
	}
	return next
}

// hasTask reports whether some set names the task.
func (t table) hasTask(id string) bool {
	for _, s := range t {
		for _, te := range s.GetTasks() {
			if te.GetTaskId() == id {
				return true
			}
		}
	}
	return false
}

// byName finds a service by name (case-insensitive, as DNS is): a
// service's own name first, then the aliases of its network attachments.
// Names are cluster-wide, not per network: of several services with the
// alias, the one whose name sorts first answers, so that every node
// answers alike.
func (t table) byName(name string) *pb.ServiceEndpoints {
	var byAlias *pb.ServiceEndpoints
	for _, s := range t {
		if equalFold(s.GetServiceName(), name) {
			return s
		}
		if byAlias != nil && byAlias.GetServiceName() < s.GetServiceName() {
			continue
		}
		for _, a := range s.GetAliases() {
			if equalFold(a, name) {
				byAlias = s
				break
			}
		}
	}
	return byAlias
}

func equalFold(a, b string) bool {
	if len(a) != len(b) {
		return false
	}
	for i := 0; i < len(a); i++ {
		x, y := a[i], b[i]
		if 'A' <= x && x <= 'Z' {
			x += 'a' - 'A'
		}
		if 'A' <= y && y <= 'Z' {
			y += 'a' - 'A'
		}
		if x != y {
			return false
		}
	}
	return true
}

// backends returns the addresses (host:port) where a service's target port
// is served, one per running, healthy task, in a stable order, and the
// node each one is on. With onNode set, only that node's tasks count;
// tasks in skip do not.
func backends(s *pb.ServiceEndpoints, target uint32, protocol pb.PortProtocol, onNode string, skip map[string]bool) ([]string, map[string]string) {
	var out []string
	nodes := map[string]string{}
	for _, t := range s.GetTasks() {
		if (onNode != "" && t.GetNodeId() != onNode) || skip[t.GetTaskId()] {
			continue
		}
		for _, b := range t.GetPorts() {
			if b.GetTargetPort() != target || b.GetProtocol() != protocol || b.GetHostPort() == 0 {
				continue
			}
			ip := b.GetHostIp()
			if ip == "" || net.ParseIP(ip).IsUnspecified() {
				ip = t.GetIp()
			}
			if ip == "" {
				continue
			}
			addr := net.JoinHostPort(ip, strconv.Itoa(int(b.GetHostPort())))
			out = append(out, addr)
			nodes[addr] = t.GetNodeId()
			break
		}
	}
	sort.Strings(out)
	return out, nodes
}

// taskIPs are the distinct addresses of a service's tasks, for the
// tasks.<service> name.
func taskIPs(s *pb.ServiceEndpoints) []net.IP {
	seen := map[string]bool{}
	var out []net.IP
	for _, t := range s.GetTasks() {
		ip := t.GetIp()
		if ip == "" || seen[ip] {
			continue
		}
		if parsed := net.ParseIP(ip).To4(); parsed != nil {
			seen[ip] = true
			out = append(out, parsed)
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].String() < out[j].String() })
	return out
}
