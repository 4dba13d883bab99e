// Command shoal is Shoal's single binary: the node daemon (init, join,
// start) and the client for a running cluster (node, cluster).
package main

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"sort"
	"strings"
	"unicode/utf8"

	"github.com/shoal-cluster/shoal/worker/process"
)

// selfExecutable is the path of this binary.
func selfExecutable() string {
	if p, err := os.Executable(); err == nil {
		return p
	}
	return os.Args[0]
}

// version is set at build time with -ldflags "-X main.version=...".
var version = "dev"

// command is one subcommand.
type command struct {
	name    string
	summary string
	run     func(args []string) error
	sub     []*command
}

func commands() []*command {
	return []*command{
		{name: "init", summary: "Create a new cluster with this node as its first manager", run: runInit},
		{name: "join", summary: "Join a cluster as a worker or a manager (the token decides)", run: runJoin},
		{name: "start", summary: "Restart a node from its data dir", run: runStart},
		{name: "leave", summary: "Take the node in --data-dir out of the cluster", run: runLeave},
		{name: "node", summary: "Manage nodes", sub: []*command{
			{name: "ls", summary: "List nodes", run: runNodeLs},
			{name: "inspect", summary: "Show one or more nodes in detail", run: runNodeInspect},
			{name: "update", summary: "Change a node's availability or labels", run: runNodeUpdate},
			{name: "promote", summary: "Make workers managers", run: runNodePromote},
			{name: "demote", summary: "Make managers workers", run: runNodeDemote},
			{name: "rm", summary: "Remove nodes from the cluster", run: runNodeRm},
		}},
		{name: "cluster", summary: "Manage the cluster", sub: []*command{
			{name: "info", summary: "Show the cluster ID, the managers' Raft state and the leader", run: runClusterInfo},
			{name: "join-token", summary: "Show or rotate a join token", run: runJoinToken},
			{name: "client-config", summary: "Export an admin client config for another machine", run: runClientConfig},
			{name: "ca", summary: "Rotate the cluster's root CA", run: runCA},
			{name: "gossip-key", summary: "Rotate the gossip encryption key", run: runGossipKey},
		}},
		{name: "service", summary: "Manage services", sub: serviceCommands()},
		{name: "secret", summary: "Manage secrets", sub: secretCommands()},
		{name: "image", summary: "Load images into this node's Docker Engine", sub: imageCommands()},
		{name: "version", summary: "Print the version", run: func([]string) error {
			fmt.Println("shoal", version)
			return nil
		}},
	}
}

// usageError is a mistake in the command line: exit status 2.
type usageError struct{ msg string }

func (e usageError) Error() string { return e.msg }

func usagef(format string, args ...any) error { return usageError{fmt.Sprintf(format, args...)} }

func main() {
	os.Exit(run(os.Args[1:], os.Stderr))
}

func run(args []string, stderr io.Writer) int {
	if len(args) > 0 && args[0] == supervisorCommand {
		return process.Supervise(args[1:])
	}
	cmds := commands()
	path := "shoal"
	for {
		if len(args) == 0 || args[0] == "-h" || args[0] == "--help" || args[0] == "help" {
			printUsage(stderr, path, cmds)
			if len(args) == 0 {
				return 2
			}
			return 0
		}
		c := find(cmds, args[0])
		if c == nil {
			fmt.Fprintf(stderr, "Error: unknown command %q for %q\n", args[0], path)
			printUsage(stderr, path, cmds)
			return 2
		}
		path += " " + c.name
		args = args[1:]
		if c.sub == nil {
			err := c.run(args)
			switch {
			case err == nil:
				return 0
			case errors.Is(err, flag.ErrHelp):
				return 0
			}
			var ue usageError
			if errors.As(err, &ue) {
				fmt.Fprintf(stderr, "Error: %s\nSee '%s --help'.\n", ue.msg, path)
				return 2
			}
			fmt.Fprintf(stderr, "Error: %s\n", err)
			return 1
		}
		cmds = c.sub
	}
}

func find(cmds []*command, name string) *command {
	for _, c := range cmds {
		if c.name == name {
			return c
		}
	}
	return nil
}

func printUsage(w io.Writer, path string, cmds []*command) {
	fmt.Fprintf(w, "Usage: %s COMMAND\n\nCommands:\n", path)
	sorted := append([]*command(nil), cmds...)
	sort.Slice(sorted, func(i, j int) bool { return sorted[i].name < sorted[j].name })
	for _, c := range sorted {
		fmt.Fprintf(w, "  %-12s %s\n", c.name, c.summary)
	}
	fmt.Fprintf(w, "\nRun '%s COMMAND --help' for more on a command.\n", path)
}

// newFlags makes a flag set whose errors come back as usage errors.
func newFlags(name, usage string) *flag.FlagSet {
	fs := flag.NewFlagSet(name, flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	fs.Usage = func() {}
	_ = usage
	return fs
}

// parseFlags parses flags and positional arguments in any order, as
// Docker's CLI does. "--" ends flag parsing.
func parseFlags(fs *flag.FlagSet, usage string, args []string) ([]string, error) {
	if err := checkUTF8(args); err != nil {
		return nil, err
	}
	var pos []string
	for {
		if err := fs.Parse(args); err != nil {
			if errors.Is(err, flag.ErrHelp) {
				printFlags(fs, usage)
				return nil, flag.ErrHelp
			}
			return nil, usageError{err.Error()}
		}
		rest := fs.Args()
		if len(rest) == 0 {
			return pos, nil
		}
		if len(args) > 0 && len(rest) < len(args) && args[len(args)-len(rest)-1] == "--" {
			return append(pos, rest...), nil
		}
		pos = append(pos, rest[0])
		args = rest[1:]
	}
}

// checkUTF8 refuses arguments that are not UTF-8 text: everything the
// cluster stores (names, paths, values) travels as protobuf strings.
func checkUTF8(args []string) error {
	for _, a := range args {
		if !utf8.ValidString(a) {
			return usagef("argument %q is not valid UTF-8 text; names, paths and values must be UTF-8", a)
		}
	}
	return nil
}

func printFlags(fs *flag.FlagSet, usage string) {
	fmt.Fprintf(os.Stdout, "Usage: %s\n\nOptions:\n", usage)
	fs.VisitAll(func(f *flag.Flag) {
		if f.Name == "help" {
			return
		}
		name, help := flag.UnquoteUsage(f)
		dash := "--"
		if len(f.Name) == 1 {
			dash = "-"
		}
		line := fmt.Sprintf("  %s%s %s", dash, f.Name, name)
		if f.DefValue != "" && f.DefValue != "false" && f.DefValue != "[]" {
			help += fmt.Sprintf(" (default %s)", f.DefValue)
		}
		fmt.Fprintf(os.Stdout, "%-34s %s\n", strings.TrimRight(line, " "), help)
	})
}

// stringList is a repeatable string flag.
type stringList []string

func (s *stringList) String() string     { return strings.Join(*s, ",") }
func (s *stringList) Set(v string) error { *s = append(*s, v); return nil }
