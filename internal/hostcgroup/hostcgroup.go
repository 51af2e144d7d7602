// Package hostcgroup puts each VM's QEMU into a CPU cgroup of its own,
// below the cgroup of its class, as a per-VM resource (resource.Kind), and
// restricts classes as concierge's SetVmCpuRestriction asks:
//
//	<cpu hierarchy>/cabin                  cabin's, made at start (Options.Group)
//	<cpu hierarchy>/cabin/<class>          termina, pluginvm or arcvm: the restriction
//	<cpu hierarchy>/cabin/<class>/<vm id>  one VM's QEMU, every thread of it
//
// A class is upstream's CPU cgroup (concierge's vms/termina, vms/plugin,
// arcvm): its VMs share one weight, 1024 shares in the foreground and 64
// in the background, and with BACKGROUND_WITH_CFS_QUOTA_ENFORCED the arcvm
// class a CFS quota too. The classes compete with one another below
// cabin's cgroup, as upstream's do below vms; a quota bounds a class
// whatever else runs. Restrictions are kept in the state dir, applied
// again by a restarted cabind, and given to VMs started later.
//
// It works on cgroup v2 (cpu.weight, cpu.max) and on the v1 hierarchy
// (cpu.shares, cpu.cfs_period_us, cpu.cfs_quota_us), whichever holds the
// cpu controller, and on v1 moves QEMU in the cpu hierarchy only: it stays
// in cabind's cgroups of the others (its memory cgroup among them). Where
// there is no cpu controller cabind may write to, VMs run without a cgroup
// of their own and restrictions are refused, saying why.
//
// A VM's cgroup is made before its QEMU starts, QEMU is put in it before
// its vCPUs run, and it is removed once QEMU is gone, killed or not. It
// outlives cabind, as the VM does: a restarted cabind finds it again and
// puts QEMU back in it if it is not there.
package hostcgroup

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"time"

	"golang.org/x/sys/unix"

	"github.com/cabinvm/cabin/internal/errdefs"
	"github.com/cabinvm/cabin/internal/hypervisor"
	"github.com/cabinvm/cabin/internal/resource"
	"github.com/cabinvm/cabin/internal/vmm"
)

// DefaultGroup names cabin's cgroup below the root of the cpu hierarchy.
const DefaultGroup = "cabin"

// Class is a class of VMs restricted as one: upstream's CPU cgroups.
type Class string

// The classes, as concierge's CpuCgroup names them.
const (
	Termina  Class = "termina"
	PluginVM Class = "pluginvm"
	ARCVM    Class = "arcvm"
)

// classes lists every class.
var classes = []Class{Termina, PluginVM, ARCVM}

func (c Class) valid() bool { return c == Termina || c == PluginVM || c == ARCVM }

// ClassOf is the class of a VM of type t: Plugin VMs and ARCVM have their
// own; every other VM is Termina's, as upstream runs Borealis, Bruschetta
// and Baguette VMs as Termina VMs, and cabin's own (type unknown) too.
func ClassOf(t vmm.VMType) Class {
	switch t {
	case vmm.VMTypePlugin:
		return PluginVM
	case vmm.VMTypeARC:
		return ARCVM
	}
	return Termina
}

// State is how much CPU a class may take, as concierge's
// CpuRestrictionState says.
type State string

const (
	// Foreground is the default: 1024 shares.
	Foreground State = "foreground"
	// Background is 64 shares.
	Background State = "background"
	// BackgroundWithQuota is Background and, for the arcvm class only as
	// upstream has it, a quota (DefaultQuota) bounding it even when
	// nothing else runs; the other classes get Background.
	BackgroundWithQuota State = "background_with_quota"
)

func (s State) valid() bool { return s == Foreground || s == Background || s == BackgroundWithQuota }

// The shares of each state: upstream's VmBaseImpl::SetVmCpuRestriction.
const (
	ForegroundShares = 1024
	BackgroundShares = 64
)

// Quotas are in percent of one CPU over a period of 100 ms, as upstream's
// UpdateCpuQuota writes them (percent × 1000 µs of cpu.cfs_quota_us per
// 100000 µs of cpu.cfs_period_us), and within its range.
const (
	// DefaultQuota is the quota BackgroundWithQuota puts on the arcvm
	// class: 25%, upstream's kCpuPercentThrottle. Upstream has since made
	// it a field-trial parameter (CrOSLateBootArcVmInitialThrottle's
	// "quota", clamped to 1–100) whose value is not public.
	DefaultQuota = 25
	MinQuota     = 1
	MaxQuota     = 100
	// PeriodMicros is the CFS period quotas are given over.
	PeriodMicros = 100000
)

// SharesToWeight is the cgroup v2 cpu.weight of a cgroup v1 cpu.shares
// value, as systemd converts CPUShares= to CPUWeight=: proportionally,
// 1024 shares (v1's default) being weight 100 (v2's), clamped to 1–10000.
// So 64 shares are weight 6, and a background class keeps 1/16 of a
// foreground one's CPU, as on v1. (runc's conversion, opencontainers/
// cgroups' ConvertCPUSharesToCgroupV2Value, bends the ratios between
// its fixed points: 64 shares would be weight 12.)
func SharesToWeight(shares uint64) uint64 {
	return min(max(shares*100/1024, 1), 10000)
}

// WeightToShares is the cgroup v1 cpu.shares of a cgroup v2 cpu.weight,
// systemd's inverse of SharesToWeight, clamped to v1's 2–262144.
func WeightToShares(weight uint64) uint64 {
	return min(max(weight*1024/100, 2), 262144)
}

// CheckQuota refuses a quota outside MinQuota–MaxQuota.
func CheckQuota(percent int) error {
	if percent < MinQuota || percent > MaxQuota {
		return errdefs.InvalidArgument("quota", fmt.Sprintf("%d%%: want %d to %d (percent of one CPU)", percent, MinQuota, MaxQuota))
	}
	return nil
}

// Restriction is a class's restriction.
type Restriction struct {
	State State `json:"state"`
	// Quota is in percent of one CPU; 0 for none.
	Quota int `json:"quota,omitempty"`
}

// Shares is the restriction's weight, in cpu.shares.
func (r Restriction) Shares() uint64 {
	if r.State == Foreground || r.State == "" {
		return ForegroundShares
	}
	return BackgroundShares
}

// Options configure a cabind's cgroups.
type Options struct {
	// Restrictions is the file the classes' restrictions are kept in
	// (statedir.Root.CPURestrictions), in a directory of cabind's.
	Restrictions string
	// Group names cabin's cgroup below the root of the cpu hierarchy:
	// DefaultGroup when empty. A path element.
	Group string
	Log   *slog.Logger
}

// Resource is VMs' CPU cgroups as a per-VM resource, and the classes'
// restrictions.
type Resource struct {
	h     hierarchy
	fs    cgroupFS
	group string
	file  string
	log   *slog.Logger
	// unavailable says why VMs get no cgroups here; "" when they do.
	unavailable string
	// removeWait bounds how long a release waits for a VM's cgroup to
	// empty.
	removeWait time.Duration

	mu           sync.Mutex
	restrictions map[Class]Restriction
}

var _ resource.Kind = (*Resource)(nil)

// New finds the hierarchy that holds the cpu controller, makes cabin's
// cgroup in it, reads the kept restrictions and applies them. Where no
// cpu controller is mounted, or cabind may not make cgroups in it, it
// says why in the log and VMs run without cgroups of their own.
func New(opts Options) (*Resource, error) {
	h, err := findHierarchy(hostFS{})
	return open(opts, h, hostFS{}, err)
}

// open is New on the cgroup filesystem fs, h being its cpu hierarchy, or
// none for the reason noHierarchy.
func open(opts Options, h hierarchy, fs cgroupFS, noHierarchy error) (*Resource, error) {
	log := opts.Log
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	group := opts.Group
	if group == "" {
		group = DefaultGroup
	}
	if group != filepath.Base(group) || group == "." || group == ".." || strings.HasPrefix(group, "cgroup.") {
		return nil, errdefs.InvalidArgument("group", fmt.Sprintf("%q: want a cgroup name", group))
	}
	r := &Resource{h: h, fs: fs, group: group, file: opts.Restrictions, log: log, removeWait: removeWait}
	rs, err := readRestrictions(opts.Restrictions)
	if err != nil {
		return nil, err
	}
	r.restrictions = rs
	switch {
	case noHierarchy != nil:
		r.unavailable = noHierarchy.Error()
	default:
		if err := r.h.makeGroup(r.fs, r.group); err != nil {
			r.unavailable = fmt.Sprintf("cannot make cgroup %s: %v", r.h.path(r.group), err)
		}
	}
	if r.unavailable != "" {
		log.Warn("VMs run without CPU cgroups of their own, and CPU restrictions are refused", "reason", r.unavailable)
		return r, nil
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, c := range classes {
		if _, ok := r.restrictions[c]; !ok {
			continue
		}
		if err := r.applyClass(c); err != nil {
			log.Warn("CPU restriction kept from before", "class", c, "err", err)
		}
	}
	log.Info("CPU cgroups", "cgroup", r.h.path(r.group), "version", r.h.version(), "restrictions", r.restrictions)
	return r, nil
}

// Name is "cgroup".
func (*Resource) Name() string { return "cgroup" }

// Unavailable says why VMs get no cgroups here; "" when they do.
func (r *Resource) Unavailable() string { return r.unavailable }

// Restrict restricts class as concierge's SetVmCpuRestriction asks, for
// its VMs now and those started later, and keeps the restriction for the
// next cabind.
func (r *Resource) Restrict(ctx context.Context, class Class, state State) error {
	if !state.valid() {
		return errdefs.InvalidArgument("cpu_restriction_state", fmt.Sprintf("%q: want foreground, background or background_with_quota", state))
	}
	rs := Restriction{State: state}
	if state == BackgroundWithQuota && class == ARCVM {
		rs.Quota = DefaultQuota
	}
	return r.set(class, rs)
}

// RestrictQuota puts class in the background and bounds it to percent of
// one CPU (CheckQuota), whatever its class: the call a cabin extension of
// SetVmCpuRestriction, which can name a quota, makes.
func (r *Resource) RestrictQuota(ctx context.Context, class Class, percent int) error {
	if err := CheckQuota(percent); err != nil {
		return err
	}
	return r.set(class, Restriction{State: BackgroundWithQuota, Quota: percent})
}

func (r *Resource) set(class Class, rs Restriction) error {
	if !class.valid() {
		return errdefs.InvalidArgument("cpu_cgroup", fmt.Sprintf("%q: want termina, pluginvm or arcvm", class))
	}
	if rs.Quota != 0 {
		if err := CheckQuota(rs.Quota); err != nil {
			return err
		}
	}
	if r.unavailable != "" {
		return errdefs.Errorf(errdefs.ErrFailedPrecondition, "cpu restriction: no CPU cgroups here: %s", r.unavailable)
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	old, had := r.restrictions[class]
	r.restrictions[class] = rs
	err := r.applyClass(class)
	if err != nil {
		err = fmt.Errorf("cpu restriction of %s: %w", class, err)
	} else {
		err = writeRestrictions(r.file, r.restrictions)
	}
	if err != nil {
		r.log.Warn("CPU restriction", "class", class, "state", rs.State, "err", err)
		r.undo(class, old, had)
		return err
	}
	r.log.Info("CPU restriction", "class", class, "state", rs.State, "shares", rs.Shares(), "quota_percent", rs.Quota)
	return nil
}

// undo puts class's restriction back as it was before a set failed.
// Called with r.mu held.
func (r *Resource) undo(class Class, old Restriction, had bool) {
	if had {
		r.restrictions[class] = old
	} else {
		delete(r.restrictions, class)
	}
	if err := r.applyClass(class); err != nil {
		r.log.Warn("put the CPU restriction back", "class", class, "err", err)
	}
}

// Restrictions is each class's restriction as it stands; a class never
// restricted is in the foreground.
func (r *Resource) Restrictions() map[Class]Restriction {
	r.mu.Lock()
	defer r.mu.Unlock()
	out := map[Class]Restriction{}
	for _, c := range classes {
		rs, ok := r.restrictions[c]
		if !ok {
			rs = Restriction{State: Foreground}
		}
		out[c] = rs
	}
	return out
}

// applyClass makes class's cgroup if it is not there and gives it its
// restriction. Called with r.mu held.
func (r *Resource) applyClass(class Class) error {
	dir := path.Join(r.group, string(class))
	if err := r.h.makeParent(r.fs, dir); err != nil {
		return err
	}
	rs := r.restrictions[class]
	return r.h.limit(r.fs, dir, rs.Shares(), rs.Quota)
}

// state is what a VM's record keeps of its cgroup.
type state struct {
	Class Class `json:"class"`
}

// Prepare makes the VM's cgroup, below its class's.
func (r *Resource) Prepare(_ context.Context, vm resource.VM, _ *hypervisor.Config) (resource.Hold, error) {
	if r.unavailable != "" {
		return noHold{}, nil
	}
	return r.hold(vm, ClassOf(vmm.VMType(vm.Type)))
}

// Adopt finds the cgroup of a VM an earlier cabind started, as its record
// keeps it, making it again if it is gone; its hold's Start puts QEMU
// back in it. A VM started before cabind had cgroups gets one, of the
// class of its type.
func (r *Resource) Adopt(_ context.Context, vm resource.VM, raw json.RawMessage) (resource.Hold, error) {
	class := ClassOf(vmm.VMType(vm.Type))
	if raw != nil {
		var st state
		if err := json.Unmarshal(raw, &st); err != nil {
			return nil, fmt.Errorf("cgroup state: %w", err)
		}
		if !st.Class.valid() {
			return nil, fmt.Errorf("cgroup state: unknown class %q", st.Class)
		}
		class = st.Class
	}
	if r.unavailable != "" {
		if raw != nil {
			vm.Log.Warn("cannot take back the VM's CPU cgroup", "class", class, "reason", r.unavailable)
		}
		return noHold{}, nil
	}
	return r.hold(vm, class)
}

func (r *Resource) hold(vm resource.VM, class Class) (*hold, error) {
	id := filepath.Base(vm.Dir.Path())
	if !validID(id) {
		return nil, fmt.Errorf("vm directory %s: its name is not a VM's id: %w", vm.Dir.Path(), errdefs.ErrInternal)
	}
	h := &hold{r: r, class: class, dir: path.Join(r.group, string(class), id)}
	r.mu.Lock()
	defer r.mu.Unlock()
	if err := r.applyClass(class); err != nil {
		return nil, fmt.Errorf("cpu cgroup of class %s: %w", class, err)
	}
	if err := r.h.makeLeaf(r.fs, h.dir); err != nil {
		return nil, fmt.Errorf("cpu cgroup: %w", err)
	}
	return h, nil
}

// validID tells a VM directory's id (statedir.VMID): 16 lower-case hex
// digits.
func validID(id string) bool {
	if len(id) != 16 {
		return false
	}
	for _, c := range id {
		if (c < '0' || c > '9') && (c < 'a' || c > 'f') {
			return false
		}
	}
	return true
}

// hold is one VM's cgroup.
type hold struct {
	r     *Resource
	class Class
	// dir is the cgroup, relative to the hierarchy's root.
	dir string
}

var _ resource.Starter = (*hold)(nil)

func (h *hold) State() json.RawMessage {
	b, _ := json.Marshal(state{Class: h.class})
	return b
}

// Start puts QEMU, every thread of it, in the VM's cgroup; threads it
// starts later are born there. At adoption it puts back a QEMU someone
// moved out.
func (h *hold) Start(_ context.Context, hv hypervisor.VM) error {
	if err := h.r.h.join(h.r.fs, h.dir, hv.PID()); err != nil {
		return fmt.Errorf("put QEMU (pid %d) in cgroup %s: %w", hv.PID(), h.r.h.path(h.dir), err)
	}
	return nil
}

// removeWait bounds how long Release waits for the cgroup to empty: the
// kernel takes QEMU's threads out of it as they exit, a moment after its
// process is seen gone.
const removeWait = 5 * time.Second

// Release removes the VM's cgroup once its QEMU is gone. The class's
// stays, with its restriction.
func (h *hold) Release(ctx context.Context) error {
	deadline := time.Now().Add(h.r.removeWait)
	for delay := time.Millisecond; ; delay = min(2*delay, 200*time.Millisecond) {
		err := h.r.fs.Rmdir(h.r.h.path(h.dir))
		if err == nil || errors.Is(err, os.ErrNotExist) {
			return nil
		}
		if !errors.Is(err, unix.EBUSY) || time.Now().After(deadline) || ctx.Err() != nil {
			return fmt.Errorf("remove cgroup %s (holding %s): %w", h.r.h.path(h.dir), h.r.h.procs(h.r.fs, h.dir), err)
		}
		time.Sleep(delay)
	}
}

// noHold is no cgroup: VMs run in cabind's.
type noHold struct{}

func (noHold) State() json.RawMessage        { return nil }
func (noHold) Release(context.Context) error { return nil }

// itoa is strconv.Itoa for cgroup files.
func itoa[T ~int | ~int64 | ~uint64](n T) string { return strconv.FormatInt(int64(n), 10) }
