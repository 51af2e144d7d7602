package qemu

import (
	"errors"
	"net"
	"os"
	"slices"
	"strconv"
	"strings"
	"testing"

	"github.com/cabinvm/cabin/internal/bootcfg"
	"github.com/cabinvm/cabin/internal/errdefs"
	"github.com/cabinvm/cabin/internal/hypervisor"
	"github.com/cabinvm/cabin/internal/statedir"
)

const testDir = statedir.VMDir("/var/lib/cabin/vms/0123456789abcdef")

// testMAC is unicast and locally administered.
var testMAC = net.HardwareAddr{0x02, 0x01, 0x23, 0x45, 0x67, 0x89}

func baseConfig() Config {
	return Config{Config: hypervisor.Config{
		Name:      "vm1",
		Dir:       testDir,
		Machine:   hypervisor.MachineMicroVM,
		Accel:     hypervisor.AccelTCG,
		CPUs:      1,
		MemoryMiB: 256,
		Kernel:    "/var/lib/cabin/image/kernel/6.1/vmlinux",
		Initrd:    "/var/lib/cabin/image/initramfs/abc.cpio",
	}}
}

func TestCmdlineDefault(t *testing.T) {
	got, err := cmdline(baseConfig())
	if err != nil {
		t.Fatal(err)
	}
	d := "/var/lib/cabin/vms/0123456789abcdef/"
	want := []string{
		"-D", d + "qemu.log",
		"-name", "cabin-vm1,process=cabin-vm1",
		"-nodefaults", "-no-user-config", "-display", "none", "-no-reboot",
		"-S", "-daemonize", "-pidfile", d + "qemu.pid",
		"-M", "microvm,acpi=on,isa-serial=on",
		"-accel", "tcg,tb-size=64", "-cpu", TCGCPU,
		"-m", "256", "-smp", "1",
		"-chardev", "socket,id=qmp,path=" + d + "qmp.sock,server=on,wait=off",
		"-mon", "chardev=qmp,mode=control",
		"-chardev", "socket,id=console,path=" + d + "console.sock,server=on,wait=off",
		"-serial", "chardev:console",
		"-device", "virtio-serial-device,id=vser0",
		"-chardev", "socket,id=agent,path=" + d + "agent.sock,server=on,wait=off",
		"-device", "virtserialport,bus=vser0.0,chardev=agent,name=cabin.agent",
		"-chardev", "socket,id=rpc,path=" + d + "rpc.sock,server=on,wait=off",
		"-device", "virtserialport,bus=vser0.0,chardev=rpc,name=cabin.rpc",
		"-device", "virtio-balloon-device,id=balloon0,deflate-on-oom=on,free-page-reporting=on",
		"-kernel", "/var/lib/cabin/image/kernel/6.1/vmlinux",
		"-initrd", "/var/lib/cabin/image/initramfs/abc.cpio",
		"-append", "console=ttyS0 quiet loglevel=0 panic=-1 i8042.noaux i8042.nokbd i8042.nomux cryptomgr.notests tsc=reliable no_timer_check initcall_blacklist=tracer_init_tracefs",
	}
	if !slices.Equal(got, want) {
		t.Errorf("Cmdline:\n got %q\nwant %q", got, want)
	}
}

// argAfter returns the argument that follows the first flag in args.
func argAfter(args []string, flag string) (string, bool) {
	i := slices.Index(args, flag)
	if i < 0 || i+1 >= len(args) {
		return "", false
	}
	return args[i+1], true
}

// openFile returns an open file for a Config's KernelFile or InitrdFile;
// Cmdline never reads it.
func openFile(t *testing.T) *os.File {
	t.Helper()
	f, err := os.Open(os.DevNull)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { f.Close() })
	return f
}

func TestCmdline(t *testing.T) {
	kernelFile, initrdFile := openFile(t), openFile(t)
	tests := []struct {
		name   string
		modify func(*Config)
		// want maps a flag to the value it must have; "" asserts the
		// flag is absent.
		want map[string]string
		// contains lists consecutive argument pairs that must appear.
		contains [][2]string
	}{
		{
			name:   "tcg multi-threaded with several cpus",
			modify: func(c *Config) { c.CPUs = 4 },
			want:   map[string]string{"-accel": "tcg,tb-size=64,thread=multi", "-cpu": TCGCPU, "-smp": "4"},
		},
		{
			name:   "kvm",
			modify: func(c *Config) { c.Accel = hypervisor.AccelKVM; c.CPUs = 2 },
			want:   map[string]string{"-accel": "kvm", "-cpu": "host"},
		},
		{
			name:   "q35 uses pci devices",
			modify: func(c *Config) { c.Machine = hypervisor.MachineQ35 },
			want:   map[string]string{"-M": q35Machine, "-device": "virtio-serial-pci,id=vser0"},
			contains: [][2]string{
				{"-device", "virtserialport,bus=vser0.0,chardev=agent,name=" + bootcfg.AgentPort},
				{"-device", "virtserialport,bus=vser0.0,chardev=rpc,name=" + bootcfg.RPCPort},
			},
		},
		{
			name:   "no initrd",
			modify: func(c *Config) { c.Initrd = "" },
			want:   map[string]string{"-initrd": ""},
		},
		{
			name: "kernel and initrd passed open",
			modify: func(c *Config) {
				c.KernelFile, c.InitrdFile = kernelFile, initrdFile
			},
			want: map[string]string{"-kernel": "/proc/self/fd/3", "-initrd": "/proc/self/fd/4"},
		},
		{
			name: "kernel passed open, no initrd",
			modify: func(c *Config) {
				c.KernelFile, c.Initrd = kernelFile, ""
			},
			want: map[string]string{"-kernel": "/proc/self/fd/3", "-initrd": ""},
		},
		{
			name:   "initrd passed open, kernel by path",
			modify: func(c *Config) { c.InitrdFile = initrdFile },
			want:   map[string]string{"-kernel": baseConfig().Kernel, "-initrd": "/proc/self/fd/3"},
		},
		{
			// The paths of open files never reach QEMU: checkBootPath
			// has nothing to guard.
			name: "paths of open files are not checked",
			modify: func(c *Config) {
				c.Kernel, c.KernelFile = "", kernelFile
				c.Initrd, c.InitrdFile = "/home/u/a,/etc/shadow", initrdFile
			},
			want: map[string]string{"-kernel": "/proc/self/fd/3", "-initrd": "/proc/self/fd/4"},
		},
		{
			name:   "memory",
			modify: func(c *Config) { c.MemoryMiB = 64 },
			want:   map[string]string{"-m": "64"},
		},
		{
			name:   "kernel args follow the defaults",
			modify: func(c *Config) { c.KernelArgs = []string{"loglevel=7", "cabin.mode=echo", "console=ttyS0,115200"} },
			want: map[string]string{"-append": strings.Join(DefaultKernelArgs, " ") +
				" loglevel=7 cabin.mode=echo console=ttyS0,115200"},
		},
		{
			name: "tcg guest told its tsc frequency, before the caller's args",
			modify: func(c *Config) {
				c.TSCKHz = 2596111
				c.KernelArgs = []string{"loglevel=7"}
			},
			want: map[string]string{"-append": strings.Join(DefaultKernelArgs, " ") +
				" tsc_early_khz=2596111 loglevel=7",
				// Told its TSC's rate, it needs no PIT to calibrate.
				"-M": "microvm,acpi=on,isa-serial=on,pit=off"},
		},
		{
			name: "tcg guest told its tsc frequency keeps the PIT when asked",
			modify: func(c *Config) {
				c.TSCKHz = 2596111
				c.PIT = true
			},
			want: map[string]string{"-M": "microvm,acpi=on,isa-serial=on"},
		},
		{
			name: "kvm guest not told its tsc frequency",
			modify: func(c *Config) {
				c.Accel = hypervisor.AccelKVM
				c.TSCKHz = 2596111
			},
			want: map[string]string{"-append": strings.Join(DefaultKernelArgs, " "),
				"-M": "microvm,acpi=on,isa-serial=on"},
		},
		{
			// Key=value options need ",," for a comma; -pidfile and -D
			// take their argument verbatim (QEMU 7.2, verified: escaping
			// those breaks them). -kernel and -initrd may not hold a
			// comma at all: see TestCmdlineBootPaths.
			name: "commas in the state dir",
			modify: func(c *Config) {
				c.Dir = "/tmp/a,b/q1"
			},
			want: map[string]string{
				"-D":       "/tmp/a,b/q1/qemu.log",
				"-pidfile": "/tmp/a,b/q1/qemu.pid",
				"-kernel":  baseConfig().Kernel,
				"-initrd":  baseConfig().Initrd,
				"-name":    "cabin-vm1,process=cabin-vm1",
			},
			contains: [][2]string{
				{"-chardev", "socket,id=qmp,path=/tmp/a,,b/q1/qmp.sock,server=on,wait=off"},
				{"-chardev", "socket,id=console,path=/tmp/a,,b/q1/console.sock,server=on,wait=off"},
				{"-chardev", "socket,id=agent,path=/tmp/a,,b/q1/agent.sock,server=on,wait=off"},
			},
		},
		{
			name: "read-only share on microvm",
			modify: func(c *Config) {
				c.Shares = []hypervisor.Share{{Tag: bootcfg.RootfsTag, Path: "/var/lib/cabin/image/rootfs/abc", ReadOnly: true}}
			},
			contains: [][2]string{
				{"-fsdev", "local,id=fs0,path=/var/lib/cabin/image/rootfs/abc,security_model=none,readonly=on"},
				{"-device", "virtio-9p-device,fsdev=fs0,mount_tag=cabinRootfs"},
			},
		},
		{
			name: "shares on q35 are pci devices, numbered in order",
			modify: func(c *Config) {
				c.Machine = hypervisor.MachineQ35
				c.Shares = []hypervisor.Share{
					{Tag: "ro", Path: "/srv/a", ReadOnly: true},
					{Tag: "rw_2-x", Path: "/srv/b"},
				}
			},
			contains: [][2]string{
				{"-fsdev", "local,id=fs0,path=/srv/a,security_model=none,readonly=on"},
				{"-device", "virtio-9p-pci,fsdev=fs0,mount_tag=ro"},
				{"-fsdev", "local,id=fs1,path=/srv/b,security_model=mapped-xattr"},
				{"-device", "virtio-9p-pci,fsdev=fs1,mount_tag=rw_2-x"},
			},
		},
		{
			// A comma in the path would start another option: QEMU
			// 7.2 reads ",," as one comma (verified: it opened
			// /tmp/a,b), and "path=/x,readonly=off" must stay a path.
			name: "commas in a share's path are escaped",
			modify: func(c *Config) {
				c.Shares = []hypervisor.Share{{Tag: "t", Path: "/tmp/a,b/x,readonly=off", ReadOnly: true}}
			},
			contains: [][2]string{
				{"-fsdev", "local,id=fs0,path=/tmp/a,,b/x,,readonly=off,security_model=none,readonly=on"},
			},
		},
		{
			name:   "no shares, no 9p",
			modify: func(c *Config) { c.Shares = nil },
			want:   map[string]string{"-fsdev": ""},
		},
		{
			name: "a tap NIC on microvm",
			modify: func(c *Config) {
				c.NICs = []hypervisor.NIC{{MAC: testMAC, Tap: "cbn0123456789ab"}}
			},
			contains: [][2]string{
				{"-netdev", "tap,id=net0,ifname=cbn0123456789ab,script=no,downscript=no,vhost=off"},
				{"-device", "virtio-net-device,netdev=net0,mac=02:01:23:45:67:89"},
			},
		},
		{
			name: "a user-mode NIC on q35, its addresses spelled out",
			modify: func(c *Config) {
				c.Machine = hypervisor.MachineQ35
				c.NICs = []hypervisor.NIC{{MAC: testMAC}}
			},
			contains: [][2]string{
				{"-netdev", "user,id=net0,net=10.0.2.0/24,host=10.0.2.2,dns=10.0.2.3,dhcpstart=10.0.2.15"},
				{"-device", "virtio-net-pci,netdev=net0,mac=02:01:23:45:67:89"},
			},
		},
		{
			name: "NICs are numbered in order",
			modify: func(c *Config) {
				c.NICs = []hypervisor.NIC{{MAC: testMAC, Tap: "tap-a"}, {MAC: net.HardwareAddr{0x06, 0, 0, 0, 0, 1}}}
			},
			contains: [][2]string{
				{"-netdev", "tap,id=net0,ifname=tap-a,script=no,downscript=no,vhost=off"},
				{"-device", "virtio-net-device,netdev=net0,mac=02:01:23:45:67:89"},
				{"-netdev", "user,id=net1,net=10.0.2.0/24,host=10.0.2.2,dns=10.0.2.3,dhcpstart=10.0.2.15"},
				{"-device", "virtio-net-device,netdev=net1,mac=06:00:00:00:00:01"},
			},
		},
		{
			name: "vhost-net for a KVM guest where the host has it",
			modify: func(c *Config) {
				c.Accel, c.VhostNet = hypervisor.AccelKVM, true
				c.NICs = []hypervisor.NIC{{MAC: testMAC, Tap: "t0"}}
			},
			contains: [][2]string{{"-netdev", "tap,id=net0,ifname=t0,script=no,downscript=no,vhost=on"}},
		},
		{
			// vhost needs KVM's ioeventfds.
			name: "no vhost-net under TCG",
			modify: func(c *Config) {
				c.VhostNet = true
				c.NICs = []hypervisor.NIC{{MAC: testMAC, Tap: "t0"}}
			},
			contains: [][2]string{{"-netdev", "tap,id=net0,ifname=t0,script=no,downscript=no,vhost=off"}},
		},
		{
			name:   "no NICs, no network",
			modify: func(c *Config) { c.NICs = nil },
			want:   map[string]string{"-netdev": ""},
		},
		{
			name:   "unsafe name falls back to the directory",
			modify: func(c *Config) { c.Name = "my vm,process=x" },
			want:   map[string]string{"-name": "cabin-0123456789abcdef,process=cabin-0123456789abcdef"},
		},
		{
			name:   "empty name falls back to the directory",
			modify: func(c *Config) { c.Name = "" },
			want:   map[string]string{"-name": "cabin-0123456789abcdef,process=cabin-0123456789abcdef"},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cfg := baseConfig()
			tt.modify(&cfg)
			args, err := cmdline(cfg)
			if err != nil {
				t.Fatal(err)
			}
			for flag, want := range tt.want {
				got, ok := argAfter(args, flag)
				if want == "" {
					if ok {
						t.Errorf("%s present (%q), want absent", flag, got)
					}
					continue
				}
				if got != want {
					t.Errorf("%s = %q, want %q", flag, got, want)
				}
			}
			for _, pair := range tt.contains {
				found := false
				for i := 0; i+1 < len(args); i++ {
					if args[i] == pair[0] && args[i+1] == pair[1] {
						found = true
					}
				}
				if !found {
					t.Errorf("missing %s %s in %q", pair[0], pair[1], args)
				}
			}
		})
	}
}

func TestCmdlineInvalid(t *testing.T) {
	tests := []struct {
		name   string
		modify func(*Config)
		field  string
	}{
		{"zero cpus", func(c *Config) { c.CPUs = 0 }, "cpus"},
		{"negative cpus", func(c *Config) { c.CPUs = -1 }, "cpus"},
		{"too little memory", func(c *Config) { c.MemoryMiB = 63 }, "memory_mib"},
		{"no kernel", func(c *Config) { c.Kernel = "" }, "kernel"},
		{"relative kernel", func(c *Config) { c.Kernel = "vmlinux" }, "kernel"},
		{"relative initrd", func(c *Config) { c.Initrd = "initrd.cpio" }, "initrd"},
		{"no machine", func(c *Config) { c.Machine = "" }, "machine"},
		{"unknown machine", func(c *Config) { c.Machine = "pc" }, "machine"},
		{"no accel", func(c *Config) { c.Accel = "" }, "accel"},
		{"auto accel", func(c *Config) { c.Accel = "auto" }, "accel"},
		{"unknown accel", func(c *Config) { c.Accel = "hvf" }, "accel"},
		{"no dir", func(c *Config) { c.Dir = "" }, "dir"},
		{"relative dir", func(c *Config) { c.Dir = "vms/x" }, "dir"},
		{"unclean dir", func(c *Config) { c.Dir = "/tmp/../tmp/x" }, "dir"},
		{"unsafe dir name", func(c *Config) { c.Dir = "/tmp/a b" }, "dir"},
		{"dir too long for sockets", func(c *Config) { c.Dir = statedir.VMDir("/" + strings.Repeat("d", 95) + "/q1") }, "dir"},
		{"negative tsc frequency", func(c *Config) { c.TSCKHz = -1 }, "tsc_khz"},
		{"empty kernel arg", func(c *Config) { c.KernelArgs = []string{""} }, "kernel_args[0]"},
		{"space", func(c *Config) { c.KernelArgs = []string{"ok", "a b"} }, "kernel_args[1]"},
		{"tab", func(c *Config) { c.KernelArgs = []string{"a\tb"} }, "kernel_args[0]"},
		{"newline", func(c *Config) { c.KernelArgs = []string{"a\n"} }, "kernel_args[0]"},
		{"non-breaking space", func(c *Config) { c.KernelArgs = []string{"a\u00a0b"} }, "kernel_args[0]"},
		{"control", func(c *Config) { c.KernelArgs = []string{"a\x01"} }, "kernel_args[0]"},
		{"delete", func(c *Config) { c.KernelArgs = []string{"a\x7f"} }, "kernel_args[0]"},
		{"double quote", func(c *Config) { c.KernelArgs = []string{`init="/bin/sh`} }, "kernel_args[0]"},
		{"single quote", func(c *Config) { c.KernelArgs = []string{"a='b"} }, "kernel_args[0]"},
		{"invalid utf-8", func(c *Config) { c.KernelArgs = []string{"a\xff"} }, "kernel_args[0]"},
		{"empty share tag", func(c *Config) { c.Shares = []hypervisor.Share{{Tag: "", Path: "/srv"}} }, "shares[0].tag"},
		{"share tag of 32 bytes", func(c *Config) {
			c.Shares = []hypervisor.Share{{Tag: strings.Repeat("a", 32), Path: "/srv"}}
		}, "shares[0].tag"},
		{"share tag with a comma", func(c *Config) {
			c.Shares = []hypervisor.Share{{Tag: "a,id=x", Path: "/srv"}}
		}, "shares[0].tag"},
		{"share tag with a space", func(c *Config) { c.Shares = []hypervisor.Share{{Tag: "a b", Path: "/srv"}} }, "shares[0].tag"},
		{"share tag with a dot", func(c *Config) { c.Shares = []hypervisor.Share{{Tag: "a.b", Path: "/srv"}} }, "shares[0].tag"},
		{"duplicate share tags", func(c *Config) {
			c.Shares = []hypervisor.Share{{Tag: "t", Path: "/srv/a"}, {Tag: "t", Path: "/srv/b"}}
		}, "shares[1].tag"},
		{"empty share path", func(c *Config) { c.Shares = []hypervisor.Share{{Tag: "t"}} }, "shares[0].path"},
		{"relative share path", func(c *Config) { c.Shares = []hypervisor.Share{{Tag: "t", Path: "srv"}} }, "shares[0].path"},
		{"unclean share path", func(c *Config) { c.Shares = []hypervisor.Share{{Tag: "t", Path: "/srv/../etc"}} }, "shares[0].path"},
		{"share path with a trailing slash", func(c *Config) { c.Shares = []hypervisor.Share{{Tag: "t", Path: "/srv/"}} }, "shares[0].path"},
		{"share path with a newline", func(c *Config) { c.Shares = []hypervisor.Share{{Tag: "t", Path: "/srv/a\nb"}} }, "shares[0].path"},
		{"share path with a nul", func(c *Config) { c.Shares = []hypervisor.Share{{Tag: "t", Path: "/srv/a\x00b"}} }, "shares[0].path"},
		{"share path not utf-8", func(c *Config) { c.Shares = []hypervisor.Share{{Tag: "t", Path: "/srv/a\xff"}} }, "shares[0].path"},
		{"NIC without a MAC", func(c *Config) { c.NICs = []hypervisor.NIC{{Tap: "t0"}} }, "nics[0].mac"},
		{"NIC with a short MAC", func(c *Config) { c.NICs = []hypervisor.NIC{{MAC: testMAC[:5]}} }, "nics[0].mac"},
		{"NIC with a multicast MAC", func(c *Config) {
			c.NICs = []hypervisor.NIC{{MAC: net.HardwareAddr{0x03, 0, 0, 0, 0, 1}}}
		}, "nics[0].mac"},
		{"NIC with a vendor's MAC", func(c *Config) {
			c.NICs = []hypervisor.NIC{{MAC: net.HardwareAddr{0x00, 0x16, 0x3e, 0x12, 0x34, 0x56}}}
		}, "nics[0].mac"},
		{"two NICs, one MAC", func(c *Config) {
			c.NICs = []hypervisor.NIC{{MAC: testMAC, Tap: "a"}, {MAC: testMAC, Tap: "b"}}
		}, "nics[1].mac"},
		{"tap name of 16 bytes", func(c *Config) {
			c.NICs = []hypervisor.NIC{{MAC: testMAC, Tap: strings.Repeat("t", 16)}}
		}, "nics[0].tap"},
		{"tap name with a comma", func(c *Config) {
			c.NICs = []hypervisor.NIC{{MAC: testMAC, Tap: "t0,script=/x"}}
		}, "nics[0].tap"},
		{"tap name with a slash", func(c *Config) { c.NICs = []hypervisor.NIC{{MAC: testMAC, Tap: "a/b"}} }, "nics[0].tap"},
		{"tap name with a dot", func(c *Config) { c.NICs = []hypervisor.NIC{{MAC: testMAC, Tap: "a.b"}} }, "nics[0].tap"},
		{"tap name with a space", func(c *Config) { c.NICs = []hypervisor.NIC{{MAC: testMAC, Tap: "a b"}} }, "nics[0].tap"},
		{"two NICs, one tap", func(c *Config) {
			c.NICs = []hypervisor.NIC{{MAC: testMAC, Tap: "t0"}, {MAC: net.HardwareAddr{2, 0, 0, 0, 0, 2}, Tap: "t0"}}
		}, "nics[1].tap"},
		{"command line too long", func(c *Config) {
			// Words of the longest size each may have, enough to pass
			// the whole line's limit.
			for range maxKernelCmdline/hypervisor.MaxKernelArg + 1 {
				c.KernelArgs = append(c.KernelArgs, strings.Repeat("x", hypervisor.MaxKernelArg))
			}
		}, "kernel_args"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cfg := baseConfig()
			tt.modify(&cfg)
			args, err := cmdline(cfg)
			if !errors.Is(err, errdefs.ErrInvalidArgument) {
				t.Fatalf("Cmdline = %q, %v; want invalid argument", args, err)
			}
			if !strings.HasPrefix(err.Error(), tt.field+": ") {
				t.Errorf("error %q does not name field %q", err, tt.field)
			}
		})
	}
}

// TestCmdlineBootPaths checks that no -kernel or -initrd value reaches QEMU
// that it would read as more than one file: QEMU splits -initrd on commas
// into multiboot modules, a space starting a module's arguments, so
// "/home/u/a,/etc/shadow" would load /etc/shadow into the guest.
func TestCmdlineBootPaths(t *testing.T) {
	tests := []struct {
		name   string
		field  string
		path   string
		refuse bool
	}{
		{"plain kernel", "kernel", "/home/u/boot/vmlinux-6.1.0", false},
		{"plain initrd", "initrd", "/home/u/boot/initrd.img", false},
		{"kernel with comma", "kernel", "/home/u/a,/etc/shadow", true},
		{"initrd with comma", "initrd", "/home/u/a,/etc/shadow", true},
		{"initrd with escaped comma", "initrd", "/home/u/a,,b", true},
		{"kernel with space", "kernel", "/home/u/my kernel", true},
		{"initrd with space", "initrd", "/home/u/a /etc/shadow", true},
		{"kernel with tab", "kernel", "/home/u/a\tb", true},
		{"initrd with tab", "initrd", "/home/u/a\tb", true},
		{"kernel with newline", "kernel", "/home/u/a\nb", true},
		{"initrd with newline", "initrd", "/home/u/a\nb", true},
		{"initrd with non-breaking space", "initrd", "/home/u/a\u00a0b", true},
		{"initrd with control character", "initrd", "/home/u/a\x01b", true},
		{"initrd with delete", "initrd", "/home/u/a\x7fb", true},
		{"initrd with nul", "initrd", "/home/u/a\x00b", true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cfg := baseConfig()
			flag := "-kernel"
			if tt.field == "initrd" {
				cfg.Initrd = tt.path
				flag = "-initrd"
			} else {
				cfg.Kernel = tt.path
			}
			args, err := cmdline(cfg)
			if !tt.refuse {
				if err != nil {
					t.Fatalf("Cmdline: %v", err)
				}
				if got, _ := argAfter(args, flag); got != tt.path {
					t.Errorf("%s = %q, want %q", flag, got, tt.path)
				}
				return
			}
			if !errors.Is(err, errdefs.ErrInvalidArgument) {
				t.Fatalf("Cmdline = %q, %v; want invalid argument", args, err)
			}
			if !strings.HasPrefix(err.Error(), tt.field+": ") {
				t.Errorf("error %q does not name field %q", err, tt.field)
			}
		})
	}
}

// TestBootFiles checks that Launch passes each open file as the
// descriptor Cmdline names it by: exec.Cmd.ExtraFiles[i] is descriptor
// 3+i in QEMU.
func TestBootFiles(t *testing.T) {
	kernelFile, initrdFile := openFile(t), openFile(t)
	tests := []struct {
		name                   string
		kernelFile, initrdFile *os.File
		want                   []*os.File
	}{
		{"paths only", nil, nil, nil},
		{"both open", kernelFile, initrdFile, []*os.File{kernelFile, initrdFile}},
		{"kernel open", kernelFile, nil, []*os.File{kernelFile}},
		{"initrd open", nil, initrdFile, []*os.File{initrdFile}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cfg := baseConfig()
			cfg.KernelFile, cfg.InitrdFile = tt.kernelFile, tt.initrdFile
			files, _, _ := bootFiles(cfg.Config)
			if !slices.Equal(files, tt.want) {
				t.Fatalf("files %v, want %v", files, tt.want)
			}
			args, err := cmdline(cfg)
			if err != nil {
				t.Fatal(err)
			}
			for flag, f := range map[string]*os.File{"-kernel": tt.kernelFile, "-initrd": tt.initrdFile} {
				if f == nil {
					continue
				}
				got, _ := argAfter(args, flag)
				if want := "/proc/self/fd/" + strconv.Itoa(3+slices.Index(files, f)); got != want {
					t.Errorf("%s = %q, want %q", flag, got, want)
				}
			}
		})
	}
}

// The longest socket path that fits is accepted: the limit is not off by one.
func TestCmdlineSocketPathLimit(t *testing.T) {
	cfg := baseConfig()
	// console.sock is the longest socket name.
	parent := "/" + strings.Repeat("d", statedir.MaxSocketPath-len("/")-len("/q1/console.sock"))
	cfg.Dir = statedir.VMDir(parent + "/q1")
	if _, err := cmdline(cfg); err != nil {
		t.Fatalf("dir of %d bytes: %v", len(cfg.Dir), err)
	}
	cfg.Dir = statedir.VMDir(parent + "/q12")
	if _, err := cmdline(cfg); !errors.Is(err, errdefs.ErrInvalidArgument) {
		t.Fatalf("dir of %d bytes: %v, want invalid argument", len(cfg.Dir), err)
	}
}

// Cmdline must not share DefaultKernelArgs' backing array with its result.
func TestCmdlineDoesNotAliasDefaults(t *testing.T) {
	before := slices.Clone(DefaultKernelArgs)
	cfg := baseConfig()
	cfg.KernelArgs = []string{"a=1"}
	for range 2 {
		if _, err := cmdline(cfg); err != nil {
			t.Fatal(err)
		}
	}
	if !slices.Equal(before, DefaultKernelArgs) {
		t.Errorf("DefaultKernelArgs changed: %q", DefaultKernelArgs)
	}
}

// cmdline is Cmdline of cfg with the console and the channel's ports that
// cabind's resources give every VM (withChannel).
func cmdline(cfg Config) ([]string, error) {
	withChannel(&cfg.Config)
	return Cmdline(cfg)
}

// withChannel gives cfg the console and the agent's ports at their places
// in cfg.Dir, as cabind's resources do, unless cfg has its own.
func withChannel(cfg *hypervisor.Config) {
	if cfg.Console == "" {
		cfg.Console = cfg.Dir.ConsoleSocket()
	}
	if cfg.Ports == nil {
		cfg.Ports = []hypervisor.Port{
			{Name: bootcfg.AgentPort, Socket: cfg.Dir.AgentSocket()},
			{Name: bootcfg.RPCPort, Socket: cfg.Dir.RPCSocket()},
		}
	}
}

// Without a console or ports the VM has neither a serial port nor a
// virtio-serial controller.
func TestCmdlineWithoutConsoleOrPorts(t *testing.T) {
	args, err := Cmdline(baseConfig())
	if err != nil {
		t.Fatal(err)
	}
	for _, a := range args {
		if a == "-serial" || strings.Contains(a, "virtio-serial") || strings.Contains(a, "console.sock") {
			t.Errorf("argument %q without a console or ports", a)
		}
	}
}

func TestCmdlineBadPorts(t *testing.T) {
	sock := testDir.AgentSocket()
	for _, c := range []struct {
		name   string
		modify func(*Config)
		field  string
	}{
		{"relative console", func(c *Config) { c.Console = "console.sock" }, "console"},
		{"empty port name", func(c *Config) { c.Ports = []hypervisor.Port{{Name: "", Socket: sock}} }, "ports[0].name"},
		{"comma in port name", func(c *Config) { c.Ports = []hypervisor.Port{{Name: "a,b", Socket: sock}} }, "ports[0].name"},
		{"port name ending in a dot", func(c *Config) { c.Ports = []hypervisor.Port{{Name: "cabin.", Socket: sock}} }, "ports[0].name"},
		{"port named like the monitor", func(c *Config) { c.Ports = []hypervisor.Port{{Name: "x.qmp", Socket: sock}} }, "ports[0].name"},
		{"two ports, one chardev", func(c *Config) {
			c.Ports = []hypervisor.Port{{Name: "a.x", Socket: sock}, {Name: "b.x", Socket: sock}}
		}, "ports[1].name"},
		{"relative socket", func(c *Config) { c.Ports = []hypervisor.Port{{Name: "p", Socket: "p.sock"}} }, "ports[0].socket"},
		{"socket too long", func(c *Config) {
			c.Ports = []hypervisor.Port{{Name: "p", Socket: "/" + strings.Repeat("s", statedir.MaxSocketPath)}}
		}, "ports[0].socket"},
	} {
		cfg := baseConfig()
		c.modify(&cfg)
		_, err := Cmdline(cfg)
		if !errors.Is(err, errdefs.ErrInvalidArgument) || !strings.HasPrefix(err.Error(), c.field+":") {
			t.Errorf("%s: %v, want invalid argument naming %s", c.name, err, c.field)
		}
	}
}
