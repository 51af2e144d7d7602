package kata

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"

	specs "github.com/opencontainers/runtime-spec/specs-go"
	"golang.org/x/sys/unix"

	"github.com/cabinvm/cabin/internal/errdefs"
)

// AnnotationUser names the user a container's process runs as the way
// Docker's --user and an image's config do: NAME, UID, NAME:GROUP,
// UID:GID (and mixes). The agent resolves it against the container's own
// /etc/passwd and /etc/group once its root is mounted, as Docker resolves
// it against the image's, and sets the process's uid, gid and
// supplementary groups, and HOME when the spec's environment has none.
// The host cannot: the image's files are in the guest.
const AnnotationUser = "io.cabinvm.user"

// maxUserFile bounds what is read of a container's /etc/passwd or
// /etc/group.
const maxUserFile = 4 << 20

// execUser is a resolved user.
type execUser struct {
	uid, gid uint32
	sgids    []uint32
	home     string
}

// resolveUser applies spec's AnnotationUser, if any, to its process.
func resolveUser(spec *specs.Spec) error {
	v, ok := spec.Annotations[AnnotationUser]
	if !ok {
		return nil
	}
	const field = "OCI.Annotations[" + AnnotationUser + "]"
	if !filepath.IsAbs(spec.Root.Path) {
		return errdefs.InvalidArgument("OCI.Root.Path", fmt.Sprintf("%q: a user name needs an absolute root", spec.Root.Path))
	}
	return applyUser(field, v, spec.Root.Path, spec.Process)
}

// resolveExecUser applies an exec'd process's User.Username (NAME,
// NAME:GROUP, ...: what AnnotationUser takes), if any, to it: resolved
// against the container's root as its init (pid) sees it, so the files
// are the container's own, whatever it has mounted or changed since.
// Kata passes the name on for Windows only; on Linux it was ignored.
func resolveExecUser(pid int, proc *specs.Process) error {
	v := proc.User.Username
	if v == "" {
		return nil
	}
	proc.User.Username = ""
	return applyUser("process.User.Username", v, "/proc/"+strconv.Itoa(pid)+"/root", proc)
}

// applyUser resolves the user v names (field's value) against the
// /etc/passwd and /etc/group below root, and sets proc's uid, gid and
// supplementary groups, and HOME when its environment has none.
func applyUser(field, v, root string, proc *specs.Process) error {
	fd, err := unix.Open(root, unix.O_PATH|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("%s: open root %s: %w", field, root, err)
	}
	defer unix.Close(fd)
	passwd, err := readInRoot(fd, "etc/passwd")
	if err != nil {
		return fmt.Errorf("%s: %w", field, err)
	}
	group, err := readInRoot(fd, "etc/group")
	if err != nil {
		return fmt.Errorf("%s: %w", field, err)
	}
	u, err := lookupUser(field, v, passwd, group)
	if err != nil {
		return err
	}
	proc.User.UID, proc.User.GID = u.uid, u.gid
	proc.User.AdditionalGids = u.sgids
	if !slices.ContainsFunc(proc.Env, func(e string) bool { return strings.HasPrefix(e, "HOME=") }) {
		proc.Env = append(proc.Env, "HOME="+u.home)
	}
	return nil
}

// readInRoot reads name below root as the container would see it:
// symbolic links resolved inside root, never out of it. A missing file
// reads as empty, as Docker takes it.
func readInRoot(root int, name string) ([]byte, error) {
	fd, err := unix.Openat2(root, name, &unix.OpenHow{
		Flags:   unix.O_RDONLY | unix.O_CLOEXEC | unix.O_NOCTTY | unix.O_NONBLOCK,
		Resolve: unix.RESOLVE_IN_ROOT | unix.RESOLVE_NO_MAGICLINKS,
	})
	if errors.Is(err, unix.ENOENT) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("open %s in the container's root: %w", name, err)
	}
	f := os.NewFile(uintptr(fd), name)
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return nil, err
	}
	if !st.Mode().IsRegular() {
		return nil, errdefs.InvalidArgument("OCI.Root", fmt.Sprintf("%s in the container's root is not a regular file", name))
	}
	b, err := io.ReadAll(io.LimitReader(f, maxUserFile+1))
	if err != nil {
		return nil, fmt.Errorf("read %s in the container's root: %w", name, err)
	}
	if len(b) > maxUserFile {
		return nil, errdefs.InvalidArgument("OCI.Root", fmt.Sprintf("%s in the container's root is over %d bytes", name, maxUserFile))
	}
	return b, nil
}

// lookupUser resolves spec (NAME|UID[:GROUP|GID]) against the passwd and
// group files' bytes as Docker (moby/sys/user GetExecUser) does: a name
// must be listed, a number need not be; the user's entry gives the
// primary group and home unless a group is named; without a named group
// the groups listing the user by name are its supplementary groups.
// Defaults are uid 0, gid 0, home "/".
func lookupUser(field, spec string, passwd, group []byte) (execUser, error) {
	userArg, groupArg, hasGroup := strings.Cut(spec, ":")
	if strings.ContainsAny(spec, "\x00\n") || (hasGroup && groupArg == "") || strings.Contains(groupArg, ":") {
		return execUser{}, errdefs.InvalidArgument(field, fmt.Sprintf("%q: want NAME, UID, NAME:GROUP or UID:GID", spec))
	}
	u := execUser{home: "/"}
	uid, uidErr := parseID(userArg)
	var name string
	found := false
	for _, f := range entries(passwd, 7) {
		id, err := parseID(f[2])
		if err != nil {
			continue
		}
		if (userArg == "" && id == 0) || (userArg != "" && f[0] == userArg) || (uidErr == nil && id == uid) {
			gid, err := parseID(f[3])
			if err != nil {
				continue
			}
			name, u.uid, u.gid, u.home, found = f[0], id, gid, f[5], true
			break
		}
	}
	if !found {
		switch {
		case userArg == "":
		case uidErr != nil:
			return execUser{}, errdefs.Errorf(errdefs.ErrNotFound, "%s: user %q: no such user in the container's /etc/passwd", field, userArg)
		default:
			u.uid = uid
		}
	}
	groups := entries(group, 4)
	if hasGroup {
		gid, err := parseID(groupArg)
		if err != nil {
			i := slices.IndexFunc(groups, func(g []string) bool { return g[0] == groupArg })
			if i < 0 {
				return execUser{}, errdefs.Errorf(errdefs.ErrNotFound, "%s: group %q: no such group in the container's /etc/group", field, groupArg)
			}
			if gid, err = parseID(groups[i][2]); err != nil {
				return execUser{}, errdefs.InvalidArgument(field, fmt.Sprintf("group %q: bad gid %q in the container's /etc/group", groupArg, groups[i][2]))
			}
		}
		u.gid = gid
		return u, nil
	}
	if name == "" {
		return u, nil
	}
	for _, g := range groups {
		gid, err := parseID(g[2])
		if err != nil || slices.Contains(u.sgids, gid) {
			continue
		}
		if slices.Contains(strings.Split(g[3], ","), name) {
			u.sgids = append(u.sgids, gid)
		}
	}
	return u, nil
}

// parseID parses a uid or gid: a decimal below 2^32-1 (which is -1).
func parseID(s string) (uint32, error) {
	n, err := strconv.ParseUint(s, 10, 32)
	if err != nil || n == 1<<32-1 {
		return 0, fmt.Errorf("%q is not an id", s)
	}
	return uint32(n), nil
}

// entries splits a passwd or group file into entries of at least n
// colon-separated fields, skipping comments, blank and short lines.
func entries(b []byte, n int) [][]string {
	var out [][]string
	sc := bufio.NewScanner(bytes.NewReader(b))
	sc.Buffer(nil, maxUserFile)
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		if line == "" || line[0] == '#' {
			continue
		}
		f := strings.Split(line, ":")
		if len(f) < n {
			continue
		}
		out = append(out, f)
	}
	return out
}
