package raftstore

// DiskDelayFileEnv names the environment variable that, in a build with
// the faultinject tag, points at a file holding a duration ("150ms"): each
// write to the Raft log sleeps that long first, standing for a slow disk.
// An absent or empty file means no delay. The fault-injection suite
// (cmd/shoal-chaos) writes and clears the file while the node runs.
const DiskDelayFileEnv = "SHOAL_FAULT_DISK_DELAY_FILE"
