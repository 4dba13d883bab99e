package mesh

import (
	"context"
	"errors"
	"fmt"
	"hash/fnv"
	"net"
	"os/exec"
	"strings"
)

// Virtual IPs. Each service gets a stable address in 127.0.0.0/8, so the
// proxy on every node serves it to local processes with no network
// set-up. A cluster takes one /16 of it, chosen from its ID so two
// clusters sharing a test host rarely meet, and gives its services the
// addresses in it in order.
//
// Containers cannot reach the host's loopback, so on nodes that run
// containers each virtual IP has a twin in 100.64.0.0/10 (the shared
// address space, unused on most hosts) that the node adds to its loopback
// interface: a container's packet to it goes out through the bridge's
// gateway and is delivered to the proxy. The container resolver sits at
// the block's x.x.255.254, which no service is ever given.

// VIPsPerCluster is how many services a cluster can give virtual IPs to.
const VIPsPerCluster = 254 * 254

// VIPBlock is the second octet of a cluster's virtual IP block.
func VIPBlock(clusterID string) byte {
	h := fnv.New32a()
	_, _ = h.Write([]byte(clusterID))
	return byte(32 + h.Sum32()%200)
}

// VIP is the n-th virtual IP of a block (n from 0).
func VIP(block byte, n int) string {
	return net.IPv4(127, block, byte(n/254), byte(n%254+1)).String()
}

// containerBlock is the second octet of a cluster's container twin block.
func containerBlock(block byte) byte { return 64 + block%64 }

// ContainerResolverIP is the address containers of a cluster send DNS
// queries to (port 53).
func ContainerResolverIP(clusterID string) string {
	return net.IPv4(100, containerBlock(VIPBlock(clusterID)), 255, 254).String()
}

// containerVIP is the twin of a loopback virtual IP, or "".
func containerVIP(vip string) string {
	ip := net.ParseIP(vip).To4()
	if ip == nil || ip[0] != 127 {
		return ""
	}
	return net.IPv4(100, containerBlock(ip[1]), ip[2], ip[3]).String()
}

// addLocalAddr makes ip an address of this host (on the loopback
// interface), so packets from containers to it are delivered locally.
// Another node of the cluster on the same host may have added it already.
func addLocalAddr(ctx context.Context, ip string) error {
	out, err := exec.CommandContext(ctx, "ip", "addr", "add", ip+"/32", "dev", "lo").CombinedOutput()
	if err != nil && !strings.Contains(string(out), "File exists") {
		var ee *exec.Error
		if errors.As(err, &ee) {
			return fmt.Errorf("add %s to lo: the ip command (iproute2) is missing: %w", ip, err)
		}
		return fmt.Errorf("add %s to lo (needs root or CAP_NET_ADMIN): %v: %s", ip, err, strings.TrimSpace(string(out)))
	}
	return nil
}

// delLocalAddr removes an address addLocalAddr added.
func delLocalAddr(ctx context.Context, ip string) {
	_ = exec.CommandContext(ctx, "ip", "addr", "del", ip+"/32", "dev", "lo").Run()
}

// RemoveContainerAddrs removes every container twin address of a cluster
// from this host's loopback interface: for a node leaving the cluster for
// good, and for tests and the tour cleaning up after themselves.
func RemoveContainerAddrs(ctx context.Context, clusterID string) {
	prefix := fmt.Sprintf("100.%d.", containerBlock(VIPBlock(clusterID)))
	out, err := exec.CommandContext(ctx, "ip", "-4", "-o", "addr", "show", "dev", "lo").Output()
	if err != nil {
		return
	}
	for _, line := range strings.Split(string(out), "\n") {
		f := strings.Fields(line)
		for i := 0; i+1 < len(f); i++ {
			if f[i] == "inet" && strings.HasPrefix(f[i+1], prefix) {
				delLocalAddr(ctx, strings.TrimSuffix(f[i+1], "/32"))
			}
		}
	}
}
