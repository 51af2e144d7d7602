package guestimage

import (
	"bufio"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// moduleConfig is the kernel option that builds each module the image
// loads into the kernel instead. A module added to the boot or late set
// without an entry here fails TestKernelFragmentCoversModules, so cabin's
// own kernel (scripts/kernel/cabin.config) cannot fall behind the modules
// the generic kernel's guests load.
var moduleConfig = map[string]string{
	"virtio_mmio": "CONFIG_VIRTIO_MMIO", "virtio_pci": "CONFIG_VIRTIO_PCI", "virtio_console": "CONFIG_VIRTIO_CONSOLE",
	"virtio_blk": "CONFIG_VIRTIO_BLK", "virtio_net": "CONFIG_VIRTIO_NET", "virtio_rng": "CONFIG_HW_RANDOM_VIRTIO",
	"xhci_pci": "CONFIG_USB_XHCI_HCD", "virtio_balloon": "CONFIG_VIRTIO_BALLOON",
	"ext4": "CONFIG_EXT4_FS", "overlay": "CONFIG_OVERLAY_FS", "loop": "CONFIG_BLK_DEV_LOOP",
	"9p": "CONFIG_9P_FS", "9pnet_virtio": "CONFIG_NET_9P_VIRTIO",
	"vmw_vsock_virtio_transport": "CONFIG_VIRTIO_VSOCKETS", "vsock": "CONFIG_VSOCKETS",
	"iptable_filter": "CONFIG_IP_NF_FILTER", "iptable_nat": "CONFIG_IP_NF_NAT", "iptable_mangle": "CONFIG_IP_NF_MANGLE",
	"ip6table_filter": "CONFIG_IP6_NF_FILTER", "ip6table_nat": "CONFIG_IP6_NF_NAT", "ip6table_mangle": "CONFIG_IP6_NF_MANGLE",
	"xt_tcpudp": "CONFIG_NETFILTER_XTABLES", "xt_conntrack": "CONFIG_NETFILTER_XT_MATCH_CONNTRACK",
	"xt_state": "CONFIG_NETFILTER_XT_MATCH_STATE", "xt_comment": "CONFIG_NETFILTER_XT_MATCH_COMMENT",
	"xt_multiport": "CONFIG_NETFILTER_XT_MATCH_MULTIPORT", "xt_mark": "CONFIG_NETFILTER_XT_MATCH_MARK",
	"xt_addrtype": "CONFIG_NETFILTER_XT_MATCH_ADDRTYPE", "xt_limit": "CONFIG_NETFILTER_XT_MATCH_LIMIT",
	"xt_owner": "CONFIG_NETFILTER_XT_MATCH_OWNER", "xt_nat": "CONFIG_NETFILTER_XT_NAT",
	"xt_MASQUERADE": "CONFIG_NETFILTER_XT_TARGET_MASQUERADE", "xt_REDIRECT": "CONFIG_NETFILTER_XT_TARGET_REDIRECT",
	"ipt_REJECT": "CONFIG_IP_NF_TARGET_REJECT", "ip6t_REJECT": "CONFIG_IP6_NF_TARGET_REJECT",
	"xt_LOG": "CONFIG_NETFILTER_XT_TARGET_LOG",
}

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
		"CONFIG_MODULES": "n", "CONFIG_DEBUG_WX": "n", "CONFIG_KPROBES": "n",
	} {
		if frag[sym] != want {
			t.Errorf("%s is %q in cabin.config, want %s", sym, frag[sym], want)
		}
	}
}
