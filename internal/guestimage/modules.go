package guestimage

import (
	"bufio"
	"bytes"
	"context"
	"debug/elf"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
)

// The modules the image carries. The boot set is what the agent needs to
// reach the host on a microvm (virtio-mmio devices described by ACPI, the
// virtio console port); the late set is loaded once it serves.
var (
	// virtio_pci finds the same devices on a q35 VM (one started with
	// hot-plug), where they are PCI devices; on a microvm it finds none.
	bootModuleNames = []string{"virtio_mmio", "virtio_pci", "virtio_console"}
	lateModuleNames = []string{
		"virtio_blk", "virtio_net", "virtio_rng",
		// The USB controller of a q35 VM, for the host's USB devices
		// plugged into it (usbcore comes with it).
		"xhci_pci",
		// The memory balloon, which also reports free pages to the
		// host (CONFIG_PAGE_REPORTING is built in).
		"virtio_balloon",
		"ext4", "overlay",
		// Image files as disks (losetup): a guest's own, and the
		// stateful disk's test in a VM until the host attaches disks.
		"loop",
		"9p", "9pnet_virtio",
		"vmw_vsock_virtio_transport", "vsock",
		// Last, for iptables (programs.go): the guest has no modprobe
		// for the kernel to load them on demand, so the tables and the
		// extensions the image's iptables has are loaded up front.
		// Tables are set up in a namespace, and conntrack hooked, only
		// once rules ask for them.
		"iptable_filter", "iptable_nat", "iptable_mangle",
		"ip6table_filter", "ip6table_nat", "ip6table_mangle",
		"xt_tcpudp", "xt_conntrack", "xt_state", "xt_comment", "xt_multiport",
		"xt_mark", "xt_addrtype", "xt_limit", "xt_owner",
		"xt_nat", "xt_MASQUERADE", "xt_REDIRECT", "ipt_REJECT", "ip6t_REJECT", "xt_LOG",
	}
)

// module is one kernel module as its .modinfo describes it.
type module struct {
	Name    string   // normalised: '-' written as '_'
	Path    string   // relative to the modules root, slash-separated
	Depends []string // hard dependencies (module names)
	PreDeps []string // softdep "pre:" names, which may be aliases
	Aliases []string
}

// moduleIndex is a lib/modules/<release> tree indexed by name and alias,
// what depmod's output would give us if the package shipped it.
type moduleIndex struct {
	root    string
	byName  map[string]*module
	byAlias map[string][]string // alias → module names, sorted
	builtin map[string]bool
}

// modName normalises a module name: the kernel and modprobe treat '-' and
// '_' alike.
func modName(s string) string { return strings.ReplaceAll(s, "-", "_") }

// indexModules reads the .modinfo section of every .ko below root.
// Compressed modules must have been decompressed first
// (decompressModules).
func indexModules(ctx context.Context, root string) (*moduleIndex, error) {
	ix := &moduleIndex{
		root:    root,
		byName:  map[string]*module{},
		byAlias: map[string][]string{},
		builtin: map[string]bool{},
	}
	err := filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if err := ctx.Err(); err != nil {
			return err
		}
		if d.IsDir() || !strings.HasSuffix(p, ".ko") {
			return nil
		}
		rel, err := filepath.Rel(root, p)
		if err != nil {
			return err
		}
		m, err := readModinfo(p)
		if err != nil {
			return fmt.Errorf("module %s: %w", rel, err)
		}
		m.Path = filepath.ToSlash(rel)
		if m.Name == "" {
			m.Name = modName(strings.TrimSuffix(filepath.Base(p), ".ko"))
		}
		if prev, dup := ix.byName[m.Name]; dup {
			return fmt.Errorf("module %s: name %q also used by %s", rel, m.Name, prev.Path)
		}
		ix.byName[m.Name] = m
		for _, a := range m.Aliases {
			ix.byAlias[a] = append(ix.byAlias[a], m.Name)
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("index modules: %w", err)
	}
	for a := range ix.byAlias {
		slices.Sort(ix.byAlias[a])
		ix.byAlias[a] = slices.Compact(ix.byAlias[a])
	}
	// modules.builtin names what is compiled in: asking for one of those
	// is not an error, there is just nothing to load.
	if data, err := os.ReadFile(filepath.Join(root, "modules.builtin")); err == nil {
		for _, line := range strings.Split(string(data), "\n") {
			if line = strings.TrimSpace(line); line != "" {
				ix.builtin[modName(strings.TrimSuffix(filepath.Base(line), ".ko"))] = true
			}
		}
	} else if !errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("index modules: %w", err)
	}
	return ix, nil
}

// readModinfo parses a module's .modinfo section: NUL-separated key=value.
func readModinfo(path string) (*module, error) {
	ef, err := elf.Open(path)
	if err != nil {
		return nil, fmt.Errorf("not an ELF object: %w", err)
	}
	defer ef.Close()
	sec := ef.Section(".modinfo")
	if sec == nil {
		return nil, errors.New("no .modinfo section")
	}
	data, err := sec.Data()
	if err != nil {
		return nil, fmt.Errorf("read .modinfo: %w", err)
	}
	return parseModinfo(data), nil
}

func parseModinfo(data []byte) *module {
	m := &module{}
	for _, kv := range bytes.Split(data, []byte{0}) {
		key, value, ok := strings.Cut(string(kv), "=")
		if !ok {
			continue
		}
		switch key {
		case "name":
			m.Name = modName(value)
		case "depends":
			for _, d := range strings.Split(value, ",") {
				if d = strings.TrimSpace(d); d != "" {
					m.Depends = append(m.Depends, modName(d))
				}
			}
		case "alias":
			m.Aliases = append(m.Aliases, modName(value))
		case "softdep":
			m.PreDeps = append(m.PreDeps, softdepPre(value)...)
		}
	}
	return m
}

// softdepPre returns the names after "pre:" in a softdep value such as
// "pre: crc32c foo post: bar". Post dependencies are not needed for the
// module to work, so they are left to whoever wants them.
func softdepPre(v string) []string {
	var out []string
	pre := false
	for _, w := range strings.Fields(v) {
		switch w {
		case "pre:":
			pre = true
		case "post:":
			pre = false
		default:
			if pre {
				out = append(out, modName(w))
			}
		}
	}
	return out
}

// lookup finds the modules providing name: the module of that name, else
// every module declaring it as an alias (crc32c → crc32c_generic and
// crc32c_intel: the kernel picks the best one that is loaded).
func (ix *moduleIndex) lookup(name string) []*module {
	if m, ok := ix.byName[name]; ok {
		return []*module{m}
	}
	var out []*module
	for _, n := range ix.byAlias[name] {
		out = append(out, ix.byName[n])
	}
	return out
}

// resolve returns the modules named by want plus everything they need, in
// load order (dependencies first; ties broken by the order of want, then
// by name, so the result is deterministic). Modules in skip are neither
// returned nor descended into: they are loaded already. Requested names
// that are neither modules nor built in come back in missing; a missing
// dependency of a present module is an error, since the kernel would refuse
// to load it.
func (ix *moduleIndex) resolve(want []string, skip map[string]bool) (order []*module, missing []string, err error) {
	const (
		visiting = 1
		done     = 2
	)
	state := map[string]int{}
	var visit func(m *module, chain []string) error
	visit = func(m *module, chain []string) error {
		switch state[m.Name] {
		case done:
			return nil
		case visiting:
			return fmt.Errorf("dependency cycle: %s", strings.Join(append(chain, m.Name), " → "))
		}
		state[m.Name] = visiting
		chain = append(chain, m.Name)
		// Soft pre-dependencies first: a cycle through a softdep is not
		// fatal (modprobe ignores it too), so those edges skip modules
		// already on the path.
		for _, name := range sortedCopy(m.PreDeps) {
			for _, p := range ix.lookup(name) {
				if skip[p.Name] || state[p.Name] == visiting {
					continue
				}
				if err := visit(p, chain); err != nil {
					return err
				}
			}
		}
		for _, name := range sortedCopy(m.Depends) {
			if skip[name] {
				continue
			}
			d, ok := ix.byName[name]
			if !ok {
				return fmt.Errorf("module %s depends on %s, which is not in the kernel package", m.Name, name)
			}
			if err := visit(d, chain); err != nil {
				return err
			}
		}
		state[m.Name] = done
		order = append(order, m)
		return nil
	}
	for _, w := range want {
		name := modName(w)
		if skip[name] {
			continue
		}
		provs := ix.lookup(name)
		if len(provs) == 0 {
			if !ix.builtin[name] {
				missing = append(missing, w)
			}
			continue
		}
		for _, p := range provs {
			if skip[p.Name] {
				continue
			}
			if err := visit(p, nil); err != nil {
				return nil, nil, err
			}
		}
	}
	return order, missing, nil
}

func sortedCopy(s []string) []string {
	c := slices.Clone(s)
	slices.Sort(c)
	return c
}

// moduleSets resolves the boot and late sets. A boot module the kernel
// lacks is an error (the agent could not reach the host); a late one only a
// warning, returned for the caller to log.
func (ix *moduleIndex) moduleSets() (boot, late []*module, warnings []string, err error) {
	boot, missing, err := ix.resolve(bootModuleNames, nil)
	if err != nil {
		return nil, nil, nil, fmt.Errorf("boot modules: %w", err)
	}
	if len(missing) > 0 {
		return nil, nil, nil, fmt.Errorf("boot modules: kernel has no module %s", strings.Join(missing, ", "))
	}
	have := map[string]bool{}
	for _, m := range boot {
		have[m.Name] = true
	}
	late, missing, err = ix.resolve(lateModuleNames, have)
	if err != nil {
		return nil, nil, nil, fmt.Errorf("late modules: %w", err)
	}
	for _, m := range missing {
		warnings = append(warnings, fmt.Sprintf("kernel has no module %s", m))
	}
	return boot, late, warnings, nil
}

// decompressModules turns every .ko.xz and .ko.zst below root into a plain
// .ko in place, so the index can read .modinfo and the agent can pass the
// file to finit_module without the kernel needing module decompression.
// Files go to xz/zstd in batches: one process per module would cost
// seconds on a kernel that compresses all four thousand.
func decompressModules(ctx context.Context, root string) error {
	var xzs, zsts []string
	err := filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		switch {
		case d.IsDir():
		case strings.HasSuffix(p, ".ko.xz"):
			xzs = append(xzs, p)
		case strings.HasSuffix(p, ".ko.zst"):
			zsts = append(zsts, p)
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("decompress modules: %w", err)
	}
	run := func(tool, pkg string, args, files []string) error {
		if len(files) == 0 {
			return nil
		}
		if _, err := exec.LookPath(tool); err != nil {
			return fmt.Errorf("decompress modules: %s not found (install %s): %w", tool, pkg, err)
		}
		for len(files) > 0 {
			n := min(len(files), 256)
			var stderr bytes.Buffer
			// "--" ends options; the paths are ours (below root) anyway.
			cmd := exec.CommandContext(ctx, tool, append(append(slices.Clone(args), "--"), files[:n]...)...)
			cmd.Stderr = &stderr
			if err := cmd.Run(); err != nil {
				return fmt.Errorf("decompress modules with %s: %w: %s", tool, err, firstLine(stderr.String()))
			}
			files = files[n:]
		}
		return nil
	}
	if err := run("xz", "xz-utils", []string{"-d", "-q"}, xzs); err != nil {
		return err
	}
	return run("zstd", "zstd", []string{"-d", "-q", "--rm"}, zsts)
}

func firstLine(s string) string {
	sc := bufio.NewScanner(strings.NewReader(s))
	if sc.Scan() {
		return sc.Text()
	}
	return ""
}
