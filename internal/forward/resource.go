package forward

import (
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/cabinvm/cabin/internal/caller"
	"github.com/cabinvm/cabin/internal/errdefs"
	"github.com/cabinvm/cabin/internal/hypervisor"
	"github.com/cabinvm/cabin/internal/resource"
	"github.com/cabinvm/cabin/internal/vmm"
)

// DefaultUDPIdle is how long a UDP client's flow to the guest lives
// without a datagram either way: as long as Linux's conntrack keeps a UDP
// flow that is not a stream (nf_conntrack_udp_timeout). Clients that use
// a port per request, as DNS resolvers do, would otherwise hold many
// flows (maxFlows) for nothing; one that keeps talking keeps its flow.
const DefaultUDPIdle = 30 * time.Second

// Resource is VMs' port forwards as a per-VM resource. A VM starts with
// none; the API adds them to its hold (Set). Put it last in the
// manager's list: its forwards then end first when the VM stops, before
// the channel they may be carried on.
type Resource struct {
	// Dial connects to a VM's guest ports. It is set once the manager
	// exists (vmm.Manager.DialPort), before any VM is started or
	// adopted.
	Dial Dialer
	// UDPIdle is how long an idle UDP flow lives; DefaultUDPIdle when 0.
	UDPIdle time.Duration
}

var _ resource.Kind = (*Resource)(nil)

// Name is "forwards".
func (*Resource) Name() string { return "forwards" }

// Prepare gives a VM being launched no forwards, removing what a run of
// it that ended without cabind's knowledge may have left.
func (r *Resource) Prepare(_ context.Context, vm resource.VM, _ *hypervisor.Config) (resource.Hold, error) {
	if err := removeFile(vm.Dir); err != nil {
		return nil, err
	}
	return r.newSet(vm), nil
}

// Adopt listens again for the forwards a VM's earlier cabind kept. A
// forward whose host port something else took meanwhile is kept, not
// listening, with the reason (Status.Problem): it is the VM's still, and
// is listed, and can be removed or added again.
func (r *Resource) Adopt(_ context.Context, vm resource.VM, _ json.RawMessage) (resource.Hold, error) {
	s := r.newSet(vm)
	fwds, err := readFile(vm.Dir)
	if err != nil {
		// Its forwards are lost, not the VM: the file is rewritten at
		// the next change.
		vm.Log.Warn("cannot restore the vm's port forwards", "err", err)
		return s, nil
	}
	for _, f := range fwds {
		e := &entry{Forward: f}
		if err := f.Validate(); err != nil {
			e.problem = err.Error()
		} else if e.srv, err = s.listen(f); err != nil {
			e.problem = err.Error()
		}
		if e.problem != "" {
			vm.Log.Warn("cannot restore a port forward", "forward", f.String(), "guest_port", f.GuestPort, "err", e.problem)
		} else {
			vm.Log.Info("port forward restored", "forward", f.String(), "guest_port", f.GuestPort)
		}
		s.entries = append(s.entries, e)
	}
	return s, nil
}

func (r *Resource) newSet(vm resource.VM) *Set {
	idle := r.UDPIdle
	if idle <= 0 {
		idle = DefaultUDPIdle
	}
	return &Set{vm: vm, key: vmm.Key{Owner: vm.Owner, Name: vm.Name}, dial: r.Dial, udpIdle: idle}
}

// Set is one VM's forwards: its hold on the forwards resource.
type Set struct {
	vm      resource.VM
	key     vmm.Key
	dial    Dialer
	udpIdle time.Duration

	mu      sync.Mutex
	entries []*entry
	// ended is set once the forwards were released or let go of.
	ended bool
}

var (
	_ resource.Hold     = (*Set)(nil)
	_ resource.Detacher = (*Set)(nil)
)

// entry is one forward of a set: listening (srv), or not, for a reason
// (problem).
type entry struct {
	Forward
	srv     server
	problem string
}

// server is what serves one forward.
type server interface {
	// close stops listening and ends the forward's connections.
	close()
}

// Status is a forward as it stands.
type Status struct {
	Forward
	// Problem says why cabind does not listen for it; empty while it
	// does.
	Problem string
}

// State is nil: the forwards change while the VM runs, so they are kept in
// a file of their own (statedir VMDir.Forwards), not in the VM's record.
func (s *Set) State() json.RawMessage { return nil }

// Add starts a forward for by, and returns it as it listens (its defaults
// filled in). The forward is written to the VM's directory before Add
// returns.
func (s *Set) Add(ctx context.Context, f Forward, by *caller.Caller) (Forward, error) {
	f, err := f.Check(by)
	if err != nil {
		return Forward{}, err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.ended {
		return Forward{}, errdefs.Errorf(errdefs.ErrNotFound, "vm %s has stopped", s.key)
	}
	i := slices.IndexFunc(s.entries, func(e *entry) bool { return e.same(f) })
	if i >= 0 && s.entries[i].srv != nil {
		e := s.entries[i]
		return Forward{}, errdefs.Errorf(errdefs.ErrAlreadyExists,
			"vm %s already forwards %s (to guest port %d)", s.key, f, e.GuestPort)
	}
	srv, err := s.listen(f)
	if err != nil {
		return Forward{}, err
	}
	e := &entry{Forward: f, srv: srv}
	// One that a restart could not listen for is replaced.
	if i >= 0 {
		s.entries[i] = e
	} else {
		s.entries = append(s.entries, e)
	}
	if err := s.save(); err != nil {
		srv.close()
		s.entries = slices.DeleteFunc(s.entries, func(x *entry) bool { return x == e })
		return Forward{}, err
	}
	s.vm.Log.Info("port forward added", "forward", f.String(), "guest_port", f.GuestPort)
	return f, nil
}

// Remove ends the forward of proto from addr and port, and the
// connections it carries. An invalid addr matches any: the set's one
// forward of proto and port.
func (s *Set) Remove(_ context.Context, proto string, addr netip.Addr, port int) (Forward, error) {
	if proto == "" {
		proto = TCP
	}
	if proto != TCP && proto != UDP {
		return Forward{}, errdefs.InvalidArgument("protocol", fmt.Sprintf("%q is neither tcp nor udp", proto))
	}
	if err := validPort("host_port", port); err != nil {
		return Forward{}, err
	}
	addr = addr.Unmap()
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.ended {
		return Forward{}, errdefs.Errorf(errdefs.ErrNotFound, "vm %s has stopped", s.key)
	}
	var found []*entry
	for _, e := range s.entries {
		if e.Proto == proto && e.HostPort == port && (!addr.IsValid() || e.HostAddr == addr) {
			found = append(found, e)
		}
	}
	switch {
	case len(found) == 0:
		what := fmt.Sprintf("%s port %d", proto, port)
		if addr.IsValid() {
			what = Forward{Proto: proto, HostAddr: addr, HostPort: port}.String()
		}
		return Forward{}, errdefs.Errorf(errdefs.ErrNotFound, "vm %s has no forward of %s", s.key, what)
	case len(found) > 1:
		var addrs []string
		for _, e := range found {
			addrs = append(addrs, e.HostAddr.String())
		}
		return Forward{}, errdefs.InvalidArgument("host_address",
			fmt.Sprintf("needed: vm %s forwards %s port %d from %s", s.key, proto, port, strings.Join(addrs, " and ")))
	}
	e := found[0]
	if e.srv != nil {
		e.srv.close()
	}
	s.entries = slices.DeleteFunc(s.entries, func(x *entry) bool { return x == e })
	if err := s.save(); err != nil {
		// It has ended; a restart would bring it back.
		s.vm.Log.Warn("a removed port forward may come back after a restart", "forward", e.String(), "err", err)
	}
	s.vm.Log.Info("port forward removed", "forward", e.String(), "guest_port", e.GuestPort)
	return e.Forward, nil
}

// List lists the forwards by protocol, host address and port.
func (s *Set) List() []Status {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make([]Status, 0, len(s.entries))
	for _, e := range s.entries {
		out = append(out, Status{Forward: e.Forward, Problem: e.problem})
	}
	slices.SortFunc(out, func(a, b Status) int {
		return cmp.Or(
			strings.Compare(a.Proto, b.Proto),
			a.HostAddr.Compare(b.HostAddr),
			cmp.Compare(a.HostPort, b.HostPort),
		)
	})
	return out
}

// Release ends the forwards, once the VM is gone, and removes their file.
func (s *Set) Release(context.Context) error {
	if !s.end() {
		return nil
	}
	return removeFile(s.vm.Dir)
}

// Detach ends the forwards as cabind stops and leaves the VM running; the
// file stays, for the next cabind to listen again.
func (s *Set) Detach() { s.end() }

// end closes every forward the first time it is called, and tells whether
// it did.
func (s *Set) end() bool {
	s.mu.Lock()
	if s.ended {
		s.mu.Unlock()
		return false
	}
	s.ended = true
	entries := s.entries
	s.mu.Unlock()
	var wg sync.WaitGroup
	for _, e := range entries {
		if e.srv != nil {
			wg.Go(e.srv.close)
		}
	}
	wg.Wait()
	return true
}

// listen starts serving f.
func (s *Set) listen(f Forward) (server, error) {
	if s.dial == nil {
		return nil, fmt.Errorf("forward %s: no way to the guest: %w", f, errdefs.ErrInternal)
	}
	log := s.vm.Log.With("forward", f.String(), "guest_port", f.GuestPort)
	dial := func(ctx context.Context) (net.Conn, error) {
		return s.dial(ctx, s.key, f.Proto, f.GuestPort)
	}
	// Not returned as they come: a nil *tcpServer is no nil server.
	if f.Proto == UDP {
		srv, err := listenUDP(f, dial, s.udpIdle, log)
		if err != nil {
			return nil, err
		}
		return srv, nil
	}
	srv, err := listenTCP(f, dial, log)
	if err != nil {
		return nil, err
	}
	return srv, nil
}

// save writes the forwards to the VM's directory. Called with s.mu held.
func (s *Set) save() error {
	fwds := make([]Forward, 0, len(s.entries))
	for _, e := range s.entries {
		fwds = append(fwds, e.Forward)
	}
	if err := writeFile(s.vm.Dir, fwds); err != nil {
		return fmt.Errorf("vm %s: keep its forwards: %w", s.key, err)
	}
	return nil
}

// logDial logs a connection to the guest that could not be made: at
// debug level once the forward has ended, which cut it short.
func logDial(ctx context.Context, log *slog.Logger, from string, err error) {
	if ctx.Err() != nil && errors.Is(err, context.Canceled) {
		return
	}
	log.Info("forward: cannot reach the guest's port", "from", from, "err", err)
}
