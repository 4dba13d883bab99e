package main

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"
)

// globalFlags are the flags of every command, given before or after its
// name (`shoal --host m2 node ls` or `shoal node ls --host m2`).
type globalFlags struct {
	host         string
	dataDir      string
	clientConfig string
	logLevel     string
}

func (g *globalFlags) register(fs *pflag.FlagSet) {
	fs.StringVarP(&g.host, "host", "H", os.Getenv("SHOAL_HOST"), "manager to talk to, `IP[:PORT]` (env SHOAL_HOST; default: the client config's, else the node in --data-dir, else 127.0.0.1:4242)")
	fs.StringVar(&g.dataDir, "data-dir", defaultDataDir(), "the node's data `dir`: its state (init, join, start), and where client commands find the local node and its credentials (env SHOAL_DATA_DIR)")
	fs.StringVar(&g.clientConfig, "client-config", os.Getenv("SHOAL_CLIENT_CONFIG"), "admin client config `file` from 'shoal cluster client-config' (env SHOAL_CLIENT_CONFIG; default: the one in --data-dir)")
	fs.StringVar(&g.logLevel, "log-level", "info", "log level of a node (init, join, start): debug, info, warn or error")
}

func defaultDataDir() string {
	if d := os.Getenv("SHOAL_DATA_DIR"); d != "" {
		return d
	}
	if home, err := os.UserHomeDir(); err == nil {
		return filepath.Join(home, ".shoal")
	}
	return ""
}

// newRootCommand builds the command tree: a new one for every run, since
// commands keep their flags' values.
func newRootCommand() *cobra.Command {
	g := &globalFlags{}
	root := &cobra.Command{
		Use:   "shoal",
		Short: "Run a Shoal cluster and its services",
		Long: "Shoal turns a set of machines into one cluster: managers keep its state in Raft, workers run\n" +
			"its services' tasks as processes or containers. This one binary is both the node (init, join,\n" +
			"start) and the client of a running cluster (node, cluster, service, secret, config).",
		SilenceErrors: true,
		SilenceUsage:  true,
		Args:          unknownSubcommand,
		RunE:          showUsage,
	}
	root.SetFlagErrorFunc(flagError)
	root.SetUsageFunc(usage)
	g.register(root.PersistentFlags())
	root.AddCommand(
		initCommand(g), joinCommand(g), startCommand(g), leaveCommand(g),
		nodeCommand(g), clusterCommand(g), serviceCommand(g), secretCommand(g), configCommand(g), eventsCommand(g), dashboardCommand(g), imageCommand(g),
		&cobra.Command{
			Use:   "version",
			Short: "Print the version",
			Args:  noArgs("version takes no arguments"),
			Run:   func(*cobra.Command, []string) { fmt.Println("shoal", version) },
		},
	)
	root.InitDefaultHelpCmd()
	root.InitDefaultCompletionCmd()
	registerCompletions(root, g)
	walk(root, func(cmd *cobra.Command) {
		usageErrorsFromArgs(cmd)
		cmd.DisableFlagsInUseLine = true // the Use lines say [OPTIONS]
	})
	return root
}

// group is a command that only holds subcommands: run alone, it prints its
// usage and exits 2, as a command line without a command does.
func group(name, short string, subs ...*cobra.Command) *cobra.Command {
	c := &cobra.Command{Use: name, Short: short, Args: unknownSubcommand, RunE: showUsage}
	c.AddCommand(subs...)
	return c
}

// unknownSubcommand is the argument check of a command group: any
// argument is a command it does not have.
func unknownSubcommand(cmd *cobra.Command, args []string) error {
	if len(args) == 0 {
		return nil
	}
	msg := fmt.Sprintf("unknown command %q for %q", args[0], cmd.CommandPath())
	cmd.SuggestionsMinimumDistance = 2
	if s := cmd.SuggestionsFor(args[0]); len(s) > 0 {
		for i := range s {
			s[i] = strconv.Quote(s[i])
		}
		msg += "; did you mean " + strings.Join(s, " or ") + "?"
	}
	return usageError{msg}
}

func showUsage(cmd *cobra.Command, _ []string) error {
	fmt.Fprint(cmd.ErrOrStderr(), cmd.UsageString())
	return errUsageShown
}

// walk calls fn on cmd and every command under it.
func walk(cmd *cobra.Command, fn func(*cobra.Command)) {
	fn(cmd)
	for _, c := range cmd.Commands() {
		walk(c, fn)
	}
}

// usageErrorsFromArgs makes the argument checks of cobra's own commands
// (help, completion) usage errors too: exit status 2.
func usageErrorsFromArgs(cmd *cobra.Command) {
	check := cmd.Args
	if check == nil {
		return
	}
	cmd.Args = func(c *cobra.Command, args []string) error {
		err := check(c, args)
		var ue usageError
		if err == nil || errors.As(err, &ue) {
			return err
		}
		return usageError{err.Error()}
	}
}
