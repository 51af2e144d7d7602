package server

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/peer"

	"github.com/cabinvm/cabin/internal/caller"
)

// peerCreds records the kernel's word on who is at the other end of each
// unix-socket connection (SO_PEERCRED), so the services can check what a
// caller may do. It adds no encryption: the socket's permissions guard it.
type peerCreds struct{}

type authInfo struct {
	credentials.CommonAuthInfo
	// caller is made once per connection and shared by its calls, which
	// must not change it.
	caller *caller.Caller
}

func (authInfo) AuthType() string { return "peercred" }

func (peerCreds) ServerHandshake(conn net.Conn) (net.Conn, credentials.AuthInfo, error) {
	uc, ok := conn.(*net.UnixConn)
	if !ok {
		return nil, nil, errors.New("peercred: not a unix socket")
	}
	rc, err := uc.SyscallConn()
	if err != nil {
		return nil, nil, err
	}
	var cred *unix.Ucred
	var cerr error
	if err := rc.Control(func(fd uintptr) {
		cred, cerr = unix.GetsockoptUcred(int(fd), unix.SOL_SOCKET, unix.SO_PEERCRED)
	}); err != nil {
		return nil, nil, err
	}
	if cerr != nil {
		return nil, nil, fmt.Errorf("peercred: %w", cerr)
	}
	c := caller.Caller{UID: cred.Uid, GIDs: append([]uint32{cred.Gid}, groups(int(cred.Pid))...)}
	return conn, authInfo{CommonAuthInfo: credentials.CommonAuthInfo{SecurityLevel: credentials.NoSecurity}, caller: &c}, nil
}

// groups reads a process's supplementary groups.
func groups(pid int) []uint32 {
	f, err := os.Open("/proc/" + strconv.Itoa(pid) + "/status")
	if err != nil {
		return nil
	}
	defer f.Close()
	s := bufio.NewScanner(f)
	for s.Scan() {
		rest, ok := strings.CutPrefix(s.Text(), "Groups:")
		if !ok {
			continue
		}
		var out []uint32
		for _, g := range strings.Fields(rest) {
			if n, err := strconv.ParseUint(g, 10, 32); err == nil {
				out = append(out, uint32(n))
			}
		}
		return out
	}
	return nil
}

func (peerCreds) ClientHandshake(context.Context, string, net.Conn) (net.Conn, credentials.AuthInfo, error) {
	return nil, nil, errors.New("peercred: server side only")
}

func (peerCreds) Info() credentials.ProtocolInfo {
	return credentials.ProtocolInfo{SecurityProtocol: "peercred"}
}

func (c peerCreds) Clone() credentials.TransportCredentials { return c }

func (peerCreds) OverrideServerName(string) error { return nil }

// callerOf returns the identity of the client making the call in ctx, from
// its connection's credentials; nil when they are not peerCreds'.
func callerOf(ctx context.Context) *caller.Caller {
	p, ok := peer.FromContext(ctx)
	if !ok {
		return nil
	}
	if a, ok := p.AuthInfo.(authInfo); ok {
		return a.caller
	}
	return nil
}
