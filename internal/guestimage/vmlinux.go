package guestimage

import (
	"bytes"
	"compress/gzip"
	"context"
	"debug/elf"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"strings"
)

// Offsets in the x86 boot protocol header (Documentation/arch/x86/boot.rst).
const (
	bzSetupSects    = 0x1f1
	bzHeaderMagic   = 0x202 // "HdrS"
	bzVersion       = 0x206
	bzPayloadOffset = 0x248
	bzPayloadLength = 0x24c
	bzHeaderEnd     = 0x250
	// payload_offset/length appeared in boot protocol 2.08.
	bzMinVersion = 0x0208
)

// The Xen ELF note QEMU looks for to boot an uncompressed kernel in PVH
// mode: its descriptor is the 32-bit entry point.
const (
	xenNoteName          = "Xen"
	xenElfnotePhys32Entr = 18
)

var (
	magicXZ   = []byte{0xfd, '7', 'z', 'X', 'Z', 0x00}
	magicGzip = []byte{0x1f, 0x8b}
)

// bzPayload locates the compressed kernel inside a bzImage.
func bzPayload(f io.ReaderAt, size int64) (off, length int64, err error) {
	if size < bzHeaderEnd {
		return 0, 0, fmt.Errorf("not a bzImage: %d bytes is shorter than the boot header", size)
	}
	hdr := make([]byte, bzHeaderEnd)
	if _, err := f.ReadAt(hdr, 0); err != nil {
		return 0, 0, fmt.Errorf("read boot header: %w", err)
	}
	if string(hdr[bzHeaderMagic:bzHeaderMagic+4]) != "HdrS" {
		return 0, 0, errors.New(`not a bzImage: no "HdrS" boot header magic at 0x202`)
	}
	if v := binary.LittleEndian.Uint16(hdr[bzVersion:]); v < bzMinVersion {
		return 0, 0, fmt.Errorf("bzImage boot protocol %d.%02d is older than 2.08: no payload fields", v>>8, v&0xff)
	}
	setup := int64(hdr[bzSetupSects])
	if setup == 0 {
		setup = 4 // so says the boot protocol, for very old images
	}
	pm := (setup + 1) * 512
	off = pm + int64(binary.LittleEndian.Uint32(hdr[bzPayloadOffset:]))
	length = int64(binary.LittleEndian.Uint32(hdr[bzPayloadLength:]))
	if length == 0 || off+length > size {
		return 0, 0, fmt.Errorf("bzImage payload [%d, +%d) lies outside the %d-byte file (truncated?)", off, length, size)
	}
	return off, length, nil
}

// ExtractVmlinux decompresses the kernel inside the bzImage src and writes
// it to dst (atomically) as an ELF that QEMU boots directly through its PVH
// entry point. It fails if the result has no PVH note, since QEMU would then
// refuse it. xz payloads need the xz binary (xz-utils): the x86 BCJ filter
// Debian uses is beyond the Go xz decoders.
func ExtractVmlinux(ctx context.Context, src, dst string) error {
	f, err := os.Open(src)
	if err != nil {
		return fmt.Errorf("open kernel: %w", err)
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return fmt.Errorf("stat kernel: %w", err)
	}
	off, length, err := bzPayload(f, st.Size())
	if err != nil {
		return fmt.Errorf("%s: %w", src, err)
	}
	payload := io.NewSectionReader(f, off, length)
	magic := make([]byte, 6)
	if _, err := payload.ReadAt(magic, 0); err != nil {
		return fmt.Errorf("%s: read payload: %w", src, err)
	}

	return writeAtomic(dst, 0o644, func(out *os.File) error {
		switch {
		case bytes.HasPrefix(magic, magicXZ):
			if err := runXZ(ctx, payload, out); err != nil {
				return fmt.Errorf("%s: decompress xz payload: %w", src, err)
			}
		case bytes.HasPrefix(magic, magicGzip):
			zr, err := gzip.NewReader(payload)
			if err != nil {
				return fmt.Errorf("%s: gzip payload: %w", src, err)
			}
			// The payload is followed by its 4-byte size, not by another
			// gzip member.
			zr.Multistream(false)
			if _, err := io.Copy(out, zr); err != nil {
				return fmt.Errorf("%s: decompress gzip payload: %w", src, err)
			}
		default:
			return fmt.Errorf("%s: unknown payload compression (magic % x): only xz and gzip are supported", src, magic)
		}
		if err := checkPVH(out.Name()); err != nil {
			return fmt.Errorf("%s: decompressed kernel: %w", src, err)
		}
		return nil
	})
}

// runXZ decompresses one xz stream from r into w. --single-stream makes xz
// stop after the stream instead of choking on the size bytes the kernel
// build appends.
func runXZ(ctx context.Context, r io.Reader, w io.Writer) error {
	if _, err := exec.LookPath("xz"); err != nil {
		return fmt.Errorf("xz not found (install xz-utils): %w", err)
	}
	var stderr bytes.Buffer
	cmd := exec.CommandContext(ctx, "xz", "-dc", "--single-stream")
	cmd.Stdin, cmd.Stdout, cmd.Stderr = r, w, &stderr
	if err := cmd.Run(); err != nil {
		return fmt.Errorf("%w: %s", err, strings.TrimSpace(stderr.String()))
	}
	return nil
}

// checkPVH checks that path is an x86-64 ELF with a Xen PVH entry note.
func checkPVH(path string) error {
	ef, err := elf.Open(path)
	if err != nil {
		return fmt.Errorf("not an ELF file: %w", err)
	}
	defer ef.Close()
	if ef.Machine != elf.EM_X86_64 {
		return fmt.Errorf("ELF for %v, not x86-64", ef.Machine)
	}
	ok, err := hasPVHNote(ef)
	if err != nil {
		return err
	}
	if !ok {
		return errors.New("ELF has no Xen PVH entry note (XEN_ELFNOTE_PHYS32_ENTRY): QEMU cannot boot it directly; the kernel needs CONFIG_PVH")
	}
	return nil
}

// hasPVHNote looks through the note segments (what QEMU reads) and, for
// files without program headers, the note sections.
func hasPVHNote(ef *elf.File) (bool, error) {
	var notes []io.Reader
	for _, p := range ef.Progs {
		if p.Type == elf.PT_NOTE {
			notes = append(notes, p.Open())
		}
	}
	if len(notes) == 0 {
		for _, s := range ef.Sections {
			if s.Type == elf.SHT_NOTE {
				notes = append(notes, s.Open())
			}
		}
	}
	for _, r := range notes {
		data, err := io.ReadAll(r)
		if err != nil {
			return false, fmt.Errorf("read ELF notes: %w", err)
		}
		if findNote(data, ef.ByteOrder, xenNoteName, xenElfnotePhys32Entr) {
			return true, nil
		}
	}
	return false, nil
}

// findNote walks ELF notes: namesz, descsz, type, then name and descriptor
// each padded to 4 bytes.
func findNote(data []byte, bo binary.ByteOrder, name string, typ uint32) bool {
	align := func(n uint64) uint64 { return (n + 3) &^ 3 }
	for len(data) >= 12 {
		namesz := uint64(bo.Uint32(data[0:]))
		descsz := uint64(bo.Uint32(data[4:]))
		t := bo.Uint32(data[8:])
		rest := uint64(len(data) - 12)
		if align(namesz) > rest || align(namesz)+align(descsz) > rest {
			return false
		}
		n := strings.TrimRight(string(data[12:12+namesz]), "\x00")
		if n == name && t == typ {
			return true
		}
		data = data[12+align(namesz)+align(descsz):]
	}
	return false
}
