// Command shoal is Shoal's single binary: the node daemon (init, join,
// start) and the client for a running cluster (node, cluster, service,
// secret, config). Its command line is a cobra command tree (commands.go); each
// command's file holds its flags and what it does.
package main

import (
	"errors"
	"fmt"
	"io"
	"os"

	"github.com/shoal-cluster/shoal/worker/process/supervise"
	"github.com/spf13/cobra"
)

// version is set at build time with -ldflags "-X main.version=...".
var version = "dev"

// selfExecutable is the path of this binary.
func selfExecutable() string {
	if p, err := os.Executable(); err == nil {
		return p
	}
	return os.Args[0]
}

func main() {
	os.Exit(run(os.Args[1:], os.Stderr))
}

// run runs the command line args and returns the exit status: 0, 1 for an
// error, 2 for a mistake in the command line. Errors go to stderr as one
// line; output goes to standard output.
func run(args []string, stderr io.Writer) int {
	if len(args) > 0 && args[0] == supervisorCommand {
		return supervise.Supervise(args[1:])
	}
	root := newRootCommand()
	root.SetErr(stderr)
	if len(args) == 0 || (args[0] != cobra.ShellCompRequestCmd && args[0] != cobra.ShellCompNoDescRequestCmd) {
		args = normalizeFlags(root, args)
	}
	root.SetArgs(args)
	if err := checkUTF8(args); err != nil {
		cmd, _, _ := root.Find(args)
		return report(stderr, cmd, err)
	}
	cmd, err := root.ExecuteC()
	return report(stderr, cmd, err)
}

// report prints err, if any, and returns the exit status it stands for.
func report(stderr io.Writer, cmd *cobra.Command, err error) int {
	var ue usageError
	switch {
	case err == nil:
		return 0
	case errors.Is(err, errUsageShown):
		return 2
	case errors.As(err, &ue):
		path := "shoal"
		if cmd != nil {
			path = cmd.CommandPath()
		}
		fmt.Fprintf(stderr, "Error: %s\nSee '%s --help'.\n", ue.msg, path)
		return 2
	}
	fmt.Fprintf(stderr, "Error: %s\n", err)
	return 1
}
