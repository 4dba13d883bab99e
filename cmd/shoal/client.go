package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/shoal-cluster/shoal/internal/clientcreds"
	"github.com/shoal-cluster/shoal/internal/datadir"
	"github.com/shoal-cluster/shoal/internal/pki"
	"github.com/shoal-cluster/shoal/internal/rpc"
	"github.com/shoal-cluster/shoal/manager"
	pb "github.com/shoal-cluster/shoal/proto"
	"github.com/spf13/cobra"
	"github.com/spf13/pflag"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
)

// clientFlags are the flags of a client command: the global ones, and
// --timeout and (some commands) --format of its own.
type clientFlags struct {
	*globalFlags
	timeout time.Duration
	format  string

	config *pki.ClientConfig // from --client-config, once loaded
}

func (c *clientFlags) register(fs *pflag.FlagSet, withFormat bool) {
	fs.DurationVar(&c.timeout, "timeout", 15*time.Second, "how long to wait for the cluster")
	if withFormat {
		fs.StringVar(&c.format, "format", "table", "output format: table or json")
	}
}

// target is the manager address to talk to.
func (c *clientFlags) target() string {
	if c.host != "" {
		return manager.WithDefaultPort(c.host)
	}
	if c.config != nil && c.config.Host != "" {
		return c.config.Host
	}
	if id, err := datadir.Load(c.dataDir); err == nil && id.Advertise != "" {
		return id.Advertise
	}
	return manager.WithDefaultPort("127.0.0.1")
}

// session is a connection to a manager with a deadline.
type session struct {
	ctx     context.Context
	cancel  context.CancelFunc
	conn    *grpc.ClientConn
	control pb.ControlClient
	addr    string
}

func (c *clientFlags) connect() (*session, error) {
	if c.format != "" && c.format != "table" && c.format != "json" {
		return nil, usagef("--format %q: use table or json", c.format)
	}
	creds, err := c.credentials()
	if err != nil {
		return nil, err
	}
	addr := c.target()
	conn, err := rpc.Dial(addr, creds, grpc.WithUnaryInterceptor(rpc.RetryUnavailable()))
	if err != nil {
		return nil, err
	}
	ctx, cancel := context.WithTimeout(context.Background(), c.timeout)
	return &session{ctx: ctx, cancel: cancel, conn: conn, control: pb.NewControlClient(conn), addr: addr}, nil
}

// credentials finds the TLS identity to talk to the cluster with: the
// client config given, else the admin client config `shoal init` wrote in
// the data dir, else the certificate of the node in the data dir.
func (c *clientFlags) credentials() (*rpc.Credentials, error) {
	creds, cc, err := clientcreds.Find(c.dataDir, c.clientConfig)
	c.config = cc
	return creds, err
}

func (s *session) close() {
	s.cancel()
	s.conn.Close()
}

// explain turns a gRPC error into one line that says what to do.
func (s *session) explain(err error) error {
	if err == nil {
		return nil
	}
	st := status.Convert(err)
	msg := st.Message()
	if rpc.IsTLSRefusal(err) {
		return fmt.Errorf("TLS with %s failed: %s", s.addr, rpc.DescribeTLSRefusal(err))
	}
	switch st.Code() {
	case codes.Unavailable:
		if strings.Contains(msg, "connection refused") || strings.Contains(msg, "no such host") || strings.Contains(msg, "connect:") {
			return fmt.Errorf("no Shoal manager answers at %s; start one, or point --host / SHOAL_HOST at a manager", s.addr)
		}
		return fmt.Errorf("the cluster is unavailable: %s", msg)
	case codes.DeadlineExceeded:
		return fmt.Errorf("no answer from the cluster through %s in time (is a majority of managers up?): %s", s.addr, msg)
	case codes.Unimplemented:
		return fmt.Errorf("%s does not serve this call: is it a manager? (%s)", s.addr, msg)
	}
	return fmt.Errorf("%s", msg)
}

// printJSON prints messages as indented JSON (an array, as `docker inspect`).
func printJSON[T proto.Message](msgs []T) error {
	raw := make([]json.RawMessage, 0, len(msgs))
	for _, m := range msgs {
		b, err := protojson.MarshalOptions{UseProtoNames: true}.Marshal(m)
		if err != nil {
			return err
		}
		raw = append(raw, b)
	}
	out, err := json.MarshalIndent(raw, "", "    ")
	if err != nil {
		return err
	}
	fmt.Println(string(out))
	return nil
}

// table prints aligned columns as Docker's CLI does.
type table struct{ w *tabwriter.Writer }

func newTable(headers ...string) *table {
	t := &table{w: tabwriter.NewWriter(os.Stdout, 0, 0, 3, ' ', 0)}
	t.row(headers...)
	return t
}

func (t *table) row(cols ...string) { fmt.Fprintln(t.w, strings.Join(cols, "\t")) }
func (t *table) flush()             { t.w.Flush() }

// ago formats a time as "5 seconds ago".
func ago(unixNano int64) string {
	if unixNano == 0 {
		return "never"
	}
	d := time.Since(time.Unix(0, unixNano))
	switch {
	case d < 2*time.Second:
		return "just now"
	case d < time.Minute:
		return fmt.Sprintf("%d seconds ago", int(d.Seconds()))
	case d < 2*time.Hour:
		return fmt.Sprintf("%d minutes ago", int(d.Minutes()))
	case d < 48*time.Hour:
		return fmt.Sprintf("%d hours ago", int(d.Hours()))
	}
	return fmt.Sprintf("%d days ago", int(d.Hours()/24))
}

// removeCommand is `shoal <noun> rm REF [REF...]`: it removes each object,
// printing the ones removed, and fails with every refusal in one line.
func removeCommand(g *globalFlags, noun string, remove func(s *session, ref string) error) *cobra.Command {
	c := &clientFlags{globalFlags: g}
	cmd := &cobra.Command{
		Use:   "rm " + strings.ToUpper(noun) + " [" + strings.ToUpper(noun) + "...]",
		Short: "Remove one or more " + noun + "s",
		Args:  minArgs(1, fmt.Sprintf("%s rm needs at least one %s name or ID", noun, noun)),
		RunE: func(_ *cobra.Command, pos []string) error {
			s, err := c.connect()
			if err != nil {
				return err
			}
			defer s.close()
			var failed []string
			for _, ref := range pos {
				if err := remove(s, ref); err != nil {
					failed = append(failed, s.explain(err).Error())
					continue
				}
				fmt.Println(ref)
			}
			if len(failed) > 0 {
				return errors.New(strings.Join(failed, "; "))
			}
			return nil
		},
	}
	c.register(cmd.Flags(), false)
	return cmd
}

// inspectCommand is `NOUN inspect [--pretty] REF...`: get fetches each
// one, shown as JSON or, with --pretty, by pretty.
func inspectCommand[R proto.Message](g *globalFlags, noun, short string, get func(s *session, ref string) (R, error), pretty func(w io.Writer, got R, now time.Time)) *cobra.Command {
	c := &clientFlags{globalFlags: g}
	var asText bool
	upper := strings.ToUpper(noun)
	cmd := &cobra.Command{
		Use:   fmt.Sprintf("inspect [OPTIONS] %s [%s...]", upper, upper),
		Short: short,
		Args:  minArgs(1, fmt.Sprintf("%s inspect needs at least one %s name or ID", noun, noun)),
		RunE: func(_ *cobra.Command, pos []string) error {
			s, err := c.connect()
			if err != nil {
				return err
			}
			defer s.close()
			var got []R
			for _, ref := range pos {
				resp, err := get(s, ref)
				if err != nil {
					return s.explain(err)
				}
				got = append(got, resp)
			}
			if !asText {
				return printJSON(got)
			}
			for i, g := range got {
				if i > 0 {
					fmt.Println()
				}
				pretty(os.Stdout, g, time.Now())
			}
			return nil
		},
	}
	c.register(cmd.Flags(), false)
	cmd.Flags().BoolVar(&asText, "pretty", false, "human-readable output instead of JSON")
	return cmd
}
