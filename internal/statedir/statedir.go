// Package statedir names every file cabind keeps on disk. Nothing else in
// cabin builds a path under the state directory. No path here is built
// from a VM or owner name: a VM's directory is named by a hash of its key,
// and an owner's disk images by a hash of the owner; a disk image's file is
// named by the image's name only once that passed internal/names.
package statedir

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"path/filepath"
	"strconv"
)

// Where cabind keeps its state and serves its API unless told otherwise;
// the CLI looks for it at DefaultSocket too.
const (
	DefaultRoot   = "/var/lib/cabin"
	DefaultSocket = "/run/cabin/cabind.sock"
)

// MaxSocketPath is the longest path a unix socket address can hold
// (sun_path is 108 bytes including the terminating NUL).
const MaxSocketPath = 107

// MaxRotatedLogs is how many rotated console logs are kept beside the live one.
const MaxRotatedLogs = 5

// Root is the state directory, an absolute clean path.
type Root struct{ dir string }

// New checks dir and returns the state root. It does not touch the disk.
func New(dir string) (Root, error) {
	if !filepath.IsAbs(dir) {
		return Root{}, fmt.Errorf("state dir %q: not an absolute path", dir)
	}
	if filepath.Clean(dir) != dir {
		return Root{}, fmt.Errorf("state dir %q: not a clean path", dir)
	}
	r := Root{dir: dir}
	// Every socket below it must fit in sun_path.
	for _, sock := range r.VM("0000000000000000").Sockets() {
		if len(sock) > MaxSocketPath {
			return Root{}, fmt.Errorf("state dir %q: too long for unix sockets below it (%d > %d bytes)", dir, len(sock), MaxSocketPath)
		}
	}
	return r, nil
}

// Dir is the root directory itself.
func (r Root) Dir() string { return r.dir }

// LockFile is held (flock) by the one cabind that owns this state dir.
func (r Root) LockFile() string { return filepath.Join(r.dir, "cabind.lock") }

// NetworkAllocations is which VM holds which subnet of the network pool
// (JSON), written whole (a new file renamed into place).
func (r Root) NetworkAllocations() string { return filepath.Join(r.dir, "network.json") }

// CPURestrictions is the CPU restriction of each class of VMs (JSON,
// internal/hostcgroup), written whole (a new file renamed into place).
func (r Root) CPURestrictions() string { return filepath.Join(r.dir, "cpu.json") }

// VMsDir holds one directory per VM.
func (r Root) VMsDir() string { return filepath.Join(r.dir, "vms") }

// VM is the directory of the VM with the given ID (see VMID).
func (r Root) VM(id string) VMDir { return VMDir(filepath.Join(r.VMsDir(), id)) }

// VMID derives the directory name of the VM keyed by (owner, name): the
// first 16 hex digits of SHA-256(owner NUL name). It is a safe path element
// whatever the name holds.
func VMID(owner, name string) string {
	sum := sha256.Sum256([]byte(owner + "\x00" + name))
	return hex.EncodeToString(sum[:8])
}

// VMDir is one VM's directory.
type VMDir string

// Path is the directory itself.
func (d VMDir) Path() string { return string(d) }

// Record is the VM's persistent description (JSON), written before QEMU
// starts and read back when a restarted cabind re-adopts the VM.
func (d VMDir) Record() string { return filepath.Join(string(d), "vm.json") }

// LockFile is held (flock) by the VM's QEMU for its whole life, from a
// descriptor it inherits at launch: while it is held, a QEMU may live in
// the directory, and nothing may write or remove its files. It is never
// removed.
func (d VMDir) LockFile() string { return filepath.Join(string(d), "qemu.lock") }

// PIDFile is written by QEMU (-pidfile).
func (d VMDir) PIDFile() string { return filepath.Join(string(d), "qemu.pid") }

// QMPSocket is QEMU's monitor socket (QEMU listens).
func (d VMDir) QMPSocket() string { return filepath.Join(string(d), "qmp.sock") }

// AgentSocket is the host end of the agent's virtio-serial port (QEMU listens).
func (d VMDir) AgentSocket() string { return filepath.Join(string(d), "agent.sock") }

// RPCSocket is the host end of the virtio-serial port that carries unary
// calls to the agent (QEMU listens).
func (d VMDir) RPCSocket() string { return filepath.Join(string(d), "rpc.sock") }

// Sockets lists every socket QEMU listens on for the VM.
func (d VMDir) Sockets() []string {
	return []string{d.QMPSocket(), d.ConsoleSocket(), d.AgentSocket(), d.RPCSocket()}
}

// RuntimeFiles lists what only a running VM needs: its sockets and pidfile.
func (d VMDir) RuntimeFiles() []string { return append(d.Sockets(), d.PIDFile()) }

// ConsoleSocket carries the guest's serial console (QEMU listens).
func (d VMDir) ConsoleSocket() string { return filepath.Join(string(d), "console.sock") }

// ConsoleLog is the live console log, capped in size and rotated.
func (d VMDir) ConsoleLog() string { return filepath.Join(string(d), "console.log") }

// RotatedLog is the n-th rotated console log, 1 (newest) to MaxRotatedLogs.
func (d VMDir) RotatedLog(n int) string {
	return filepath.Join(string(d), "console.log."+strconv.Itoa(n))
}

// Forwards lists the VM's port forwards (JSON, internal/forward), written
// whenever they change, for a restarted cabind to listen again; removed
// once the VM is gone.
func (d VMDir) Forwards() string { return filepath.Join(string(d), "forwards.json") }

// ReadAheadDir holds the spools of the VM's process output cabind read
// ahead and no client has taken yet (internal/relay/readahead), for a
// restarted cabind. They belong to one run of the VM: the directory is
// removed when the VM starts anew and when it is gone.
func (d VMDir) ReadAheadDir() string { return filepath.Join(string(d), "readahead") }

// QEMULog receives QEMU's own stderr (errors before and after daemonizing).
func (d VMDir) QEMULog() string { return filepath.Join(string(d), "qemu.log") }

// GPUCacheDir holds the VMs' GPU shader caches (concierge's
// GetVmGpuCachePath): one directory per host boot, named by a hash of the
// boot id (GPUCacheBoot), holding one per VM, named as its VM directory.
func (r Root) GPUCacheDir() string { return filepath.Join(r.dir, "gpucache") }

// GPUCacheBoot is the directory of the GPU caches of the boot whose
// /proc/sys/kernel/random/boot_id is bootID: the first 16 hex digits of
// SHA-256("gpucache" NUL boot id).
func (r Root) GPUCacheBoot(bootID string) string {
	sum := sha256.Sum256([]byte("gpucache\x00" + bootID))
	return filepath.Join(r.GPUCacheDir(), hex.EncodeToString(sum[:8]))
}

// GPUCache is the GPU cache of the VM with the given ID (VMID) in the
// boot whose id is bootID.
func (r Root) GPUCache(bootID, vmID string) string {
	return filepath.Join(r.GPUCacheBoot(bootID), vmID)
}

// ImageDir holds the guest image cache.
func (r Root) ImageDir() string { return filepath.Join(r.dir, "image") }

// ImageLock is held (flock) by whoever builds or checks the image cache, so
// that two processes never build it at once.
func (r Root) ImageLock() string { return filepath.Join(r.ImageDir(), "image.lock") }

// DownloadsDir holds downloaded Debian packages.
func (r Root) DownloadsDir() string { return filepath.Join(r.ImageDir(), "downloads") }

// KernelDir holds one unpacked kernel package version: vmlinux and the
// modules cabin uses. version must be a checked path element.
func (r Root) KernelDir(version string) string {
	return filepath.Join(r.ImageDir(), "kernel", version)
}

// Initramfs is the initramfs built for the given cache key (hex digest).
func (r Root) Initramfs(key string) string {
	return filepath.Join(r.ImageDir(), "initramfs", key+".cpio")
}

// RootfsDir is one generation of the container root filesystems, built
// for the given cache key (hex digest) and shared with VMs as it is: a
// directory holding one tree per root filesystem ("busybox", ...). A
// generation is never changed once in place; a new one takes a new key.
func (r Root) RootfsDir(key string) string {
	return filepath.Join(r.ImageDir(), "rootfs", key)
}

// ImageManifest describes the current image (JSON): kernel, initramfs and
// the inputs they were built from.
func (r Root) ImageManifest() string { return filepath.Join(r.ImageDir(), "current.json") }

// OCIImagesDir is the root of the OCI image store (internal/ociimage),
// which names everything below it by content digest.
func (r Root) OCIImagesDir() string { return filepath.Join(r.dir, "images", "oci") }

// DisksDir holds disk images: one directory per owner (see DiskOwnerID),
// holding one directory per storage location.
func (r Root) DisksDir() string { return filepath.Join(r.dir, "disks") }

// DiskOpsDir holds one record per disk image operation (JSON, named by
// the operation's command uuid), for a restarted cabind to answer for the
// operations an earlier one ran, and to mark failed those it cut short.
func (r Root) DiskOpsDir() string { return filepath.Join(r.DisksDir(), "ops") }

// DiskOp is the record of the operation with the given command uuid,
// which must be a checked uuid (lower-case hex and dashes).
func (r Root) DiskOp(uuid string) string {
	return filepath.Join(r.DiskOpsDir(), uuid+".json")
}

// The storage locations of disk images: concierge's STORAGE_CRYPTOHOME_ROOT
// and STORAGE_CRYPTOHOME_PLUGINVM, named as upstream names them.
const (
	DiskLocationRoot     = "crosvm"
	DiskLocationPluginVM = "pvm"
)

// DiskLocations lists the storage locations, in concierge's order.
var DiskLocations = []string{DiskLocationRoot, DiskLocationPluginVM}

// DiskOwnerID derives the directory name of an owner's disk images: the
// first 16 hex digits of SHA-256("disks" NUL owner). Owner ids are
// checked but may be "..": they never become a path element themselves.
func DiskOwnerID(owner string) string {
	sum := sha256.Sum256([]byte("disks\x00" + owner))
	return hex.EncodeToString(sum[:8])
}

// DiskDir is the directory of one owner's images in one storage location
// (one of DiskLocations).
func (r Root) DiskDir(ownerID, location string) DiskDir {
	return DiskDir(filepath.Join(r.DisksDir(), ownerID, location))
}

// DiskDir is one directory of disk images.
type DiskDir string

// Path is the directory itself.
func (d DiskDir) Path() string { return string(d) }

// The file name extensions of disk images, by format.
const (
	DiskExtRaw   = ".img"
	DiskExtQcow2 = ".qcow2"
)

// Image is the image called name (a name that passed internal/names; the
// caller checks it) in the format whose extension is ext (DiskExtRaw,
// DiskExtQcow2). Such a name never starts with '.', so no image is ever
// named like a temporary.
func (d DiskDir) Image(name, ext string) string { return filepath.Join(string(d), name+ext) }

// ImageMeta is what cabin keeps of the image called name beside it (JSON):
// whether its size was the user's choice, its filesystem, the VM type.
func (d DiskDir) ImageMeta(name string) string { return filepath.Join(string(d), name+".meta") }

// Temp is the file the operation with the given command uuid (checked)
// writes before renaming it into place. Temporaries start with '.', which
// no image name does; cabind removes every one it finds at start-up.
func (d DiskDir) Temp(uuid string) string { return filepath.Join(string(d), "."+uuid+TempSuffix) }

// TempSuffix ends the names of temporaries in a DiskDir.
const TempSuffix = ".part"

// DiskOpTemp is where the record of the operation uuid is written before
// it is renamed over DiskOp(uuid).
func (r Root) DiskOpTemp(uuid string) string {
	return filepath.Join(r.DiskOpsDir(), "."+uuid+".json"+TempSuffix)
}

// TempMeta is where the metadata of the image an operation (uuid) makes
// is written before it is renamed over ImageMeta.
func (d DiskDir) TempMeta(uuid string) string {
	return filepath.Join(string(d), "."+uuid+".meta"+TempSuffix)
}
