package execsvc

import (
	"errors"
	"fmt"
	"os/user"
	"regexp"
	"strconv"
	"strings"
	"syscall"

	"github.com/cabinvm/cabin/internal/errdefs"
)

// account is who a process runs as.
type account struct {
	uid, gid uint32
	groups   []uint32
	// name and home are empty for a uid the guest does not list.
	name, home string
}

// userWord is a user or group name as useradd takes it, or a number.
var userWord = regexp.MustCompile(`^[A-Za-z0-9_][A-Za-z0-9._-]{0,31}$`)

// checkUser checks the form of Spec.User: NAME, UID, NAME:GROUP or
// UID:GID.
func checkUser(s string) error {
	u, g, hasGroup := strings.Cut(s, ":")
	if !userWord.MatchString(u) || (hasGroup && !userWord.MatchString(g)) {
		return errdefs.InvalidArgument("user", fmt.Sprintf("%q is not NAME, UID, NAME:GROUP or UID:GID", s))
	}
	for _, w := range []string{u, g} {
		if _, ok := number(w); !ok && allDigits(w) {
			return errdefs.InvalidArgument("user", fmt.Sprintf("%q: id %s is out of range", s, w))
		}
	}
	return nil
}

func allDigits(s string) bool {
	return s != "" && strings.Trim(s, "0123456789") == ""
}

// lookupAccount resolves s (checked by checkUser) in the guest's
// /etc/passwd and /etc/group. A name not listed is an error; a uid not
// listed runs with gid 0 unless s gives one, as docker does.
func lookupAccount(s string) (account, error) {
	uspec, gspec, hasGroup := strings.Cut(s, ":")
	var a account
	if id, ok := number(uspec); ok && allDigits(uspec) {
		a.uid = id
		if u, err := user.LookupId(uspec); err == nil {
			if err := a.fill(u); err != nil {
				return account{}, err
			}
		}
	} else {
		u, err := user.Lookup(uspec)
		if err != nil {
			return account{}, lookupError("user", uspec, "/etc/passwd", err)
		}
		if err := a.fill(u); err != nil {
			return account{}, err
		}
	}
	if !hasGroup {
		return a, nil
	}
	if id, ok := number(gspec); ok && allDigits(gspec) {
		a.gid = id
	} else {
		g, err := user.LookupGroup(gspec)
		if err != nil {
			return account{}, lookupError("group", gspec, "/etc/group", err)
		}
		id, ok := number(g.Gid)
		if !ok {
			return account{}, fmt.Errorf("group %q: gid %q in /etc/group: %w", gspec, g.Gid, errdefs.ErrFailedPrecondition)
		}
		a.gid = id
	}
	// An explicit group replaces the user's own and its supplementary
	// ones, so that it is the process's only group.
	a.groups = nil
	return a, nil
}

// fill takes uid, gid, name, home and the supplementary groups from u.
func (a *account) fill(u *user.User) error {
	uid, ok1 := number(u.Uid)
	gid, ok2 := number(u.Gid)
	if !ok1 || !ok2 {
		return fmt.Errorf("user %q: ids %q:%q in /etc/passwd: %w", u.Username, u.Uid, u.Gid, errdefs.ErrFailedPrecondition)
	}
	a.uid, a.gid, a.name, a.home = uid, gid, u.Username, u.HomeDir
	ids, err := u.GroupIds()
	if err != nil {
		// No /etc/group, or the user is in none: only its own group.
		return nil
	}
	for _, s := range ids {
		if id, ok := number(s); ok && id != gid {
			a.groups = append(a.groups, id)
		}
	}
	return nil
}

func (a account) credential() *syscall.Credential {
	return &syscall.Credential{Uid: a.uid, Gid: a.gid, Groups: a.groups}
}

// environ is env with HOME, USER and LOGNAME set for a, unless set names
// them (the client's own values win).
func (a account) environ(env []string, set map[string]string) []string {
	for _, kv := range [][2]string{{"HOME", a.home}, {"USER", a.name}, {"LOGNAME", a.name}} {
		if _, ok := set[kv[0]]; ok || kv[1] == "" {
			continue
		}
		env = append(env, kv[0]+"="+kv[1])
	}
	return env
}

func number(s string) (uint32, bool) {
	n, err := strconv.ParseUint(s, 10, 32)
	// 4294967295 is (uid_t)-1, "no change" to setuid.
	return uint32(n), err == nil && n < 1<<32-1
}

func lookupError(what, name, file string, err error) error {
	var unknownUser user.UnknownUserError
	var unknownGroup user.UnknownGroupError
	if errors.As(err, &unknownUser) || errors.As(err, &unknownGroup) {
		return errdefs.Errorf(errdefs.ErrNotFound, "%s %q: not in the guest's %s", what, name, file)
	}
	return fmt.Errorf("%s %q: %w", what, name, err)
}

// StartError is a process that could not be started, with the exit code
// a shell gives that failure: 127 when the command was not found, 126 when
// it could not be run as asked (not executable, its working directory or
// its user missing).
type StartError struct {
	Code int
	Err  error
}

func (e *StartError) Error() string { return e.Err.Error() }
func (e *StartError) Unwrap() error { return e.Err }

// startFailedCode is the StartFailedTrailer value for err, or "".
func startFailedCode(err error) string {
	var se *StartError
	if errors.As(err, &se) {
		return strconv.Itoa(se.Code)
	}
	return ""
}
