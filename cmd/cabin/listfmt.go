package main

import (
	"fmt"
	"io"
	"text/template"

	"github.com/spf13/pflag"
)

// listFormat is what the listing verbs take besides --json, as docker and
// nerdctl do: -q for names only, --format for a Go template run on each
// item (its fields by their Go names: {{.Name}}, {{.Pid}}).
type listFormat struct {
	quiet  bool
	format string
}

func (l *listFormat) add(f *pflag.FlagSet) {
	f.BoolVarP(&l.quiet, "quiet", "q", false, "print names only, one a line")
	f.StringVar(&l.format, "format", "", "print each item with a Go template, such as '{{.Name}} {{.Pid}}'")
}

// set tells whether -q or --format asks for the output.
func (l *listFormat) set() bool { return l.quiet || l.format != "" }

// check refuses flags that cannot go together and a template that does
// not parse, before anything is asked of cabind.
func (l *listFormat) check(asJSON bool) error {
	if l.quiet && l.format != "" {
		return usagef("-q and --format cannot go together")
	}
	if asJSON && l.set() {
		return usagef("--json cannot go with -q or --format")
	}
	if l.format != "" {
		if _, err := template.New("format").Parse(l.format); err != nil {
			return usagef("--format: %v", err)
		}
	}
	return nil
}

// write prints items as -q or --format say; name is an item's name.
func writeFormatted[T any](w io.Writer, l listFormat, items []T, name func(T) string) error {
	if l.quiet {
		for _, it := range items {
			if _, err := fmt.Fprintln(w, name(it)); err != nil {
				return err
			}
		}
		return nil
	}
	tmpl, err := template.New("format").Option("missingkey=error").Parse(l.format)
	if err != nil {
		return usagef("--format: %v", err)
	}
	for _, it := range items {
		if err := tmpl.Execute(w, it); err != nil {
			return usagef("--format: %v", err)
		}
		if _, err := fmt.Fprintln(w); err != nil {
			return err
		}
	}
	return nil
}
