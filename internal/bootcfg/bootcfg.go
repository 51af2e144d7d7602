// Package bootcfg is the contract between the host and a booting guest: the
// kernel parameters cabind passes to cabin-agent, and where the guest image
// puts the files the agent looks for. Parameters are typed and checked on
// both ends, so no kernel argument is ever built from unchecked input.
package bootcfg

import (
	"fmt"
	"strings"
)

// Paths inside the guest initramfs.
const (
	// Init is the agent binary, run by the kernel as PID 1.
	Init = "/init"
	// Busybox is busybox-static; its applets are linked in BusyboxBinDir.
	Busybox = "/bin/busybox"
	// BusyboxBinDir is where the image links busybox's applets.
	BusyboxBinDir = "/bin"
	// ModulesDir holds the kernel modules the image carries.
	ModulesDir = "/lib/modules"
	// BootModules lists, one path per line relative to ModulesDir and in
	// load order (dependencies first), the modules the agent loads before it
	// serves: those it needs to reach the host.
	BootModules = "/etc/cabin/modules.boot"
	// LateModules lists, like BootModules, the modules the agent loads once
	// it serves (filesystems, block devices, ...).
	LateModules = "/etc/cabin/modules.late"
	// Zoneinfo holds the time zone data; Localtime links into it.
	Zoneinfo  = "/usr/share/zoneinfo"
	Localtime = "/etc/localtime"
	// RuntimeBinary is cabin-runtime, the static libcontainer front end
	// the agent runs to create and manage OCI containers (see
	// docs/containers.md). It is a program of its own so that the agent,
	// which stays in memory for the VM's life, does not carry libcontainer.
	RuntimeBinary = "/usr/bin/cabin-runtime"
)

// RootfsTag is the 9p mount tag under which cabind shares, read-only, the
// container root filesystems it builds (one directory each, such as
// "busybox") with every VM. A client mounts it through a Kata Storage
// (driver "9p", source RootfsTag).
const RootfsTag = "cabinRootfs"

// RootfsBusybox is the busybox root filesystem's directory in the
// RootfsTag share: busybox, its applets linked in bin/, etc/passwd and
// etc/group, and empty mount points (dev, proc, sys, tmp, root, run).
const RootfsBusybox = "busybox"

// The agent's virtio-serial ports, found by name under
// /sys/class/virtio-ports. AgentPort carries a yamux session (gRPC
// services, streams both ways); RPCPort carries unary calls to the agent,
// framed by package unary, kept apart because a call there costs the guest
// far less than one through the session.
const (
	AgentPort = "cabin.agent"
	RPCPort   = "cabin.rpc"
)

// Mode selects what the agent does with its channel.
type Mode string

const (
	// ModeServe is the normal mode: serve gRPC over the channel.
	ModeServe Mode = ""
	// ModeEcho echoes raw bytes on both ports: the baseline the
	// benchmarks measure RPC latency against.
	ModeEcho Mode = "echo"
)

// Params are what cabind tells the agent on the kernel command line.
type Params struct {
	// Hostname is the guest's host name, a DNS label (see Hostname).
	Hostname string
	// Mode is ModeServe or ModeEcho.
	Mode Mode
	// Debug turns on the agent's debug logging.
	Debug bool
}

const (
	keyHostname = "cabin.hostname"
	keyMode     = "cabin.mode"
	keyDebug    = "cabin.debug"
)

// Args checks p and returns it as kernel arguments.
func (p Params) Args() ([]string, error) {
	if err := p.validate(); err != nil {
		return nil, err
	}
	var args []string
	if p.Hostname != "" {
		args = append(args, keyHostname+"="+p.Hostname)
	}
	if p.Mode != ModeServe {
		args = append(args, keyMode+"="+string(p.Mode))
	}
	if p.Debug {
		args = append(args, keyDebug+"=1")
	}
	return args, nil
}

func (p Params) validate() error {
	if p.Hostname != "" && !isLabel(p.Hostname) {
		return fmt.Errorf("hostname %q: not a DNS label", p.Hostname)
	}
	switch p.Mode {
	case ModeServe, ModeEcho:
	default:
		return fmt.Errorf("mode %q: unknown", p.Mode)
	}
	return nil
}

// Parse reads Params from a kernel command line (/proc/cmdline). Words that
// are not cabin's are ignored; a cabin parameter with a bad value is an error.
func Parse(cmdline string) (Params, error) {
	var p Params
	for _, word := range strings.Fields(cmdline) {
		key, value, _ := strings.Cut(word, "=")
		switch key {
		case keyHostname:
			p.Hostname = value
		case keyMode:
			p.Mode = Mode(value)
		case keyDebug:
			p.Debug = value == "1"
		}
	}
	if err := p.validate(); err != nil {
		return Params{}, err
	}
	return p, nil
}

// Hostname derives a host name from a VM name: lower case, characters outside
// [a-z0-9-] become '-', at most 63 characters, no '-' at either end; "cabin"
// when nothing is left.
func Hostname(vmName string) string {
	var b strings.Builder
	for _, r := range strings.ToLower(vmName) {
		if (r >= 'a' && r <= 'z') || (r >= '0' && r <= '9') {
			b.WriteRune(r)
		} else {
			b.WriteByte('-')
		}
		if b.Len() >= 63 {
			break
		}
	}
	h := strings.Trim(b.String(), "-")
	if h == "" {
		return "cabin"
	}
	return h
}

func isLabel(s string) bool {
	if len(s) == 0 || len(s) > 63 || s[0] == '-' || s[len(s)-1] == '-' {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if !(c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '-') {
			return false
		}
	}
	return true
}

// ShareTag is the virtio-9p mount tag of the host folder Maitred's
// Mount9P names by its port: the host shares folder n (1, 2, ...) with
// QEMU's -fsdev and a virtio-9p device tagged ShareTag(n), and the guest
// mounts that tag. (Upstream's port is a vsock port a 9p server listens
// on; cabin has no vsock, and QEMU serves the folder itself.) At most
// 31 bytes, QEMU's limit for a tag, for any n.
func ShareTag(n uint32) string { return fmt.Sprintf("cabinShare%d", n) }
