package main

// What `shoal secret` and `shoal config` share: both create a named blob
// from a file or standard input, list, inspect and remove them, as
// `docker secret` and `docker config` do. secret.go and config.go say what
// differs (the RPCs, whether inspect shows the data).

import (
	"fmt"
	"io"
	"os"
	"strings"
	"text/tabwriter"
	"time"

	pb "github.com/shoal-cluster/shoal/proto"
	"github.com/spf13/cobra"
	"google.golang.org/protobuf/proto"
)

// blobCLI describes secrets or configs to the shared commands.
type blobCLI struct {
	noun string // "secret" or "config"
	// value is what the blob holds, as messages say it ("value", "data").
	value string
	// limit is the managers' limit in bytes, limitText the same in words.
	limit     int
	limitText string
}

// maxRead bounds what create reads: blobs up to it go to the managers,
// which refuse anything over the limit with the exact size; larger ones
// are refused here.
func (k blobCLI) maxRead() int { return 4 * k.limit }

// blobInfo is what listings and --pretty show of a secret or config.
type blobInfo struct {
	id, name         string
	labels           map[string]string
	size             uint64
	created, updated int64
}

func blobCreateCommand(g *globalFlags, k blobCLI, create func(s *session, ann *pb.Annotations, data []byte) (id string, err error)) *cobra.Command {
	c := &clientFlags{globalFlags: g}
	var labels []string
	cmd := &cobra.Command{
		Use:   "create [OPTIONS] NAME FILE|-",
		Short: fmt.Sprintf("Create a %s from a file or standard input", k.noun),
		Args:  exactArgs(2, k.noun+" create needs a NAME and a FILE (- reads standard input)"),
		RunE: func(_ *cobra.Command, pos []string) error {
			name, file := pos[0], pos[1]
			if !blobNameRE.MatchString(name) {
				return usagef("invalid %s name %q: use 1-64 letters, digits, '-', '_' and '.', starting with a letter or digit", k.noun, name)
			}
			lbls, err := parseLabels("--label", labels)
			if err != nil {
				return err
			}
			data, err := k.read(file, os.Stdin)
			if err != nil {
				return err
			}
			s, err := c.connect()
			if err != nil {
				return err
			}
			defer s.close()
			id, err := create(s, &pb.Annotations{Name: name, Labels: lbls}, data)
			if err != nil {
				return s.explain(err)
			}
			fmt.Println(id)
			return nil
		},
	}
	c.register(cmd.Flags(), false)
	cmd.Flags().StringArrayVarP(&labels, "label", "l", nil, k.noun+" label `KEY=VALUE` (repeatable)")
	return cmd
}

// read reads a blob from a file, or from stdin for "-".
func (k blobCLI) read(file string, stdin io.Reader) ([]byte, error) {
	r := stdin
	what := "standard input"
	if file != "-" {
		f, err := os.Open(file)
		if err != nil {
			return nil, fmt.Errorf("read the %s's %s: %w", k.noun, k.value, err)
		}
		defer f.Close()
		r, what = f, file
	}
	data, err := io.ReadAll(io.LimitReader(r, int64(k.maxRead())+1))
	if err != nil {
		return nil, fmt.Errorf("read the %s's %s from %s: %w", k.noun, k.value, what, err)
	}
	if len(data) > k.maxRead() {
		return nil, fmt.Errorf("the %s in %s is more than %d bytes; a %s holds at most %d bytes (%s)", k.noun, what, k.maxRead(), k.noun, k.limit, k.limitText)
	}
	return data, nil
}

func blobLsCommand[T proto.Message](g *globalFlags, k blobCLI, list func(s *session) ([]T, error), info func(T) blobInfo) *cobra.Command {
	c := &clientFlags{globalFlags: g}
	var quiet bool
	cmd := &cobra.Command{
		Use:   "ls [OPTIONS]",
		Short: "List " + k.noun + "s",
		Args:  noArgs(k.noun + " ls takes no arguments"),
		RunE: func(*cobra.Command, []string) error {
			s, err := c.connect()
			if err != nil {
				return err
			}
			defer s.close()
			all, err := list(s)
			if err != nil {
				return s.explain(err)
			}
			switch {
			case quiet:
				for _, o := range all {
					fmt.Println(info(o).id)
				}
				return nil
			case c.format == "json":
				return printJSON(all)
			}
			t := newTable("ID", "NAME", "SIZE", "CREATED", "UPDATED")
			for _, o := range all {
				i := info(o)
				t.row(i.id, i.name, fmt.Sprintf("%dB", i.size), ago(i.created), ago(i.updated))
			}
			t.flush()
			return nil
		},
	}
	c.register(cmd.Flags(), true)
	cmd.Flags().BoolVarP(&quiet, "quiet", "q", false, "print "+k.noun+" IDs only")
	return cmd
}

// renderBlobPretty prints what `inspect --pretty` shows of any blob: its
// ID, name, labels, size, dates and users.
func renderBlobPretty(w io.Writer, i blobInfo, users []string, now time.Time) {
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	p := func(format string, args ...any) { fmt.Fprintf(tw, format+"\n", args...) }
	p("ID:\t%s", i.id)
	p("Name:\t%s", i.name)
	if len(i.labels) > 0 {
		p("Labels:")
		for _, k := range sortedKeys(i.labels) {
			p(" %s=%s", k, i.labels[k])
		}
	}
	p("Size:\t%d bytes", i.size)
	p("Created:\t%s", agoAt(now, i.created))
	p("Updated:\t%s", agoAt(now, i.updated))
	if len(users) > 0 {
		p("Used by:\t%s", strings.Join(users, ", "))
	} else {
		p("Used by:\t-")
	}
	tw.Flush()
}
