package vmm

import (
	"fmt"
	"regexp"
	"slices"
	"sort"
	"strings"
)

// kernelParams is the allow-list of the guest kernel parameters a start
// may add (StartVmRequest.kernel_params): each key with the values it
// may take. Every one of them acts on the guest kernel only, and none
// takes over what cabin controls: init and rdinit (the agent is PID 1),
// console (the serial port cabind logs), the cabin.* parameters the agent
// reads (bootcfg), memory and CPU layout (mem=, memmap=, maxcpus=,
// which the host accounts for), module loading and the root device.
// A word not listed is refused by name, never passed through.
//
//   - loglevel, quiet, debug, ignore_loglevel, printk.time: how much the
//     kernel writes to the console log, which cabind keeps (and rotates)
//     whatever its volume.
//   - panic, panic_on_warn, oops: what the guest does on a panic; with
//     QEMU's -no-reboot any reboot ends the VM, which is what a dead
//     guest should do.
//   - mitigations, spectre_v2, pti, nospectre_v1, nospectre_v2,
//     spec_store_bypass_disable, l1tf, mds: the guest's own CPU-bug
//     mitigations; they guard guest processes from each other and cost
//     guest time, nothing of the host's.
//   - transparent_hugepage, numa_balancing, nowatchdog, nmi_watchdog,
//     audit, ipv6.disable, random.trust_cpu, nokaslr, norandmaps,
//     init_on_alloc, init_on_free, page_alloc.shuffle, slab_nomerge:
//     guest memory-management, hardening and subsystem switches.
//   - clocksource, tsc: the guest's choice of clock; cabin's defaults
//     (tsc=reliable) come first, and a later word wins.
//   - systemd.unified_cgroup_hierarchy, cgroup_no_v1, cgroup_disable:
//     which cgroup hierarchy guest containers see.
var kernelParams = map[string]*regexp.Regexp{
	"loglevel":                         regexp.MustCompile(`^[0-7]$`),
	"quiet":                            nil,
	"debug":                            nil,
	"ignore_loglevel":                  nil,
	"printk.time":                      regexp.MustCompile(`^[01yYnN]$`),
	"panic":                            regexp.MustCompile(`^-?[0-9]{1,4}$`),
	"panic_on_warn":                    regexp.MustCompile(`^[01]$`),
	"oops":                             regexp.MustCompile(`^panic$`),
	"mitigations":                      regexp.MustCompile(`^(off|auto|auto,nosmt)$`),
	"spectre_v2":                       regexp.MustCompile(`^(on|off|auto|retpoline|eibrs)$`),
	"pti":                              regexp.MustCompile(`^(on|off|auto)$`),
	"nospectre_v1":                     nil,
	"nospectre_v2":                     nil,
	"spec_store_bypass_disable":        regexp.MustCompile(`^(on|off|auto|prctl|seccomp)$`),
	"l1tf":                             regexp.MustCompile(`^(full|full,force|flush|flush,nosmt|flush,nowarn|off)$`),
	"mds":                              regexp.MustCompile(`^(full|full,nosmt|off)$`),
	"transparent_hugepage":             regexp.MustCompile(`^(always|madvise|never)$`),
	"numa_balancing":                   regexp.MustCompile(`^(enable|disable)$`),
	"nowatchdog":                       nil,
	"nmi_watchdog":                     regexp.MustCompile(`^[01]$`),
	"audit":                            regexp.MustCompile(`^[01]$`),
	"ipv6.disable":                     regexp.MustCompile(`^[01]$`),
	"random.trust_cpu":                 regexp.MustCompile(`^(on|off)$`),
	"nokaslr":                          nil,
	"norandmaps":                       nil,
	"init_on_alloc":                    regexp.MustCompile(`^[01]$`),
	"init_on_free":                     regexp.MustCompile(`^[01]$`),
	"page_alloc.shuffle":               regexp.MustCompile(`^[01yYnN]$`),
	"slab_nomerge":                     nil,
	"clocksource":                      regexp.MustCompile(`^(tsc|kvm-clock|hpet|acpi_pm|jiffies)$`),
	"tsc":                              regexp.MustCompile(`^(reliable|noirqtime|unstable|nowatchdog)$`),
	"systemd.unified_cgroup_hierarchy": regexp.MustCompile(`^[01]$`),
	"cgroup_no_v1":                     regexp.MustCompile(`^(all|[a-z_]{1,32}(,[a-z_]{1,32}){0,15})$`),
	"cgroup_disable":                   regexp.MustCompile(`^(memory|pressure)$`),
}

// allowedKernelParam checks one word against kernelParams: its key must
// be listed, and take a value (key=value) exactly when the list gives
// one's form.
func allowedKernelParam(p string) error {
	key, value, hasValue := strings.Cut(p, "=")
	form, ok := kernelParams[key]
	switch {
	case !ok:
		return fmt.Errorf("%q is not among the kernel parameters cabin allows (%s)", key, strings.Join(KernelParamKeys(), ", "))
	case form == nil && hasValue:
		return fmt.Errorf("%q takes no value", key)
	case form != nil && !hasValue:
		return fmt.Errorf("%q needs a value (%s)", key, form)
	case form != nil && !form.MatchString(value):
		return fmt.Errorf("%q: value %q is not of the form %s", key, value, form)
	}
	return nil
}

// KernelParamKeys lists the kernel parameters a start may add, sorted.
func KernelParamKeys() []string {
	keys := make([]string, 0, len(kernelParams))
	for k := range kernelParams {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	return slices.Clip(keys)
}
