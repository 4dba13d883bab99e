// Package taskprog is the program that the runtime conformance suite
// (package runtimetest) runs as its tasks, so that every runtime runs the
// same program: the process runtime as an executable on the node, the
// Docker runtime from an image holding a static build of it
// (worker/runtimetest/cmd/conformance-task). It needs nothing but its own
// binary: no shell, no libc.
//
// The first argument says what the task does:
//
//	sleep         print "ready", then run until SIGTERM and exit 0
//	exit CODE     exit with CODE at once
//	print OUT ERR write the line OUT to stdout and the line ERR to stderr
//	              (an empty one is not written), then exit 0
//	ignore-term   ignore SIGTERM, print "ready", then run until killed
//	late-trap MS  leave SIGTERM at its default action, print "starting",
//	              and only after MS milliseconds handle it: print "ready",
//	              run until SIGTERM and exit 0 (a program slow to set up
//	              its signal handling)
//	serve PORT    listen on TCP port PORT (on $SHOAL_HOST_IP:$PORT_<PORT>
//	              when the runtime chose the port, as the process runtime
//	              does), print "ready", greet every connection with
//	              "serving\n", and on a line "exit CODE" from one answer
//	              "bye\n" and exit with CODE; exit 0 on SIGTERM
//
// "ready" is printed once the task's signal handling is in place (and it
// listens), so a test can wait for it in the task's logs before it stops
// the task.
package taskprog

import (
	"bufio"
	"fmt"
	"net"
	"os"
	"os/signal"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// Main runs the program with args (without the program name) and returns
// its exit code.
func Main(args []string) int {
	if len(args) == 0 {
		return usage("no behaviour")
	}
	switch args[0] {
	case "sleep":
		term := make(chan os.Signal, 1)
		signal.Notify(term, syscall.SIGTERM)
		fmt.Println("ready")
		<-term
		fmt.Println("got SIGTERM")
		return 0
	case "exit":
		if len(args) != 2 {
			return usage("exit wants a code")
		}
		code, err := strconv.Atoi(args[1])
		if err != nil {
			return usage(err.Error())
		}
		return code
	case "print":
		if len(args) != 3 {
			return usage("print wants two lines")
		}
		if args[1] != "" {
			fmt.Fprintln(os.Stdout, args[1])
		}
		if args[2] != "" {
			fmt.Fprintln(os.Stderr, args[2])
		}
		return 0
	case "ignore-term":
		signal.Ignore(syscall.SIGTERM)
		fmt.Println("ready")
		for { // not select{}: with nothing else to wake it, Go calls that a deadlock
			time.Sleep(time.Hour)
		}
	case "late-trap":
		if len(args) != 2 {
			return usage("late-trap wants milliseconds")
		}
		ms, err := strconv.Atoi(args[1])
		if err != nil {
			return usage(err.Error())
		}
		term := make(chan os.Signal, 1)
		signal.Notify(term, syscall.SIGTERM)
		// The default action, as before a program installs its handler.
		restore, err := defaultAction(syscall.SIGTERM)
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			return 1
		}
		fmt.Println("starting")
		time.Sleep(time.Duration(ms) * time.Millisecond)
		restore()
		fmt.Println("ready")
		<-term
		fmt.Println("got SIGTERM")
		return 0
	case "serve":
		if len(args) != 2 {
			return usage("serve wants a port")
		}
		return serve(args[1])
	}
	return usage("unknown behaviour " + args[0])
}

func usage(why string) int {
	fmt.Fprintf(os.Stderr, "conformance task: %s (want sleep, exit CODE, print OUT ERR, ignore-term, late-trap MS or serve PORT)\n", why)
	return 2
}

func serve(target string) int {
	addr := ":" + target
	if port := os.Getenv("PORT_" + target); port != "" {
		addr = net.JoinHostPort(os.Getenv("SHOAL_HOST_IP"), port)
	}
	l, err := net.Listen("tcp", addr)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	term := make(chan os.Signal, 1)
	signal.Notify(term, syscall.SIGTERM)
	exit := make(chan int, 1)
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				if _, err := c.Write([]byte("serving\n")); err != nil {
					return
				}
				line, err := bufio.NewReader(c).ReadString('\n')
				if err != nil {
					return
				}
				if code, ok := strings.CutPrefix(strings.TrimSpace(line), "exit "); ok {
					if n, err := strconv.Atoi(code); err == nil {
						_, _ = c.Write([]byte("bye\n"))
						exit <- n
					}
				}
			}()
		}
	}()
	fmt.Println("ready")
	select {
	case <-term:
		fmt.Println("got SIGTERM")
		return 0
	case code := <-exit:
		return code
	}
}
