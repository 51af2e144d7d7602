package vmm

import (
	"bytes"
	"io"
	"os"
	"strings"

	"github.com/cabinvm/cabin/internal/consolelog"
	"github.com/cabinvm/cabin/internal/statedir"
)

// note records why v is stopping on its own: in the VM's console log,
// where `cabin vm logs` and GetVmLogs show it with the guest's own output,
// and as the detail of its stopped event (the first note wins: it is the
// cause, what follows its consequence).
func (m *Manager) note(v *vm, detail string) {
	v.mu.Lock()
	if v.stopDetail == "" {
		v.stopDetail = detail
	}
	v.mu.Unlock()
	if err := consolelog.Note(consolelog.FilesOf(v.dir), "cabind: "+detail); err != nil {
		m.log.Warn("note in the console log", "vm", v.key.String(), "err", err)
	}
}

// panicMark starts the line a Linux guest prints when it panics.
const panicMark = "Kernel panic - not syncing: "

// guestPanic is the message of the last kernel panic in the end of the
// VM's console log, or "" when its end has none.
func guestPanic(dir statedir.VMDir) string {
	tail, _, err := consolelog.Tail(consolelog.FilesOf(dir), 64<<10)
	if err != nil {
		return ""
	}
	i := bytes.LastIndex(tail, []byte(panicMark))
	if i < 0 {
		return ""
	}
	line, _, _ := bytes.Cut(tail[i+len(panicMark):], []byte("\n"))
	if len(line) > maxLastWords {
		line = line[:maxLastWords]
	}
	return strings.ToValidUTF8(strings.TrimSpace(string(line)), "?")
}

// maxLastWords bounds what of QEMU's log a note quotes.
const maxLastWords = 512

// qemuLastWords is the end of QEMU's own log (its stderr): the last
// non-empty lines, at most maxLastWords bytes, on one line.
func qemuLastWords(dir statedir.VMDir) string {
	f, err := os.Open(dir.QEMULog())
	if err != nil {
		return ""
	}
	defer f.Close()
	if st, err := f.Stat(); err == nil && st.Size() > maxLastWords {
		f.Seek(st.Size()-maxLastWords, io.SeekStart)
	}
	b, _ := io.ReadAll(io.LimitReader(f, maxLastWords))
	var lines []string
	for _, l := range bytes.Split(b, []byte("\n")) {
		if l = bytes.TrimSpace(l); len(l) > 0 {
			lines = append(lines, strings.ToValidUTF8(string(l), "?"))
		}
	}
	if len(lines) > 3 {
		lines = lines[len(lines)-3:]
	}
	return strings.Join(lines, " / ")
}
