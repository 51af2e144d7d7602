package guestimage

import (
	"bufio"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
)

// moduleConfig is the kernel option that builds each module of the boot
// and late sets into the kernel instead. A kernel given as a file gets no
// modules, so each must be built in; a module added to a set without an
// entry here fails TestKernelFragmentCoversModules, so cabin's own kernel
// (scripts/kernel/cabin.config) cannot fall behind the generic kernel's.
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

// guestKernelNeeds are the options the guest needs of a kernel besides
// its modules: the agent's mounts, cgroups and namespaces for containers.
var guestKernelNeeds = []string{
	"CONFIG_BLK_DEV_INITRD", "CONFIG_DEVTMPFS", "CONFIG_TMPFS", "CONFIG_UNIX98_PTYS",
	"CONFIG_CGROUPS", "CONFIG_MEMCG", "CONFIG_NAMESPACES", "CONFIG_PID_NS", "CONFIG_NET_NS",
}

// kernelConfigNames are the files beside a vmlinux that may hold the
// configuration it was built with: a build tree's, and what a copy
// beside it would be called.
var kernelConfigNames = []string{".config", "config"}

// errNoKernelConfig is returned when no configuration lies beside a
// vmlinux, so what it has built in cannot be checked.
var errNoKernelConfig = errors.New("no kernel configuration beside it")

// readKernelConfig reads the configuration beside vmlinux: symbol → value
// ("y", "m", a number or a string), unset symbols absent.
func readKernelConfig(vmlinux string) (map[string]string, string, error) {
	for _, name := range kernelConfigNames {
		p := filepath.Join(filepath.Dir(vmlinux), name)
		f, err := os.Open(p)
		if errors.Is(err, fs.ErrNotExist) {
			continue
		}
		if err != nil {
			return nil, p, err
		}
		defer f.Close()
		cfg, err := parseKernelConfig(bufio.NewScanner(f))
		return cfg, p, err
	}
	return nil, "", errNoKernelConfig
}

// parseKernelConfig reads Kconfig's output: CONFIG_X=value lines, comments
// and blank lines skipped.
func parseKernelConfig(sc *bufio.Scanner) (map[string]string, error) {
	sc.Buffer(make([]byte, 0, 4096), 1<<20)
	cfg := map[string]string{}
	for n := 1; sc.Scan(); n++ {
		line := strings.TrimSpace(sc.Text())
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		sym, val, ok := strings.Cut(line, "=")
		if !ok || !strings.HasPrefix(sym, "CONFIG_") || strings.ContainsAny(sym, " \t") {
			return nil, fmt.Errorf("line %d: not CONFIG_NAME=value: %.60q", n, line)
		}
		cfg[sym] = val
	}
	if err := sc.Err(); err != nil {
		return nil, err
	}
	return cfg, nil
}

// checkBuiltIn checks that a kernel configured as cfg has built in what
// the guest needs, since a kernel given as a file gets no modules. A
// missing boot module or need is an error naming the option; missing late
// modules come back as warnings, as they do for Debian's kernel.
func checkBuiltIn(cfg map[string]string) (warnings []string, err error) {
	var missing []string
	need := func(sym, what string) string {
		switch cfg[sym] {
		case "y":
			return ""
		case "m":
			return fmt.Sprintf("%s=m (%s): a module, and cabin loads no modules into a kernel given as a file", sym, what)
		default:
			return fmt.Sprintf("%s is not set (%s)", sym, what)
		}
	}
	for _, m := range bootModuleNames {
		if p := need(moduleConfig[m], m); p != "" {
			missing = append(missing, p)
		}
	}
	for _, sym := range guestKernelNeeds {
		if p := need(sym, "the agent needs it"); p != "" {
			missing = append(missing, p)
		}
	}
	if len(missing) > 0 {
		return nil, fmt.Errorf("the guest kernel lacks what the agent needs: %s", strings.Join(missing, "; "))
	}
	for _, m := range lateModuleNames {
		if p := need(moduleConfig[m], m); p != "" {
			warnings = append(warnings, p)
		}
	}
	return warnings, nil
}
