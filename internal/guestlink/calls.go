package guestlink

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"strconv"
	"strings"

	execv1 "github.com/cabinvm/cabin/api/cabin/exec/v1"
	"github.com/cabinvm/cabin/api/vmtools"
	"github.com/cabinvm/cabin/internal/errdefs"
	"github.com/cabinvm/cabin/internal/vmm"
)

var (
	_ vmm.GuestSuspender = (*Link)(nil)
	_ vmm.GuestKernel    = (*Link)(nil)
	_ vmm.GuestUsers     = (*Link)(nil)
)

// PrepareToSuspend tells the guest a suspend is coming
// (Maitred.PrepareToSuspend: it syncs its filesystems).
func (l *Link) PrepareToSuspend(ctx context.Context) error {
	m, err := l.maitred(ctx)
	if err != nil {
		return err
	}
	_, err = m.PrepareToSuspend(ctx, &vmtools.EmptyMessage{})
	return err
}

// KernelVersion is the guest's kernel release and version
// (Maitred.GetKernelVersion), joined by a space as upstream's
// GetVmEnterpriseReportingInfo reports them.
func (l *Link) KernelVersion(ctx context.Context) (string, error) {
	m, err := l.maitred(ctx)
	if err != nil {
		return "", err
	}
	r, err := m.GetKernelVersion(ctx, &vmtools.EmptyMessage{})
	if err != nil {
		return "", err
	}
	return r.GetKernelRelease() + " " + r.GetKernelVersion(), nil
}

// setUpUserScript makes or extends an account in the guest as
// upstream's maitred does with useradd and usermod: a passwd entry with
// a home directory and a group of the user's own (gid = uid when that is
// free), and membership of the groups asked for, which must exist.
// Debian's busybox-static has no adduser or addgroup, so it edits
// /etc/passwd and /etc/group itself, with awk; /etc/group is rewritten
// whole and renamed into place. Its arguments are $1 the user name, $2
// the uid, then the groups, all checked (vmm.User.Validate: no spaces,
// colons or shell syntax) and passed as arguments, never put into the
// script. It writes one line saying what it found and exits with the
// statuses below.
const setUpUserScript = `
user=$1 uid=$2
shift 2
umask 022
[ -e /etc/passwd ] || echo 'root:x:0:0:root:/root:/bin/sh' >/etc/passwd || exit 1
[ -e /etc/group ] || echo 'root:x:0:' >/etc/group || exit 1
other=$(awk -F: -v u="$uid" '$3 == u { print $1; exit }' /etc/passwd)
if [ -n "$other" ] && [ "$other" != "$user" ]; then echo "$other"; exit 10; fi
cur=$(awk -F: -v n="$user" '$1 == n { print $3; exit }' /etc/passwd)
if [ -n "$cur" ] && [ "$cur" != "$uid" ]; then echo "$cur"; exit 11; fi
for g; do
	awk -F: -v n="$g" '$1 == n { f = 1 } END { exit !f }' /etc/group || { echo "$g"; exit 12; }
done
if [ -z "$cur" ]; then
	gid=$(awk -F: -v n="$user" '$1 == n { print $3; exit }' /etc/group)
	if [ -z "$gid" ]; then
		gid=$uid
		while awk -F: -v g="$gid" '$3 == g { f = 1 } END { exit !f }' /etc/group; do gid=$((gid + 1)); done
		echo "$user:x:$gid:" >>/etc/group || exit 1
	fi
	mkdir -p "/home/$user" && chown "$uid:$gid" "/home/$user" || exit 1
	echo "$user:x:$uid:$gid::/home/$user:/bin/sh" >>/etc/passwd || exit 1
fi
if [ $# -gt 0 ]; then
	awk -F: -v OFS=: -v u="$user" -v gs=" $* " '
		index(gs, " " $1 " ") {
			n = split($4, m, ","); has = 0
			for (i = 1; i <= n; i++) if (m[i] == u) has = 1
			if (!has) $4 = ($4 == "" ? u : $4 "," u)
		}
		{ print }' /etc/group >/etc/group.cabin-new && mv /etc/group.cabin-new /etc/group || exit 1
fi
echo "$user"
`

// The script's exit statuses besides 0 and 1.
const (
	userUIDTaken    = 10
	userOtherUID    = 11
	userNoSuchGroup = 12
)

// SetUpUser makes u's account in the guest, or adds it to u's groups
// when it is there already (vmm.GuestUsers). The seed's Maitred has no
// SetUpUser (upstream's newer one does), so the account is made by a
// command run through the agent's exec service. u must be valid.
func (l *Link) SetUpUser(ctx context.Context, u vmm.User) (string, error) {
	if err := u.Validate(); err != nil {
		return "", err
	}
	argv := append([]string{"/bin/sh", "-c", setUpUserScript, "cabin-setupuser", u.Name, strconv.FormatUint(uint64(u.UID), 10)}, u.Groups...)
	out, errOut, code, err := l.execute(ctx, argv)
	if err != nil {
		return "", fmt.Errorf("set up user %s: %w", u.Name, err)
	}
	found := strings.TrimSpace(string(out))
	switch code {
	case 0:
		return u.Name, nil
	case userUIDTaken:
		return found, errdefs.Errorf(errdefs.ErrAlreadyExists, "another user with uid %d already exists: %s", u.UID, found)
	case userOtherUID:
		return u.Name, errdefs.Errorf(errdefs.ErrAlreadyExists, "user %s exists, but with a different uid: %s", u.Name, found)
	case userNoSuchGroup:
		return u.Name, errdefs.InvalidArgument("group_names", fmt.Sprintf("group %q does not exist in the guest", found))
	}
	return u.Name, fmt.Errorf("could not create user %s: exit status %d: %s", u.Name, code, lastLine(errOut))
}

// maxRunOutput bounds what run keeps of a command's output.
const maxRunOutput = 64 << 10

// execute runs argv in the guest through the agent's exec service and
// returns its output and exit code.
func (l *Link) execute(ctx context.Context, argv []string) (stdout, stderr []byte, code int, err error) {
	cc, err := l.Conn(ctx)
	if err != nil {
		return nil, nil, 0, err
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	stream, err := execv1.NewExecClient(cc).Exec(ctx)
	if err != nil {
		return nil, nil, 0, err
	}
	if err := stream.Send(&execv1.ExecRequest{Kind: &execv1.ExecRequest_Start{Start: &execv1.ExecStart{Argv: argv}}}); err != nil {
		return nil, nil, 0, err
	}
	if err := stream.CloseSend(); err != nil {
		return nil, nil, 0, err
	}
	var out, errOut bytes.Buffer
	for {
		r, err := stream.Recv()
		if errors.Is(err, io.EOF) {
			return nil, nil, 0, errors.New("exec ended without an exit status")
		}
		if err != nil {
			return nil, nil, 0, err
		}
		switch k := r.GetKind().(type) {
		case *execv1.ExecResponse_Stdout:
			if out.Len() < maxRunOutput {
				out.Write(k.Stdout)
			}
		case *execv1.ExecResponse_Stderr:
			if errOut.Len() < maxRunOutput {
				errOut.Write(k.Stderr)
			}
		case *execv1.ExecResponse_Exit:
			return out.Bytes(), errOut.Bytes(), int(k.Exit.GetCode()), nil
		}
	}
}

// lastLine is the last non-empty line of b, for an error message.
func lastLine(b []byte) string {
	lines := strings.Split(strings.TrimSpace(string(b)), "\n")
	return strings.TrimSpace(lines[len(lines)-1])
}
