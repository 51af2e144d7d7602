package guestimage

import (
	"crypto/sha256"
	"debug/elf"
	"encoding/hex"
	"errors"
	"os"
	"path"
	"path/filepath"
	"strings"
	"testing"

	"github.com/cabinvm/cabin/internal/errdefs"
)

func TestCheckAgent(t *testing.T) {
	agent := staticAgent(t)
	if err := checkAgent(agent); err != nil {
		t.Fatalf("static Go binary rejected: %v", err)
	}
	dir := t.TempDir()
	files := map[string][]byte{
		"dynamic": buildELF(elf.ET_EXEC, "/lib64/ld-linux-x86-64.so.2", nil),
		"object":  buildELF(elf.ET_REL, "", nil),
		"script":  []byte("#!/bin/sh\necho hi\n"),
	}
	for name, data := range files {
		os.WriteFile(filepath.Join(dir, name), data, 0o755)
	}
	for _, tc := range []struct {
		path, want string
		is         error
	}{
		{filepath.Join(dir, "dynamic"), "dynamically linked", errdefs.ErrInvalidArgument},
		{filepath.Join(dir, "object"), "not an executable", errdefs.ErrInvalidArgument},
		{filepath.Join(dir, "script"), "not an ELF", errdefs.ErrInvalidArgument},
		{filepath.Join(dir, "missing"), "not found", errdefs.ErrNotFound},
		{dir, "not a regular file", errdefs.ErrInvalidArgument},
	} {
		err := checkAgent(tc.path)
		if !errors.Is(err, tc.is) || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: error %v, want %v mentioning %q", filepath.Base(tc.path), err, tc.is, tc.want)
		}
	}
	// A real dynamically linked program, where the host has one.
	if _, err := os.Stat("/bin/sh"); err == nil {
		if err := checkAgent("/bin/sh"); err == nil {
			t.Error("/bin/sh accepted as a static agent")
		}
	}
}

func sha256Hex(s string) string {
	sum := sha256.Sum256([]byte(s))
	return hex.EncodeToString(sum[:])
}

// resolveEntry follows symlinks in an archive as the guest kernel would,
// element by element, and returns the entry name reaches. It fails on a
// missing element, on more than 40 links, and on ".." above the root.
func resolveEntry(entries []cpioEntry, name string) (cpioEntry, bool) {
	byName := map[string]cpioEntry{}
	for _, e := range entries {
		byName[e.Name] = e
	}
	todo := strings.Split(strings.TrimPrefix(name, "/"), "/")
	cur, links := "", 0
	for len(todo) > 0 {
		el := todo[0]
		todo = todo[1:]
		switch el {
		case "", ".":
			continue
		case "..":
			if cur == "" {
				return cpioEntry{}, false
			}
			if cur = path.Dir(cur); cur == "." {
				cur = ""
			}
			continue
		}
		next := path.Join(cur, el)
		e, ok := byName[next]
		if !ok {
			return cpioEntry{}, false
		}
		if e.typ() == cpioTypeLink {
			if links++; links > 40 {
				return cpioEntry{}, false
			}
			target := string(e.Data)
			if path.IsAbs(target) {
				cur = ""
			}
			todo = append(strings.Split(target, "/"), todo...)
			continue
		}
		cur = next
	}
	e, ok := byName[cur]
	return e, ok
}
