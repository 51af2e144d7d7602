// Command cabin is the command-line client of cabind, the cabin host daemon.
//
// It talks gRPC to cabind over a unix socket (--socket, else $CABIN_SOCKET,
// else /run/cabin/cabind.sock) and offers one verb per file:
//
//	cabin vm start NAME    start a VM and wait until its agent is up
//	cabin vm stop NAME     stop a VM
//	cabin vm list          list the VMs (a table, or --json)
//	cabin vm info NAME     show one VM (a table, or --json)
//	cabin vm logs NAME     print a VM's log
//	cabin exec NAME CMD    run a command in a VM, streams attached
//	cabin events           follow the daemon's events
//	cabin image build      build (or reuse) the guest kernel and initramfs
//
// --json output is protojson with the .proto field names and every field
// (so 64-bit numbers are strings and enums their names): vm list prints one
// array of vm_tools.concierge.ExtendedVmInfo, vm info one such object, and
// events one cabin.v1.Event per line.
//
// Errors are printed as "cabin: <message>" on standard error; the exit code
// is 1 for failures, 2 for usage errors, and for exec the remote process's
// own exit code.
package main

import (
	"context"
	"os"
)

func main() {
	os.Exit(run(context.Background(), os.Args[1:], os.Stdin, os.Stdout, os.Stderr, os.Getenv))
}
