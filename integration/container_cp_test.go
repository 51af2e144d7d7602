package integration

import (
	"archive/tar"
	"bytes"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/cabinvm/cabin/api/kata"
)

// hostTree lists dir: name, and for files contents, for links targets.
func hostTree(t *testing.T, dir string) string {
	t.Helper()
	var out []string
	filepath.Walk(dir, func(p string, fi os.FileInfo, err error) error {
		if err != nil || p == dir {
			return err
		}
		rel, _ := filepath.Rel(dir, p)
		switch {
		case fi.Mode()&os.ModeSymlink != 0:
			l, _ := os.Readlink(p)
			out = append(out, rel+"->"+l)
		case fi.IsDir():
			out = append(out, rel+"/")
		default:
			b, _ := os.ReadFile(p)
			out = append(out, rel+"="+string(b))
		}
		return nil
	})
	sort.Strings(out)
	return strings.Join(out, " ")
}

// tarBytes is a tar stream of entries (name, type, body or link target).
func tarBytes(t *testing.T, entries ...[3]string) string {
	t.Helper()
	var b bytes.Buffer
	tw := tar.NewWriter(&b)
	for _, e := range entries {
		h := &tar.Header{Name: e[0], Typeflag: e[1][0], Mode: 0o644}
		switch h.Typeflag {
		case tar.TypeReg:
			h.Size = int64(len(e[2]))
		case tar.TypeSymlink, tar.TypeLink:
			h.Linkname = e[2]
		case tar.TypeDir:
			h.Mode = 0o755
		}
		if err := tw.WriteHeader(h); err != nil {
			t.Fatal(err)
		}
		if h.Typeflag == tar.TypeReg {
			tw.Write([]byte(e[2]))
		}
	}
	tw.Close()
	return b.String()
}

// TestContainerCopyDirs drives cabin cp of directory trees both ways on
// the shared VM, as docker cp's users would: into a new name, into a
// directory, a directory's contents, tar streams on stdin and stdout;
// then hostile archives and destinations, and a client killed mid-copy.
func TestContainerCopyDirs(t *testing.T) {
	e := needEnv(t)
	vm := e.shared.name
	const id = "it-cpdir"
	t.Cleanup(func() { cabinCLI(t, e, "rm", "-f", id) })
	if res := cabinCLI(t, e, "run", "-d", "--vm", vm, "--name", id, "busybox", "sleep", "100000"); res.code != 0 {
		t.Fatalf("run -d: %v", res)
	}
	in := func(script string) string {
		t.Helper()
		res := cabinCLI(t, e, "exec", id, "--", "sh", "-c", script)
		if res.code != 0 {
			t.Fatalf("exec %q: %v", script, res)
		}
		return res.stdout
	}

	host := t.TempDir()
	site := filepath.Join(host, "site")
	os.MkdirAll(filepath.Join(site, "sub"), 0o750)
	os.WriteFile(filepath.Join(site, "index.html"), []byte("<h1>hi</h1>"), 0o644)
	os.WriteFile(filepath.Join(site, "sub", "run"), []byte("#!/bin/sh\n"), 0o755)
	os.Chmod(filepath.Join(site, "sub", "run"), 0o4755)
	os.Symlink("/etc/passwd", filepath.Join(site, "link"))
	os.Chown(filepath.Join(site, "index.html"), 1234, 1234)

	t.Run("host to container", func(t *testing.T) {
		if res := cabinCLI(t, e, "cp", site, id+":/tmp/www"); res.code != 0 {
			t.Fatalf("cp DIR CTR:/new: %v", res)
		}
		got := in("cd /tmp/www && find . | sort | tr '\\n' ' '; stat -c '%a:%u' . index.html sub/run | tr '\\n' ' '; readlink link; cat index.html")
		want := ". ./index.html ./link ./sub ./sub/run 750:0 644:0 755:0 /etc/passwd\n<h1>hi</h1>"
		if got != want {
			t.Errorf("the tree in the container: %q, want %q (owned by its root, set-id cleared)", got, want)
		}
		// Into an existing directory: under its own name; then /. : its
		// contents, merged.
		if res := cabinCLI(t, e, "cp", site, id+":/tmp/www"); res.code != 0 {
			t.Fatalf("cp DIR CTR:/dir: %v", res)
		}
		os.WriteFile(filepath.Join(site, "added"), []byte("added"), 0o600)
		defer os.Remove(filepath.Join(site, "added"))
		if res := cabinCLI(t, e, "cp", site+"/.", id+":/tmp/www"); res.code != 0 {
			t.Fatalf("cp DIR/. CTR:/dir: %v", res)
		}
		if got := in("ls /tmp/www | tr '\\n' ' '; cat /tmp/www/site/index.html /tmp/www/added"); got != "added index.html link site sub <h1>hi</h1>added" {
			t.Errorf("after the copies into it: %q", got)
		}
		// -a keeps the owner.
		if res := cabinCLI(t, e, "cp", "-a", site, id+":/tmp/kept"); res.code != 0 {
			t.Fatalf("cp -a: %v", res)
		}
		if got := in("stat -c '%u:%g' /tmp/kept/index.html"); got != "1234:1234\n" {
			t.Errorf("cp -a: owner %q", got)
		}
		// A tar stream on stdin, into a directory.
		stream := tarBytes(t, [3]string{"raw/", "5"}, [3]string{"raw/f", "0", "from stdin"})
		if res := cabinCLIInput(t, e, stream, "cp", "-", id+":/tmp"); res.code != 0 {
			t.Fatalf("cp - CTR:/dir: %v", res)
		}
		if got := in("cat /tmp/raw/f"); got != "from stdin" {
			t.Errorf("cp -: %q", got)
		}
	})

	t.Run("container to host", func(t *testing.T) {
		out := filepath.Join(t.TempDir(), "out")
		if res := cabinCLI(t, e, "cp", id+":/tmp/www", out); res.code != 0 {
			t.Fatalf("cp CTR:/dir NEW: %v", res)
		}
		want := "added=added index.html=<h1>hi</h1> link->/etc/passwd site/ site/index.html=<h1>hi</h1> site/link->/etc/passwd site/sub/ site/sub/run=#!/bin/sh\n sub/ sub/run=#!/bin/sh\n"
		if got := hostTree(t, out); got != want {
			t.Errorf("the tree on the host:\n%s\nwant\n%s", got, want)
		}
		if fi, err := os.Stat(out); err != nil || fi.Mode().Perm() != 0o750 {
			t.Errorf("out: %v, %v", fi, err)
		}
		// Into an existing directory: under its name.
		if res := cabinCLI(t, e, "cp", id+":/tmp/raw", out); res.code != 0 {
			t.Fatalf("cp CTR:/dir DIR: %v", res)
		}
		if b, _ := os.ReadFile(filepath.Join(out, "raw", "f")); string(b) != "from stdin" {
			t.Errorf("raw/f: %q", b)
		}
		// - : a tar stream of a directory, a file's bytes.
		res := cabinCLI(t, e, "cp", id+":/tmp/raw", "-")
		tr := tar.NewReader(strings.NewReader(res.stdout))
		var names []string
		for {
			h, err := tr.Next()
			if err != nil {
				break
			}
			names = append(names, h.Name)
		}
		if res.code != 0 || strings.Join(names, " ") != "raw/ raw/f" {
			t.Errorf("cp CTR:/dir -: %v, entries %v", res.code, names)
		}
		if res := cabinCLI(t, e, "cp", id+":/tmp/raw/f", "-"); res.code != 0 || res.stdout != "from stdin" {
			t.Errorf("cp CTR:/file -: %v", res)
		}
	})

	t.Run("hostile", func(t *testing.T) {
		for name, stream := range map[string]string{
			"..":                       tarBytes(t, [3]string{"ok", "0", "x"}, [3]string{"../../etc/evil", "0", "x"}),
			"absolute":                 tarBytes(t, [3]string{"/etc/evil", "0", "x"}),
			"symlink then a file":      tarBytes(t, [3]string{"l", "2", "/etc"}, [3]string{"l/evil", "0", "x"}),
			"hard link to /etc/shadow": tarBytes(t, [3]string{"shadow", "1", "/etc/shadow"}),
			"hard link up":             tarBytes(t, [3]string{"shadow", "1", "../../etc/shadow"}),
			"device node":              tarBytes(t, [3]string{"mem", "3", ""}),
			"truncated":                tarBytes(t, [3]string{"big", "0", strings.Repeat("x", 100000)})[:30000],
		} {
			res := cabinCLIInput(t, e, stream, "cp", "-", id+":/tmp")
			if res.code != 1 || res.stderr == "" {
				t.Errorf("%s: %v; want refused", name, res)
			}
		}
		if got := in("ls -a /tmp | tr '\\n' ' '; ls /etc | grep -c evil || true"); got != ". .. kept raw www 0\n" {
			t.Errorf("left behind: %q", got)
		}
		// A symlink the container planted leads inside it, never out.
		in("ln -s / /tmp/up")
		if res := cabinCLI(t, e, "cp", id+":/tmp/up/../../../tmp/www/index.html", "-"); res.code != 0 || res.stdout != "<h1>hi</h1>" {
			t.Errorf("cp through the container's symlink: %v; want the container's own /tmp/www/index.html", res)
		}
		in("rm /tmp/up")
		// On the host: a symlink in the destination is not followed.
		elsewhere := t.TempDir()
		dst := filepath.Join(t.TempDir(), "www")
		os.Mkdir(dst, 0o755)
		os.Symlink(elsewhere, filepath.Join(dst, "sub"))
		if res := cabinCLI(t, e, "cp", id+":/tmp/www/.", dst); res.code != 1 || !strings.Contains(res.stderr, "sub") {
			t.Errorf("cp over a symlink on the host: %v; want refused naming it", res)
		}
		if got := hostTree(t, elsewhere); got != "" {
			t.Errorf("written through the host's symlink: %q", got)
		}
		if got := hostTree(t, dst); !strings.HasPrefix(got, "sub->") || strings.Contains(got, "index.html") {
			t.Errorf("a refused copy changed the destination: %q", got)
		}
	})

	t.Run("client killed mid-copy", func(t *testing.T) {
		cmd := exec.Command(filepath.Join(e.bin, "cabin"), "cp", "-", id+":/tmp")
		cmd.Env = append(os.Environ(), "CABIN_SOCKET="+e.socket)
		stdin, err := cmd.StdinPipe()
		if err != nil {
			t.Fatal(err)
		}
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		// Half of a large archive, then SIGKILL.
		stream := tarBytes(t, [3]string{"huge/", "5"}, [3]string{"huge/f", "0", strings.Repeat("y", 8<<20)})
		io.WriteString(stdin, stream[:1<<20])
		// The agent has begun once its staging directory shows.
		cpWait(t, func() bool { return strings.Contains(in("ls -a /tmp"), ".cabin-cp-") })
		cmd.Process.Kill()
		cmd.Wait()
		cpWait(t, func() bool { return !strings.Contains(in("ls -a /tmp"), ".cabin-cp-") })
		if got := in("ls /tmp | tr '\\n' ' '"); strings.Contains(got, "huge") {
			t.Errorf("a killed copy left %q", got)
		}
	})

	t.Run("bad input", func(t *testing.T) {
		for _, args := range [][]string{{"cp", site, id + ":rel"}, {"cp", "", id + ":/tmp"}, {"cp", "-", "-"}} {
			if res := cabinCLI(t, e, args...); res.code != 2 {
				t.Errorf("%q: %v; want a usage error", args, res)
			}
		}
		for _, args := range [][]string{
			{"cp", site, id + ":/bin/sh"},           // a directory onto a file
			{"cp", site, id + ":/tmp/nope/deeper/"}, // no such directory
			{"cp", filepath.Join(host, "nope"), id + ":/tmp"},
			{"cp", filepath.Join(site, "index.html") + "/.", id + ":/tmp"},
		} {
			if res := cabinCLI(t, e, args...); res.code != 1 || res.stderr == "" {
				t.Errorf("%q: %v; want refused", args, res)
			}
		}
	})
}

// cpWait polls cond until it holds, for at most two minutes.
func cpWait(t *testing.T, cond func() bool) {
	t.Helper()
	for deadline := time.Now().Add(2 * time.Minute); !cond(); time.Sleep(100 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("gave up waiting")
		}
	}
}

// TestImagesShareStaysMounted: the images share, mounted by the first
// container of an image in a VM, stays mounted once that container is
// gone; the next container uses the same mount.
func TestImagesShareStaysMounted(t *testing.T) {
	e := needEnv(t)
	vm := e.shared.name
	tarPath := filepath.Join(t.TempDir(), "img.tar")
	busyboxImageTar(t, tarPath)
	if res := cabinCLI(t, e, "image", "import", tarPath); res.code != 0 {
		t.Fatalf("cabin image import: %v", res)
	}
	mountID := func() string {
		for _, line := range strings.Split(mustExec(t, e, vm, "cat", "/proc/self/mountinfo"), "\n") {
			if f := strings.Fields(line); len(f) > 4 && f[4] == "/run/cabin/images" {
				return f[0]
			}
		}
		return ""
	}
	if res := cabinCLI(t, e, "run", "--rm", "--vm", vm, runImageRef, "true"); res.code != 0 {
		t.Fatalf("run: %v", res)
	}
	first := mountID()
	if first == "" {
		t.Fatal("the images share is not mounted once the container is gone")
	}
	if res := cabinCLI(t, e, "run", "--rm", "--vm", vm, runImageRef, "cat", "/etc/motd"); res.code != 0 || res.stdout != "from the image\n" {
		t.Fatalf("run: %v", res)
	}
	if again := mountID(); again != first {
		t.Errorf("the images share was mounted again (mount %s, was %s)", again, first)
	}
}

// TestUpdateStaysUpdated: a limit set by UpdateContainer stays through
// pause, resume and later updates of other limits: the runtime's state
// follows the update.
func TestUpdateStaysUpdated(t *testing.T) {
	e := needEnv(t)
	vm := e.shared.name
	const id = "it-update"
	t.Cleanup(func() { cabinCLI(t, e, "rm", "-f", id) })
	if res := cabinCLI(t, e, "run", "-d", "--vm", vm, "--name", id, "--memory", "128m", "busybox", "sleep", "100000"); res.code != 0 {
		t.Fatalf("run -d: %v", res)
	}
	agent := kata.NewAgentServiceClient(e.cc)
	ctx := toVM(testContext(t, 5*time.Minute), vm)
	update := func(r *kata.LinuxResources) {
		t.Helper()
		if _, err := agent.UpdateContainer(ctx, &kata.UpdateContainerRequest{ContainerId: id, Resources: r}); err != nil {
			t.Fatalf("UpdateContainer: %v", err)
		}
	}
	update(&kata.LinuxResources{Memory: &kata.LinuxMemory{Limit: 64 << 20}})
	if _, err := agent.PauseContainer(ctx, &kata.PauseContainerRequest{ContainerId: id}); err != nil {
		t.Fatal(err)
	}
	update(&kata.LinuxResources{Pids: &kata.LinuxPids{Limit: 42}})
	if _, err := agent.ResumeContainer(ctx, &kata.ResumeContainerRequest{ContainerId: id}); err != nil {
		t.Fatal(err)
	}
	update(&kata.LinuxResources{CPU: &kata.LinuxCPU{Shares: 512}})
	res := cabinCLI(t, e, "exec", id, "cat", "/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/pids.max")
	if res.code != 0 || res.stdout != "67108864\n42\n" {
		t.Errorf("limits after update, pause, update, resume, update: %v; want 64 MiB and 42", res)
	}
	if limit := mustStatLimit(t, ctx, agent, id); limit != 64<<20 {
		t.Errorf("StatsContainer's memory limit %d", limit)
	}
}

// TestContainerCopyQEMUKilled: QEMU killed while cabin cp streams a tree
// in and while it streams one out: each cp ends with exit 1 and a message,
// and the copy out leaves nothing at its destination.
func TestContainerCopyQEMUKilled(t *testing.T) {
	e := needEnv(t)
	const name = "cit-cpkill"
	vm := bootOwnVM(t, e, name)
	if res := cabinCLI(t, e, "run", "-d", "--vm", name, "--name", "it-cpdoomed", "busybox", "sh", "-c",
		"mkdir -p /tmp/big && head -c 33554432 /dev/zero > /tmp/big/zero && echo ready; sleep 600"); res.code != 0 {
		t.Fatalf("run -d: %v", res)
	}
	waitCLI(t, e, func(r cliResult) bool { return strings.Contains(r.stdout, "ready") }, "logs", "it-cpdoomed")
	// In: a stream that never ends until QEMU goes.
	in := exec.CommandContext(testContext(t, 2*time.Minute), filepath.Join(e.bin, "cabin"), "cp", "-", "it-cpdoomed:/tmp")
	in.Env = append(os.Environ(), "CABIN_SOCKET="+e.socket)
	stdin, err := in.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	var inErr lockedBuffer
	in.Stderr = &inErr
	if err := in.Start(); err != nil {
		t.Fatal(err)
	}
	stream := tarBytes(t, [3]string{"endless/", "5"}, [3]string{"endless/f", "0", strings.Repeat("z", 64<<20)})
	go func() {
		stdin.Write([]byte(stream[:48<<20]))
		// Held open: only QEMU's death ends this copy.
	}()
	defer stdin.Close()
	// Out: 32 MiB, slow enough under TCG to be cut.
	dst := filepath.Join(t.TempDir(), "out")
	out := exec.CommandContext(testContext(t, 2*time.Minute), filepath.Join(e.bin, "cabin"), "cp", "it-cpdoomed:/tmp/big", dst)
	out.Env = append(os.Environ(), "CABIN_SOCKET="+e.socket)
	var outErr lockedBuffer
	out.Stderr = &outErr
	if err := out.Start(); err != nil {
		t.Fatal(err)
	}
	outDone := make(chan error, 1)
	go func() { outDone <- out.Wait() }()
	// Both under way: the agent's staging directory for the copy in, the
	// host's for the copy out (unless it has ended already).
	cpWait(t, func() bool {
		res := cabinCLI(t, e, "exec", "it-cpdoomed", "ls", "-a", "/tmp")
		return strings.Contains(res.stdout, ".cabin-cp-")
	})
	cpWait(t, func() bool {
		if len(outDone) > 0 {
			return true
		}
		ents, _ := os.ReadDir(filepath.Dir(dst))
		return len(ents) > 0
	})
	if err := syscall.Kill(vm.pid, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	if err := in.Wait(); err == nil || in.ProcessState.ExitCode() != 1 || inErr.String() == "" {
		t.Errorf("cp in when the VM died: %v, stderr %q; want exit 1 and why", err, inErr.String())
	}
	err = <-outDone
	if out.ProcessState.ExitCode() == 0 {
		// It finished first: then it must be whole.
		if fi, serr := os.Stat(filepath.Join(dst, "zero")); serr != nil || fi.Size() != 32<<20 {
			t.Errorf("cp out ended 0 but the copy is not whole: %v, %v", fi, serr)
		}
		return
	}
	if out.ProcessState.ExitCode() != 1 || outErr.String() == "" {
		t.Errorf("cp out when the VM died: %v, stderr %q; want exit 1 and why", err, outErr.String())
	}
	if ents, _ := os.ReadDir(filepath.Dir(dst)); len(ents) != 0 {
		t.Errorf("a cut copy out left %v", ents)
	}
}
