package main

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// Text that roff would read as requests or escapes is written as text.
func TestRoffLines(t *testing.T) {
	got := roffLines(".hidden request\n'another\nC:\\path and .dot\n")
	want := "\\&.hidden request\n\\&'another\nC:\\epath and .dot\n"
	if got != want {
		t.Errorf("roffLines = %q, want %q", got, want)
	}
	if got := manQuote(`say "x"`); got != `"say ""x"""` {
		t.Errorf("manQuote = %s", got)
	}
}

// Every page has the sections man(7) wants, and its paragraphs and flags
// as --help has them.
func TestManPageSections(t *testing.T) {
	dir := t.TempDir()
	t.Setenv("SOURCE_DATE_EPOCH", "1767225600") // 2026-01-01
	if r := runCLI(t, nil, "__man", dir); r.code != 0 {
		t.Fatalf("__man: %+v", r)
	}
	pages, err := filepath.Glob(filepath.Join(dir, "*.1"))
	if err != nil || len(pages) < 40 {
		t.Fatalf("pages: %v, %v", pages, err)
	}
	for _, p := range pages {
		b, err := os.ReadFile(p)
		if err != nil {
			t.Fatal(err)
		}
		s := string(b)
		for _, want := range []string{`.TH "CABIN" "1" "Jan 2026"`, "\n.SH NAME\n", "\n.SH SYNOPSIS\n", "\n.SH DESCRIPTION\n", "\n.SH SEE ALSO\n"} {
			if !strings.Contains(s, want) {
				t.Errorf("%s lacks %q", filepath.Base(p), want)
			}
		}
	}
	b, err := os.ReadFile(filepath.Join(dir, "cabin-logs.1"))
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"cabin-logs \\- Show a container's output\n", "\\fB-f\\fP, \\fB--follow\\fP[=false]\n.RS\nfollow", "\\fB--tail\\fP=\"all\"", ".EX\n  cabin logs web\n", "\\fBcabin(1)\\fP"} {
		if !strings.Contains(string(b), want) {
			t.Errorf("cabin-logs.1 lacks %q:\n%s", want, b)
		}
	}
}
