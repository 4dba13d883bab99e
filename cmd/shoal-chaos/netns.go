package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"strings"
	"time"
)

// network is the suite's own network: one namespace per node, each with a
// veth into a bridge that lives in a hub namespace, and one veth from the
// hub to the host so the suite's client reaches every node. Every name
// carries the suite's pid; remove deletes all of it.
type network struct {
	tag     string // "shc<pid>": prefix of every name
	subnet  string // "10.213.N": the /24 the nodes live on
	hub     string // hub namespace
	hostIf  string // the host's end of the hub link
	created []string
}

// runCmd runs a command and returns its combined output in the error.
func runCmd(ctx context.Context, name string, args ...string) error {
	ctx, cancel := context.WithTimeout(ctx, 20*time.Second)
	defer cancel()
	out, err := exec.CommandContext(ctx, name, args...).CombinedOutput()
	if err != nil {
		return fmt.Errorf("%s %s: %w: %s", name, strings.Join(args, " "), err, strings.TrimSpace(string(out)))
	}
	return nil
}

// checkPrivileges says what is missing when the suite cannot build its network.
func checkPrivileges() error {
	if os.Geteuid() != 0 {
		return errors.New("the chaos suite creates network namespaces and iptables rules: run it as root")
	}
	for _, tool := range []string{"ip", "iptables", "nsenter", "tc"} {
		if _, err := exec.LookPath(tool); err != nil {
			return fmt.Errorf("the chaos suite needs %s on PATH (iproute2, iptables, util-linux)", tool)
		}
	}
	return nil
}

// newNetwork creates the hub namespace and the host's link to it, on a
// /24 no interface of the host uses yet.
func newNetwork(ctx context.Context) (*network, error) {
	pid := os.Getpid()
	n := &network{tag: fmt.Sprintf("shc%d", pid)}
	n.hub, n.hostIf = n.tag+"-hub", n.tag
	used, err := exec.CommandContext(ctx, "ip", "-o", "addr").Output()
	if err != nil {
		return nil, fmt.Errorf("list addresses: %w", err)
	}
	for i := range 200 {
		cand := fmt.Sprintf("10.213.%d", (pid+i)%200+20)
		if !strings.Contains(string(used), cand+".") {
			n.subnet = cand
			break
		}
	}
	if n.subnet == "" {
		return nil, errors.New("no free 10.213.x.0/24 subnet for the chaos network")
	}
	steps := [][]string{
		{"netns", "add", n.hub},
		{"-n", n.hub, "link", "add", "br0", "type", "bridge"},
		{"-n", n.hub, "link", "set", "br0", "up"},
		{"link", "add", n.hostIf, "type", "veth", "peer", "name", "host", "netns", n.hub},
		{"-n", n.hub, "link", "set", "host", "master", "br0", "up"},
		{"addr", "add", n.subnet + ".1/24", "dev", n.hostIf},
		{"link", "set", n.hostIf, "up"},
	}
	n.created = append(n.created, n.hub)
	for _, s := range steps {
		if err := runCmd(ctx, "ip", s...); err != nil {
			n.remove()
			return nil, fmt.Errorf("create the chaos network: %w", err)
		}
	}
	return n, nil
}

// addNode creates a node's namespace, wired to the bridge, and returns its
// namespace name and IP.
func (n *network) addNode(ctx context.Context, name string, index int) (string, string, error) {
	ns := n.tag + "-" + name
	ip := fmt.Sprintf("%s.%d", n.subnet, 10+index)
	n.created = append(n.created, ns)
	steps := [][]string{
		{"netns", "add", ns},
		{"-n", ns, "link", "set", "lo", "up"},
		{"-n", n.hub, "link", "add", name, "type", "veth", "peer", "name", "eth0", "netns", ns},
		{"-n", n.hub, "link", "set", name, "master", "br0", "up"},
		{"-n", ns, "addr", "add", ip + "/24", "dev", "eth0"},
		{"-n", ns, "link", "set", "eth0", "up"},
	}
	for _, s := range steps {
		if err := runCmd(ctx, "ip", s...); err != nil {
			return "", "", fmt.Errorf("add node %s to the chaos network: %w", name, err)
		}
	}
	return ns, ip, nil
}

// isolate drops every packet into and out of a namespace's eth0 (loopback
// keeps working, as on a machine whose cable was pulled).
func isolate(ctx context.Context, ns string) error {
	for _, chain := range []string{"INPUT", "OUTPUT"} {
		dir := "-i"
		if chain == "OUTPUT" {
			dir = "-o"
		}
		if err := runCmd(ctx, "ip", "netns", "exec", ns, "iptables", "-A", chain, dir, "eth0", "-j", "DROP"); err != nil {
			return fmt.Errorf("partition %s: %w", ns, err)
		}
	}
	return nil
}

// reconnect removes isolate's rules.
func reconnect(ctx context.Context, ns string) error {
	for _, chain := range []string{"INPUT", "OUTPUT"} {
		if err := runCmd(ctx, "ip", "netns", "exec", ns, "iptables", "-F", chain); err != nil {
			return fmt.Errorf("heal partition of %s: %w", ns, err)
		}
	}
	return nil
}

// blackholeRules are the iptables rules that cut a namespace off from the
// given addresses only, both ways: chain and match, without -A or -D.
func blackholeRules(ips []string) [][]string {
	var rules [][]string
	for _, ip := range ips {
		rules = append(rules, []string{"INPUT", "-s", ip, "-j", "DROP"}, []string{"OUTPUT", "-d", ip, "-j", "DROP"})
	}
	return rules
}

// blackholeFrom drops every packet between a namespace and the given
// addresses (no reset, no ICMP: they go silent for each other); everything
// else still reaches it.
func blackholeFrom(ctx context.Context, ns string, ips []string) error {
	for _, r := range blackholeRules(ips) {
		args := append([]string{"netns", "exec", ns, "iptables", "-A"}, r...)
		if err := runCmd(ctx, "ip", args...); err != nil {
			return fmt.Errorf("blackhole %s from %v: %w", ns, ips, err)
		}
	}
	return nil
}

// unblackhole removes exactly blackholeFrom's rules.
func unblackhole(ctx context.Context, ns string, ips []string) error {
	var errs []error
	for _, r := range blackholeRules(ips) {
		args := append([]string{"netns", "exec", ns, "iptables", "-D"}, r...)
		if err := runCmd(ctx, "ip", args...); err != nil {
			errs = append(errs, err)
		}
	}
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("heal the blackhole of %s: %w", ns, err)
	}
	return nil
}

// slowLinkDrop is the random loss the slow-link fault adds on INPUT.
var slowLinkDrop = []string{"INPUT", "-i", "eth0", "-m", "statistic", "--mode", "random", "--probability", "0.02", "-j", "DROP"}

// slowLink makes a namespace's eth0 a slow, lossy link: its egress shaped
// to 1 Mbit/s with up to 400 ms of queue (tbf; netem is not on every
// kernel), and 2% of the packets coming in dropped.
func slowLink(ctx context.Context, ns string) error {
	if err := runCmd(ctx, "ip", "netns", "exec", ns, "tc", "qdisc", "add", "dev", "eth0", "root", "tbf", "rate", "1mbit", "burst", "32kbit", "latency", "400ms"); err != nil {
		return fmt.Errorf("slow the link of %s: %w", ns, err)
	}
	args := append([]string{"netns", "exec", ns, "iptables", "-A"}, slowLinkDrop...)
	if err := runCmd(ctx, "ip", args...); err != nil {
		return fmt.Errorf("make the link of %s lossy: %w", ns, err)
	}
	return nil
}

// fastLink removes slowLink's shaping and loss.
func fastLink(ctx context.Context, ns string) error {
	var errs []error
	if err := runCmd(ctx, "ip", "netns", "exec", ns, "tc", "qdisc", "del", "dev", "eth0", "root"); err != nil {
		errs = append(errs, err)
	}
	args := append([]string{"netns", "exec", ns, "iptables", "-D"}, slowLinkDrop...)
	if err := runCmd(ctx, "ip", args...); err != nil {
		errs = append(errs, err)
	}
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("heal the slow link of %s: %w", ns, err)
	}
	return nil
}

// remove deletes every namespace and link the suite made. Deleting a
// namespace deletes the veth ends inside it.
func (n *network) remove() {
	ctx := context.Background()
	for i := len(n.created) - 1; i >= 0; i-- {
		_ = runCmd(ctx, "ip", "netns", "del", n.created[i])
	}
	_ = runCmd(ctx, "ip", "link", "del", n.hostIf)
	n.created = nil
}
