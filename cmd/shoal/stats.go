package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"text/tabwriter"
	"time"

	pb "github.com/shoal-cluster/shoal/proto"
	"github.com/spf13/cobra"
)

// statsInterval is how often a streaming `stats` refreshes: the workers
// sample once a heartbeat (a second by default).
const statsInterval = time.Second

// statsCommand is `shoal service stats [SERVICE]` or `shoal node stats
// [NODE]`: the running tasks' CPU and memory use, as `docker stats`.
func statsCommand(g *globalFlags, noun string) *cobra.Command {
	c := &clientFlags{globalFlags: g}
	var noStream bool
	upper := strings.ToUpper(noun)
	cmd := &cobra.Command{
		Use:   "stats [OPTIONS] [" + upper + "]",
		Short: "Show the CPU and memory use of running tasks (of a " + noun + ", or of every one)",
		Long: "Show the CPU and memory use of running tasks, as `docker stats`: CPU in % of one core\n" +
			"and in % of the task's CPU reservation, memory and its % of the task's memory limit,\n" +
			"per task and in total. Workers sample their tasks with every heartbeat.",
		Args: func(_ *cobra.Command, args []string) error {
			if len(args) > 1 {
				return usagef("%s stats takes at most one %s", noun, upper)
			}
			return nil
		},
		RunE: func(_ *cobra.Command, args []string) error {
			req := &pb.TaskStatsRequest{}
			if len(args) == 1 {
				if noun == "service" {
					req.Service = args[0]
				} else {
					req.Node = args[0]
				}
			}
			return runStats(c, req, noStream)
		},
	}
	c.register(cmd.Flags(), true)
	cmd.Flags().BoolVar(&noStream, "no-stream", false, "print the figures once and exit")
	return cmd
}

func runStats(c *clientFlags, req *pb.TaskStatsRequest, noStream bool) error {
	s, err := c.connect()
	if err != nil {
		return err
	}
	defer s.close()
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	tty := !noStream && c.format != "json" && isTerminal(os.Stdout)
	for {
		callCtx, cancel := context.WithTimeout(ctx, c.timeout)
		resp, err := s.control.TaskStats(callCtx, req)
		cancel()
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			return s.explain(err)
		}
		if tty {
			fmt.Print("\033[2J\033[H")
		}
		if c.format == "json" {
			if err := printStatsJSON(os.Stdout, resp.GetStats()); err != nil {
				return err
			}
		} else {
			renderStats(os.Stdout, resp.GetStats())
		}
		if noStream {
			return nil
		}
		select {
		case <-ctx.Done():
			return nil
		case <-time.After(statsInterval):
		}
	}
}

// statRow is one task's figures (or the total) as printed.
type statRow struct {
	Task    string `json:"task"`
	TaskID  string `json:"task_id,omitempty"`
	Service string `json:"service,omitempty"`
	Node    string `json:"node,omitempty"`
	// Sampled is false for a task with no figures yet.
	Sampled bool `json:"sampled"`
	// CPUPercent is in % of one core; CPUReservationPercent in % of the
	// task's CPU reservation (absent without one).
	CPUPercent            float64  `json:"cpu_percent"`
	CPUReservationPercent *float64 `json:"cpu_reservation_percent,omitempty"`
	MemoryBytes           int64    `json:"memory_bytes"`
	MemoryLimit           int64    `json:"memory_limit,omitempty"`
	MemoryPercent         *float64 `json:"memory_percent,omitempty"`
}

// statRows turns the leader's answer into rows and their total.
func statRows(stats []*pb.TaskStat) ([]statRow, statRow) {
	rows := make([]statRow, 0, len(stats))
	total := statRow{Task: fmt.Sprintf("TOTAL (%d tasks)", len(stats))}
	var totalRes, totalResUsed float64
	var totalLimit int64
	limitsAll := len(stats) > 0
	for _, st := range stats {
		name := fmt.Sprintf("%s.%d", st.GetServiceName(), st.GetSlot())
		if st.GetSlot() == 0 {
			name = st.GetServiceName() + "." + shortID(st.GetNodeId())
		}
		node := st.GetHostname()
		if node == "" {
			node = shortID(st.GetNodeId())
		}
		r := statRow{Task: name, TaskID: st.GetTaskId(), Service: st.GetServiceName(), Node: node}
		u := st.GetUsage()
		limit := st.GetMemoryLimit()
		if limit == 0 {
			limit = u.GetMemoryLimit()
		}
		r.MemoryLimit = limit
		if limit == 0 {
			limitsAll = false
		}
		if u != nil && u.GetCpuWindow() > 0 {
			r.Sampled = true
			cores := float64(u.GetCpuNanoCores())
			r.CPUPercent = cores / 1e7
			r.MemoryBytes = u.GetMemoryBytes()
			if res := st.GetCpuReservation(); res > 0 {
				p := cores / float64(res) * 100
				r.CPUReservationPercent = &p
				totalRes += float64(res)
				totalResUsed += cores
			}
			if limit > 0 {
				p := float64(u.GetMemoryBytes()) / float64(limit) * 100
				r.MemoryPercent = &p
			}
			total.Sampled = true
			total.CPUPercent += r.CPUPercent
			total.MemoryBytes += r.MemoryBytes
		}
		totalLimit += limit
		rows = append(rows, r)
	}
	if totalRes > 0 {
		p := totalResUsed / totalRes * 100
		total.CPUReservationPercent = &p
	}
	if limitsAll && totalLimit > 0 {
		total.MemoryLimit = totalLimit
		p := float64(total.MemoryBytes) / float64(totalLimit) * 100
		total.MemoryPercent = &p
	}
	return rows, total
}

func pct(p *float64) string {
	if p == nil {
		return "--"
	}
	return fmt.Sprintf("%.2f%%", *p)
}

func renderStats(w io.Writer, stats []*pb.TaskStat) {
	rows, total := statRows(stats)
	tw := tabwriter.NewWriter(w, 0, 0, 3, ' ', 0)
	fmt.Fprintln(tw, "TASK\tNODE\tCPU %\tCPU % OF RESERVED\tMEM USAGE / LIMIT\tMEM %")
	line := func(r statRow) {
		if !r.Sampled {
			fmt.Fprintf(tw, "%s\t%s\t--\t--\t--\t--\n", r.Task, r.Node)
			return
		}
		limit := "--"
		if r.MemoryLimit > 0 {
			limit = humanBytes(r.MemoryLimit)
		}
		fmt.Fprintf(tw, "%s\t%s\t%.2f%%\t%s\t%s / %s\t%s\n", r.Task, r.Node, r.CPUPercent, pct(r.CPUReservationPercent),
			humanBytes(r.MemoryBytes), limit, pct(r.MemoryPercent))
	}
	for _, r := range rows {
		line(r)
	}
	line(total)
	tw.Flush()
}

// printStatsJSON prints one JSON object a refresh: the tasks and their
// total.
func printStatsJSON(w io.Writer, stats []*pb.TaskStat) error {
	rows, total := statRows(stats)
	b, err := json.Marshal(struct {
		Tasks []statRow `json:"tasks"`
		Total statRow   `json:"total"`
	}{rows, total})
	if err != nil {
		return err
	}
	_, err = fmt.Fprintln(w, string(b))
	return err
}
