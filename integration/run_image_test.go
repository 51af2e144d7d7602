package integration

import (
	"archive/tar"
	"bytes"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
	"golang.org/x/sys/unix"

	"github.com/cabinvm/cabin/api/kata"
)

// hostBusybox is Debian's busybox-static, which the test image is made of.
const hostBusybox = "/bin/busybox"

// runImageRef is the test image's tag, as the store spells it.
const runImageRef = "example.com/cit/runimg:v1"

// busyboxImageTar writes a `docker save` tarball of an image made of the
// host's busybox-static: applets linked in /bin, a user app (1000) in
// groups app and staff, a working dir /work of app's, and a config that
// sets Env, WorkingDir, User, Entrypoint and Cmd.
func busyboxImageTar(t testing.TB, dst string) {
	t.Helper()
	bb, err := os.ReadFile(hostBusybox)
	if err != nil {
		t.Skipf("the test image is made of %s (Debian's busybox-static; scripts/setup.sh installs it): %v", hostBusybox, err)
	}
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	add := func(h *tar.Header, body []byte) {
		h.Size = int64(len(body))
		if err := tw.WriteHeader(h); err != nil {
			t.Fatal(err)
		}
		tw.Write(body)
	}
	for _, d := range []string{"bin/", "etc/", "root/", "proc/", "sys/", "dev/"} {
		add(&tar.Header{Name: d, Typeflag: tar.TypeDir, Mode: 0o755}, nil)
	}
	add(&tar.Header{Name: "tmp/", Typeflag: tar.TypeDir, Mode: 0o1777}, nil)
	add(&tar.Header{Name: "home/", Typeflag: tar.TypeDir, Mode: 0o755}, nil)
	add(&tar.Header{Name: "home/app/", Typeflag: tar.TypeDir, Mode: 0o700, Uid: 1000, Gid: 1000}, nil)
	add(&tar.Header{Name: "work/", Typeflag: tar.TypeDir, Mode: 0o755, Uid: 1000, Gid: 1000}, nil)
	add(&tar.Header{Name: "bin/busybox", Typeflag: tar.TypeReg, Mode: 0o755}, bb)
	for _, applet := range []string{"sh", "echo", "cat", "id", "pwd", "env", "touch", "sleep", "ls", "true", "stat", "rm", "mkdir"} {
		add(&tar.Header{Name: "bin/" + applet, Typeflag: tar.TypeSymlink, Linkname: "busybox"}, nil)
	}
	add(&tar.Header{Name: "etc/passwd", Typeflag: tar.TypeReg, Mode: 0o644},
		[]byte("root:x:0:0:root:/root:/bin/sh\napp:x:1000:1000:app:/home/app:/bin/sh\n"))
	add(&tar.Header{Name: "etc/group", Typeflag: tar.TypeReg, Mode: 0o644},
		[]byte("root:x:0:\nstaff:x:50:app\napp:x:1000:\n"))
	add(&tar.Header{Name: "etc/motd", Typeflag: tar.TypeReg, Mode: 0o644}, []byte("from the image\n"))
	tw.Close()
	layer, err := tarball.LayerFromOpener(func() (io.ReadCloser, error) { return io.NopCloser(bytes.NewReader(buf.Bytes())), nil })
	if err != nil {
		t.Fatal(err)
	}
	img, err := mutate.AppendLayers(empty.Image, layer)
	if err != nil {
		t.Fatal(err)
	}
	cf, _ := img.ConfigFile()
	cf = cf.DeepCopy()
	cf.OS, cf.Architecture = "linux", "amd64"
	cf.Config.Env = []string{"PATH=/bin", "GREETING=hi from the image"}
	cf.Config.WorkingDir = "/work"
	cf.Config.User = "app"
	cf.Config.Entrypoint = []string{"/bin/busybox"}
	cf.Config.Cmd = []string{"echo", "default cmd"}
	if img, err = mutate.ConfigFile(img, cf); err != nil {
		t.Fatal(err)
	}
	tag, _ := name.NewTag(runImageRef)
	f, err := os.Create(dst)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if err := tarball.Write(tag, img, f); err != nil {
		t.Fatal(err)
	}
}

// TestRunImage drives cabin run IMAGE as a user would: an image imported
// from a `docker save` tarball runs in the default VM, started on demand,
// with the image's entrypoint, cmd, env, working dir and user; every
// container has a writable root of its own over the one shared copy; an
// image removed while a container of it runs stays readable to it.
func TestRunImage(t *testing.T) {
	e := needEnv(t)
	tarPath := filepath.Join(t.TempDir(), "img.tar")
	busyboxImageTar(t, tarPath)
	if res := cabinCLI(t, e, "image", "import", tarPath); res.code != 0 {
		t.Fatalf("cabin image import: %v", res)
	}
	t.Cleanup(func() { stopVM(t, e, "default") })

	t.Run("echo hello in the default VM, started on demand", func(t *testing.T) {
		res := cabinCLI(t, e, "run", "--rm", runImageRef, "echo", "hello")
		if res.code != 0 || res.stdout != "hello\n" {
			t.Fatalf("cabin run IMAGE echo hello: %v", res)
		}
		if !listed(t, e, "default") {
			t.Errorf("the default VM does not run after cabin run")
		}
		if res := cabinCLI(t, e, "run", "--rm", runImageRef); res.code != 0 || res.stdout != "default cmd\n" {
			t.Errorf("the image's entrypoint and cmd: %v", res)
		}
		if res := cabinCLI(t, e, "run", "--rm", "--entrypoint", "/bin/echo", runImageRef, "plain"); res.code != 0 || res.stdout != "plain\n" {
			t.Errorf("--entrypoint: %v", res)
		}
	})

	const probe = `echo "$GREETING|$(pwd)|$(id -u):$(id -g)|$(id -G)|$HOME"`
	t.Run("the image's env, workdir and user", func(t *testing.T) {
		res := cabinCLI(t, e, "run", "--rm", "--vm", "default", runImageRef, "sh", "-c", probe)
		if want := "hi from the image|/work|1000:1000|1000 50|/home/app\n"; res.code != 0 || res.stdout != want {
			t.Errorf("got %v; want %q", res, want)
		}
		res = cabinCLI(t, e, "run", "--rm", "-u", "root", "-w", "/tmp", "-e", "GREETING=over", runImageRef, "sh", "-c", probe)
		if want := "over|/tmp|0:0|0|/root\n"; res.code != 0 || res.stdout != want {
			t.Errorf("-u root -w /tmp -e: got %v; want %q", res, want)
		}
		res = cabinCLI(t, e, "run", "--rm", "-u", "app:root", runImageRef, "id")
		if res.code != 0 || !strings.HasPrefix(res.stdout, "uid=1000(app) gid=0(root)") {
			t.Errorf("-u app:root: %v", res)
		}
		res = cabinCLI(t, e, "run", "--rm", "-u", "cit-nobody", runImageRef, "true")
		if res.code == 0 || !strings.Contains(res.stderr, `"cit-nobody": no such user`) {
			t.Errorf("an unknown user: %v; want refused naming it", res)
		}
	})

	t.Run("limits", func(t *testing.T) {
		res := cabinCLI(t, e, "run", "--rm", "--memory", "64M", "--cpus", "0.5", runImageRef, "cat", "/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/cpu.max")
		if res.code != 0 || res.stdout != "67108864\n50000 100000\n" {
			t.Errorf("--memory 64M --cpus 0.5: %v", res)
		}
	})

	t.Run("bad input changes nothing", func(t *testing.T) {
		for _, args := range [][]string{
			{"run", "--rm", "cit-no-such-image:v9", "true"},
			{"run", "--rm", "--mount", "/etc:/x", runImageRef, "true"},
			{"run", "--rm", "--memory", "1k", runImageRef, "true"},
			{"run", "--rm", "--cpus", "-1", runImageRef, "true"},
		} {
			if res := cabinCLI(t, e, args...); res.code == 0 || res.stderr == "" {
				t.Errorf("cabin %q: %v; want refused", args, res)
			}
		}
		if res := cabinCLI(t, e, "run", "--rm", "--mount", "/etc:/x", runImageRef, "true"); !strings.Contains(res.stderr, "shares no folder") {
			t.Errorf("--mount outside the VM's shares: %v", res)
		}
	})

	ctx := toVM(testContext(t, 5*time.Minute), "default")
	agent := kata.NewAgentServiceClient(e.cc)
	remove := func(id string) {
		agent.RemoveContainer(ctx, &kata.RemoveContainerRequest{ContainerId: id, Timeout: 10})
	}

	t.Run("writable roots of their own over one copy", func(t *testing.T) {
		res := cabinCLI(t, e, "run", "--rm", "-u", "root", runImageRef, "sh", "-c", "echo changed > /etc/motd; touch /bin/new; mkdir /made; cat /etc/motd")
		if res.code != 0 || res.stdout != "changed\n" {
			t.Fatalf("writing to a container's root: %v", res)
		}
		res = cabinCLI(t, e, "run", "--rm", runImageRef, "sh", "-c", "cat /etc/motd; ls /bin/new /made 2>&1 >/dev/null | wc -l")
		if res.code != 0 || res.stdout != "from the image\n2\n" {
			t.Errorf("another container sees the first one's writes: %v", res)
		}
		for _, id := range []string{"cit-share-a", "cit-share-b"} {
			if res := cabinCLI(t, e, "run", "-d", "--name", id, runImageRef, "sleep", "1000"); res.code != 0 || res.stdout != id+"\n" {
				t.Fatalf("cabin run -d: %v", res)
			}
			defer remove(id)
		}
		mounts := mustExec(t, e, "default", "cat", "/proc/mounts")
		if n := strings.Count(mounts, "cabinImages /run/cabin/images 9p"); n != 1 {
			t.Errorf("the images share is mounted %d times; want once:\n%s", n, mounts)
		}
		for _, id := range []string{"cit-share-a", "cit-share-b"} {
			line := "overlay /run/cabin/containers/" + id + "/rootfs overlay"
			i := strings.Index(mounts, line)
			if i < 0 || !strings.Contains(mounts[i:i+strings.IndexByte(mounts[i:], '\n')], "lowerdir=/run/cabin/images/") {
				t.Errorf("%s has no overlay over the images share:\n%s", id, mounts)
			}
		}
	})

	t.Run("--rm removes, without it the container stays", func(t *testing.T) {
		for range 2 {
			if res := cabinCLI(t, e, "run", "--rm", "--name", "cit-rm", runImageRef, "true"); res.code != 0 {
				t.Fatalf("cabin run --rm --name cit-rm, twice: %v", res)
			}
		}
		if res := cabinCLI(t, e, "run", "--name", "cit-keep", runImageRef, "true"); res.code != 0 {
			t.Fatalf("cabin run --name cit-keep: %v", res)
		}
		defer remove("cit-keep")
		if res := cabinCLI(t, e, "run", "--name", "cit-keep", runImageRef, "true"); res.code == 0 || !strings.Contains(res.stderr, "exists") {
			t.Errorf("the kept container's name again: %v; want it taken", res)
		}
	})

	t.Run("an image removed while a container of it runs", func(t *testing.T) {
		if res := cabinCLI(t, e, "run", "-d", "--name", "cit-hold", runImageRef, "sleep", "1000"); res.code != 0 {
			t.Fatalf("cabin run -d: %v", res)
		}
		defer remove("cit-hold")
		if res := cabinCLI(t, e, "image", "rm", runImageRef); res.code != 0 {
			t.Fatalf("cabin image rm while a container runs: %v", res)
		}
		if res := cabinCLI(t, e, "image", "ls"); strings.Contains(res.stdout, "cit/runimg") {
			t.Errorf("removed, yet listed: %v", res)
		}
		if res := cabinCLI(t, e, "run", "--rm", runImageRef, "true"); res.code == 0 || !strings.Contains(res.stderr, "no image") {
			t.Errorf("a new container of the removed image: %v; want refused", res)
		}
		// The running container still reads the image's files.
		if _, err := agent.ExecProcess(ctx, &kata.ExecProcessRequest{ContainerId: "cit-hold", ExecId: "cat", Process: &kata.Process{
			Args: []string{"cat", "/etc/motd"}, Env: []string{"PATH=/bin"}, Cwd: "/", User: &kata.User{},
		}}); err != nil {
			t.Fatalf("ExecProcess after the image's removal: %v", err)
		}
		if out := readAll(t, agent, ctx, "cit-hold", "cat"); out != "from the image\n" {
			t.Errorf("cat /etc/motd in the running container after the image's removal: %q", out)
		}
		// Imported again, it runs again.
		if res := cabinCLI(t, e, "image", "import", tarPath); res.code != 0 {
			t.Fatalf("cabin image import again: %v", res)
		}
		if res := cabinCLI(t, e, "run", "--rm", runImageRef, "cat", "/etc/motd"); res.code != 0 || res.stdout != "from the image\n" {
			t.Errorf("after the import again: %v", res)
		}
	})

	t.Run("QEMU killed under a running container", func(t *testing.T) {
		done := make(chan cliResult, 1)
		go func() { done <- cabinCLI(t, e, "run", "--rm", "--name", "cit-victim", runImageRef, "sleep", "1000") }()
		// Once the container runs, kill its VM.
		deadline := time.Now().Add(time.Minute)
		for !strings.Contains(mustExec(t, e, "default", "cat", "/proc/mounts"), "/run/cabin/containers/cit-victim/rootfs") {
			if time.Now().After(deadline) {
				t.Fatal("the container never ran")
			}
			time.Sleep(100 * time.Millisecond)
		}
		pid := int(vmInfo(t, e, "default").GetVmInfo().GetPid())
		if err := unix.Kill(pid, unix.SIGKILL); err != nil {
			t.Fatal(err)
		}
		res := <-done
		if res.code == 0 || res.stderr == "" {
			t.Errorf("cabin run whose VM was killed: %v; want a failure saying so", res)
		}
		waitGone(pid, time.Minute)
		for listed(t, e, "default") {
			if time.Now().After(deadline.Add(time.Minute)) {
				t.Fatal("cabind never saw the default VM's QEMU go")
			}
			time.Sleep(100 * time.Millisecond)
		}
		// The next run starts the default VM again.
		if res := cabinCLI(t, e, "run", "--rm", runImageRef, "echo", "back"); res.code != 0 || res.stdout != "back\n" {
			t.Errorf("cabin run after the default VM was killed: %v", res)
		}
	})
}
