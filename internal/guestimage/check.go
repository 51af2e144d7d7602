package guestimage

import (
	"bytes"
	"debug/elf"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"

	"github.com/cabinvm/cabin/internal/errdefs"
)

// openRegular opens path for reading and checks it is a regular file,
// classifying failures: missing is NotFound, anything else unusable is
// InvalidArgument (the path came from the user).
func openRegular(what, path string) (*os.File, int64, error) {
	if path == "" {
		return nil, 0, fmt.Errorf("%s: no path given: %w", what, errdefs.ErrInvalidArgument)
	}
	f, err := os.Open(path)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, 0, fmt.Errorf("%s %s: %w", what, path, errdefs.ErrNotFound)
	}
	if err != nil {
		return nil, 0, errdefs.Errorf(errdefs.ErrInvalidArgument, "%s %s: %w", what, path, err)
	}
	st, err := f.Stat()
	if err != nil {
		f.Close()
		return nil, 0, errdefs.Errorf(errdefs.ErrInvalidArgument, "%s %s: %w", what, path, err)
	}
	if !st.Mode().IsRegular() {
		f.Close()
		return nil, 0, fmt.Errorf("%s %s: not a regular file: %w", what, path, errdefs.ErrInvalidArgument)
	}
	return f, st.Size(), nil
}

func readHead(f io.ReaderAt, n int) []byte {
	b := make([]byte, n)
	m, _ := f.ReadAt(b, 0)
	return b[:m]
}

// CheckKernel checks that a user-supplied kernel is something QEMU can boot:
// an x86-64 ELF with a Xen PVH entry note, or a bzImage.
func CheckKernel(path string) error {
	f, size, err := openRegular("kernel", path)
	if err != nil {
		return err
	}
	defer f.Close()
	if bytes.HasPrefix(readHead(f, 4), []byte(elf.ELFMAG)) {
		if err := checkPVH(path); err != nil {
			return errdefs.Errorf(errdefs.ErrInvalidArgument, "kernel %s: %w", path, err)
		}
		return nil
	}
	if _, _, err := bzPayload(f, size); err != nil {
		return errdefs.Errorf(errdefs.ErrInvalidArgument, "kernel %s: neither a PVH ELF nor a usable bzImage: %w", path, err)
	}
	return nil
}

// Initramfs formats the kernel unpacks: newc cpio, plain or compressed with
// any decompressor a distribution kernel may carry.
var initramfsMagics = []struct {
	name  string
	magic []byte
}{
	{"newc cpio", []byte("070701")},
	{"newc cpio with checksums", []byte("070702")},
	{"gzip", magicGzip},
	{"xz", magicXZ},
	{"zstd", []byte{0x28, 0xb5, 0x2f, 0xfd}},
	{"bzip2", []byte("BZh")},
	{"lzma", []byte{0x5d, 0x00, 0x00}},
	{"lz4", []byte{0x02, 0x21, 0x4c, 0x18}},
	{"lzop", []byte{0x89, 'L', 'Z', 'O', 0x00}},
}

// CheckInitramfs checks that a user-supplied initramfs is a regular file
// starting like a newc cpio archive or a compressed stream.
func CheckInitramfs(path string) error {
	f, _, err := openRegular("initramfs", path)
	if err != nil {
		return err
	}
	defer f.Close()
	head := readHead(f, 8)
	for _, m := range initramfsMagics {
		if bytes.HasPrefix(head, m.magic) {
			return nil
		}
	}
	return fmt.Errorf("initramfs %s: neither a newc cpio archive nor a known compressed stream (starts % x): %w", path, head, errdefs.ErrInvalidArgument)
}

// checkAgent checks that the agent is a static x86-64 executable: it runs
// as PID 1 in an initramfs that has no dynamic loader or libc.
func checkAgent(path string) error {
	return checkStatic("agent binary", path, "e.g. CGO_ENABLED=0")
}

// checkRuntime checks cabin-runtime like the agent: it runs in the same
// guest, without a libc. It needs cgo (libcontainer's nsenter), so it is
// linked static by the C linker rather than by leaving cgo out.
func checkRuntime(path string) error {
	return checkStatic("runtime binary", path, `with cgo, -ldflags "-extldflags -static"`)
}

// checkStatic checks that path, described as what, is a static x86-64
// executable; hint, if any, says how to build one.
func checkStatic(what, path, hint string) error {
	f, _, err := openRegular(what, path)
	if err != nil {
		return err
	}
	defer f.Close()
	ef, err := elf.NewFile(f)
	if err != nil {
		return fmt.Errorf("%s %s: not an ELF file: %w", what, path, errdefs.ErrInvalidArgument)
	}
	if ef.Class != elf.ELFCLASS64 || ef.Machine != elf.EM_X86_64 {
		return fmt.Errorf("%s %s: built for %v %v, want x86-64: %w", what, path, ef.Class, ef.Machine, errdefs.ErrInvalidArgument)
	}
	// A static-pie is ET_DYN too; a shared library has no entry point.
	if (ef.Type != elf.ET_EXEC && ef.Type != elf.ET_DYN) || ef.Entry == 0 {
		return fmt.Errorf("%s %s: ELF type %v is not an executable: %w", what, path, ef.Type, errdefs.ErrInvalidArgument)
	}
	for _, p := range ef.Progs {
		if p.Type == elf.PT_INTERP {
			msg := "dynamically linked (has an ELF interpreter)"
			if hint != "" {
				msg += "; build it static, " + hint
			}
			return fmt.Errorf("%s %s: %s: %w", what, path, msg, errdefs.ErrInvalidArgument)
		}
	}
	return nil
}
