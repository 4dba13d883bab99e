package main

// Shell completion (`shoal completion bash|zsh|fish|powershell` writes the
// script; the shell then asks `shoal __complete ARGS...`). Service, node
// and secret names come from the cluster, through the client path the
// commands use and within completionTimeout: with no cluster answering,
// completion offers nothing rather than an error. Flags that take one of a
// few words complete those words; flags that take a path complete files;
// every other flag completes nothing.

import (
	"slices"
	"sort"
	"strconv"
	"strings"
	"time"

	pb "github.com/shoal-cluster/shoal/proto"
	"github.com/spf13/cobra"
	"github.com/spf13/pflag"
)

// completionTimeout bounds how long completion waits for the cluster.
const completionTimeout = 2 * time.Second

// registerCompletions sets how the arguments and flag values of every
// command under root complete.
func registerCompletions(root *cobra.Command, g *globalFlags) {
	q := &clusterQuery{g: g}
	onFlag(root, "data-dir", func(*cobra.Command, []string, string) ([]string, cobra.ShellCompDirective) {
		return nil, cobra.ShellCompDirectiveFilterDirs
	})
	onFlag(root, "client-config", files)
	onFlag(root, "log-level", oneOf("debug", "info", "warn", "error"))
	onFlag(root, "host", q.managerAddrs)

	for _, path := range []string{"service ls", "service ps", "service stats", "node ls", "node stats", "secret ls", "config ls", "cluster info"} {
		onFlag(at(root, path), "format", oneOf("table", "json"))
	}
	at(root, "node update").ValidArgsFunction = first(q.nodes)
	onFlag(at(root, "node update"), "availability", oneOf("active", "pause", "drain"))
	for _, path := range []string{"node inspect", "node promote", "node demote", "node rm"} {
		at(root, path).ValidArgsFunction = q.nodes
	}
	for _, path := range []string{"secret inspect", "secret rm"} {
		at(root, path).ValidArgsFunction = q.secrets
	}
	for _, path := range []string{"config inspect", "config rm"} {
		at(root, path).ValidArgsFunction = q.configs
	}
	for _, path := range []string{"secret create", "config create"} {
		at(root, path).ValidArgsFunction = func(_ *cobra.Command, args []string, _ string) ([]string, cobra.ShellCompDirective) {
			if len(args) == 1 {
				return nil, cobra.ShellCompDirectiveDefault // FILE
			}
			return nil, cobra.ShellCompDirectiveNoFileComp
		}
	}
	at(root, "image load").ValidArgsFunction = first(files)

	at(root, "service scale").ValidArgsFunction = q.scaleTargets
	for _, path := range []string{"service ps", "service inspect", "service rm"} {
		at(root, path).ValidArgsFunction = q.services
	}
	at(root, "node stats").ValidArgsFunction = first(q.nodes)
	for _, path := range []string{"service update", "service rollback", "service logs", "service stats"} {
		at(root, path).ValidArgsFunction = first(q.services)
	}
	onFlag(at(root, "service ps"), "filter", q.taskFilters)
	create, update := at(root, "service create"), at(root, "service update")
	create.ValidArgsFunction = files // IMAGE, when it is a path; then the task's arguments
	onFlag(create, "mode", oneOf("replicated", "global", "replicated-job", "global-job"))
	onFlag(create, "runtime", oneOf(runtimeProcess, runtimeDocker, runtimeContainer))
	for _, cmd := range []*cobra.Command{create, update} {
		onFlag(cmd, "restart-condition", oneOf("none", "on-failure", "any"))
		onFlag(cmd, "update-order", oneOf("stop-first", "start-first"))
		onFlag(cmd, "rollback-order", oneOf("stop-first", "start-first"))
		onFlag(cmd, "update-failure-action", oneOf("pause", "continue", "rollback"))
		onFlag(cmd, "rollback-failure-action", oneOf("pause", "continue"))
		onFlag(cmd, "endpoint-mode", oneOf("vip", "dnsrr"))
		onFlag(cmd, "autoscale-cpu", oneOf("50%", "70%", "80%", "none"))
		onFlag(cmd, "resolve-image", oneOf("always", "changed", "never"))
	}
	onFlag(update, "image", files)
	onFlag(create, "secret", q.secrets)
	onFlag(update, "secret-add", q.secrets)
	onFlag(create, "config", q.configs)
	onFlag(update, "config-add", q.configs)
	onFlag(create, "constraint", q.constraints)
	onFlag(update, "constraint-add", q.constraints)
	onFlag(create, "placement-pref", q.spreads)
	onFlag(update, "placement-pref-add", q.spreads)
	onFlag(update, "secret-rm", q.fromService(func(spec *pb.ServiceSpec) (out []string) {
		for _, r := range spec.GetTask().GetContainer().GetSecrets() {
			out = append(out, r.GetSecretName())
		}
		return out
	}))
	onFlag(update, "config-rm", q.fromService(func(spec *pb.ServiceSpec) (out []string) {
		for _, r := range spec.GetTask().GetContainer().GetConfigs() {
			out = append(out, r.GetConfigName())
		}
		return out
	}))
	onFlag(update, "constraint-rm", q.fromService(func(spec *pb.ServiceSpec) []string {
		return spec.GetTask().GetPlacement().GetConstraints()
	}))
	onFlag(update, "env-rm", q.fromService(func(spec *pb.ServiceSpec) (out []string) {
		for _, kv := range spec.GetTask().GetContainer().GetEnv() {
			k, _, _ := strings.Cut(kv, "=")
			out = append(out, k)
		}
		return out
	}))
	onFlag(update, "label-rm", q.fromService(func(spec *pb.ServiceSpec) []string {
		return sortedKeys(spec.GetAnnotations().GetLabels())
	}))
	onFlag(update, "mount-rm", q.fromService(func(spec *pb.ServiceSpec) (out []string) {
		for _, m := range spec.GetTask().GetContainer().GetMounts() {
			out = append(out, m.GetTarget())
		}
		return out
	}))

	// Everything else completes nothing: not the files of the current
	// directory, which is what the shell offers by default.
	walk(root, func(cmd *cobra.Command) {
		if cmd.ValidArgsFunction == nil && len(cmd.ValidArgs) == 0 && !cmd.HasSubCommands() {
			cmd.ValidArgsFunction = cobra.NoFileCompletions
		}
		cmd.Flags().VisitAll(func(f *pflag.Flag) {
			_ = cmd.RegisterFlagCompletionFunc(f.Name, cobra.NoFileCompletions) // refused where one is set
		})
	})
}

// at returns the command at a path of names under root; the paths are
// this file's own, so a wrong one is a bug.
func at(root *cobra.Command, path string) *cobra.Command {
	cmd := root
	for _, name := range strings.Fields(path) {
		if cmd = subcommand(cmd, name); cmd == nil {
			panic("completion: no command " + path)
		}
	}
	return cmd
}

// onFlag sets how the value of cmd's flag name completes.
func onFlag(cmd *cobra.Command, name string, fn cobra.CompletionFunc) {
	if err := cmd.RegisterFlagCompletionFunc(name, fn); err != nil {
		panic("completion: " + err.Error())
	}
}

// oneOf completes one of a few words.
func oneOf(words ...string) cobra.CompletionFunc {
	return func(_ *cobra.Command, _ []string, toComplete string) ([]string, cobra.ShellCompDirective) {
		return matching(toComplete, words), cobra.ShellCompDirectiveNoFileComp
	}
}

// files leaves the completion of a path to the shell.
func files(*cobra.Command, []string, string) ([]string, cobra.ShellCompDirective) {
	return nil, cobra.ShellCompDirectiveDefault
}

// first completes the first argument only, with fn.
func first(fn cobra.CompletionFunc) cobra.CompletionFunc {
	return func(cmd *cobra.Command, args []string, toComplete string) ([]string, cobra.ShellCompDirective) {
		if len(args) > 0 {
			return nil, cobra.ShellCompDirectiveNoFileComp
		}
		return fn(cmd, args, toComplete)
	}
}

// matching keeps the words (a word may carry a "\t" description) that
// start with prefix.
func matching(prefix string, words []string) []string {
	var out []string
	for _, w := range words {
		if strings.HasPrefix(w, prefix) {
			out = append(out, w)
		}
	}
	return out
}

// clusterQuery completes names from the cluster. Each completion is one
// short-lived session; any failure completes nothing.
type clusterQuery struct{ g *globalFlags }

// ask runs fn with a session to the cluster, if one can be had.
func (q *clusterQuery) ask(fn func(s *session) error) bool {
	c := &clientFlags{globalFlags: q.g, timeout: completionTimeout}
	s, err := c.connect()
	if err != nil {
		return false
	}
	defer s.close()
	return fn(s) == nil
}

func (q *clusterQuery) listServices() []*pb.Service {
	var out []*pb.Service
	q.ask(func(s *session) error {
		resp, err := s.control.ListServices(s.ctx, &pb.ListServicesRequest{})
		out = resp.GetServices()
		return err
	})
	sortServices(out)
	return out
}

func (q *clusterQuery) listNodes() []*pb.Node {
	var out []*pb.Node
	q.ask(func(s *session) error {
		resp, err := s.control.ListNodes(s.ctx, &pb.ListNodesRequest{})
		out = resp.GetNodes()
		return err
	})
	sort.Slice(out, func(i, j int) bool {
		return out[i].GetDescription().GetHostname() < out[j].GetDescription().GetHostname()
	})
	return out
}

// services completes service names not already on the command line.
func (q *clusterQuery) services(_ *cobra.Command, args []string, toComplete string) ([]string, cobra.ShellCompDirective) {
	var out []string
	for _, svc := range q.listServices() {
		if name := serviceName(svc); strings.HasPrefix(name, toComplete) && !slices.Contains(args, name) {
			out = append(out, cobra.CompletionWithDesc(name, svc.GetSpec().GetTask().GetContainer().GetImage()))
		}
	}
	return out, cobra.ShellCompDirectiveNoFileComp
}

// scaleTargets completes `service scale` arguments: NAME= for each
// service not yet scaled on the command line, the user types the number.
func (q *clusterQuery) scaleTargets(_ *cobra.Command, args []string, toComplete string) ([]string, cobra.ShellCompDirective) {
	const directive = cobra.ShellCompDirectiveNoSpace | cobra.ShellCompDirectiveNoFileComp
	if strings.Contains(toComplete, "=") {
		return nil, directive
	}
	given := map[string]bool{}
	for _, a := range args {
		name, _, _ := strings.Cut(a, "=")
		given[name] = true
	}
	var out []string
	for _, svc := range q.listServices() {
		name := serviceName(svc)
		r := svc.GetSpec().GetReplicated()
		if strings.HasPrefix(name, toComplete) && !given[name] && r != nil {
			out = append(out, cobra.CompletionWithDesc(name+"=", "now "+strconv.FormatUint(r.GetReplicas(), 10)))
		}
	}
	return out, directive
}

// nodes completes hostnames (and, for a prefix no hostname has, node IDs)
// not already on the command line.
func (q *clusterQuery) nodes(_ *cobra.Command, args []string, toComplete string) ([]string, cobra.ShellCompDirective) {
	nodes := q.listNodes()
	var out []string
	for _, n := range nodes {
		if h := n.GetDescription().GetHostname(); strings.HasPrefix(h, toComplete) && !slices.Contains(args, h) {
			out = append(out, cobra.CompletionWithDesc(h, roleWord(n.GetRole())))
		}
	}
	if len(out) == 0 && toComplete != "" {
		for _, n := range nodes {
			if strings.HasPrefix(n.GetId(), toComplete) && !slices.Contains(args, n.GetId()) {
				out = append(out, cobra.CompletionWithDesc(n.GetId(), n.GetDescription().GetHostname()))
			}
		}
	}
	return out, cobra.ShellCompDirectiveNoFileComp
}

// secrets completes secret names not already on the command line.
func (q *clusterQuery) secrets(_ *cobra.Command, args []string, toComplete string) ([]string, cobra.ShellCompDirective) {
	return q.names(args, toComplete, func(s *session) ([]string, error) {
		resp, err := s.control.ListSecrets(s.ctx, &pb.ListSecretsRequest{})
		var names []string
		for _, sec := range resp.GetSecrets() {
			names = append(names, sec.GetSpec().GetAnnotations().GetName())
		}
		return names, err
	})
}

// configs completes config names not already on the command line.
func (q *clusterQuery) configs(_ *cobra.Command, args []string, toComplete string) ([]string, cobra.ShellCompDirective) {
	return q.names(args, toComplete, func(s *session) ([]string, error) {
		resp, err := s.control.ListConfigs(s.ctx, &pb.ListConfigsRequest{})
		var names []string
		for _, c := range resp.GetConfigs() {
			names = append(names, c.GetSpec().GetAnnotations().GetName())
		}
		return names, err
	})
}

// names completes the names list returns that are not already on the
// command line.
func (q *clusterQuery) names(args []string, toComplete string, list func(s *session) ([]string, error)) ([]string, cobra.ShellCompDirective) {
	var names []string
	q.ask(func(s *session) error {
		all, err := list(s)
		for _, name := range all {
			if !slices.Contains(args, name) {
				names = append(names, name)
			}
		}
		return err
	})
	sort.Strings(names)
	return matching(toComplete, names), cobra.ShellCompDirectiveNoFileComp
}

// managerAddrs completes --host with the managers' API addresses.
func (q *clusterQuery) managerAddrs(_ *cobra.Command, _ []string, toComplete string) ([]string, cobra.ShellCompDirective) {
	var addrs []string
	for _, n := range q.listNodes() {
		if a := n.GetManagerStatus().GetApiAddr(); a != "" && n.GetRole() == pb.NodeRole_NODE_ROLE_MANAGER {
			addrs = append(addrs, cobra.CompletionWithDesc(a, n.GetDescription().GetHostname()))
		}
	}
	return matching(toComplete, addrs), cobra.ShellCompDirectiveNoFileComp
}

// constraints completes a placement constraint: its attribute, then the
// values the cluster's nodes have for it.
func (q *clusterQuery) constraints(_ *cobra.Command, _ []string, toComplete string) ([]string, cobra.ShellCompDirective) {
	nodes := q.listNodes()
	values := func(key string) []string {
		seen := map[string]bool{}
		for _, n := range nodes {
			d := n.GetDescription()
			var v string
			switch {
			case key == "node.id":
				v = n.GetId()
			case key == "node.hostname":
				v = d.GetHostname()
			case key == "node.role":
				v = roleWord(n.GetRole())
			case key == "node.platform.os":
				v = d.GetOs()
			case key == "node.platform.arch":
				v = d.GetArch()
			case strings.HasPrefix(key, "node.labels."):
				v = n.GetSpec().GetAnnotations().GetLabels()[strings.TrimPrefix(key, "node.labels.")]
			}
			if v != "" {
				seen[v] = true
			}
		}
		return slices.Sorted(func(yield func(string) bool) {
			for v := range seen {
				if !yield(v) {
					return
				}
			}
		})
	}
	for _, op := range []string{"==", "!="} {
		if key, prefix, ok := strings.Cut(toComplete, op); ok {
			var out []string
			for _, v := range values(key) {
				if strings.HasPrefix(v, prefix) {
					out = append(out, key+op+v)
				}
			}
			return out, cobra.ShellCompDirectiveNoFileComp
		}
	}
	var keys []string
	for _, k := range constraintKeys {
		keys = append(keys, k+"==")
	}
	for _, k := range labelKeys(nodes) {
		keys = append(keys, "node.labels."+k+"==")
	}
	return matching(toComplete, keys), cobra.ShellCompDirectiveNoSpace | cobra.ShellCompDirectiveNoFileComp
}

// spreads completes a placement preference over the nodes' labels.
func (q *clusterQuery) spreads(_ *cobra.Command, _ []string, toComplete string) ([]string, cobra.ShellCompDirective) {
	var prefs []string
	for _, k := range labelKeys(q.listNodes()) {
		prefs = append(prefs, "spread=node.labels."+k)
	}
	return matching(toComplete, prefs), cobra.ShellCompDirectiveNoFileComp
}

// labelKeys lists the label keys the nodes have.
func labelKeys(nodes []*pb.Node) []string {
	seen := map[string]string{}
	for _, n := range nodes {
		for k, v := range n.GetSpec().GetAnnotations().GetLabels() {
			seen[k] = v
		}
	}
	return sortedKeys(seen)
}

// taskFilters completes `service ps --filter`: a key, then its values.
func (q *clusterQuery) taskFilters(_ *cobra.Command, _ []string, toComplete string) ([]string, cobra.ShellCompDirective) {
	key, _, ok := strings.Cut(toComplete, "=")
	if !ok {
		return matching(toComplete, []string{"desired-state=", "node=", "id=", "name="}), cobra.ShellCompDirectiveNoSpace | cobra.ShellCompDirectiveNoFileComp
	}
	var values []string
	switch key {
	case "desired-state":
		values = []string{"running", "ready", "shutdown", "remove"}
	case "node":
		for _, n := range q.listNodes() {
			values = append(values, n.GetDescription().GetHostname())
		}
	}
	var out []string
	for _, v := range values {
		out = append(out, key+"="+v)
	}
	return matching(toComplete, out), cobra.ShellCompDirectiveNoFileComp
}

// fromService completes a flag of `service update` with what the service
// named on the command line has (its secrets, constraints, ...).
func (q *clusterQuery) fromService(list func(*pb.ServiceSpec) []string) cobra.CompletionFunc {
	return func(_ *cobra.Command, args []string, toComplete string) ([]string, cobra.ShellCompDirective) {
		if len(args) == 0 {
			return nil, cobra.ShellCompDirectiveNoFileComp
		}
		var words []string
		q.ask(func(s *session) error {
			resp, err := s.control.GetService(s.ctx, &pb.GetServiceRequest{Ref: args[0]})
			words = list(resp.GetService().GetSpec())
			return err
		})
		return matching(toComplete, words), cobra.ShellCompDirectiveNoFileComp
	}
}
