package main

import (
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"

	"github.com/cabinvm/cabin/internal/version"
)

// newManCmd writes a man page per command, generated from the command
// tree, so the pages say what --help says. make man and make install run
// it; it is hidden from users.
//
// The pages are written here as roff, not through cobra/doc: that links
// a markdown renderer (blackfriday) whose package initialisers took ~1.3 ms
// of every cabin command's start, for a verb only make runs (decisions §33).
func newManCmd() *cobra.Command {
	return &cobra.Command{
		Use:    "__man DIR",
		Short:  "Write cabin's man pages into DIR",
		Hidden: true,
		Args:   cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if err := os.MkdirAll(args[0], 0o755); err != nil {
				return err
			}
			root := cmd.Root()
			root.DisableAutoGenTag = true
			return writeManTree(root, manHeader{
				title: "CABIN", section: "1", date: manDate(), source: "cabin " + version.Version, manual: "cabin manual",
			}, args[0])
		},
	}
}

// manHeader is a page's .TH line.
type manHeader struct {
	title, section, date, source, manual string
}

// manDate is the pages' date: $SOURCE_DATE_EPOCH's, for reproducible
// builds, else today's.
func manDate() string {
	t := time.Now()
	if s := os.Getenv("SOURCE_DATE_EPOCH"); s != "" {
		if n, err := strconv.ParseInt(s, 10, 64); err == nil {
			t = time.Unix(n, 0)
		}
	}
	return t.UTC().Format("Jan 2006")
}

// writeManTree writes the page of cmd and of each of its visible
// commands, below it, into dir.
func writeManTree(cmd *cobra.Command, h manHeader, dir string) error {
	for _, c := range cmd.Commands() {
		if !c.IsAvailableCommand() || c.IsAdditionalHelpTopicCommand() {
			continue
		}
		if err := writeManTree(c, h, dir); err != nil {
			return err
		}
	}
	name := strings.ReplaceAll(cmd.CommandPath(), " ", "-")
	return os.WriteFile(filepath.Join(dir, name+"."+h.section), manPage(cmd, h), 0o644)
}

// manPage is cmd's page: name, synopsis, description, options, example
// and the pages of its parent and children.
func manPage(cmd *cobra.Command, h manHeader) []byte {
	cmd.InitDefaultHelpCmd()
	cmd.InitDefaultHelpFlag()
	name := strings.ReplaceAll(cmd.CommandPath(), " ", "-")
	var b bytes.Buffer
	fmt.Fprintf(&b, ".nh\n.TH %s %s %s %s %s\n\n", manQuote(h.title), manQuote(h.section), manQuote(h.date), manQuote(h.source), manQuote(h.manual))
	fmt.Fprintf(&b, ".SH NAME\n%s \\- %s\n\n", roffText(name), roffText(cmd.Short))
	fmt.Fprintf(&b, ".SH SYNOPSIS\n\\fB%s\\fP\n\n", roffText(cmd.UseLine()))
	desc := cmd.Long
	if desc == "" {
		desc = cmd.Short
	}
	b.WriteString(".SH DESCRIPTION\n")
	for i, para := range strings.Split(strings.TrimSpace(desc), "\n\n") {
		if i > 0 {
			b.WriteString(".PP\n")
		}
		b.WriteString(roffLines(para))
	}
	b.WriteString("\n")
	manFlags(&b, "OPTIONS", cmd.NonInheritedFlags())
	manFlags(&b, "OPTIONS INHERITED FROM PARENT COMMANDS", cmd.InheritedFlags())
	if cmd.Example != "" {
		fmt.Fprintf(&b, ".SH EXAMPLE\n.EX\n%s.EE\n\n", roffLines(cmd.Example))
	}
	var see []string
	if cmd.HasParent() {
		see = append(see, fmt.Sprintf("\\fB%s(%s)\\fP", roffText(strings.ReplaceAll(cmd.Parent().CommandPath(), " ", "-")), h.section))
	}
	children := slices.Clone(cmd.Commands())
	slices.SortFunc(children, func(a, b *cobra.Command) int { return strings.Compare(a.Name(), b.Name()) })
	for _, c := range children {
		if c.IsAvailableCommand() && !c.IsAdditionalHelpTopicCommand() {
			see = append(see, fmt.Sprintf("\\fB%s-%s(%s)\\fP", roffText(name), roffText(c.Name()), h.section))
		}
	}
	if len(see) > 0 {
		fmt.Fprintf(&b, ".SH SEE ALSO\n%s\n", strings.Join(see, ", "))
	}
	return b.Bytes()
}

// manFlags writes a section of flags, those not hidden nor deprecated.
func manFlags(b *bytes.Buffer, title string, flags *pflag.FlagSet) {
	if !flags.HasAvailableFlags() {
		return
	}
	fmt.Fprintf(b, ".SH %s\n", title)
	first := true
	flags.VisitAll(func(f *pflag.Flag) {
		if f.Deprecated != "" || f.Hidden {
			return
		}
		if !first {
			b.WriteString(".PP\n")
		}
		first = false
		if f.Shorthand != "" && f.ShorthandDeprecated == "" {
			fmt.Fprintf(b, "\\fB-%s\\fP, ", roffText(f.Shorthand))
		}
		fmt.Fprintf(b, "\\fB--%s\\fP", roffText(f.Name))
		def := f.DefValue
		if f.Value.Type() == "string" {
			def = strconv.Quote(def)
		}
		if f.NoOptDefVal != "" {
			fmt.Fprintf(b, "[=%s]", roffText(def))
		} else {
			fmt.Fprintf(b, "=%s", roffText(def))
		}
		fmt.Fprintf(b, "\n.RS\n%s.RE\n", roffLines(f.Usage))
	})
	b.WriteString("\n")
}

// roffText escapes text for roff within a line: backslashes.
func roffText(s string) string {
	return strings.ReplaceAll(s, `\`, `\e`)
}

// roffLines escapes lines of text for roff, each ending in a newline: a
// line that would start with a control character ('.' or '\”) starts
// with a zero-width \& instead.
func roffLines(s string) string {
	var b strings.Builder
	for line := range strings.SplitSeq(strings.TrimRight(s, "\n"), "\n") {
		line = roffText(line)
		if strings.HasPrefix(line, ".") || strings.HasPrefix(line, "'") {
			b.WriteString(`\&`)
		}
		b.WriteString(line)
		b.WriteString("\n")
	}
	return b.String()
}

// manQuote quotes a .TH argument.
func manQuote(s string) string {
	return `"` + strings.ReplaceAll(roffText(s), `"`, `""`) + `"`
}
