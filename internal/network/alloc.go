package network

import (
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"sort"
	"sync"

	"github.com/cabinvm/cabin/internal/errdefs"
	"github.com/cabinvm/cabin/internal/statedir"
)

// allocator hands out a pool's /30s to VMs, one per VM (named by its
// directory's id), lowest first, and keeps what it handed out in a file.
// VMs outlive cabind: a restarted cabind serves at once and takes its VMs
// back one by one, and the file is what keeps it from handing a running
// VM's subnet to a new one before that VM is adopted.
type allocator struct {
	pool Pool
	file string

	mu   sync.Mutex
	held map[netip.Prefix]string // subnet → the id of the VM holding it
}

// allocations is the allocator's file.
type allocations struct {
	Version int `json:"version"`
	// Subnets maps each subnet held to the id of the VM holding it.
	Subnets map[netip.Prefix]string `json:"subnets"`
}

const allocationsVersion = 1

// openAllocator reads what file says is held, if it exists. Subnets held
// outside pool (the pool a cabind ran with earlier) stay held until their
// VMs release them, and are never handed out.
func openAllocator(pool Pool, file string) (*allocator, error) {
	a := &allocator{pool: pool, file: file, held: map[netip.Prefix]string{}}
	var st allocations
	found, err := statedir.ReadJSON(file, &st)
	if err != nil {
		return nil, fmt.Errorf("network allocations: %w", err)
	}
	if !found {
		return a, nil
	}
	if st.Version != allocationsVersion {
		return nil, fmt.Errorf("network allocations %s: version %d, want %d", file, st.Version, allocationsVersion)
	}
	for subnet, id := range st.Subnets {
		if err := checkSubnet(subnet); err != nil {
			return nil, fmt.Errorf("network allocations %s: %w", file, err)
		}
		if !validID(id) {
			return nil, fmt.Errorf("network allocations %s: %s: %q is not a VM's id", file, subnet, id)
		}
		a.held[subnet] = id
	}
	return a, nil
}

// checkSubnet accepts a VM's subnet: an IPv4 /30 given by its first
// address.
func checkSubnet(subnet netip.Prefix) error {
	if !subnet.Addr().Is4() || subnet.Bits() != 30 || subnet.Masked() != subnet {
		return fmt.Errorf("%s is not an IPv4 /30", subnet)
	}
	return nil
}

// allocate gives the VM id a subnet: the one it holds already, if any
// (what an earlier run of the same VM left held when cabind went away
// before releasing it), else the pool's lowest free one. It fails with
// ErrResourceExhausted when none is free.
func (a *allocator) allocate(id string) (netip.Prefix, error) {
	a.mu.Lock()
	defer a.mu.Unlock()
	// One outside the pool is stale all the same, and never handed out
	// again.
	stale := false
	for subnet, holder := range a.held {
		if holder != id {
			continue
		}
		if a.pool.Contains(subnet.Addr()) {
			return subnet, nil
		}
		delete(a.held, subnet)
		stale = true
	}
	n := a.pool.Size()
	for i := range n {
		subnet := a.pool.Subnet(i)
		if _, taken := a.held[subnet]; taken {
			continue
		}
		a.held[subnet] = id
		if err := a.save(); err != nil {
			delete(a.held, subnet)
			return netip.Prefix{}, err
		}
		return subnet, nil
	}
	err := errdefs.Errorf(errdefs.ErrResourceExhausted,
		"no address for another VM: all %d subnets of the pool %s are taken (cabind's --net-pool gives a larger one)", n, a.pool)
	if stale {
		if serr := a.save(); serr != nil {
			return netip.Prefix{}, errors.Join(err, serr)
		}
	}
	return netip.Prefix{}, err
}

// mark records that the VM id holds subnet, as its hold's state says: at
// adoption. It fails when another VM holds subnet.
func (a *allocator) mark(id string, subnet netip.Prefix) error {
	if err := checkSubnet(subnet); err != nil {
		return err
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	switch holder, ok := a.held[subnet]; {
	case ok && holder == id:
		return nil
	case ok:
		return fmt.Errorf("subnet %s is the VM %s's: %w", subnet, holder, errdefs.ErrAlreadyExists)
	}
	a.held[subnet] = id
	if err := a.save(); err != nil {
		delete(a.held, subnet)
		return err
	}
	return nil
}

// free lets go of subnet if the VM id holds it.
func (a *allocator) free(id string, subnet netip.Prefix) error {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.held[subnet] != id {
		return nil
	}
	delete(a.held, subnet)
	if err := a.save(); err != nil {
		a.held[subnet] = id
		return err
	}
	return nil
}

// holder is the id of the VM holding subnet, "" for none.
func (a *allocator) holder(subnet netip.Prefix) string {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.held[subnet]
}

// save writes the allocations to a temporary file beside the file and
// renames it into place, so that the file is always whole. Called with
// a.mu held.
func (a *allocator) save() error {
	st := allocations{Version: allocationsVersion, Subnets: a.held}
	b, err := json.MarshalIndent(st, "", "  ")
	if err != nil {
		return err
	}
	tmp, err := os.CreateTemp(filepath.Dir(a.file), "."+filepath.Base(a.file)+".*")
	if err != nil {
		return fmt.Errorf("write network allocations: %w", err)
	}
	defer os.Remove(tmp.Name())
	_, err = tmp.Write(append(b, '\n'))
	if err == nil {
		err = tmp.Sync()
	}
	if cerr := tmp.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(tmp.Name(), a.file)
	}
	if err != nil {
		return fmt.Errorf("write network allocations: %w", err)
	}
	return nil
}

// list is what is held, by subnet, lowest first: for tests and logs.
func (a *allocator) list() []netip.Prefix {
	a.mu.Lock()
	defer a.mu.Unlock()
	out := make([]netip.Prefix, 0, len(a.held))
	for s := range a.held {
		out = append(out, s)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Addr().Less(out[j].Addr()) })
	return out
}
