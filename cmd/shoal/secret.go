package main

// `shoal secret`: create, ls, inspect and rm, modelled on `docker secret`.
// A secret's value goes to the cluster once, with create, and is never
// shown again: inspect and ls show its name, ID, size and dates.

import (
	"fmt"
	"io"
	"os"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/shoal-cluster/shoal/manager"
	pb "github.com/shoal-cluster/shoal/proto"
	"github.com/spf13/cobra"
)

// secretCommand is `shoal secret`, as `docker secret`.
func secretCommand(g *globalFlags) *cobra.Command {
	return group("secret", "Manage secrets",
		secretCreateCommand(g), secretLsCommand(g), secretInspectCommand(g),
		removeCommand(g, "secret", func(s *session, ref string) error {
			_, err := s.control.RemoveSecret(s.ctx, &pb.RemoveSecretRequest{Ref: ref})
			return err
		}))
}

// maxSecretRead bounds what create reads: values up to it go to the
// managers, which refuse anything over manager.MaxSecretSize with the
// exact size; larger ones are refused here.
const maxSecretRead = 4 * manager.MaxSecretSize

func secretCreateCommand(g *globalFlags) *cobra.Command {
	c := &clientFlags{globalFlags: g}
	var labels []string
	cmd := &cobra.Command{
		Use:   "create [OPTIONS] NAME FILE|-",
		Short: "Create a secret from a file or standard input",
		Args:  exactArgs(2, "secret create needs a NAME and a FILE (- reads standard input)"),
		RunE:  func(_ *cobra.Command, pos []string) error { return runSecretCreate(c, labels, pos[0], pos[1]) },
	}
	c.register(cmd.Flags(), false)
	cmd.Flags().StringArrayVarP(&labels, "label", "l", nil, "secret label `KEY=VALUE` (repeatable)")
	return cmd
}

func runSecretCreate(c *clientFlags, labels []string, name, file string) error {
	if !secretNameRE.MatchString(name) {
		return usagef("invalid secret name %q: use 1-64 letters, digits, '-', '_' and '.', starting with a letter or digit", name)
	}
	lbls, err := parseLabels("--label", labels)
	if err != nil {
		return err
	}
	data, err := readSecretValue(file, os.Stdin)
	if err != nil {
		return err
	}
	s, err := c.connect()
	if err != nil {
		return err
	}
	defer s.close()
	resp, err := s.control.CreateSecret(s.ctx, &pb.CreateSecretRequest{Spec: &pb.SecretSpec{
		Annotations: &pb.Annotations{Name: name, Labels: lbls},
		Data:        data,
	}})
	if err != nil {
		return s.explain(err)
	}
	fmt.Println(resp.GetSecret().GetId())
	return nil
}

// readSecretValue reads a secret's value from a file, or from stdin for "-".
func readSecretValue(file string, stdin io.Reader) ([]byte, error) {
	r := stdin
	what := "standard input"
	if file != "-" {
		f, err := os.Open(file)
		if err != nil {
			return nil, fmt.Errorf("read the secret's value: %w", err)
		}
		defer f.Close()
		r, what = f, file
	}
	data, err := io.ReadAll(io.LimitReader(r, maxSecretRead+1))
	if err != nil {
		return nil, fmt.Errorf("read the secret's value from %s: %w", what, err)
	}
	if len(data) > maxSecretRead {
		return nil, fmt.Errorf("the secret in %s is more than %d bytes; a secret holds at most %d bytes (500 KiB)", what, maxSecretRead, manager.MaxSecretSize)
	}
	return data, nil
}

func secretLsCommand(g *globalFlags) *cobra.Command {
	c := &clientFlags{globalFlags: g}
	var quiet bool
	cmd := &cobra.Command{
		Use:   "ls [OPTIONS]",
		Short: "List secrets",
		Args:  noArgs("secret ls takes no arguments"),
		RunE:  func(*cobra.Command, []string) error { return runSecretLs(c, quiet) },
	}
	c.register(cmd.Flags(), true)
	cmd.Flags().BoolVarP(&quiet, "quiet", "q", false, "print secret IDs only")
	return cmd
}

func runSecretLs(c *clientFlags, quiet bool) error {
	s, err := c.connect()
	if err != nil {
		return err
	}
	defer s.close()
	resp, err := s.control.ListSecrets(s.ctx, &pb.ListSecretsRequest{})
	if err != nil {
		return s.explain(err)
	}
	secrets := resp.GetSecrets()
	switch {
	case quiet:
		for _, sec := range secrets {
			fmt.Println(sec.GetId())
		}
		return nil
	case c.format == "json":
		return printJSON(secrets)
	}
	t := newTable("ID", "NAME", "SIZE", "CREATED", "UPDATED")
	for _, sec := range secrets {
		t.row(sec.GetId(), sec.GetSpec().GetAnnotations().GetName(), fmt.Sprintf("%dB", sec.GetSize()),
			ago(sec.GetMeta().GetCreatedAt()), ago(sec.GetMeta().GetUpdatedAt()))
	}
	t.flush()
	return nil
}

func secretInspectCommand(g *globalFlags) *cobra.Command {
	c := &clientFlags{globalFlags: g}
	var pretty bool
	cmd := &cobra.Command{
		Use:   "inspect [OPTIONS] SECRET [SECRET...]",
		Short: "Show one or more secrets (never their values)",
		Args:  minArgs(1, "secret inspect needs at least one secret name or ID"),
		RunE:  func(_ *cobra.Command, pos []string) error { return runSecretInspect(c, pretty, pos) },
	}
	c.register(cmd.Flags(), false)
	cmd.Flags().BoolVar(&pretty, "pretty", false, "human-readable output instead of JSON")
	return cmd
}

func runSecretInspect(c *clientFlags, pretty bool, pos []string) error {
	s, err := c.connect()
	if err != nil {
		return err
	}
	defer s.close()
	var got []*pb.GetSecretResponse
	for _, ref := range pos {
		resp, err := s.control.GetSecret(s.ctx, &pb.GetSecretRequest{Ref: ref})
		if err != nil {
			return s.explain(err)
		}
		got = append(got, resp)
	}
	if !pretty {
		return printJSON(got)
	}
	for i, g := range got {
		if i > 0 {
			fmt.Println()
		}
		renderSecretPretty(os.Stdout, g, time.Now())
	}
	return nil
}

// renderSecretPretty prints a secret as `secret inspect --pretty` does.
func renderSecretPretty(w io.Writer, g *pb.GetSecretResponse, now time.Time) {
	sec := g.GetSecret()
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	p := func(format string, args ...any) { fmt.Fprintf(tw, format+"\n", args...) }
	when := func(ns int64) string {
		if ns == 0 {
			return "-"
		}
		return strings.ToLower(humanDuration(now.Sub(time.Unix(0, ns)))) + " ago"
	}
	p("ID:\t%s", sec.GetId())
	p("Name:\t%s", sec.GetSpec().GetAnnotations().GetName())
	if labels := sec.GetSpec().GetAnnotations().GetLabels(); len(labels) > 0 {
		p("Labels:")
		for _, k := range sortedKeys(labels) {
			p(" %s=%s", k, labels[k])
		}
	}
	p("Size:\t%d bytes", sec.GetSize())
	p("Created:\t%s", when(sec.GetMeta().GetCreatedAt()))
	p("Updated:\t%s", when(sec.GetMeta().GetUpdatedAt()))
	if len(g.GetServices()) > 0 {
		p("Used by:\t%s", strings.Join(g.GetServices(), ", "))
	} else {
		p("Used by:\t-")
	}
	tw.Flush()
}
