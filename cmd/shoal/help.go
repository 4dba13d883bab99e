package main

import (
	"fmt"
	"regexp"
	"slices"
	"strings"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"
)

// usage prints a command's usage as cobra's default does, but with the
// command's own flags split into their groups (service create and update
// have some seventy) and the global flags last.
func usage(c *cobra.Command) error {
	var b strings.Builder
	b.WriteString("Usage:")
	if c.HasAvailableSubCommands() {
		fmt.Fprintf(&b, "\n  %s COMMAND", c.CommandPath())
	} else if c.Runnable() {
		fmt.Fprintf(&b, "\n  %s", c.UseLine())
	}
	if c.HasExample() {
		fmt.Fprintf(&b, "\n\nExamples:\n%s", c.Example)
	}
	if c.HasAvailableSubCommands() {
		b.WriteString("\n\nCommands:")
		for _, sub := range c.Commands() {
			if sub.IsAvailableCommand() || sub.Name() == "help" {
				fmt.Fprintf(&b, "\n  %-*s %s", sub.NamePadding(), sub.Name(), sub.Short)
			}
		}
	}
	if c.HasAvailableLocalFlags() {
		plain := pflag.NewFlagSet("", pflag.ContinueOnError)
		groups := map[string]*pflag.FlagSet{}
		c.LocalFlags().VisitAll(func(f *pflag.Flag) {
			title := f.Annotations[flagGroupAnnotation]
			if len(title) == 0 {
				plain.AddFlag(f)
				return
			}
			if groups[title[0]] == nil {
				groups[title[0]] = pflag.NewFlagSet(title[0], pflag.ContinueOnError)
			}
			groups[title[0]].AddFlag(f)
		})
		title := "Flags"
		if !c.HasParent() {
			title = globalFlagsTitle
		}
		if plain.HasAvailableFlags() {
			fmt.Fprintf(&b, "\n\n%s:\n%s", title, flagUsages(plain))
		}
		for _, title := range groupOrder(groups) {
			fmt.Fprintf(&b, "\n\n%s:\n%s", title, flagUsages(groups[title]))
		}
	}
	if c.HasAvailableInheritedFlags() {
		fmt.Fprintf(&b, "\n\n%s:\n%s", globalFlagsTitle, flagUsages(c.InheritedFlags()))
	}
	if c.HasAvailableSubCommands() {
		fmt.Fprintf(&b, "\n\nRun '%s COMMAND --help' for more on a command.", c.CommandPath())
	}
	_, err := fmt.Fprintln(c.OutOrStderr(), b.String())
	return err
}

const globalFlagsTitle = "Global Flags (before or after the command)"

// flagLine splits a line of pflag's flag usages into the flag and its
// usage (pflag separates them with at least two spaces).
var flagLine = regexp.MustCompile(`^(\s*-.*?\S)\s{2,}(.*)$`)

// flagUsages lists flags as pflag does, but without the "[=true|false]" it
// writes after every switch, the usages aligned again.
func flagUsages(fs *pflag.FlagSet) string {
	lines := strings.Split(strings.TrimRight(strings.ReplaceAll(fs.FlagUsages(), "[=true|false]", ""), " \n"), "\n")
	width := 0
	for _, l := range lines {
		if m := flagLine.FindStringSubmatch(l); m != nil {
			width = max(width, len(m[1]))
		}
	}
	for i, l := range lines {
		if m := flagLine.FindStringSubmatch(l); m != nil {
			lines[i] = fmt.Sprintf("%-*s   %s", width, m[1], m[2])
		}
	}
	return strings.Join(lines, "\n")
}

// groupOrder lists the flag groups present: the service flag groups in
// their order, then any other by title.
func groupOrder(groups map[string]*pflag.FlagSet) []string {
	var titles []string
	for _, t := range serviceFlagGroups() {
		if groups[t] != nil {
			titles = append(titles, t)
		}
	}
	var rest []string
	for t := range groups {
		if !slices.Contains(titles, t) {
			rest = append(rest, t)
		}
	}
	slices.Sort(rest)
	return append(titles, rest...)
}
