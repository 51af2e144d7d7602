package readahead

import (
	"bytes"
	"context"
	"encoding/binary"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"sync/atomic"
	"syscall"
	"testing"
)

// spoolIn returns a SpoolDir in a temporary directory of VM directories,
// where only that of the VM "vm" exists, and that VM's spool directory.
func spoolIn(t *testing.T) (SpoolDir, string) {
	t.Helper()
	vms := t.TempDir()
	if err := os.Mkdir(filepath.Join(vms, "vm"), 0o700); err != nil {
		t.Fatal(err)
	}
	return func(owner, vm string) string {
		if owner != "o" {
			t.Errorf("spool asked for owner %q", owner)
		}
		return filepath.Join(vms, vm, "readahead")
	}, filepath.Join(vms, "vm", "readahead")
}

// spoolFiles lists the files in the spool directory.
func spoolFiles(t *testing.T, dir string) []string {
	t.Helper()
	entries, err := os.ReadDir(dir)
	if err != nil && !os.IsNotExist(err) {
		t.Fatal(err)
	}
	var out []string
	for _, e := range entries {
		out = append(out, e.Name())
	}
	return out
}

// spooled waits until the spool file of the init of container c holds
// size bytes: the reply read ahead is in.
func spooled(t *testing.T, dir string, size int64) {
	t.Helper()
	path := filepath.Join(dir, spoolName(key{container: "c", exec: "c"}))
	eventually(t, func() (bool, string) {
		st, err := os.Stat(path)
		return err == nil && st.Size() == size, fmt.Sprintf("spool %s: %v, %v; want %d bytes", path, st, err, size)
	})
}

// dying is an agent a cabind about to die calls through: once dead, a
// call it has not yet made never reaches the agent, as one on a closed
// connection would not.
type dying struct {
	a    *agent
	dead atomic.Bool
}

func (d *dying) invoke(ctx context.Context, req []byte) (Reply, error) {
	if d.dead.Load() {
		<-ctx.Done()
		return Reply{}, ctx.Err()
	}
	return d.a.invoke(ctx, req)
}

// A cabind that dies leaves what it read ahead, and the reply that came
// after, to the next: a client reading on gets every byte once, in
// order. The file goes with the stream's end.
func TestSpoolOutlivesCabind(t *testing.T) {
	spool, dir := spoolIn(t)
	a := newAgent()
	want := pattern(700 << 10)
	a.write("c/c", want, false)
	first := New(8, spool)
	var got []byte
	for range 3 {
		b, err := read(t.Context(), first, a, "c", "", 32<<10)
		if err != nil {
			t.Fatal(err)
		}
		got = append(got, b...)
	}
	// The first reply (FetchLen) is three quarters taken; the next is in.
	spooled(t, dir, headerLen+2*FetchLen)
	if files := spoolFiles(t, dir); len(files) != 1 {
		t.Fatalf("spool files %q, want one", files)
	}
	// first is dead from here on: a new cabind reads.
	next := New(8, spool)
	a.write("c/c", nil, true)
	got = append(got, readAll(t, next, a, "c", "", 32<<10)...)
	if !bytes.Equal(got, want) {
		i := 0
		for i < min(len(got), len(want)) && got[i] == want[i] {
			i++
		}
		t.Fatalf("read %d bytes across the restart, want %d; they part at %d", len(got), len(want), i)
	}
	if files := spoolFiles(t, dir); len(files) != 0 {
		t.Fatalf("spool files %q left after the end", files)
	}
}

// Forget removes the spools an earlier cabind left for a container's
// processes, or one exec's: a process made anew under the id reads only
// its own output. Other processes keep theirs.
func TestSpoolForget(t *testing.T) {
	spool, dir := spoolIn(t)
	a := newAgent()
	for _, p := range []string{"c/c", "c/x", "c/y"} {
		a.write(p, []byte(p+" old output"), false)
	}
	first, calls := New(8, spool), &dying{a: a}
	for _, exec := range []string{"", "x", "y"} {
		if _, err := readWith(t.Context(), first, calls.invoke, "c", exec, 2); err != nil {
			t.Fatal(err)
		}
	}
	calls.dead.Store(true)
	if files := spoolFiles(t, dir); len(files) != 3 {
		t.Fatalf("spool files %q, want three", files)
	}
	next := New(8, spool)
	next.Forget("o", "vm", "c", "x")
	a.replace("c/x")
	a.write("c/x", []byte("new x"), true)
	if got := readAll(t, next, a, "c", "x", 100); string(got) != "new x" {
		t.Fatalf("new exec x read %q, want %q", got, "new x")
	}
	a.write("c/y", nil, true)
	if got := readAll(t, next, a, "c", "y", 100); string(got) != "y old output" {
		t.Fatalf("exec y read %q after x was forgotten, want %q", got, "y old output")
	}
	next.Forget("o", "vm", "c", "")
	if files := spoolFiles(t, dir); len(files) != 0 {
		t.Fatalf("spool files %q after the container was forgotten", files)
	}
	a.replace("c/c")
	a.write("c/c", []byte("new init"), true)
	if got := readAll(t, New(8, spool), a, "c", "", 100); string(got) != "new init" {
		t.Fatalf("new init read %q, want %q", got, "new init")
	}
}

// Without a place for its spool (no VM directory, a symbolic link where
// the file goes, a full disk) a stream is read ahead all the same, and
// nothing is written where it should not be.
func TestSpoolUnwritable(t *testing.T) {
	want := pattern(300 << 10)
	check := func(t *testing.T, spool SpoolDir) {
		t.Helper()
		a := newAgent()
		a.write("c/c", want, true)
		if got := readAll(t, New(8, spool), a, "c", "", 32<<10); !bytes.Equal(got, want) {
			t.Fatalf("read %d bytes, want %d the same", len(got), len(want))
		}
	}
	t.Run("no VM directory", func(t *testing.T) {
		gone := filepath.Join(t.TempDir(), "gone", "readahead")
		check(t, func(string, string) string { return gone })
		if _, err := os.Lstat(filepath.Dir(gone)); !os.IsNotExist(err) {
			t.Fatalf("the VM's directory was made: %v", err)
		}
	})
	t.Run("a link as the file", func(t *testing.T) {
		spool, dir := spoolIn(t)
		target := filepath.Join(t.TempDir(), "target")
		if err := os.WriteFile(target, []byte("keep"), 0o600); err != nil {
			t.Fatal(err)
		}
		if err := os.Mkdir(dir, 0o700); err != nil {
			t.Fatal(err)
		}
		if err := os.Symlink(target, filepath.Join(dir, spoolName(key{owner: "o", vm: "vm", container: "c", exec: "c"}))); err != nil {
			t.Fatal(err)
		}
		check(t, spool)
		if b, err := os.ReadFile(target); err != nil || string(b) != "keep" {
			t.Fatalf("the link's target holds %q, %v", b, err)
		}
	})
	t.Run("a full disk", func(t *testing.T) {
		if os.Geteuid() != 0 {
			t.Skip("mounting a small tmpfs needs root")
		}
		spool, dir := spoolIn(t)
		vmDir := filepath.Dir(dir)
		if err := syscall.Mount("tmpfs", vmDir, "tmpfs", 0, "size=64k,mode=0700"); err != nil {
			t.Skipf("mount tmpfs: %v", err)
		}
		t.Cleanup(func() { syscall.Unmount(vmDir, syscall.MNT_DETACH) })
		check(t, spool)
		if files := spoolFiles(t, dir); len(files) != 0 {
			t.Fatalf("spool files %q left", files)
		}
	})
}

// A spool file that is not what cabind writes (a header before itself
// or past the end, more than cabind reads ahead) gives back nothing.
func TestSpoolLoadRefuses(t *testing.T) {
	head := func(h uint64, data int) []byte {
		b := binary.LittleEndian.AppendUint64(nil, h)
		return append(b, pattern(data)...)
	}
	for name, c := range map[string]struct {
		file []byte
		want []byte
		err  bool
	}{
		"empty":          {nil, nil, false},
		"header only":    {head(headerLen, 0), nil, false},
		"all taken":      {head(headerLen+5, 5), nil, false},
		"head too small": {head(3, 10), nil, false},
		"head past end":  {head(1<<40, 10), nil, false},
		"short header":   {[]byte{1, 2, 3}, nil, false},
		"some unread":    {head(headerLen+2, 5), pattern(5)[2:], false},
		"too much":       {head(headerLen, maxSpool+1), nil, true},
	} {
		t.Run(name, func(t *testing.T) {
			dir := t.TempDir()
			if err := os.WriteFile(filepath.Join(dir, "s"), c.file, 0o600); err != nil {
				t.Fatal(err)
			}
			sp, left, err := openSpool(dir, "s")
			if c.err {
				if err == nil {
					t.Fatal("opened")
				}
				if _, err := os.Lstat(filepath.Join(dir, "s")); !os.IsNotExist(err) {
					t.Fatalf("a refused spool stays: %v", err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			defer sp.remove()
			if !bytes.Equal(left, c.want) {
				t.Fatalf("left %q, want %q", left, c.want)
			}
		})
	}
}

// FuzzSpool loads any file as a spool, then appends and takes: what it
// gives back after a reload is what was appended and not taken.
func FuzzSpool(f *testing.F) {
	f.Add(binary.LittleEndian.AppendUint64(nil, headerLen+1), []byte("abc"), uint8(1))
	f.Add([]byte{}, []byte("xyz"), uint8(3))
	f.Fuzz(func(t *testing.T, file, more []byte, n uint8) {
		dir := t.TempDir()
		if err := os.WriteFile(filepath.Join(dir, "s"), file, 0o600); err != nil {
			t.Fatal(err)
		}
		sp, left, err := openSpool(dir, "s")
		if err != nil {
			return
		}
		if len(left) > maxSpool {
			t.Fatalf("gave back %d bytes", len(left))
		}
		want := slices.Concat(left, more)
		take := min(int(n), len(want))
		if err := sp.append(more); err != nil {
			t.Fatal(err)
		}
		if err := sp.take(take); err != nil {
			t.Fatal(err)
		}
		sp.f.Close()
		_, again, err := openSpool(dir, "s")
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(again, want[take:]) {
			t.Fatalf("reloaded %q, want %q", again, want[take:])
		}
	})
}

// ForgetVM drops every stream of the VM, in memory and in its spools,
// and no other VM's: a VM that starts anew or is gone has new processes
// or none.
func TestForgetVM(t *testing.T) {
	spool, dir := spoolIn(t)
	a := newAgent()
	a.write("c/c", []byte("old init"), false)
	a.write("c/x", []byte("old exec"), false)
	s := New(8, spool)
	for _, exec := range []string{"", "x"} {
		if _, err := read(t.Context(), s, a, "c", exec, 2); err != nil {
			t.Fatal(err)
		}
	}
	if err := s.ForgetVM("o", "other"); err != nil || s.len() != 2 {
		t.Fatalf("another VM's ForgetVM: %v, and %d streams left, want 2", err, s.len())
	}
	if err := s.ForgetVM("o", "vm"); err != nil {
		t.Fatal(err)
	}
	if s.len() != 0 {
		t.Fatalf("%d streams after ForgetVM", s.len())
	}
	if _, err := os.Lstat(dir); !os.IsNotExist(err) {
		t.Fatalf("the VM's spools after ForgetVM: %v", err)
	}
	a.replace("c/c")
	a.write("c/c", []byte("new"), true)
	if got := readAll(t, s, a, "c", "", 100); string(got) != "new" {
		t.Fatalf("the VM's new init read %q, want %q", got, "new")
	}
}

// A spool removed after its file was replaced (a stream made anew under
// the key) leaves the new file alone.
func TestSpoolRemoveKeepsItsSuccessor(t *testing.T) {
	dir := t.TempDir()
	old, _, err := openSpool(dir, "s")
	if err != nil {
		t.Fatal(err)
	}
	if err := os.Remove(filepath.Join(dir, "s")); err != nil {
		t.Fatal(err)
	}
	next, _, err := openSpool(dir, "s")
	if err != nil {
		t.Fatal(err)
	}
	defer next.remove()
	old.remove()
	if _, err := os.Lstat(filepath.Join(dir, "s")); err != nil {
		t.Fatalf("the new stream's spool went with the old one: %v", err)
	}
}
