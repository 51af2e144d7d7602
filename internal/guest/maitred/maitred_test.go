package maitred

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/moby/sys/mountinfo"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/cabinvm/cabin/api/vmtools"
	"github.com/cabinvm/cabin/internal/guest/storage"
	"github.com/cabinvm/cabin/internal/reaper"
)

func testLog() *slog.Logger { return slog.New(slog.NewTextHandler(io.Discard, nil)) }

func startReaper(t *testing.T) *reaper.Reaper {
	t.Helper()
	r := reaper.New(false, testLog())
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { r.Run(ctx); close(done) }()
	t.Cleanup(func() { cancel(); <-done })
	return r
}

// newTest returns a Maitred whose files live in temporary roots, and its
// service.
func newTest(t *testing.T, cfg Config) (*Maitred, *Service) {
	t.Helper()
	cfg.Log = testLog()
	if cfg.Reaper == nil {
		cfg.Reaper = startReaper(t)
	}
	if cfg.EtcDir == "" {
		cfg.EtcDir = t.TempDir()
	}
	if cfg.ZoneinfoDir == "" {
		cfg.ZoneinfoDir = t.TempDir()
	}
	if cfg.RunDir == "" {
		cfg.RunDir = t.TempDir()
	}
	if cfg.DevDir == "" {
		cfg.DevDir = t.TempDir()
	}
	if cfg.Storage == nil {
		// No disk of the host's is ever the test's stateful disk.
		cfg.Storage = storage.New(storage.Config{
			Log:        cfg.Log,
			Reaper:     cfg.Reaper,
			MountPoint: filepath.Join(t.TempDir(), "stateful"),
			SysBlock:   t.TempDir(),
		})
	}
	if cfg.SetClock == nil {
		cfg.SetClock = func(time.Time) error { t.Error("SetClock called"); return nil }
	}
	m := New(cfg)
	t.Cleanup(m.Close)
	return m, NewService(m)
}

func wantCode(t *testing.T, err error, want codes.Code, mention string) {
	t.Helper()
	if got := status.Code(err); got != want {
		t.Fatalf("error %v: code %v, want %v", err, got, want)
	}
	if !strings.Contains(err.Error(), mention) {
		t.Fatalf("error %q does not mention %q", err, mention)
	}
}

func needRoot(t *testing.T) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root to mount")
	}
}

func TestLaunchOutcomes(t *testing.T) {
	_, s := newTest(t, Config{})
	ctx := context.Background()
	for _, tc := range []struct {
		name   string
		argv   []string
		status vmtools.ProcessStatus
		code   int32
	}{
		{"exit code", []string{"sh", "-c", "exit 3"}, vmtools.ProcessStatus_EXITED, 3},
		{"absolute path", []string{"/bin/sh", "-c", "exit 0"}, vmtools.ProcessStatus_EXITED, 0},
		{"signal", []string{"sh", "-c", "kill -9 $$"}, vmtools.ProcessStatus_SIGNALED, 9},
		{"missing binary", []string{"no-such-binary-cabin"}, vmtools.ProcessStatus_FAILED, 0},
		{"missing path", []string{"/no/such/binary"}, vmtools.ProcessStatus_FAILED, 0},
		{"relative path", []string{"bin/sh", "-c", "exit 0"}, vmtools.ProcessStatus_FAILED, 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			resp, err := s.LaunchProcess(ctx, &vmtools.LaunchProcessRequest{Argv: tc.argv, WaitForExit: true})
			if err != nil {
				t.Fatal(err)
			}
			if resp.Status != tc.status || resp.Code != tc.code {
				t.Fatalf("got %v %d, want %v %d", resp.Status, resp.Code, tc.status, tc.code)
			}
		})
	}

	// Without wait_for_exit the process is started and left to run.
	dir := t.TempDir()
	marker := filepath.Join(dir, "ran")
	resp, err := s.LaunchProcess(ctx, &vmtools.LaunchProcessRequest{
		Argv: []string{"sh", "-c", `touch "$1"`, "sh", marker},
	})
	if err != nil || resp.Status != vmtools.ProcessStatus_LAUNCHED {
		t.Fatalf("launch = %v, %v", resp, err)
	}
	waitFor(t, func() bool { _, err := os.Stat(marker); return err == nil })
}

func TestLaunchInvalid(t *testing.T) {
	_, s := newTest(t, Config{})
	ctx := context.Background()
	_, err := s.LaunchProcess(ctx, &vmtools.LaunchProcessRequest{WaitForExit: true})
	wantCode(t, err, codes.InvalidArgument, "argv")
	_, err = s.LaunchProcess(ctx, &vmtools.LaunchProcessRequest{
		Argv: []string{"true"}, Respawn: true, WaitForExit: true,
	})
	wantCode(t, err, codes.InvalidArgument, "wait_for_exit")
}

// TestLaunchStdio checks where stdio goes, and that env is added to the
// agent's environment.
func TestLaunchStdio(t *testing.T) {
	dir := t.TempDir()
	console := filepath.Join(dir, "console")
	if err := os.WriteFile(console, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	t.Setenv("CABIN_INHERITED", "from-agent")
	_, s := newTest(t, Config{Console: console})
	// $$ in the substitution is still the shell, whose stdio it reads.
	script := `fds=$(readlink /proc/$$/fd/0 /proc/$$/fd/1 /proc/$$/fd/2); echo "$fds" > "$OUT"; echo "$CABIN_INHERITED $CABIN_ADDED"; echo to-stderr >&2`

	for _, useConsole := range []bool{false, true} {
		out := filepath.Join(dir, "out")
		resp, err := s.LaunchProcess(context.Background(), &vmtools.LaunchProcessRequest{
			Argv:        []string{"sh", "-c", script},
			Env:         map[string]string{"OUT": out, "CABIN_ADDED": "from-request"},
			UseConsole:  useConsole,
			WaitForExit: true,
		})
		if err != nil || resp.Status != vmtools.ProcessStatus_EXITED || resp.Code != 0 {
			t.Fatalf("use_console=%v: %v, %v", useConsole, resp, err)
		}
		fds, _ := os.ReadFile(out)
		want := strings.Repeat(os.DevNull+"\n", 3)
		if useConsole {
			want = strings.Repeat(console+"\n", 3)
		}
		if string(fds) != want {
			t.Errorf("use_console=%v: stdio is %q, want %q", useConsole, fds, want)
		}
		printed, _ := os.ReadFile(console)
		wantPrinted := ""
		if useConsole {
			wantPrinted = "from-agent from-request\nto-stderr\n"
		}
		if string(printed) != wantPrinted {
			t.Errorf("use_console=%v: console got %q, want %q", useConsole, printed, wantPrinted)
		}
	}
}

// fakeClock moves on by step every time it is read.
type fakeClock struct {
	mu   sync.Mutex
	now  time.Time
	step time.Duration
}

func (c *fakeClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.now = c.now.Add(c.step)
	return c.now
}

func countLines(t *testing.T, file string) int {
	t.Helper()
	b, err := os.ReadFile(file)
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		t.Fatal(err)
	}
	return strings.Count(string(b), "\n")
}

func waitFor(t *testing.T, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatal("condition not met in 10s")
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func waitRespawners(t *testing.T, m *Maitred) {
	t.Helper()
	done := make(chan struct{})
	go func() { m.respawners.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		t.Fatal("respawning did not stop")
	}
}

// TestRespawnLimit: a process spawned RespawnLimit times within
// RespawnWindow is stopped, until it is launched again.
func TestRespawnLimit(t *testing.T) {
	clock := &fakeClock{now: time.Unix(1e9, 0), step: time.Second}
	m, s := newTest(t, Config{Now: clock.Now})
	log := filepath.Join(t.TempDir(), "spawns")
	req := &vmtools.LaunchProcessRequest{
		Argv:    []string{"sh", "-c", `echo x >> "$1"`, "sh", log},
		Respawn: true,
	}
	for round := 1; round <= 2; round++ {
		resp, err := s.LaunchProcess(context.Background(), req)
		if err != nil || resp.Status != vmtools.ProcessStatus_LAUNCHED {
			t.Fatalf("launch = %v, %v", resp, err)
		}
		waitRespawners(t, m)
		// The last spawn may still be writing.
		waitFor(t, func() bool { return countLines(t, log) >= round*RespawnLimit })
		time.Sleep(50 * time.Millisecond)
		if n := countLines(t, log); n != round*RespawnLimit {
			t.Fatalf("round %d: spawned %d times in all, want %d", round, n, round*RespawnLimit)
		}
	}
}

// TestRespawnSpacedOut: spawns spread wider than the window go on until
// Maitred stops, which stops respawning.
func TestRespawnSpacedOut(t *testing.T) {
	clock := &fakeClock{now: time.Unix(1e9, 0), step: 4 * time.Second}
	m, s := newTest(t, Config{Now: clock.Now})
	log := filepath.Join(t.TempDir(), "spawns")
	_, err := s.LaunchProcess(context.Background(), &vmtools.LaunchProcessRequest{
		Argv:    []string{"sh", "-c", `echo x >> "$1"`, "sh", log},
		Respawn: true,
	})
	if err != nil {
		t.Fatal(err)
	}
	waitFor(t, func() bool { return countLines(t, log) > 3*RespawnLimit })
	m.Close()
	time.Sleep(50 * time.Millisecond)
	n := countLines(t, log)
	time.Sleep(100 * time.Millisecond)
	if m := countLines(t, log); m != n {
		t.Fatalf("still respawning after Close: %d then %d spawns", n, m)
	}
}

// TestShutdown: Shutdown powers off once, and stops respawning, so that
// the processes the power-off kills stay dead. The clock moves a whole
// window per read, so the respawn limit never stops the process: only
// Shutdown can.
func TestShutdown(t *testing.T) {
	off := make(chan struct{}, 2)
	clock := &fakeClock{now: time.Unix(1e9, 0), step: RespawnWindow}
	m, s := newTest(t, Config{Now: clock.Now, PowerOff: func() { off <- struct{}{} }})
	log := filepath.Join(t.TempDir(), "spawns")
	_, err := s.LaunchProcess(context.Background(), &vmtools.LaunchProcessRequest{
		Argv:    []string{"sh", "-c", `echo x >> "$1"`, "sh", log},
		Respawn: true,
	})
	if err != nil {
		t.Fatal(err)
	}
	waitFor(t, func() bool { return countLines(t, log) > 2*RespawnLimit })
	if _, err := s.Shutdown(context.Background(), &vmtools.EmptyMessage{}); err != nil {
		t.Fatal(err)
	}
	select {
	case <-off:
	case <-time.After(5 * time.Second):
		t.Fatal("Shutdown did not power off")
	}
	waitRespawners(t, m)
	// The last spawn may still be writing.
	time.Sleep(50 * time.Millisecond)
	n := countLines(t, log)
	time.Sleep(100 * time.Millisecond)
	if later := countLines(t, log); later != n {
		t.Fatalf("still respawning after Shutdown: %d then %d spawns", n, later)
	}

	s.Shutdown(context.Background(), &vmtools.EmptyMessage{})
	time.Sleep(20 * time.Millisecond)
	if len(off) != 0 {
		t.Fatal("a second Shutdown powered off again")
	}
}

func TestSetTime(t *testing.T) {
	var set []time.Time
	_, s := newTest(t, Config{SetClock: func(t time.Time) error { set = append(set, t); return nil }})
	ctx := context.Background()
	for _, ts := range []*timestamppb.Timestamp{nil, {}, {Seconds: 0, Nanos: 5}, {Seconds: -5}, {Seconds: 1e9, Nanos: -1}} {
		_, err := s.SetTime(ctx, &vmtools.SetTimeRequest{Time: ts})
		wantCode(t, err, codes.InvalidArgument, "time")
	}
	want := time.Date(2024, 5, 6, 7, 8, 9, 10, time.UTC)
	if _, err := s.SetTime(ctx, &vmtools.SetTimeRequest{Time: timestamppb.New(want)}); err != nil {
		t.Fatal(err)
	}
	if len(set) != 1 || !set[0].Equal(want) {
		t.Fatalf("clock set to %v, want [%v]", set, want)
	}
}

// zoneinfo makes a zoneinfo tree with a few zones.
func zoneinfo(t *testing.T) string {
	t.Helper()
	dir := t.TempDir()
	for name, content := range map[string]string{
		"UTC":          "TZif utc",
		"Europe/Paris": "TZif paris",
	} {
		p := filepath.Join(dir, name)
		os.MkdirAll(filepath.Dir(p), 0o755)
		if err := os.WriteFile(p, []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	return dir
}

func TestSetTimezone(t *testing.T) {
	zones, etc := zoneinfo(t), t.TempDir()
	_, s := newTest(t, Config{ZoneinfoDir: zones, EtcDir: etc})
	ctx := context.Background()
	localtime := filepath.Join(etc, "localtime")
	// An existing /etc/localtime is replaced, whatever it was.
	os.WriteFile(localtime, []byte("old"), 0o644)
	for _, name := range []string{"Europe/Paris", "UTC"} {
		if _, err := s.SetTimezone(ctx, &vmtools.SetTimezoneRequest{TimezoneName: name}); err != nil {
			t.Fatal(err)
		}
		got, err := os.Readlink(localtime)
		if want := filepath.Join(zones, name); err != nil || got != want {
			t.Fatalf("localtime -> %q, %v; want %q", got, err, want)
		}
	}
	if left, _ := filepath.Glob(filepath.Join(etc, ".*")); len(left) != 0 {
		t.Errorf("temporary files left: %v", left)
	}

	for _, tc := range []struct {
		name string
		code codes.Code
	}{
		{"", codes.InvalidArgument},
		{"../etc/passwd", codes.InvalidArgument},
		{"/etc/passwd", codes.InvalidArgument},
		{"Europe/../UTC", codes.InvalidArgument},
		{"Europe//Paris", codes.InvalidArgument},
		{"Europe/Paris\n", codes.InvalidArgument},
		{"Europe Paris", codes.InvalidArgument},
		{"Europe", codes.InvalidArgument}, // a directory
		{"Mars/Olympus", codes.NotFound},
	} {
		_, err := s.SetTimezone(ctx, &vmtools.SetTimezoneRequest{TimezoneName: tc.name})
		wantCode(t, err, tc.code, "timezone_name")
	}
	if got, _ := os.Readlink(localtime); got != filepath.Join(zones, "UTC") {
		t.Fatalf("a rejected request changed localtime to %q", got)
	}
}

// TestSetTimezoneBindMount bind-mounts the zone file onto localtime,
// replaces the mount on the next call, and goes back to a symlink.
func TestSetTimezoneBindMount(t *testing.T) {
	needRoot(t)
	zones, etc := zoneinfo(t), t.TempDir()
	_, s := newTest(t, Config{ZoneinfoDir: zones, EtcDir: etc})
	ctx := context.Background()
	localtime := filepath.Join(etc, "localtime")
	t.Cleanup(func() { unmountAll(localtime) })
	os.Symlink(filepath.Join(zones, "UTC"), localtime)

	for _, tc := range []struct{ zone, content string }{{"Europe/Paris", "TZif paris"}, {"UTC", "TZif utc"}} {
		_, err := s.SetTimezone(ctx, &vmtools.SetTimezoneRequest{TimezoneName: tc.zone, UseBindMount: true})
		if err != nil {
			t.Fatal(err)
		}
		if st, err := os.Lstat(localtime); err != nil || !st.Mode().IsRegular() {
			t.Fatalf("localtime is not a regular file: %v", err)
		}
		if b, _ := os.ReadFile(localtime); string(b) != tc.content {
			t.Fatalf("localtime reads %q, want %q", b, tc.content)
		}
		if n := mountCount(t, localtime); n != 1 {
			t.Fatalf("%d mounts on localtime, want 1", n)
		}
	}
	// The zone file must not be writable through localtime.
	if err := os.WriteFile(localtime, []byte("x"), 0o644); err == nil {
		t.Error("localtime bind mount is writable")
	}
	if b, _ := os.ReadFile(filepath.Join(zones, "UTC")); string(b) != "TZif utc" {
		t.Fatalf("zone file changed to %q", b)
	}
	if _, err := s.SetTimezone(ctx, &vmtools.SetTimezoneRequest{TimezoneName: "Europe/Paris"}); err != nil {
		t.Fatal(err)
	}
	if n := mountCount(t, localtime); n != 0 {
		t.Fatalf("%d mounts left on localtime", n)
	}
	if got, _ := os.Readlink(localtime); got != filepath.Join(zones, "Europe/Paris") {
		t.Fatalf("localtime -> %q", got)
	}
}

// mountCount counts the mounts on path in /proc/self/mountinfo.
func mountCount(t *testing.T, path string) int {
	t.Helper()
	ms, err := mountinfo.GetMounts(func(m *mountinfo.Info) (skip, stop bool) { return m.Mountpoint != path, false })
	if err != nil {
		t.Fatal(err)
	}
	return len(ms)
}

func TestSetResolvConfig(t *testing.T) {
	etc := t.TempDir()
	_, s := newTest(t, Config{EtcDir: etc})
	ctx := context.Background()
	resolv := filepath.Join(etc, "resolv.conf")
	_, err := s.SetResolvConfig(ctx, &vmtools.SetResolvConfigRequest{ResolvConfig: &vmtools.ResolvConfig{
		Nameservers:   []string{"100.115.92.25", "2001:db8::1"},
		SearchDomains: []string{"example.com", "corp.example.", "_srv.lan"},
	}})
	if err != nil {
		t.Fatal(err)
	}
	want := "nameserver 100.115.92.25\nnameserver 2001:db8::1\nsearch example.com corp.example. _srv.lan\n"
	if b, _ := os.ReadFile(resolv); string(b) != want {
		t.Fatalf("resolv.conf = %q, want %q", b, want)
	}
	if st, _ := os.Stat(resolv); st.Mode().Perm() != 0o644 {
		t.Errorf("resolv.conf mode %v", st.Mode())
	}

	for _, tc := range []struct {
		c     *vmtools.ResolvConfig
		field string
	}{
		{&vmtools.ResolvConfig{Nameservers: []string{"1.1.1.1", "dns.google"}}, "nameservers[1]"},
		{&vmtools.ResolvConfig{Nameservers: []string{"1.1.1.1 8.8.8.8"}}, "nameservers[0]"},
		{&vmtools.ResolvConfig{Nameservers: []string{""}}, "nameservers[0]"},
		{&vmtools.ResolvConfig{SearchDomains: []string{"a b"}}, "search_domains[0]"},
		{&vmtools.ResolvConfig{SearchDomains: []string{"ok.com", "bad..com"}}, "search_domains[1]"},
		{&vmtools.ResolvConfig{SearchDomains: []string{"x\noptions ndots:15"}}, "search_domains[0]"},
		{&vmtools.ResolvConfig{SearchDomains: []string{"-a.com"}}, "search_domains[0]"},
	} {
		_, err := s.SetResolvConfig(ctx, &vmtools.SetResolvConfigRequest{ResolvConfig: tc.c})
		wantCode(t, err, codes.InvalidArgument, "resolv_config."+tc.field)
	}
	if b, _ := os.ReadFile(resolv); string(b) != want {
		t.Fatalf("a rejected request changed resolv.conf to %q", b)
	}
	if left, _ := filepath.Glob(filepath.Join(etc, ".*")); len(left) != 0 {
		t.Errorf("temporary files left: %v", left)
	}
}

func TestGetKernelVersion(t *testing.T) {
	_, s := newTest(t, Config{})
	resp, err := s.GetKernelVersion(context.Background(), &vmtools.EmptyMessage{})
	if err != nil {
		t.Fatal(err)
	}
	release, _ := os.ReadFile("/proc/sys/kernel/osrelease")
	version, _ := os.ReadFile("/proc/sys/kernel/version")
	if resp.KernelRelease != strings.TrimSpace(string(release)) || resp.KernelVersion != strings.TrimSpace(string(version)) {
		t.Fatalf("got %q %q, want %q %q", resp.KernelRelease, resp.KernelVersion, release, version)
	}
}

func TestPrepareToSuspend(t *testing.T) {
	_, s := newTest(t, Config{})
	if _, err := s.PrepareToSuspend(context.Background(), &vmtools.EmptyMessage{}); err != nil {
		t.Fatal(err)
	}
}

// TestMountValidation: malformed requests fail the call; targets that are
// not mounted on for safety (relative, or with ".." elements) fail with
// EINVAL in the response, as any refused mount does, and nothing is done
// for them, not even create_target.
func TestMountValidation(t *testing.T) {
	_, s := newTest(t, Config{})
	ctx := context.Background()
	for _, tc := range []struct {
		req     *vmtools.MountRequest
		mention string
	}{
		{&vmtools.MountRequest{Source: "tmp", Target: "", Fstype: "tmpfs"}, "target"},
		{&vmtools.MountRequest{Source: "tmp", Target: "/mnt\x00/x", Fstype: "tmpfs"}, "target"},
		{&vmtools.MountRequest{Source: "tmp\x00", Target: "/mnt", Fstype: "tmpfs"}, "source"},
		{&vmtools.MountRequest{Source: "tmp", Target: "/mnt", Fstype: "tmp\x00fs"}, "fstype"},
		{&vmtools.MountRequest{Source: "tmp", Target: "/mnt", Fstype: "tmpfs", Options: "size=1m\x00"}, "options"},
		{&vmtools.MountRequest{Source: "/dev/vdb", Target: "/mnt", Fstype: "../x", MkfsIfNeeded: true}, "fstype"},
		{&vmtools.MountRequest{Source: "-F", Target: "/mnt", Fstype: "ext4", MkfsIfNeeded: true}, "source"},
	} {
		_, err := s.Mount(ctx, tc.req)
		wantCode(t, err, codes.InvalidArgument, tc.mention)
	}

	dir := t.TempDir()
	t.Chdir(dir)
	for _, target := range []string{
		"relative",
		"./relative",
		"a/../b",
		filepath.Join(dir, "c") + "/../d",
		filepath.Join(dir, "e") + "/..",
	} {
		resp, err := s.Mount(ctx, &vmtools.MountRequest{Source: "tmp", Target: target, Fstype: "tmpfs", CreateTarget: true})
		if err != nil || syscall.Errno(resp.GetError()) != syscall.EINVAL {
			t.Errorf("target %q: %v, %v; want EINVAL in the response", target, resp, err)
		}
	}
	if left, _ := os.ReadDir(dir); len(left) != 0 {
		t.Errorf("refused targets were created: %v", left)
	}
}

// TestMountCleansTarget: redundant slashes and "." elements do not stop a
// mount; it lands on the clean path.
func TestMountCleansTarget(t *testing.T) {
	needRoot(t)
	_, s := newTest(t, Config{})
	ctx := context.Background()
	dir := t.TempDir()
	for _, tc := range []struct{ target, clean string }{
		{dir + "/a/", dir + "/a"},
		{dir + "//b", dir + "/b"},
		{dir + "/./c//d/", dir + "/c/d"},
	} {
		t.Cleanup(func() { syscall.Unmount(tc.clean, syscall.MNT_DETACH) })
		resp, err := s.Mount(ctx, &vmtools.MountRequest{Source: "cabin-test", Target: tc.target, Fstype: "tmpfs", CreateTarget: true})
		if err != nil || resp.Error != 0 {
			t.Fatalf("mount on %q: %v, %v", tc.target, resp, err)
		}
		if n := mountCount(t, tc.clean); n != 1 {
			t.Errorf("mount on %q: %d mounts on %s, want 1", tc.target, n, tc.clean)
		}
	}
}

func TestMountTmpfs(t *testing.T) {
	needRoot(t)
	_, s := newTest(t, Config{})
	ctx := context.Background()
	target := filepath.Join(t.TempDir(), "a", "b")
	t.Cleanup(func() { syscall.Unmount(target, syscall.MNT_DETACH) })

	// Without create_target a missing target fails with its errno.
	resp, err := s.Mount(ctx, &vmtools.MountRequest{Source: "cabin-test", Target: target, Fstype: "tmpfs"})
	if err != nil || syscall.Errno(resp.Error) != syscall.ENOENT {
		t.Fatalf("missing target: %v, %v; want ENOENT", resp, err)
	}
	resp, err = s.Mount(ctx, &vmtools.MountRequest{
		Source: "cabin-test", Target: target, Fstype: "tmpfs",
		Mountflags: syscall.MS_NOSUID, Options: "size=1m",
		CreateTarget: true, Permissions: 0o1770,
	})
	if err != nil || resp.Error != 0 {
		t.Fatalf("mount: %v, %v", resp, err)
	}
	if n := mountCount(t, target); n != 1 {
		t.Fatalf("%d mounts on %s in mountinfo, want 1", n, target)
	}
	ms, err := mountinfo.GetMounts(mountinfo.SingleEntryFilter(target))
	if err != nil || len(ms) != 1 {
		t.Fatalf("mountinfo of %s: %v, %v", target, ms, err)
	}
	if m := ms[0]; m.FSType != "tmpfs" || m.Source != "cabin-test" || !strings.Contains(m.Options, "nosuid") || !strings.Contains(m.VFSOptions, "size=1024k") {
		t.Errorf("mountinfo of %s %+v lacks the source, flags or options", target, m)
	}
	var st syscall.Stat_t
	if err := syscall.Stat(target, &st); err != nil || st.Mode&0o7777 != 0o1770 {
		t.Errorf("target mode %o, %v; want 1770", st.Mode&0o7777, err)
	}

	other := filepath.Join(t.TempDir(), "c")
	resp, err = s.Mount(ctx, &vmtools.MountRequest{Source: "x", Target: other, Fstype: "nosuchfs-cabin", CreateTarget: true})
	if err != nil || syscall.Errno(resp.Error) != syscall.ENODEV {
		t.Fatalf("bad fstype: %v, %v; want ENODEV", resp, err)
	}
}

// TestMountMkfs runs mkfs.<fstype> only when mounting fails with EINVAL.
// A fake mkfs in PATH records its arguments; tmpfs with a bad option gives
// EINVAL, an unknown filesystem ENODEV.
func TestMountMkfs(t *testing.T) {
	needRoot(t)
	bin := t.TempDir()
	record := filepath.Join(t.TempDir(), "mkfs-args")
	for _, fs := range []string{"tmpfs", "nosuchfscabin"} {
		script := "#!/bin/sh\necho \"" + fs + " $*\" >> " + record + "\n"
		if err := os.WriteFile(filepath.Join(bin, "mkfs."+fs), []byte(script), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	t.Setenv("PATH", bin+":"+os.Getenv("PATH"))
	_, s := newTest(t, Config{})
	ctx := context.Background()
	target := t.TempDir()
	t.Cleanup(func() { syscall.Unmount(target, syscall.MNT_DETACH) })

	resp, err := s.Mount(ctx, &vmtools.MountRequest{Source: "/dev/cabin-src", Target: target, Fstype: "nosuchfscabin", MkfsIfNeeded: true})
	if err != nil || syscall.Errno(resp.Error) != syscall.ENODEV {
		t.Fatalf("unknown fs: %v, %v; want ENODEV", resp, err)
	}
	if b, _ := os.ReadFile(record); len(b) != 0 {
		t.Fatalf("mkfs ran for a mount that did not fail with EINVAL: %q", b)
	}
	resp, err = s.Mount(ctx, &vmtools.MountRequest{Source: "/dev/cabin-src", Target: target, Fstype: "tmpfs", Options: "nr_inodes=bogus", MkfsIfNeeded: true})
	if err != nil || syscall.Errno(resp.Error) != syscall.EINVAL {
		t.Fatalf("bad option: %v, %v; want EINVAL", resp, err)
	}
	if b, _ := os.ReadFile(record); string(b) != "tmpfs /dev/cabin-src\n" {
		t.Fatalf("mkfs ran with %q, want it once on the source", b)
	}
	// Without mkfs_if_needed nothing is formatted.
	os.Remove(record)
	s.Mount(ctx, &vmtools.MountRequest{Source: "/dev/cabin-src", Target: target, Fstype: "tmpfs", Options: "nr_inodes=bogus"})
	if _, err := os.Stat(record); err == nil {
		t.Fatal("mkfs ran without mkfs_if_needed")
	}
}
