package container

import "github.com/opencontainers/runc/libcontainer"

// InitArg is the argument libcontainer re-executes the runtime with to
// become a container's init or an exec'd process ("/proc/self/exe init").
const InitArg = "init"

// Init is the runtime's side of that re-execution: it sets up the
// container from inside and execs the process; it never returns. Only a
// binary that imports libcontainer/nsenter may call it: nsenter's C
// constructor joins or creates the namespaces before the Go runtime
// starts, which Go cannot do once it has threads.
func Init() {
	libcontainer.Init()
}
