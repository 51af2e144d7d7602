package main

import (
	"fmt"
	"io"
	"os"
	"strconv"
	"strings"

	"github.com/schollz/progressbar/v3"
	"github.com/spf13/cobra"
	"golang.org/x/term"

	cabinv1 "github.com/cabinvm/cabin/api/cabin/v1"
	"github.com/cabinvm/cabin/api/concierge"
)

// newDiskCmd groups the disk image verbs: a file per verb, disk_*.go.
func newDiskCmd(g *globals) *cobra.Command {
	disk := &cobra.Command{
		Use:   "disk",
		Short: "Create, resize, export, import and remove disk images",
		Long: "disk manages the disk images cabind keeps for --owner (yours, when you are not\n" +
			"root), one per VM name: concierge's disk calls, with the image's bytes on a\n" +
			"stream (cabin.v1.Disks) where upstream passes file descriptors.",
		Args: groupArgs,
		RunE: showHelp,
	}
	disk.AddCommand(
		newDiskCreateCmd(g),
		newDiskListCmd(g),
		newDiskResizeCmd(g),
		newDiskExportCmd(g),
		newDiskImportCmd(g),
		newDiskRmCmd(g),
		newDiskStatusCmd(g),
		newDiskCancelCmd(g),
	)
	return disk
}

// diskStatusWord is a disk status for people: "created", "not_enough_space".
func diskStatusWord(s concierge.DiskImageStatus) string {
	return enumWord(s.String(), "DISK_STATUS_")
}

// progress shows an operation's progress: a bar on a terminal, else a
// line at every tenth, on w (standard error).
type progress struct {
	bar   *progressbar.ProgressBar
	w     io.Writer
	label string
	last  int
	// total is the byte count of a download bar, 0 for a percentage.
	total int64
}

func newProgress(w io.Writer, label string, quiet bool) *progress {
	p := &progress{w: w, label: label, last: -1}
	if quiet {
		p.w = io.Discard
		return p
	}
	if f, ok := w.(*os.File); ok && term.IsTerminal(int(f.Fd())) {
		p.bar = progressbar.NewOptions(100,
			progressbar.OptionSetWriter(w),
			progressbar.OptionSetDescription(label),
			progressbar.OptionShowCount(),
			progressbar.OptionSetPredictTime(true),
			progressbar.OptionClearOnFinish(),
			progressbar.OptionSetWidth(30),
		)
	}
	return p
}

// set shows pct, 0 to 100.
func (p *progress) set(pct int) {
	pct = min(max(pct, 0), 100)
	if p.bar != nil {
		p.bar.Set(pct)
		return
	}
	if pct/10 > p.last/10 || (p.last < 0) {
		p.last = pct
		fmt.Fprintf(p.w, "%s: %d%%\n", p.label, pct)
	}
}

// newDownloadBar is a progress of total bytes: the bar counts bytes, the
// lines say how many of how many.
func newDownloadBar(w io.Writer, label string, total int64, quiet bool) *progress {
	p := newProgress(w, label, quiet)
	p.total = total
	if p.bar != nil {
		p.bar = progressbar.NewOptions64(total,
			progressbar.OptionSetWriter(w),
			progressbar.OptionSetDescription(label),
			progressbar.OptionShowBytes(true),
			progressbar.OptionShowCount(),
			progressbar.OptionSetPredictTime(true),
			progressbar.OptionClearOnFinish(),
			progressbar.OptionSetWidth(30),
		)
	}
	return p
}

// setBytes shows done of a download bar's bytes.
func (p *progress) setBytes(done int64) {
	if p.bar != nil {
		p.bar.Set64(min(done, p.total))
		return
	}
	pct := int(min(done, p.total) * 100 / max(p.total, 1))
	if pct/10 > p.last/10 || p.last < 0 {
		p.last = pct
		fmt.Fprintf(p.w, "%s: %d%% of %s\n", p.label, pct, formatBytes(p.total))
	}
}

func (p *progress) done() {
	if p.bar != nil {
		p.bar.Finish()
		return
	}
	switch {
	case p.last == 100:
	case p.total > 0:
		p.setBytes(p.total)
	default:
		p.set(100)
	}
}

// startedOperation is what concierge's Export and ImportDiskImage
// responses share.
type startedOperation interface {
	GetStatus() concierge.DiskImageStatus
	GetFailureReason() string
	GetCommandUuid() string
}

// operationStarted checks the first answer of an export or import: the
// operation is under way, and (for people) its command id goes to w.
func operationStarted(w io.Writer, what string, st startedOperation, asJSON bool) error {
	if st.GetStatus() != concierge.DiskImageStatus_DISK_STATUS_IN_PROGRESS {
		return fmt.Errorf("%s: %s: %s", what, diskStatusWord(st.GetStatus()), orUnknown(st.GetFailureReason()))
	}
	if !asJSON {
		fmt.Fprintf(w, "command %s\n", st.GetCommandUuid())
	}
	return nil
}

// outcomeError is the error of a disk operation that ended in a status
// other than success.
func outcomeError(what string, st *concierge.DiskImageStatusResponse) error {
	return fmt.Errorf("%s: %s: %s", what, diskStatusWord(st.GetStatus()), orUnknown(st.GetFailureReason()))
}

// parseSize reads a size in bytes, with an optional binary suffix:
// 512, 64K, 100M, 10G, 1T (K = 1024).
func parseSize(s string) (uint64, error) {
	t := strings.TrimSuffix(strings.TrimSuffix(strings.ToUpper(strings.TrimSpace(s)), "B"), "I")
	mult := uint64(1)
	if t != "" {
		switch t[len(t)-1] {
		case 'K':
			mult = 1 << 10
		case 'M':
			mult = 1 << 20
		case 'G':
			mult = 1 << 30
		case 'T':
			mult = 1 << 40
		}
		if mult != 1 {
			t = t[:len(t)-1]
		}
	}
	n, err := strconv.ParseUint(t, 10, 64)
	if err != nil || n > (1<<63)/mult {
		return 0, usagef("size %q: want bytes, or a number with K, M, G or T", s)
	}
	return n * mult, nil
}

func diskFormat(s string) (cabinv1.DiskFormat, error) {
	switch s {
	case "raw":
		return cabinv1.DiskFormat_DISK_FORMAT_RAW, nil
	case "qcow2":
		return cabinv1.DiskFormat_DISK_FORMAT_QCOW2, nil
	}
	return 0, usagef("--format %q: want raw or qcow2", s)
}

func storageLocation(s string) (concierge.StorageLocation, error) {
	switch s {
	case "", "root", "crosvm":
		return concierge.StorageLocation_STORAGE_CRYPTOHOME_ROOT, nil
	case "pluginvm", "pvm":
		return concierge.StorageLocation_STORAGE_CRYPTOHOME_PLUGINVM, nil
	}
	return 0, usagef("--location %q: want root or pluginvm", s)
}

// commandArg accepts exactly one argument, a command uuid.
func commandArg(cmd *cobra.Command, args []string) error {
	if len(args) != 1 || args[0] == "" {
		return usagef("%s takes one command uuid", verb(cmd))
	}
	return nil
}
