package qemu

import (
	"bufio"
	"fmt"
	"io"
	"os"
	"strings"

	"github.com/cabinvm/cabin/internal/errdefs"
	"github.com/cabinvm/cabin/internal/hypervisor"
)

// KVMDevice is the device node KVM is reached through.
const KVMDevice = "/dev/kvm"

// DetectAccel chooses the accelerator for this host from /proc/cpuinfo's
// contents: KVM when the CPU advertises hardware virtualization (vmx or svm)
// and /dev/kvm opens read-write, else TCG. The reason says why, for the log.
//
// The device node alone proves nothing: a PVM-backed KVM (CONFIG_KVM_PVM)
// provides /dev/kvm on CPUs without vmx/svm, and a standard guest kernel
// hangs on it.
func DetectAccel(cpuinfo io.Reader) (hypervisor.Accel, string, error) {
	return detectAccel(cpuinfo, openKVM)
}

func openKVM() error {
	f, err := os.OpenFile(KVMDevice, os.O_RDWR, 0)
	if err != nil {
		return err
	}
	return f.Close()
}

// detectAccel is DetectAccel with the device check passed in, for tests.
func detectAccel(cpuinfo io.Reader, openDevice func() error) (hypervisor.Accel, string, error) {
	flag, err := virtFlag(cpuinfo)
	if err != nil {
		return "", "", err
	}
	if flag == "" {
		return hypervisor.AccelTCG, "cpu lacks vmx/svm", nil
	}
	if err := openDevice(); err != nil {
		return hypervisor.AccelTCG, fmt.Sprintf("cpu has %s but %s is unusable: %v", flag, KVMDevice, err), nil
	}
	return hypervisor.AccelKVM, fmt.Sprintf("cpu has %s and %s opens read-write", flag, KVMDevice), nil
}

// virtFlag returns "vmx" or "svm" when the first CPU's flags line in
// cpuinfo lists one, "" when it lists neither. Every CPU of a host reports
// the same virtualization flags, so the first line decides.
func virtFlag(cpuinfo io.Reader) (string, error) {
	sc := bufio.NewScanner(cpuinfo)
	for sc.Scan() {
		key, value, ok := strings.Cut(sc.Text(), ":")
		if !ok || strings.TrimSpace(key) != "flags" {
			continue
		}
		for _, f := range strings.Fields(value) {
			if f == "vmx" || f == "svm" {
				return f, nil
			}
		}
		return "", nil
	}
	if err := sc.Err(); err != nil {
		return "", fmt.Errorf("read cpuinfo: %w", err)
	}
	return "", fmt.Errorf("read cpuinfo: no flags line")
}

// ParseAccel parses an accelerator override: "kvm", "tcg", or "auto" (or
// empty) for detection, which it returns as the empty Accel.
func ParseAccel(s string) (hypervisor.Accel, error) {
	switch s {
	case "", "auto":
		return "", nil
	case string(hypervisor.AccelKVM), string(hypervisor.AccelTCG):
		return hypervisor.Accel(s), nil
	}
	return "", fmt.Errorf("accel %q: want auto, kvm or tcg: %w", s, errdefs.ErrInvalidArgument)
}
