package main

// `shoal network`: create, ls, inspect and rm, modelled on `docker network`
// for the overlay networks Docker stacks create. Every service reaches
// every other through the routing mesh; a network groups services and
// carries their DNS aliases. The mesh itself is the pre-defined network
// "shoal", not stored.

import (
	"fmt"
	"io"
	"regexp"
	"sort"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/shoal-cluster/shoal/manager/controlapi"
	pb "github.com/shoal-cluster/shoal/proto"
	"github.com/spf13/cobra"
)

// networkNameRE is a network's name (Docker's rule; the managers check it
// too).
var networkNameRE = regexp.MustCompile(`^[a-zA-Z0-9][a-zA-Z0-9_.-]{0,63}$`)

// networkCommand is `shoal network`, as `docker network`.
func networkCommand(g *globalFlags) *cobra.Command {
	return group("network", "Manage networks",
		networkCreateCommand(g),
		networkLsCommand(g),
		inspectCommand(g, "network", "Show one or more networks and the services attached", func(s *session, ref string) (*pb.GetNetworkResponse, error) {
			return s.control.GetNetwork(s.ctx, &pb.GetNetworkRequest{Ref: ref})
		}, renderNetworkPretty),
		removeCommand(g, "network", func(s *session, ref string) error {
			_, err := s.control.RemoveNetwork(s.ctx, &pb.RemoveNetworkRequest{Ref: ref})
			return err
		}))
}

func networkCreateCommand(g *globalFlags) *cobra.Command {
	c := &clientFlags{globalFlags: g}
	var (
		labels []string
		driver string
	)
	cmd := &cobra.Command{
		Use:   "create [OPTIONS] NAME",
		Short: "Create an overlay network",
		Args:  exactArgs(1, "network create needs a NAME"),
		RunE: func(_ *cobra.Command, pos []string) error {
			name := pos[0]
			if !networkNameRE.MatchString(name) {
				return usagef("invalid network name %q: use 1-64 letters, digits, '-', '_' and '.', starting with a letter or digit", name)
			}
			if driver != controlapi.NetworkDriverOverlay {
				return usagef("--driver %s: Shoal's networks are overlay networks (every service reaches every other through the routing mesh); use --driver overlay or leave it out", driver)
			}
			lbls, err := parseLabels("--label", labels)
			if err != nil {
				return err
			}
			s, err := c.connect()
			if err != nil {
				return err
			}
			defer s.close()
			resp, err := s.control.CreateNetwork(s.ctx, &pb.CreateNetworkRequest{Spec: &pb.NetworkSpec{
				Annotations: &pb.Annotations{Name: name, Labels: lbls}, Driver: driver}})
			if err != nil {
				return s.explain(err)
			}
			fmt.Println(resp.GetNetwork().GetId())
			return nil
		},
	}
	c.register(cmd.Flags(), false)
	cmd.Flags().StringArrayVarP(&labels, "label", "l", nil, "network label `KEY=VALUE` (repeatable)")
	cmd.Flags().StringVarP(&driver, "driver", "d", controlapi.NetworkDriverOverlay, "network driver: overlay, the only one")
	return cmd
}

func networkLsCommand(g *globalFlags) *cobra.Command {
	c := &clientFlags{globalFlags: g}
	var quiet bool
	cmd := &cobra.Command{
		Use:   "ls [OPTIONS]",
		Short: "List networks (the routing mesh, shoal, first)",
		Args:  noArgs("network ls takes no arguments"),
		RunE: func(*cobra.Command, []string) error {
			s, err := c.connect()
			if err != nil {
				return err
			}
			defer s.close()
			resp, err := s.control.ListNetworks(s.ctx, &pb.ListNetworksRequest{})
			if err != nil {
				return s.explain(err)
			}
			all := resp.GetNetworks()
			switch {
			case quiet:
				fmt.Println(controlapi.MeshNetworkID)
				for _, n := range all {
					fmt.Println(n.GetId())
				}
				return nil
			case c.format == "json":
				return printJSON(all)
			}
			t := newTable("ID", "NAME", "DRIVER", "SCOPE", "CREATED")
			t.row(controlapi.MeshNetworkID, controlapi.MeshNetworkName, controlapi.NetworkDriverOverlay, "swarm", "(routing mesh)")
			for _, n := range all {
				t.row(n.GetId(), n.GetSpec().GetAnnotations().GetName(), n.GetSpec().GetDriver(), "swarm", ago(n.GetMeta().GetCreatedAt()))
			}
			t.flush()
			return nil
		},
	}
	c.register(cmd.Flags(), true)
	cmd.Flags().BoolVarP(&quiet, "quiet", "q", false, "print network IDs only")
	return cmd
}

// renderNetworkPretty prints a network as `network inspect --pretty` does.
func renderNetworkPretty(w io.Writer, g *pb.GetNetworkResponse, _ time.Time) {
	n := g.GetNetwork()
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	p := func(format string, args ...any) { fmt.Fprintf(tw, format+"\n", args...) }
	p("ID:\t%s", n.GetId())
	p("Name:\t%s", n.GetSpec().GetAnnotations().GetName())
	p("Driver:\t%s", n.GetSpec().GetDriver())
	if labels := n.GetSpec().GetAnnotations().GetLabels(); len(labels) > 0 {
		keys := make([]string, 0, len(labels))
		for k := range labels {
			keys = append(keys, k)
		}
		sort.Strings(keys)
		for i, k := range keys {
			keys[i] = k + "=" + labels[k]
		}
		p("Labels:\t%s", strings.Join(keys, ", "))
	}
	p("Created:\t%s", time.Unix(0, n.GetMeta().GetCreatedAt()).UTC().Format(time.RFC3339))
	if len(g.GetServices()) > 0 {
		p("Services:\t%s", strings.Join(g.GetServices(), ", "))
	}
	_ = tw.Flush()
}
