//go:build !linux && !darwin

package main

import "os"

// terminalWidth returns 0: the width is unknown on this platform.
func terminalWidth(*os.File) int { return 0 }
