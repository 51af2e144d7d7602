package resource

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"sync"

	"github.com/cabinvm/cabin/internal/hypervisor"
)

// Set is one VM's holds, in the order of their kinds. It releases each
// hold once, last taken first, whoever asks and however often.
type Set struct {
	vm VM

	mu    sync.Mutex
	holds []held
	// ended is set once the holds were released or let go of.
	ended bool
}

type held struct {
	kind string
	hold Hold
}

// Prepare prepares each kind for vm in order, each seeing cfg as the ones
// before it left it. When one fails, the holds taken before it are
// released, last first, and its error is returned naming the kind.
func Prepare(ctx context.Context, kinds []Kind, vm VM, cfg *hypervisor.Config) (*Set, error) {
	s := &Set{vm: vm}
	for _, k := range kinds {
		h, err := k.Prepare(ctx, vm, cfg)
		if err != nil {
			if rerr := s.Release(context.WithoutCancel(ctx)); rerr != nil {
				vm.Log.Warn("release after a failed prepare", "failed", k.Name(), "err", rerr)
			}
			return nil, fmt.Errorf("%s: %w", k.Name(), err)
		}
		s.holds = append(s.holds, held{kind: k.Name(), hold: h})
	}
	return s, nil
}

// Adopt takes back, for a VM an earlier cabind launched, each kind's hold
// from the state the VM's record kept under the kind's name. A kind that
// cannot is left out of the set, and its error joined into the one
// returned: the VM runs whatever cabind makes of it, and the rest of what
// it holds is still released when it stops.
func Adopt(ctx context.Context, kinds []Kind, vm VM, states map[string]json.RawMessage) (*Set, error) {
	s := &Set{vm: vm}
	var errs []error
	for _, k := range kinds {
		h, err := k.Adopt(ctx, vm, states[k.Name()])
		if err != nil {
			errs = append(errs, fmt.Errorf("%s: %w", k.Name(), err))
			continue
		}
		s.holds = append(s.holds, held{kind: k.Name(), hold: h})
	}
	return s, errors.Join(errs...)
}

// States is what the VM's record keeps of the holds, by kind.
func (s *Set) States() map[string]json.RawMessage {
	s.mu.Lock()
	defer s.mu.Unlock()
	var out map[string]json.RawMessage
	for _, h := range s.holds {
		if st := h.hold.State(); st != nil {
			if out == nil {
				out = map[string]json.RawMessage{}
			}
			out[h.kind] = st
		}
	}
	return out
}

// Start runs the holds that have work to do once the hypervisor runs, in
// order, and stops at the first that fails.
func (s *Set) Start(ctx context.Context, hv hypervisor.VM) error {
	s.mu.Lock()
	holds := s.holds
	s.mu.Unlock()
	for _, h := range holds {
		if st, ok := h.hold.(Starter); ok {
			if err := st.Start(ctx, hv); err != nil {
				return fmt.Errorf("%s: %w", h.kind, err)
			}
		}
	}
	return nil
}

// Release releases every hold, last taken first, the first time it is
// called; later calls, and calls after Detach, do nothing. Every hold is
// released even when one fails; the errors are joined.
func (s *Set) Release(ctx context.Context) error {
	holds := s.end()
	var errs []error
	for i := len(holds) - 1; i >= 0; i-- {
		if err := holds[i].hold.Release(ctx); err != nil {
			errs = append(errs, fmt.Errorf("release %s: %w", holds[i].kind, err))
		}
	}
	return errors.Join(errs...)
}

// Detach lets go of the holds that keep something while cabind runs,
// last taken first, and releases nothing: the VM lives on, and the next
// cabind adopts it. Like Release, it acts once.
func (s *Set) Detach() {
	holds := s.end()
	for i := len(holds) - 1; i >= 0; i-- {
		if d, ok := holds[i].hold.(Detacher); ok {
			d.Detach()
		}
	}
}

// end marks the set ended and returns its holds, or none when it already
// was.
func (s *Set) end() []held {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.ended {
		return nil
	}
	s.ended = true
	return s.holds
}

// Find returns the first of s's holds that is a T: a hold with something
// more to offer its VM than what a Hold does (the address a network gives
// it). ok is false when none is, and for a nil set.
func Find[T any](s *Set) (t T, ok bool) {
	if s == nil {
		return t, false
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, h := range s.holds {
		if t, ok := h.hold.(T); ok {
			return t, true
		}
	}
	return t, false
}
