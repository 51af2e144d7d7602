package guestimage

import (
	"bytes"
	"debug/elf"
	"encoding/binary"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"testing"
)

// testSection is one section of a synthetic ELF file.
type testSection struct {
	name string
	typ  elf.SectionType
	data []byte
	// note: also describe it with a PT_NOTE program header.
	note bool
}

// buildELF writes a minimal little-endian ELF64 x86-64 file: the header,
// program headers for note sections, the section data, a section name
// table and the section headers. Enough for debug/elf and for what the
// image code reads (.modinfo, PVH notes, PT_INTERP).
func buildELF(typ elf.Type, interp string, secs []testSection) []byte {
	if interp != "" {
		secs = append([]testSection{{name: ".interp", typ: elf.SHT_PROGBITS, data: append([]byte(interp), 0)}}, secs...)
	}
	var phdrs int
	for _, s := range secs {
		if s.note || s.name == ".interp" {
			phdrs++
		}
	}
	le := binary.LittleEndian
	const ehsize, phsize, shsize = 64, 56, 64

	// Section name table: "\0" then each name.
	shstr := []byte{0}
	nameOff := make([]int, len(secs))
	for i, s := range secs {
		nameOff[i] = len(shstr)
		shstr = append(append(shstr, s.name...), 0)
	}
	shstrName := len(shstr)
	shstr = append(shstr, ".shstrtab\x00"...)

	off := ehsize + phdrs*phsize
	dataOff := make([]int, len(secs))
	var body []byte
	for i, s := range secs {
		for (off+len(body))%8 != 0 {
			body = append(body, 0)
		}
		dataOff[i] = off + len(body)
		body = append(body, s.data...)
	}
	shstrOff := off + len(body)
	body = append(body, shstr...)
	for (off+len(body))%8 != 0 {
		body = append(body, 0)
	}
	shoff := off + len(body)

	var b bytes.Buffer
	ident := [16]byte{0x7f, 'E', 'L', 'F', byte(elf.ELFCLASS64), byte(elf.ELFDATA2LSB), byte(elf.EV_CURRENT)}
	b.Write(ident[:])
	w16 := func(v uint16) { binary.Write(&b, le, v) }
	w32 := func(v uint32) { binary.Write(&b, le, v) }
	w64 := func(v uint64) { binary.Write(&b, le, v) }
	w16(uint16(typ))
	w16(uint16(elf.EM_X86_64))
	w32(uint32(elf.EV_CURRENT))
	entry := uint64(0)
	if typ == elf.ET_EXEC || typ == elf.ET_DYN {
		entry = 0x401000
	}
	w64(entry)
	if phdrs > 0 {
		w64(ehsize)
	} else {
		w64(0)
	}
	w64(uint64(shoff))
	w32(0)
	w16(ehsize)
	w16(phsize)
	w16(uint16(phdrs))
	w16(shsize)
	w16(uint16(len(secs) + 2)) // null section + ours + .shstrtab
	w16(uint16(len(secs) + 1)) // .shstrtab index

	for i, s := range secs {
		if !s.note && s.name != ".interp" {
			continue
		}
		pt := elf.PT_NOTE
		if s.name == ".interp" {
			pt = elf.PT_INTERP
		}
		w32(uint32(pt))
		w32(uint32(elf.PF_R))
		w64(uint64(dataOff[i]))
		w64(0)
		w64(0)
		w64(uint64(len(s.data)))
		w64(uint64(len(s.data)))
		w64(4)
	}
	b.Write(body)

	shdr := func(name uint32, typ elf.SectionType, off, size uint64) {
		w32(name)
		w32(uint32(typ))
		w64(0) // flags
		w64(0) // addr
		w64(off)
		w64(size)
		w32(0) // link
		w32(0) // info
		w64(1) // align
		w64(0) // entsize
	}
	shdr(0, elf.SHT_NULL, 0, 0)
	for i, s := range secs {
		shdr(uint32(nameOff[i]), s.typ, uint64(dataOff[i]), uint64(len(s.data)))
	}
	shdr(uint32(shstrName), elf.SHT_STRTAB, uint64(shstrOff), uint64(len(shstr)))
	return b.Bytes()
}

// elfNote encodes one ELF note.
func elfNote(name string, typ uint32, desc []byte) []byte {
	pad := func(b []byte) []byte {
		for len(b)%4 != 0 {
			b = append(b, 0)
		}
		return b
	}
	var b bytes.Buffer
	binary.Write(&b, binary.LittleEndian, uint32(len(name)+1))
	binary.Write(&b, binary.LittleEndian, uint32(len(desc)))
	binary.Write(&b, binary.LittleEndian, typ)
	b.Write(pad(append([]byte(name), 0)))
	b.Write(pad(append([]byte{}, desc...)))
	return b.Bytes()
}

// pvhELF is a synthetic "vmlinux": an executable with a note segment that
// holds an unrelated note and then the Xen PVH entry note, plus filler so
// compression has something to chew on.
func pvhELF(withPVH bool) []byte {
	notes := elfNote("GNU", 3, []byte("build-id"))
	if withPVH {
		notes = append(notes, elfNote("Xen", 18, []byte{0x00, 0x10, 0x00, 0x01})...)
	}
	filler := bytes.Repeat([]byte("cabin kernel text "), 4096)
	return buildELF(elf.ET_EXEC, "", []testSection{
		{name: ".notes", typ: elf.SHT_NOTE, data: notes, note: true},
		{name: ".text", typ: elf.SHT_PROGBITS, data: filler},
	})
}

func TestBuildELFHelperIsReadable(t *testing.T) {
	ef, err := elf.NewFile(bytes.NewReader(pvhELF(true)))
	if err != nil {
		t.Fatalf("synthetic ELF unreadable: %v", err)
	}
	if ef.Machine != elf.EM_X86_64 || len(ef.Progs) != 1 || ef.Section(".text") == nil {
		t.Fatalf("synthetic ELF: machine %v, %d progs", ef.Machine, len(ef.Progs))
	}
	ok, err := hasPVHNote(ef)
	if err != nil || !ok {
		t.Fatalf("hasPVHNote = %v, %v; want true", ok, err)
	}
}

// testTempDirs are removed by TestMain: they outlive one test.
var testTempDirs []string

func TestMain(m *testing.M) {
	code := m.Run()
	for _, d := range testTempDirs {
		os.RemoveAll(d)
	}
	os.Exit(code)
}

var (
	staticAgentOnce sync.Once
	staticAgentPath string
	staticAgentErr  error
)

// staticAgent builds a tiny static Go program once per test run, standing
// in for cabin-agent.
func staticAgent(t *testing.T) string {
	t.Helper()
	goBin, err := exec.LookPath("go")
	if err != nil {
		t.Skip("no go toolchain on PATH to build a static test agent")
	}
	staticAgentOnce.Do(func() {
		dir, err := os.MkdirTemp("", "cabin-agent-test")
		if err != nil {
			staticAgentErr = err
			return
		}
		testTempDirs = append(testTempDirs, dir)
		files := map[string]string{
			"go.mod":  "module cabinagenttest\n\ngo 1.21\n",
			"main.go": "package main\n\nfunc main() { println(\"cabin test agent\") }\n",
		}
		for name, text := range files {
			if err := os.WriteFile(filepath.Join(dir, name), []byte(text), 0o644); err != nil {
				staticAgentErr = err
				return
			}
		}
		out := filepath.Join(dir, "cabin-agent")
		cmd := exec.Command(goBin, "build", "-o", out, ".")
		cmd.Dir = dir
		cmd.Env = append(os.Environ(), "CGO_ENABLED=0", "GOOS=linux", "GOARCH=amd64", "GOFLAGS=", "GOTOOLCHAIN=local", "GOWORK=off")
		if msg, err := cmd.CombinedOutput(); err != nil {
			staticAgentErr = &buildError{err, string(msg)}
			return
		}
		staticAgentPath = out
	})
	if staticAgentErr != nil {
		t.Fatalf("build static test agent: %v", staticAgentErr)
	}
	return staticAgentPath
}

var (
	staticRuntimeOnce sync.Once
	staticRuntimePath string
	staticRuntimeErr  error
)

// staticRuntime stands in for cabin-runtime: the test agent with bytes
// appended, so it is a static executable with a digest of its own.
func staticRuntime(t *testing.T) string {
	t.Helper()
	agent := staticAgent(t)
	staticRuntimeOnce.Do(func() {
		data, err := os.ReadFile(agent)
		if err != nil {
			staticRuntimeErr = err
			return
		}
		out := filepath.Join(filepath.Dir(agent), "cabin-runtime")
		if err := os.WriteFile(out, append(data, "cabin test runtime"...), 0o755); err != nil {
			staticRuntimeErr = err
			return
		}
		staticRuntimePath = out
	})
	if staticRuntimeErr != nil {
		t.Fatalf("make static test runtime: %v", staticRuntimeErr)
	}
	return staticRuntimePath
}

type buildError struct {
	err error
	out string
}

func (e *buildError) Error() string { return e.err.Error() + ": " + e.out }
