package main

// The command line's plumbing around cobra and pflag: usage errors (exit
// status 2), positional argument checks, flag errors worded as before the
// move to pflag, single-dash long flags, and flag groups in help.

import (
	"errors"
	"fmt"
	"strconv"
	"strings"
	"unicode/utf8"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"
)

// usageError is a mistake in the command line: exit status 2.
type usageError struct{ msg string }

func (e usageError) Error() string { return e.msg }

func usagef(format string, args ...any) error { return usageError{fmt.Sprintf(format, args...)} }

// errUsageShown is returned by a command group run without a subcommand,
// once it printed its usage: exit status 2 and nothing more.
var errUsageShown = errors.New("usage shown")

// noArgs refuses positional arguments with msg.
func noArgs(msg string) cobra.PositionalArgs {
	return func(_ *cobra.Command, args []string) error {
		if len(args) > 0 {
			return usageError{msg}
		}
		return nil
	}
}

// exactArgs wants n positional arguments, or says msg.
func exactArgs(n int, msg string) cobra.PositionalArgs {
	return func(_ *cobra.Command, args []string) error {
		if len(args) != n {
			return usageError{msg}
		}
		return nil
	}
}

// minArgs wants at least n positional arguments, or says msg.
func minArgs(n int, msg string) cobra.PositionalArgs {
	return func(_ *cobra.Command, args []string) error {
		if len(args) < n {
			return usageError{msg}
		}
		return nil
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

// flagError turns pflag's parse errors into usage errors, worded as the
// standard flag package did (and as scripts and tests may expect).
func flagError(_ *cobra.Command, err error) error {
	var notExist *pflag.NotExistError
	var invalid *pflag.InvalidValueError
	switch {
	case errors.As(err, &notExist):
		return usagef("flag provided but not defined: -%s", notExist.GetSpecifiedName())
	case errors.As(err, &invalid):
		f := invalid.GetFlag()
		return usagef("invalid value %q for flag -%s: %s", invalid.GetValue(), f.Name, valueHint(f.Value.Type(), invalid.Unwrap()))
	}
	return usageError{err.Error()}
}

// valueHint says what a flag of a type takes.
func valueHint(typ string, cause error) string {
	if errors.Is(cause, strconv.ErrRange) {
		return "value out of range"
	}
	switch typ {
	case "int", "int64", "int32", "uint", "uint64", "uint32":
		return "use a whole number"
	case "float64", "float32":
		return "use a number"
	case "duration":
		return "use a duration such as 500ms, 10s or 2m"
	case "bool":
		return "use true or false"
	}
	return cause.Error()
}

// changedFlags returns the long names of the command's own flags given on
// the command line (not the global ones).
func changedFlags(cmd *cobra.Command) map[string]bool {
	set := map[string]bool{}
	cmd.LocalFlags().VisitAll(func(f *pflag.Flag) {
		if f.Changed {
			set[f.Name] = true
		}
	})
	return set
}

// verbatimArgs marks a command whose flags end at its first positional
// argument: everything after it belongs to the task (`service create`).
const verbatimArgs = "shoal:verbatim-args"

// lookupFlag finds a flag of cmd by long name or, for a one-letter name,
// by shorthand, among its own flags and those it inherits.
func lookupFlag(cmd *cobra.Command, name string, short bool) *pflag.Flag {
	for _, fs := range []*pflag.FlagSet{cmd.LocalFlags(), cmd.InheritedFlags()} {
		var f *pflag.Flag
		if short {
			f = fs.ShorthandLookup(name)
		} else {
			f = fs.Lookup(name)
		}
		if f != nil {
			return f
		}
	}
	return nil
}

// normalizeFlags rewrites single-dash long flags (`-replicas 3`), which
// the standard flag package accepted, into their double-dash form, so that
// pflag does not read them as shorthands (`-r eplicas`). It walks the
// command line from cmd down through subcommands, as cobra will, and
// leaves flag values, everything after "--" and the verbatim arguments of
// `service create` alone.
func normalizeFlags(cmd *cobra.Command, args []string) []string {
	out := make([]string, 0, len(args))
	for i := 0; i < len(args); i++ {
		a := args[i]
		if a == "--" {
			return append(out, args[i:]...)
		}
		if len(a) > 2 && a[0] == '-' && a[1] != '-' {
			if name, _, _ := strings.Cut(a[1:], "="); name == "help" || lookupFlag(cmd, name, false) != nil {
				a = "-" + a
			}
		}
		out = append(out, a)
		switch {
		case strings.HasPrefix(a, "--"):
			name, _, hasValue := strings.Cut(a[2:], "=")
			if f := lookupFlag(cmd, name, false); f != nil && f.NoOptDefVal == "" && !hasValue && i+1 < len(args) {
				i++
				out = append(out, args[i]) // the flag's value
			}
		case strings.HasPrefix(a, "-") && len(a) > 1:
			// Shorthands, the last of which may take the next argument.
			for j := 1; j < len(a); j++ {
				f := lookupFlag(cmd, a[j:j+1], true)
				if f == nil {
					break // pflag reports it
				}
				if f.NoOptDefVal != "" {
					continue // a switch: the next letter is another shorthand
				}
				// Its value is the rest of a, else the next argument.
				if j == len(a)-1 && i+1 < len(args) {
					i++
					out = append(out, args[i])
				}
				break
			}
		default:
			if sub := subcommand(cmd, a); sub != nil {
				cmd = sub
				continue
			}
			if cmd.Annotations[verbatimArgs] != "" {
				return append(out, args[i+1:]...)
			}
		}
	}
	return out
}

// subcommand finds a subcommand of cmd by name or alias.
func subcommand(cmd *cobra.Command, name string) *cobra.Command {
	for _, c := range cmd.Commands() {
		if c.Name() == name || c.HasAlias(name) {
			return c
		}
	}
	return nil
}

// flagGroupAnnotation files a flag under a group in help.
const flagGroupAnnotation = "shoal:group"

// inFlagGroup registers flags with register and files them under title in
// help. With noDefaults their defaults are not shown (update: a flag left
// out changes nothing, so create's defaults mean nothing there).
func inFlagGroup(fs *pflag.FlagSet, title string, noDefaults bool, register func(*pflag.FlagSet)) {
	group := pflag.NewFlagSet(title, pflag.ContinueOnError)
	register(group)
	group.VisitAll(func(f *pflag.Flag) {
		if f.Annotations == nil {
			f.Annotations = map[string][]string{}
		}
		f.Annotations[flagGroupAnnotation] = []string{title}
		if noDefaults {
			f.DefValue = zeroDefault(f.Value.Type())
		}
	})
	fs.AddFlagSet(group)
}

// zeroDefault is how pflag writes the zero value of a flag type, which it
// leaves out of help.
func zeroDefault(typ string) string {
	switch typ {
	case "bool":
		return "false"
	case "duration":
		return "0s"
	case "string":
		return ""
	case "stringArray":
		return "[]"
	}
	return "0"
}
