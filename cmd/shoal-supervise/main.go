// Command shoal-supervise is the supervisor of one task of the process
// and container runtimes: installed next to shoal (make build does), the
// runtimes start it for each task instead of shoal itself, which costs
// about ten times the CPU to start and six times the memory. It takes the
// same arguments as `shoal __supervise` (package supervise):
//
//	shoal-supervise [-grace DURATION] TASK_DIR
//	shoal-supervise -protocol
package main

import (
	"os"

	"github.com/shoal-cluster/shoal/worker/process/supervise"
)

func main() { os.Exit(supervise.Supervise(os.Args[1:])) }
