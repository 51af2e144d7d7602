package vmm

import (
	"sync"
	"time"
)

// EventKind says what happened to a VM.
type EventKind int

const (
	EventStartingUp EventKind = iota + 1
	EventStarted
	EventStopping
	EventStopped
	// EventDNSChanged: the DNS settings guests are given changed. It is
	// of no VM: its Info is zero.
	EventDNSChanged
)

// StopReason says why a VM stopped.
type StopReason int

const (
	// StopExited: the VM's process ended on its own.
	StopExited StopReason = iota
	// StopRequested: Stop was called for it.
	StopRequested
	// StopAllRequested: StopAll was called.
	StopAllRequested
	// StopDiskDestroyed: the VM's disk image was destroyed.
	StopDiskDestroyed
)

// Event is one change of a VM's state.
type Event struct {
	Kind EventKind
	Time time.Time
	Info Info
	// Reason is set for EventStopped.
	Reason StopReason
	// Detail says in words why a VM stopped on its own, for
	// EventStopped: a start timeout, or QEMU's last words.
	Detail string
	// DNS is set for EventDNSChanged.
	DNS DNS
}

// Bus fans events out to subscribers. A subscriber that falls more than its
// buffer behind is dropped (its channel closed) rather than slowing the
// manager down.
type Bus struct {
	mu   sync.Mutex
	subs map[chan Event]struct{}
}

const subscriberBuffer = 256

// Subscribe returns a channel of events from now on, and a function that
// ends the subscription. The channel is closed when the subscription ends,
// including when the subscriber fell behind.
func (b *Bus) Subscribe() (<-chan Event, func()) {
	ch := make(chan Event, subscriberBuffer)
	b.mu.Lock()
	if b.subs == nil {
		b.subs = map[chan Event]struct{}{}
	}
	b.subs[ch] = struct{}{}
	b.mu.Unlock()
	return ch, func() {
		b.mu.Lock()
		defer b.mu.Unlock()
		if _, ok := b.subs[ch]; ok {
			delete(b.subs, ch)
			close(ch)
		}
	}
}

func (b *Bus) publish(e Event) {
	b.mu.Lock()
	defer b.mu.Unlock()
	for ch := range b.subs {
		select {
		case ch <- e:
		default:
			delete(b.subs, ch)
			close(ch)
		}
	}
}
