// Command conformance-task is the task program of the runtime conformance
// suite (see package taskprog), built statically into the image the
// Docker runtime's conformance tests run.
package main

import (
	"os"

	"github.com/shoal-cluster/shoal/worker/runtimetest/taskprog"
)

func main() { os.Exit(taskprog.Main(os.Args[1:])) }
