package guestimage

import (
	"bufio"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// readFragment reads a kernel config fragment: symbol → value.
func readFragment(t *testing.T, path string) map[string]string {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	out := map[string]string{}
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		sym, val, ok := strings.Cut(line, "=")
		if !ok || !strings.HasPrefix(sym, "CONFIG_") {
			t.Fatalf("%s: odd line %q", path, line)
		}
		if prev, dup := out[sym]; dup {
			t.Fatalf("%s: %s given twice (%s, %s)", path, sym, prev, val)
		}
		out[sym] = val
	}
	if err := sc.Err(); err != nil {
		t.Fatal(err)
	}
	return out
}

func TestKernelFragmentCoversModules(t *testing.T) {
	frag := readFragment(t, filepath.Join("..", "..", "scripts", "kernel", "cabin.config"))
	for _, m := range append(append([]string(nil), bootModuleNames...), lateModuleNames...) {
		sym, ok := moduleConfig[m]
		if !ok {
			t.Errorf("module %s: no kernel option known for it (moduleConfig)", m)
			continue
		}
		if frag[sym] != "y" {
			t.Errorf("module %s: %s is %q in cabin.config, want y (built in)", m, sym, frag[sym])
		}
	}
	// What the guest needs besides modules: the boot itself, the agent's
	// mounts and containers, and no module loading at all.
	for sym, want := range map[string]string{
		"CONFIG_PVH": "y", "CONFIG_ACPI": "y", "CONFIG_SERIAL_8250_CONSOLE": "y", "CONFIG_BLK_DEV_INITRD": "y",
		"CONFIG_DEVTMPFS": "y", "CONFIG_TMPFS": "y", "CONFIG_UNIX98_PTYS": "y", "CONFIG_PRINTK_TIME": "y",
		"CONFIG_CGROUPS": "y", "CONFIG_MEMCG": "y", "CONFIG_CGROUP_BPF": "y", "CONFIG_SECCOMP_FILTER": "y",
		"CONFIG_NAMESPACES": "y", "CONFIG_USER_NS": "y", "CONFIG_NET_NS": "y", "CONFIG_PID_NS": "y",
		"CONFIG_PAGE_REPORTING": "y", "CONFIG_NO_HZ_IDLE": "y",
		// Kernel memory charged to containers' cgroups; the counters and
		// sysfs files the Kata calls read.
		"CONFIG_SLUB": "y", "CONFIG_MEMCG_KMEM": "y", "CONFIG_VM_EVENT_COUNTERS": "y", "CONFIG_MEMORY_HOTPLUG": "y",
		"CONFIG_SWAP": "y", "CONFIG_CGROUP_HUGETLB": "y", "CONFIG_BLK_DEV_THROTTLING": "y", "CONFIG_IPV6_SIT": "n",
		"CONFIG_MODULES": "n", "CONFIG_DEBUG_WX": "n", "CONFIG_KPROBES": "n",
	} {
		if frag[sym] != want {
			t.Errorf("%s is %q in cabin.config, want %s", sym, frag[sym], want)
		}
	}
}
