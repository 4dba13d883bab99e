package mesh

import (
	"context"
	"errors"
	"fmt"
	"hash/fnv"
	"net"
	"os/exec"
	"strings"

	"github.com/shoal-cluster/shoal/internal/datadir"
)

// Virtual IPs. Each service gets a stable address in 127.0.0.0/8, so the
// proxy on every node serves it to local processes with no network
// set-up. A cluster takes one block of 4,096 addresses there, chosen from
// its ID among 3,584 blocks (none in 127.0.0.0/11, where nodes' own
// loopback addresses live), so two clusters sharing a test host rarely
// meet; its services get the addresses of the block in order.
//
// Containers cannot reach the host's loopback, so on nodes that run
// containers each virtual IP has a twin in 100.64.0.0/10 (the shared
// address space, unused on most hosts; 1,024 blocks) with the same offset
// in its cluster's block, which the node adds to its loopback interface: a
// container's packet to it goes out through the bridge's gateway and is
// delivered to the proxy. The last offset of the twin block is the
// containers' resolver.

// VIPsPerCluster is how many services a cluster can give virtual IPs to.
const VIPsPerCluster = vipBlockSize - 2

const (
	vipBlockSize  = 1 << 12
	vipFirstBlock = 512 // 127.32.0.0: clear of 127.0.0.0/11
	vipBlocks     = 1<<12 - vipFirstBlock
	twinBlocks    = 1 << 10
	resolverIndex = vipBlockSize - 1
)

func clusterHash(clusterID string) uint32 {
	h := fnv.New32a()
	_, _ = h.Write([]byte(clusterID))
	return h.Sum32()
}

func ipFrom(base byte, host uint32) string {
	return net.IPv4(base, byte(host>>16), byte(host>>8), byte(host)).String()
}

// VIP is the n-th virtual IP of a cluster (n from 0 to VIPsPerCluster-1).
func VIP(clusterID string, n int) string {
	block := vipFirstBlock + clusterHash(clusterID)%vipBlocks
	return ipFrom(127, block<<12|uint32(n+1))
}

// twinBase is the first address of a cluster's twin block, as the 24 bits
// after 100.
func twinBase(clusterID string) uint32 {
	return 64<<16 | (clusterHash(clusterID)/vipBlocks%twinBlocks)<<12
}

// ContainerResolverIP is the address containers of a cluster send DNS
// queries to (port 53).
func ContainerResolverIP(clusterID string) string {
	return ipFrom(100, twinBase(clusterID)|resolverIndex)
}

// containerVIP is the twin of a loopback virtual IP, in the twin block the
// containers' resolver belongs to, or "".
func containerVIP(resolverIP, vip string) string {
	r, v := net.ParseIP(resolverIP).To4(), net.ParseIP(vip).To4()
	if r == nil || v == nil || v[0] != 127 || r[0] != 100 {
		return ""
	}
	base := (uint32(r[1])<<16 | uint32(r[2])<<8 | uint32(r[3])) &^ (vipBlockSize - 1)
	offset := (uint32(v[2])<<8 | uint32(v[3])) & (vipBlockSize - 1)
	if offset == resolverIndex {
		return ""
	}
	return ipFrom(100, base|offset)
}

// addLocalAddr makes ip an address of this host (on the loopback
// interface), so packets from containers to it are delivered locally.
// Another node of the cluster on the same host may have added it already.
func addLocalAddr(ctx context.Context, ip string) error {
	out, err := exec.CommandContext(ctx, "ip", "addr", "add", ip+"/32", "dev", "lo").CombinedOutput()
	if err != nil && !addrExists(string(out)) {
		var ee *exec.Error
		if errors.As(err, &ee) {
			return fmt.Errorf("add %s to lo: the ip command (iproute2) is missing: %w", ip, err)
		}
		return fmt.Errorf("add %s to lo (needs root or CAP_NET_ADMIN): %v: %s", ip, err, strings.TrimSpace(string(out)))
	}
	return nil
}

// addrExists reports whether `ip addr add` failed because the address is
// there already: "RTNETLINK answers: File exists" from older iproute2 and
// kernels, "Error: ipv4: Address already assigned." from newer ones.
func addrExists(out string) bool {
	return strings.Contains(out, "File exists") || strings.Contains(out, "already assigned")
}

// delLocalAddr removes an address addLocalAddr added.
func delLocalAddr(ctx context.Context, ip string) {
	_ = exec.CommandContext(ctx, "ip", "addr", "del", ip+"/32", "dev", "lo").Run()
}

// RemoveNodeContainerAddrs is RemoveContainerAddrs for the cluster of the
// node whose data dir is dataDir (nothing when it holds no node): for
// harnesses that stopped or killed the nodes they ran.
func RemoveNodeContainerAddrs(ctx context.Context, dataDir string) {
	if id, err := datadir.Load(dataDir); err == nil {
		RemoveContainerAddrs(ctx, id.ClusterID)
	}
}

// RemoveContainerAddrs removes every container twin address of a cluster
// from this host's loopback interface: for a node leaving the cluster for
// good, and for tests and the tour cleaning up after themselves.
func RemoveContainerAddrs(ctx context.Context, clusterID string) {
	base := twinBase(clusterID)
	out, err := exec.CommandContext(ctx, "ip", "-4", "-o", "addr", "show", "dev", "lo").Output()
	if err != nil {
		return
	}
	for _, line := range strings.Split(string(out), "\n") {
		f := strings.Fields(line)
		for i := 0; i+1 < len(f); i++ {
			if f[i] != "inet" {
				continue
			}
			ip := net.ParseIP(strings.TrimSuffix(f[i+1], "/32")).To4()
			if ip != nil && ip[0] == 100 && (uint32(ip[1])<<16|uint32(ip[2])<<8|uint32(ip[3]))&^(vipBlockSize-1) == base {
				delLocalAddr(ctx, ip.String())
			}
		}
	}
}
