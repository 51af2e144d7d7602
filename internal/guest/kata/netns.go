package kata

import (
	"fmt"
	"os"

	specs "github.com/opencontainers/runtime-spec/specs-go"
	"golang.org/x/sys/unix"

	"github.com/cabinvm/cabin/internal/errdefs"
)

// agentNetns names the agent's own network namespace, the VM's: the one
// its network calls configure. The calling thread's, not /proc/self's
// (the main thread's): a thread a goroutine locked and left in another
// namespace may be the main one, which Go parks rather than ends; every
// thread that runs goroutines is in the agent's.
const agentNetns = "/proc/thread-self/ns/net"

// nsGetNSType is NS_GET_NSTYPE (linux/nsfs.h), which x/sys lacks.
const nsGetNSType = 0xb703

// shareNetwork decides a container's network, in place: a spec without
// a network namespace shares the VM's, as Kata's runtime asks for by
// leaving it out (its clients' pods use the network the agent's network
// calls set up), and so does one whose namespace's path names the
// agent's own, which is then left out too; a network namespace without a
// path is a new one, with loopback only, as before; any other path must
// name a network namespace in the guest (another container's), or it is
// InvalidArgument rather than a failure deep in the runtime. It returns
// whether the container shares the VM's network.
func shareNetwork(field string, spec *specs.Spec) (bool, error) {
	if spec.Linux == nil {
		return true, nil
	}
	share := true
	var keep []specs.LinuxNamespace
	for i, ns := range spec.Linux.Namespaces {
		if ns.Type == specs.NetworkNamespace {
			if ns.Path == "" {
				share = false
			} else {
				same, err := isAgentNetns(ns.Path)
				if err != nil {
					return false, errdefs.InvalidArgument(fmt.Sprintf("%s.Namespaces[%d].Path", field, i), err.Error())
				}
				if same {
					continue
				}
				share = false
			}
		}
		keep = append(keep, ns)
	}
	spec.Linux.Namespaces = keep
	return share, nil
}

// isAgentNetns tells whether path is the agent's network namespace, and
// fails if it is no network namespace at all.
func isAgentNetns(path string) (bool, error) {
	f, err := os.Open(path)
	if err != nil {
		return false, fmt.Errorf("%q: not a network namespace in the guest: %v", path, err)
	}
	defer f.Close()
	t, err := unix.IoctlRetInt(int(f.Fd()), nsGetNSType)
	if err != nil || t != unix.CLONE_NEWNET {
		return false, fmt.Errorf("%q is not a network namespace", path)
	}
	var have, agent unix.Stat_t
	if err := unix.Fstat(int(f.Fd()), &have); err != nil {
		return false, fmt.Errorf("%q: %v", path, err)
	}
	if err := unix.Stat(agentNetns, &agent); err != nil {
		return false, fmt.Errorf("the agent's own network namespace: %v", err)
	}
	return have.Dev == agent.Dev && have.Ino == agent.Ino, nil
}
