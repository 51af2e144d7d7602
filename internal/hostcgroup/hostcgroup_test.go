package hostcgroup

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/cabinvm/cabin/internal/errdefs"
	"github.com/cabinvm/cabin/internal/hypervisor"
	"github.com/cabinvm/cabin/internal/resource"
	"github.com/cabinvm/cabin/internal/statedir"
	"github.com/cabinvm/cabin/internal/vmm"
)

var discard = slog.New(slog.NewTextHandler(io.Discard, nil))

// versions are the two layouts every test runs on.
var versions = []struct {
	name string
	v2   bool
}{{"v1", false}, {"v2", true}}

// openFake opens the resource on fs, keeping restrictions in file.
func openFake(t *testing.T, fs *fakeFS, h hierarchy, file string) *Resource {
	t.Helper()
	r, err := open(Options{Restrictions: file, Log: discard}, h, fs, nil)
	if err != nil {
		t.Fatal(err)
	}
	if r.Unavailable() != "" {
		t.Fatalf("unavailable: %s", r.Unavailable())
	}
	return r
}

// testVM is a VM of type typ named name, its directory under a state dir
// of the test's.
func testVM(t *testing.T, name string, typ vmm.VMType) resource.VM {
	t.Helper()
	root, err := statedir.New(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	return resource.VM{Name: name, Dir: root.VM(statedir.VMID("", name)), Log: discard, Type: int32(typ)}
}

// fakeHV is a hypervisor whose process is pid.
type fakeHV struct {
	hypervisor.VM
	pid int
}

func (h fakeHV) PID() int { return h.pid }

func prepare(t *testing.T, r *Resource, vm resource.VM) *hold {
	t.Helper()
	h, err := r.Prepare(context.Background(), vm, &hypervisor.Config{})
	if err != nil {
		t.Fatalf("prepare %s: %v", vm.Name, err)
	}
	return h.(*hold)
}

// limits is what a class's cgroup files say of its restriction, by
// version: v1's cpu.shares and quota, v2's cpu.weight and cpu.max.
func limits(t *testing.T, fs *fakeFS, class Class) string {
	t.Helper()
	dir := filepath.Join(DefaultGroup, string(class))
	if fs.v2 {
		return "weight=" + fs.file(t, filepath.Join(dir, weightFile)) + " max=" + fs.file(t, filepath.Join(dir, maxFile))
	}
	return "shares=" + fs.file(t, filepath.Join(dir, sharesFile)) + " period=" + fs.file(t, filepath.Join(dir, periodFile)) +
		" quota=" + fs.file(t, filepath.Join(dir, quotaFile))
}

// want is what limits reads for a restriction of shares and quota
// (percent) on v1 and on v2.
func want(v2 bool, shares, quota int) string {
	if v2 {
		weight := map[int]string{1024: "100", 64: "6"}[shares]
		if quota == 0 {
			return "weight=" + weight + " max=max 100000"
		}
		return "weight=" + weight + " max=" + itoa(quota*1000) + " 100000"
	}
	q := "-1"
	if quota != 0 {
		q = itoa(quota * 1000)
	}
	return "shares=" + itoa(shares) + " period=100000 quota=" + q
}

// A VM's cgroup is made below its class's, with the class's restriction;
// QEMU's pid goes into it; it is removed once QEMU is gone, and the
// class's stays.
func TestLifecycle(t *testing.T) {
	for _, v := range versions {
		t.Run(v.name, func(t *testing.T) {
			fs, h := newFake(t, v.v2)
			r := openFake(t, fs, h, filepath.Join(t.TempDir(), "cpu.json"))
			if !fs.exists(DefaultGroup) {
				t.Fatal("no cabin cgroup after New")
			}
			vm := testVM(t, "a", vmm.VMTypeUnknown)
			id := statedir.VMID("", "a")
			hd := prepare(t, r, vm)
			leaf := filepath.Join(DefaultGroup, "termina", id)
			if !fs.exists(leaf) {
				t.Fatalf("no cgroup %s", leaf)
			}
			if got := limits(t, fs, Termina); got != want(v.v2, 1024, 0) {
				t.Errorf("termina: %s", got)
			}
			if got := string(hd.State()); got != `{"class":"termina"}` {
				t.Errorf("state %s", got)
			}
			if err := hd.Start(context.Background(), fakeHV{pid: 4242}); err != nil {
				t.Fatal(err)
			}
			if got := fs.cgroupOf(4242); got != "/"+leaf {
				t.Errorf("QEMU in %s, want /%s", got, leaf)
			}
			if v.v2 {
				// cpu is shared out all the way down, so that the
				// leaf is a cgroup of the cpu controller.
				for _, d := range []string{".", DefaultGroup, filepath.Join(DefaultGroup, "termina")} {
					if got := fs.file(t, filepath.Join(d, subtreeControlFile)); !strings.Contains(got, "cpu") {
						t.Errorf("%s/cgroup.subtree_control %q", d, got)
					}
				}
				if got := fs.file(t, filepath.Join(leaf, weightFile)); got != "100" {
					t.Errorf("the VM's own weight %q", got)
				}
			}

			// A cgroup with a live process stays; one whose process
			// exited goes.
			r.removeWait = 50 * time.Millisecond
			if err := hd.Release(context.Background()); !errors.Is(err, unix.EBUSY) || !strings.Contains(err.Error(), "pids 4242") {
				t.Errorf("release with QEMU alive: %v", err)
			}
			go func() {
				time.Sleep(20 * time.Millisecond)
				fs.exit(4242)
			}()
			r.removeWait = 5 * time.Second
			if err := hd.Release(context.Background()); err != nil {
				t.Fatal(err)
			}
			if fs.exists(leaf) {
				t.Error("the VM's cgroup is still there")
			}
			if !fs.exists(filepath.Join(DefaultGroup, "termina")) {
				t.Error("the class's cgroup went with its last VM")
			}
			// Gone already is released.
			if err := hd.Release(context.Background()); err != nil {
				t.Errorf("second release: %v", err)
			}
		})
	}
}

// Each VM type goes to its class.
func TestClassOf(t *testing.T) {
	for typ, want := range map[vmm.VMType]Class{
		vmm.VMTypeUnknown: Termina, vmm.VMTypeTermina: Termina, vmm.VMTypeBorealis: Termina,
		vmm.VMTypeBruschetta: Termina, vmm.VMTypeBaguette: Termina,
		vmm.VMTypePlugin: PluginVM, vmm.VMTypeARC: ARCVM, vmm.VMType(99): Termina,
	} {
		if got := ClassOf(typ); got != want {
			t.Errorf("ClassOf(%d) = %s, want %s", typ, got, want)
		}
	}
	fs, h := newFake(t, false)
	r := openFake(t, fs, h, "")
	prepare(t, r, testVM(t, "arc", vmm.VMTypeARC))
	prepare(t, r, testVM(t, "pvm", vmm.VMTypePlugin))
	for _, leaf := range []string{"arcvm/" + statedir.VMID("", "arc"), "pluginvm/" + statedir.VMID("", "pvm")} {
		if !fs.exists(filepath.Join(DefaultGroup, leaf)) {
			t.Errorf("no cgroup %s", leaf)
		}
	}
}

// Restrict writes each state's shares (v2: weight) and, for ARCVM with the
// quota state, the quota; RestrictQuota any class's quota; bad input is
// INVALID_ARGUMENT and changes nothing.
func TestRestrict(t *testing.T) {
	ctx := context.Background()
	for _, v := range versions {
		t.Run(v.name, func(t *testing.T) {
			fs, h := newFake(t, v.v2)
			r := openFake(t, fs, h, filepath.Join(t.TempDir(), "cpu.json"))
			steps := []struct {
				class         Class
				state         State
				quota         int // RestrictQuota's when state is ""
				shares, wantQ int
			}{
				{Termina, Background, 0, 64, 0},
				{Termina, Foreground, 0, 1024, 0},
				// Upstream enforces the quota on ARCVM only.
				{Termina, BackgroundWithQuota, 0, 64, 0},
				{PluginVM, BackgroundWithQuota, 0, 64, 0},
				{ARCVM, BackgroundWithQuota, 0, 64, DefaultQuota},
				{ARCVM, Background, 0, 64, 0},
				{ARCVM, BackgroundWithQuota, 0, 64, DefaultQuota},
				{ARCVM, Foreground, 0, 1024, 0},
				{PluginVM, "", 50, 64, 50},
				{PluginVM, "", 100, 64, 100},
				{PluginVM, "", 1, 64, 1},
			}
			for _, s := range steps {
				var err error
				if s.state != "" {
					err = r.Restrict(ctx, s.class, s.state)
				} else {
					err = r.RestrictQuota(ctx, s.class, s.quota)
				}
				if err != nil {
					t.Fatalf("%s %s %d: %v", s.class, s.state, s.quota, err)
				}
				if got, w := limits(t, fs, s.class), want(v.v2, s.shares, s.wantQ); got != w {
					t.Errorf("%s %s %d: %s, want %s", s.class, s.state, s.quota, got, w)
				}
			}
			before := limits(t, fs, PluginVM)
			for _, q := range []int{0, -1, -100, 101} {
				if err := r.RestrictQuota(ctx, PluginVM, q); !errors.Is(err, errdefs.ErrInvalidArgument) || !strings.HasPrefix(err.Error(), "quota:") {
					t.Errorf("quota %d: %v", q, err)
				}
			}
			if err := r.Restrict(ctx, "windows", Background); !errors.Is(err, errdefs.ErrInvalidArgument) {
				t.Errorf("unknown class: %v", err)
			}
			if err := r.Restrict(ctx, Termina, "idle"); !errors.Is(err, errdefs.ErrInvalidArgument) {
				t.Errorf("unknown state: %v", err)
			}
			if got := limits(t, fs, PluginVM); got != before {
				t.Errorf("bad input changed pluginvm: %s, was %s", got, before)
			}
			if got := r.Restrictions()[PluginVM]; got != (Restriction{State: BackgroundWithQuota, Quota: 1}) {
				t.Errorf("kept %+v", got)
			}
		})
	}
}

// A restriction holds for VMs started later, and across a restart of
// cabind, and is applied again at start (after a reboot, or someone's
// write).
func TestRestrictionsPersist(t *testing.T) {
	ctx := context.Background()
	file := filepath.Join(t.TempDir(), "cpu.json")
	fs, h := newFake(t, false)
	r := openFake(t, fs, h, file)
	if err := r.Restrict(ctx, Termina, Background); err != nil {
		t.Fatal(err)
	}
	if err := r.RestrictQuota(ctx, ARCVM, 40); err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(file)
	if err != nil {
		t.Fatal(err)
	}
	var kept restrictionsFile
	if err := json.Unmarshal(b, &kept); err != nil || kept.Version != 1 || kept.Classes[Termina].State != Background ||
		kept.Classes[ARCVM] != (Restriction{State: BackgroundWithQuota, Quota: 40}) {
		t.Errorf("kept %s (%v)", b, err)
	}

	// A VM started later, in a class made anew, gets its restriction.
	if err := os.RemoveAll(filepath.Join(fs.root, DefaultGroup, "termina")); err != nil {
		t.Fatal(err)
	}
	prepare(t, r, testVM(t, "later", vmm.VMTypeTermina))
	if got := limits(t, fs, Termina); got != want(false, 64, 0) {
		t.Errorf("class made for a later VM: %s", got)
	}

	// Someone resets the class; a restarted cabind restricts it again.
	if err := fs.WriteFile(filepath.Join(fs.root, DefaultGroup, "termina", sharesFile), "1024"); err != nil {
		t.Fatal(err)
	}
	openFake(t, fs, h, file)
	if got := limits(t, fs, Termina); got != want(false, 64, 0) {
		t.Errorf("after a restart: %s", got)
	}
	// After a reboot there are no cgroups: they are made with their
	// restrictions, on v2 as on v1.
	fs2, h2 := newFake(t, true)
	r2 := openFake(t, fs2, h2, file)
	if got := limits(t, fs2, Termina); got != want(true, 64, 0) {
		t.Errorf("after a reboot: termina %s", got)
	}
	if got := limits(t, fs2, ARCVM); got != want(true, 64, 40) {
		t.Errorf("after a reboot: arcvm %s", got)
	}
	if fs2.exists(filepath.Join(DefaultGroup, "pluginvm")) {
		t.Error("a class never restricted was made before any VM of it")
	}
	if got := r2.Restrictions()[PluginVM]; got.State != Foreground {
		t.Errorf("pluginvm %+v", got)
	}
}

// A restriction that cannot be written is an error, and is neither kept
// nor left half applied.
func TestRestrictFails(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	file := filepath.Join(dir, "cpu.json")
	fs, h := newFake(t, false)
	r := openFake(t, fs, h, file)
	if err := r.Restrict(ctx, Termina, Background); err != nil {
		t.Fatal(err)
	}
	// The class's cgroup cannot be made: cgroupfs gone read-only, say.
	os.RemoveAll(filepath.Join(fs.root, DefaultGroup, "arcvm"))
	fs.failMkdir = unix.EROFS
	if err := r.Restrict(ctx, ARCVM, BackgroundWithQuota); !errors.Is(err, unix.EROFS) {
		t.Errorf("restrict with cgroups read-only: %v", err)
	}
	fs.failMkdir = nil
	if got := r.Restrictions()[ARCVM]; got.State != Foreground {
		t.Errorf("kept after failing: %+v", got)
	}
	// The file cannot be written (its directory is gone): the cgroup is
	// put back as it was.
	if err := os.RemoveAll(dir); err != nil {
		t.Fatal(err)
	}
	if err := r.Restrict(ctx, Termina, Foreground); err == nil || !strings.Contains(err.Error(), "write cpu restrictions") {
		t.Errorf("restrict without its file: %v", err)
	}
	if got := limits(t, fs, Termina); got != want(false, 64, 0) {
		t.Errorf("termina after a failed restrict: %s", got)
	}
	if got := r.Restrictions()[Termina]; got.State != Background {
		t.Errorf("termina kept as %+v", got)
	}
}

// Where there are no cgroups to be had, VMs run without and restrictions
// are refused, saying why.
func TestUnavailable(t *testing.T) {
	ctx := context.Background()
	r, err := open(Options{Log: discard}, hierarchy{}, hostFS{}, errors.New("no cgroup filesystem is mounted"))
	if err != nil {
		t.Fatal(err)
	}
	h, err := r.Prepare(ctx, testVM(t, "a", vmm.VMTypeARC), &hypervisor.Config{})
	if err != nil || h.State() != nil {
		t.Errorf("prepare: %v, %v", h, err)
	}
	h, err = r.Adopt(ctx, testVM(t, "a", vmm.VMTypeARC), json.RawMessage(`{"class":"arcvm"}`))
	if err != nil || h.State() != nil {
		t.Errorf("adopt: %v, %v", h, err)
	}
	if err := r.Restrict(ctx, ARCVM, Background); !errors.Is(err, errdefs.ErrFailedPrecondition) || !strings.Contains(err.Error(), "no cgroup filesystem") {
		t.Errorf("restrict: %v", err)
	}
	// Bad input is still bad input.
	if err := r.RestrictQuota(ctx, ARCVM, 0); !errors.Is(err, errdefs.ErrInvalidArgument) {
		t.Errorf("quota 0: %v", err)
	}

	// cabin's cgroup cannot be made.
	fs, hier := newFake(t, true)
	fs.failMkdir = unix.EACCES
	r, err = open(Options{Log: discard}, hier, fs, nil)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(r.Unavailable(), "permission denied") {
		t.Errorf("unavailable: %q", r.Unavailable())
	}
}

// A restarted cabind finds a VM's cgroup again, and puts QEMU back in it
// when it is not there; one whose record has no cgroup gets one. Detach
// leaves the cgroup.
func TestAdopt(t *testing.T) {
	ctx := context.Background()
	for _, v := range versions {
		t.Run(v.name, func(t *testing.T) {
			fs, h := newFake(t, v.v2)
			file := filepath.Join(t.TempDir(), "cpu.json")
			r := openFake(t, fs, h, file)
			vm := testVM(t, "arc", vmm.VMTypeARC)
			leaf := "/" + filepath.Join(DefaultGroup, "arcvm", statedir.VMID("", "arc"))
			set, err := resource.Prepare(ctx, []resource.Kind{r}, vm, &hypervisor.Config{})
			if err != nil {
				t.Fatal(err)
			}
			if err := set.Start(ctx, fakeHV{pid: 77}); err != nil {
				t.Fatal(err)
			}
			states := set.States()
			set.Detach()
			if got := fs.cgroupOf(77); got != leaf {
				t.Errorf("after detach QEMU is in %s", got)
			}
			// Detached, the set releases nothing.
			if err := set.Release(ctx); err != nil || !fs.exists(leaf) {
				t.Errorf("release after detach: %v; cgroup there: %v", err, fs.exists(leaf))
			}

			// QEMU was moved out meanwhile.
			if err := fs.WriteFile(filepath.Join(fs.root, procsFile), "77"); err != nil {
				t.Fatal(err)
			}
			r2 := openFake(t, fs, h, file)
			set2, err := resource.Adopt(ctx, []resource.Kind{r2}, vm, states)
			if err != nil {
				t.Fatal(err)
			}
			if err := set2.Start(ctx, fakeHV{pid: 77}); err != nil {
				t.Fatal(err)
			}
			if got := fs.cgroupOf(77); got != leaf {
				t.Errorf("adopted QEMU is in %s, want %s", got, leaf)
			}
			fs.exit(77)
			if err := set2.Release(ctx); err != nil || fs.exists(leaf) {
				t.Errorf("release: %v; cgroup there: %v", err, fs.exists(leaf))
			}

			// A VM launched before cabind had cgroups.
			old := testVM(t, "old", vmm.VMTypePlugin)
			hd, err := r2.Adopt(ctx, old, nil)
			if err != nil {
				t.Fatal(err)
			}
			if err := hd.(resource.Starter).Start(ctx, fakeHV{pid: 78}); err != nil {
				t.Fatal(err)
			}
			if got, want := fs.cgroupOf(78), "/"+filepath.Join(DefaultGroup, "pluginvm", statedir.VMID("", "old")); got != want {
				t.Errorf("QEMU of a VM from before cgroups is in %s, want %s", got, want)
			}
			// A record cabin did not write.
			if _, err := r2.Adopt(ctx, old, json.RawMessage(`{"class":"../../etc"}`)); err == nil {
				t.Error("adopted an unknown class")
			}
			if _, err := r2.Adopt(ctx, old, json.RawMessage(`[`)); err == nil {
				t.Error("adopted a broken state")
			}
		})
	}
}

// Start fails when QEMU is gone before it is put in its cgroup.
func TestStartOfAGoneProcess(t *testing.T) {
	fs, h := newFake(t, false)
	r := openFake(t, fs, h, "")
	hd := prepare(t, r, testVM(t, "a", 0))
	fs.exit(9)
	if err := hd.Start(context.Background(), fakeHV{pid: 9}); !errors.Is(err, syscall.ESRCH) {
		t.Errorf("start: %v", err)
	}
}

// A VM directory that is not a VM's id never becomes a cgroup path.
func TestBadVMDir(t *testing.T) {
	fs, h := newFake(t, false)
	r := openFake(t, fs, h, "")
	vm := resource.VM{Name: "x", Dir: statedir.VMDir("/var/lib/cabin/vms/.."), Log: discard}
	if _, err := r.Prepare(context.Background(), vm, &hypervisor.Config{}); !errors.Is(err, errdefs.ErrInternal) {
		t.Errorf("prepare: %v", err)
	}
}

// The group is one path element.
func TestGroupName(t *testing.T) {
	fs, h := newFake(t, false)
	for _, g := range []string{"a/b", "..", ".", "cgroup.procs"} {
		if _, err := open(Options{Group: g}, h, fs, nil); !errors.Is(err, errdefs.ErrInvalidArgument) {
			t.Errorf("group %q: %v", g, err)
		}
	}
	r, err := open(Options{Group: "cabin-test"}, h, fs, nil)
	if err != nil || !fs.exists("cabin-test") {
		t.Errorf("group cabin-test: %v", err)
	}
	prepare(t, r, testVM(t, "a", 0))
	if !fs.exists(filepath.Join("cabin-test", "termina", statedir.VMID("", "a"))) {
		t.Error("the VM's cgroup is not below the group")
	}
}

// A restrictions file cabin did not write stops cabind.
func TestBadRestrictionsFile(t *testing.T) {
	fs, h := newFake(t, false)
	for _, content := range []string{
		`[`,
		`{"version":2,"classes":{}}`,
		`{"version":1,"classes":{"windows":{"state":"background"}}}`,
		`{"version":1,"classes":{"termina":{"state":"idle"}}}`,
		`{"version":1,"classes":{"arcvm":{"state":"background_with_quota","quota":-5}}}`,
	} {
		file := filepath.Join(t.TempDir(), "cpu.json")
		if err := os.WriteFile(file, []byte(content), 0o600); err != nil {
			t.Fatal(err)
		}
		if _, err := open(Options{Restrictions: file}, h, fs, nil); err == nil {
			t.Errorf("%s: opened", content)
		}
	}
}

func TestSharesAndWeight(t *testing.T) {
	for shares, weight := range map[uint64]uint64{1024: 100, 64: 6, 2048: 200, 2: 1, 0: 1, 262144: 10000, 1 << 30: 10000} {
		if got := SharesToWeight(shares); got != weight {
			t.Errorf("SharesToWeight(%d) = %d, want %d", shares, got, weight)
		}
	}
	for weight, shares := range map[uint64]uint64{100: 1024, 6: 61, 1: 10, 10000: 102400, 0: 2, 1 << 20: 262144} {
		if got := WeightToShares(weight); got != shares {
			t.Errorf("WeightToShares(%d) = %d, want %d", weight, got, shares)
		}
	}
}

func TestParseMountinfo(t *testing.T) {
	const v1 = `24 30 0:22 / /sys rw,nosuid,nodev,noexec,relatime shared:7 - sysfs sysfs rw
31 24 0:26 / /sys/fs/cgroup ro,nosuid,nodev,noexec shared:9 - tmpfs tmpfs ro,mode=755
33 31 0:28 / /sys/fs/cgroup/unified rw,nosuid,nodev,noexec,relatime shared:11 - cgroup2 cgroup2 rw,nsdelegate
36 31 0:31 / /sys/fs/cgroup/cpuacct rw,relatime - cgroup cgroup rw,cpuacct
37 31 0:32 / /sys/fs/cgroup/cpu rw,relatime - cgroup cgroup rw,cpu
38 31 0:33 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory
`
	const comounted = `37 31 0:32 / /sys/fs/cgroup/cpu,cpuacct rw,relatime shared:15 - cgroup cgroup rw,cpu,cpuacct
`
	const v2 = `30 24 0:27 / /sys/fs/cgroup rw,nosuid,nodev,noexec,relatime shared:8 - cgroup2 cgroup2 rw,nsdelegate,memory_recursiveprot
`
	const escaped = `30 24 0:27 / /mnt/my\040cgroups rw - cgroup2 cgroup2 rw
`
	controllers := func(m string) (string, error) {
		switch m {
		case "/sys/fs/cgroup", "/mnt/my cgroups":
			return "cpuset cpu io memory pids\n", nil
		case "/sys/fs/cgroup/unified":
			return "hugetlb\n", nil
		}
		return "", os.ErrNotExist
	}
	for _, c := range []struct {
		name, mountinfo string
		want            hierarchy
		err             string
	}{
		{"v1 beside cgroup2 (hybrid)", v1, hierarchy{mount: "/sys/fs/cgroup/cpu"}, ""},
		{"cpu,cpuacct", comounted, hierarchy{mount: "/sys/fs/cgroup/cpu,cpuacct"}, ""},
		{"v2", v2, hierarchy{mount: "/sys/fs/cgroup", v2: true}, ""},
		{"escaped mount point", escaped, hierarchy{mount: "/mnt/my cgroups", v2: true}, ""},
		{"v2 without cpu", "33 31 0:28 / /sys/fs/cgroup/unified rw - cgroup2 cgroup2 rw\n", hierarchy{}, "lacks it"},
		{"cpuacct alone is not cpu", "36 31 0:31 / /sys/fs/cgroup/cpuacct rw - cgroup cgroup rw,cpuacct\n", hierarchy{}, "no cgroup filesystem"},
		{"none", "24 30 0:22 / /sys rw - sysfs sysfs rw\n", hierarchy{}, "no cgroup filesystem"},
	} {
		got, err := parseMountinfo(c.mountinfo, controllers)
		if c.err != "" {
			if err == nil || !strings.Contains(err.Error(), c.err) {
				t.Errorf("%s: %+v, %v; want an error saying %q", c.name, got, err, c.err)
			}
			continue
		}
		if err != nil || got != c.want {
			t.Errorf("%s: %+v, %v; want %+v", c.name, got, err, c.want)
		}
	}
}
