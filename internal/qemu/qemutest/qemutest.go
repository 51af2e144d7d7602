// Package qemutest helps tests run real QEMU: it skips them where QEMU is
// missing and writes a guest kernel small enough to build in a test.
package qemutest

import (
	"bytes"
	"debug/elf"
	"encoding/binary"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
)

// Binary is the QEMU program the tests need (qemu.DefaultBinary, which
// this package cannot import: qemu's own tests use it).
const Binary = "qemu-system-x86_64"

// SkipWithoutQEMU skips t when Binary is not in PATH.
func SkipWithoutQEMU(t testing.TB) {
	t.Helper()
	if _, err := exec.LookPath(Binary); err != nil {
		t.Skipf("needs %s (Debian package qemu-system-x86): %v", Binary, err)
	}
}

// HaltKernel writes the smallest kernel QEMU's microvm boots, in a
// directory of the test's, and returns its path: a 32-bit ELF whose PVH
// note (Xen ELF note 18, XEN_ELFNOTE_PHYS32_ENTRY) points at "cli; hlt;
// jmp hlt". The vCPU halts for good, so the VM stays up, idle, for
// process-control tests.
func HaltKernel(t testing.TB) string {
	t.Helper()
	const (
		base      = 0x100000 // loaded at 1 MiB, like Linux
		ehdrSize  = 52
		phdrSize  = 32
		noteOff   = ehdrSize + 2*phdrSize
		noteSize  = 12 + 4 + 4 // header, "Xen\0", 32-bit entry
		codeOff   = noteOff + noteSize
		pvhEntry  = 18
		entryAddr = base + codeOff
	)
	code := []byte{0xfa, 0xf4, 0xeb, 0xfd} // cli; hlt; jmp -3 (to hlt)
	size := uint32(codeOff + len(code))
	var b bytes.Buffer
	le := binary.LittleEndian
	must := func(err error) {
		if err != nil {
			t.Fatal(err)
		}
	}
	must(binary.Write(&b, le, elf.Header32{
		Ident:     [16]byte{0x7f, 'E', 'L', 'F', byte(elf.ELFCLASS32), byte(elf.ELFDATA2LSB), byte(elf.EV_CURRENT)},
		Type:      uint16(elf.ET_EXEC),
		Machine:   uint16(elf.EM_386),
		Version:   uint32(elf.EV_CURRENT),
		Entry:     entryAddr,
		Phoff:     ehdrSize,
		Ehsize:    ehdrSize,
		Phentsize: phdrSize,
		Phnum:     2,
	}))
	must(binary.Write(&b, le, elf.Prog32{
		Type: uint32(elf.PT_LOAD), Vaddr: base, Paddr: base,
		Filesz: size, Memsz: size, Flags: uint32(elf.PF_R | elf.PF_X), Align: 0x1000,
	}))
	must(binary.Write(&b, le, elf.Prog32{
		Type: uint32(elf.PT_NOTE), Off: noteOff, Vaddr: base + noteOff, Paddr: base + noteOff,
		Filesz: noteSize, Memsz: noteSize, Flags: uint32(elf.PF_R), Align: 4,
	}))
	must(binary.Write(&b, le, [3]uint32{4, 4, pvhEntry})) // namesz, descsz, type
	b.WriteString("Xen\x00")
	must(binary.Write(&b, le, uint32(entryAddr)))
	b.Write(code)
	p := filepath.Join(t.TempDir(), "halt.elf")
	must(os.WriteFile(p, b.Bytes(), 0o644))
	return p
}
