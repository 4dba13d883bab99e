package taskprog

import (
	"syscall"
	"unsafe"
)

// kernelSigaction has room for the kernel's struct sigaction on 64-bit
// Linux (handler, flags, restorer, mask); the zero value is SIG_DFL.
type kernelSigaction [4]uint64

// defaultAction sets sig to its default action behind the Go runtime's
// back (signal.Reset keeps the runtime's handler installed) and returns
// a function that puts the runtime's handler back.
func defaultAction(sig syscall.Signal) (restore func(), err error) {
	var dfl, old kernelSigaction
	if _, _, e := syscall.RawSyscall6(syscall.SYS_RT_SIGACTION, uintptr(sig), uintptr(unsafe.Pointer(&dfl)), uintptr(unsafe.Pointer(&old)), 8, 0, 0); e != 0 {
		return nil, e
	}
	return func() {
		_, _, _ = syscall.RawSyscall6(syscall.SYS_RT_SIGACTION, uintptr(sig), uintptr(unsafe.Pointer(&old)), 0, 8, 0, 0)
	}, nil
}
