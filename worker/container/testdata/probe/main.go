// Command probe is the isolation tests' task program: it reports what a
// task sees from inside its container.
//
//	probe pids          prints the pids in /proc, one line
//	probe hostname      prints the hostname
//	probe cat FILE      prints FILE, or "missing" when it cannot be read
//	probe hog MIB       allocates and touches MIB MiB, then prints "survived"
//	probe write FILE    writes FILE, or says why it cannot
//	probe addrs         prints the network interfaces' addresses
//	probe id            prints the uid, gid and groups
package main

import (
	"fmt"
	"net"
	"os"
	"strconv"
	"strings"
)

func main() {
	if len(os.Args) < 2 {
		fmt.Fprintln(os.Stderr, "usage: probe pids|hostname|cat FILE|hog MIB|id")
		os.Exit(2)
	}
	switch os.Args[1] {
	case "pids":
		ents, _ := os.ReadDir("/proc")
		var pids []string
		for _, e := range ents {
			if _, err := strconv.Atoi(e.Name()); err == nil {
				pids = append(pids, e.Name())
			}
		}
		fmt.Println("pids:", strings.Join(pids, " "))
	case "hostname":
		h, _ := os.Hostname()
		fmt.Println("hostname:", h)
	case "cat":
		data, err := os.ReadFile(os.Args[2])
		if err != nil {
			fmt.Println("missing")
			return
		}
		fmt.Printf("content: %s\n", data)
	case "hog":
		n, _ := strconv.Atoi(os.Args[2])
		var keep [][]byte
		for i := 0; i < n; i++ {
			b := make([]byte, 1<<20)
			for j := 0; j < len(b); j += 4096 {
				b[j] = 1
			}
			keep = append(keep, b)
		}
		fmt.Println("survived", len(keep))
	case "write":
		if err := os.WriteFile(os.Args[2], []byte("written by the task"), 0o644); err != nil {
			fmt.Println("cannot write:", err)
			return
		}
		fmt.Println("wrote", os.Args[2])
	case "addrs":
		addrs, _ := net.InterfaceAddrs()
		var out []string
		for _, a := range addrs {
			out = append(out, a.String())
		}
		fmt.Println("addrs:", strings.Join(out, " "))
	case "id":
		groups, _ := os.Getgroups()
		fmt.Println("uid:", os.Getuid(), "gid:", os.Getgid(), "groups:", groups)
	default:
		os.Exit(2)
	}
}
