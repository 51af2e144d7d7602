package guestinit

import (
	"fmt"
	"os"
	"sync"
	"time"

	"github.com/cabinvm/cabin/internal/bootcfg"
)

// Kmsg is the kernel log device the agent writes its boot marks to.
const Kmsg = "/dev/kmsg"

// BootMarks collects the agent's boot marks (bootcfg.BootMarkPrefix) and
// writes them to the kernel log, where they take the kernel's timestamps
// and so line up with its own messages. It is safe for concurrent use.
type BootMarks struct {
	mu    sync.Mutex
	marks []bootcfg.BootMark
}

// Mark records that the agent reached name at at.
func (b *BootMarks) Mark(name string, at time.Time) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.marks = append(b.marks, bootcfg.BootMark{Name: name, At: at})
}

// Flush writes the marks recorded since the last Flush to the kernel log
// device at path as one informational message.
func (b *BootMarks) Flush(path string) error {
	b.mu.Lock()
	marks := b.marks
	b.marks = nil
	b.mu.Unlock()
	if len(marks) == 0 {
		return nil
	}
	line, err := bootcfg.FormatBootMarks(marks, time.Now())
	if err != nil {
		return err
	}
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_APPEND, 0)
	if err != nil {
		return fmt.Errorf("boot marks: %w", err)
	}
	defer f.Close()
	// <6>: KERN_INFO, below any console level the guest runs at.
	if _, err := f.WriteString("<6>" + line + "\n"); err != nil {
		return fmt.Errorf("boot marks: %w", err)
	}
	return nil
}
