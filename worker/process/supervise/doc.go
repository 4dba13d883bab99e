// Package supervise is a process task's supervisor and the task directory
// it shares with the process runtime (package process), which writes the
// spec and reads what the supervisor records.
//
// A supervisor is one small process per task, in a session of its own so
// it outlives the agent: it starts the task, keeps its log, forwards stops
// and records how the task ended. It depends on the standard library only,
// so it builds into a small program of its own, shoal-supervise (Binary),
// that starts in about 1 ms and stays at about 3 MiB resident, where shoal
// itself re-executed with SupervisorSubcommand (the fallback when
// shoal-supervise is not installed next to shoal) takes about 10 ms of CPU
// to start and about 20 MiB.
package supervise
