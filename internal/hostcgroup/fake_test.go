package hostcgroup

import (
	"errors"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"
	"testing"

	"golang.org/x/sys/unix"
)

// fakeFS is a directory laid out as a cgroup hierarchy, v1 or v2, that
// behaves as the kernel's for what this package does: a cgroup made has
// its interface files (on v2 the cpu ones only where the parent enabled
// cpu); a file that is not there cannot be written; values out of range
// are EINVAL; cgroup.procs moves a pid from cgroup to cgroup; rmdir is
// EBUSY while a cgroup has children or live processes; v2 refuses
// processes in a cgroup that shares a controller out, and the reverse.
// The files written are left in the directory for the tests to read.
type fakeFS struct {
	root string
	v2   bool

	mu sync.Mutex
	// procs is the cgroup directory each pid is in; the root's when
	// missing.
	procs map[int]string
	// dead lists the pids that exited: they count in no cgroup.
	dead map[int]bool
	// failMkdir, when set, is what every Mkdir fails with.
	failMkdir error
	// exitUnseen says the test's processes exit without the fake being
	// told (exit): Rmdir takes no process for live.
	exitUnseen bool
}

// newFake lays out a hierarchy's root in a fresh directory: on v2 with the
// cpu, memory and pids controllers available, and memory already enabled
// for the root's children (as systemd leaves it).
func newFake(t *testing.T, v2 bool) (*fakeFS, hierarchy) {
	t.Helper()
	f := &fakeFS{root: t.TempDir(), v2: v2, procs: map[int]string{}, dead: map[int]bool{}}
	files := map[string]string{procsFile: ""}
	if v2 {
		files[controllersFile] = "cpu memory pids"
		files[subtreeControlFile] = "memory"
	} else {
		files[sharesFile] = "1024"
		files[periodFile] = "100000"
		files[quotaFile] = "-1"
		files["tasks"] = ""
	}
	for name, content := range files {
		if err := os.WriteFile(filepath.Join(f.root, name), []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	return f, hierarchy{mount: f.root, v2: v2}
}

func pathErr(op, p string, err error) error { return &os.PathError{Op: op, Path: p, Err: err} }

func (f *fakeFS) Mkdir(dir string) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.failMkdir != nil {
		return pathErr("mkdir", dir, f.failMkdir)
	}
	if _, err := os.Stat(dir); err == nil {
		return nil
	}
	if err := os.Mkdir(dir, 0o755); err != nil {
		return err
	}
	files := map[string]string{procsFile: ""}
	if f.v2 {
		parent := f.read(filepath.Join(filepath.Dir(dir), subtreeControlFile))
		files[controllersFile] = parent
		files[subtreeControlFile] = ""
		if slices.Contains(strings.Fields(parent), "cpu") {
			files[weightFile] = "100"
			files[maxFile] = "max 100000"
		}
	} else {
		files[sharesFile] = "1024"
		files[periodFile] = "100000"
		files[quotaFile] = "-1"
		files["tasks"] = ""
		files["notify_on_release"] = "0"
	}
	for name, content := range files {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(content), 0o644); err != nil {
			return err
		}
	}
	return nil
}

func (f *fakeFS) Rmdir(dir string) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	entries, err := os.ReadDir(dir)
	if err != nil {
		if errors.Is(err, os.ErrNotExist) {
			return pathErr("rmdir", dir, unix.ENOENT)
		}
		return err
	}
	for _, e := range entries {
		if e.IsDir() {
			return pathErr("rmdir", dir, unix.EBUSY)
		}
	}
	if len(f.pidsIn(dir)) > 0 && !f.exitUnseen {
		return pathErr("rmdir", dir, unix.EBUSY)
	}
	return os.RemoveAll(dir)
}

func (f *fakeFS) WriteFile(file, data string) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if _, err := os.Stat(file); err != nil {
		return err
	}
	dir, name := filepath.Dir(file), filepath.Base(file)
	inval := pathErr("write", file, unix.EINVAL)
	switch name {
	case procsFile:
		pid, err := strconv.Atoi(data)
		if err != nil || pid <= 0 {
			return inval
		}
		if f.dead[pid] {
			return pathErr("write", file, unix.ESRCH)
		}
		if f.v2 && dir != f.root && f.read(filepath.Join(dir, subtreeControlFile)) != "" {
			return pathErr("write", file, unix.EBUSY)
		}
		f.procs[pid] = dir
		return nil
	case subtreeControlFile:
		c, ok := strings.CutPrefix(data, "+")
		if !ok || !slices.Contains(strings.Fields(f.read(filepath.Join(dir, controllersFile))), c) {
			return inval
		}
		if dir != f.root && len(f.pidsIn(dir)) > 0 {
			return pathErr("write", file, unix.EBUSY)
		}
		on := strings.Fields(f.read(file))
		if !slices.Contains(on, c) {
			on = append(on, c)
		}
		if err := os.WriteFile(file, []byte(strings.Join(on, " ")), 0o644); err != nil {
			return err
		}
		if c == "cpu" {
			entries, _ := os.ReadDir(dir)
			for _, e := range entries {
				if e.IsDir() {
					os.WriteFile(filepath.Join(dir, e.Name(), controllersFile), []byte(strings.Join(on, " ")), 0o644)
					os.WriteFile(filepath.Join(dir, e.Name(), weightFile), []byte("100"), 0o644)
					os.WriteFile(filepath.Join(dir, e.Name(), maxFile), []byte("max 100000"), 0o644)
				}
			}
		}
		return nil
	case sharesFile:
		if n, err := strconv.Atoi(data); err != nil || n < 2 {
			return inval
		}
	case weightFile:
		if n, err := strconv.Atoi(data); err != nil || n < 1 || n > 10000 {
			return inval
		}
	case quotaFile:
		if n, err := strconv.Atoi(data); err != nil || (n != -1 && n < 1000) {
			return inval
		}
	case periodFile:
		if n, err := strconv.Atoi(data); err != nil || n < 1000 {
			return inval
		}
	case maxFile:
		q, p, ok := strings.Cut(data, " ")
		if n, err := strconv.Atoi(p); !ok || err != nil || n < 1000 {
			return inval
		}
		if n, err := strconv.Atoi(q); q != "max" && (err != nil || n < 1000) {
			return inval
		}
	}
	return os.WriteFile(file, []byte(data), 0o644)
}

func (f *fakeFS) ReadFile(file string) (string, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if _, err := os.Stat(file); err != nil {
		return "", err
	}
	if filepath.Base(file) == procsFile {
		var lines []string
		for _, pid := range f.pidsIn(filepath.Dir(file)) {
			lines = append(lines, strconv.Itoa(pid)+"\n")
		}
		return strings.Join(lines, ""), nil
	}
	return f.read(file), nil
}

// read is file's content, "" when it cannot be read. Called with f.mu
// held.
func (f *fakeFS) read(file string) string {
	b, _ := os.ReadFile(file)
	return string(b)
}

// pidsIn lists the live pids in dir. Called with f.mu held.
func (f *fakeFS) pidsIn(dir string) []int {
	var out []int
	for pid, d := range f.procs {
		if d == dir && !f.dead[pid] {
			out = append(out, pid)
		}
	}
	sort.Ints(out)
	return out
}

// exit marks pid exited, as the kernel takes a process that exits out of
// its cgroup.
func (f *fakeFS) exit(pid int) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.dead[pid] = true
}

// cgroupOf is the cgroup pid is in, relative to the root ("/" for it).
func (f *fakeFS) cgroupOf(pid int) string {
	f.mu.Lock()
	defer f.mu.Unlock()
	d, ok := f.procs[pid]
	if !ok || f.dead[pid] {
		return "/"
	}
	rel, _ := filepath.Rel(f.root, d)
	return "/" + strings.TrimPrefix(rel, ".")
}

// file is the content of the file rel below the root; "<none>" when it is
// not there.
func (f *fakeFS) file(t *testing.T, rel string) string {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(f.root, rel))
	if errors.Is(err, os.ErrNotExist) {
		return "<none>"
	}
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// exists tells whether the cgroup rel is there.
func (f *fakeFS) exists(rel string) bool {
	st, err := os.Stat(filepath.Join(f.root, rel))
	return err == nil && st.IsDir()
}
