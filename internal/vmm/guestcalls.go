package vmm

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/cabinvm/cabin/internal/errdefs"
)

// GuestKernel is a guest link that can say which kernel its guest runs
// (Maitred.GetKernelVersion); found by type assertion.
type GuestKernel interface {
	// KernelVersion is the guest's kernel release and version, as
	// uname(2) gives them, joined by a space, as upstream reports them.
	KernelVersion(ctx context.Context) (string, error)
}

// GuestUsers is a guest link that can add users to its guest; found by
// type assertion.
type GuestUsers interface {
	// SetUpUser makes u's account in the guest, or adds it to u's
	// groups when it is there already. It answers the name the guest
	// knows u.UID by: u.Name, or, when another account has that uid,
	// that account's name with an ErrAlreadyExists error.
	SetUpUser(ctx context.Context, u User) (string, error)
}

// User is an account SetUpUser makes in a guest: upstream's
// SetUpVmUserRequest, checked.
type User struct {
	Name string
	// UID is the account's uid; DefaultUID when HasUID is false.
	UID    uint32
	HasUID bool
	// Groups are existing groups of the guest the user joins.
	Groups []string
}

// User limits: upstream maitred's pattern for names, useradd's length
// limit (32), and what a uid may be (neither root's 0 nor (uid_t)-1,
// which chown reads as "unchanged").
const (
	DefaultUID     = 1000
	MaxUserName    = 32
	MaxUserGroups  = 64
	maxUID         = 1<<31 - 2
	userNameFormat = "a lower-case letter, then lower-case letters, digits, '-' or '_', optionally ending in '$'"
)

// ValidUserName says whether s is a user or group name upstream accepts
// ([a-z][-a-z0-9_]*\$?), at most MaxUserName bytes. Nothing else reaches
// a guest's command line.
func ValidUserName(s string) bool {
	if s == "" || len(s) > MaxUserName || s[0] < 'a' || s[0] > 'z' {
		return false
	}
	for i := 1; i < len(s); i++ {
		switch c := s[i]; {
		case 'a' <= c && c <= 'z', '0' <= c && c <= '9', c == '-', c == '_':
		case c == '$' && i == len(s)-1:
		default:
			return false
		}
	}
	return true
}

// Validate checks u, naming the request's field at fault.
func (u *User) Validate() error {
	if !ValidUserName(u.Name) {
		return errdefs.InvalidArgument("username", fmt.Sprintf("%q: want %s, at most %d bytes", u.Name, userNameFormat, MaxUserName))
	}
	if !u.HasUID {
		u.UID = DefaultUID
	}
	if u.UID == 0 {
		return errdefs.InvalidArgument("uid", "0 is root's: a new user cannot have it")
	}
	if u.UID > maxUID {
		return errdefs.InvalidArgument("uid", fmt.Sprintf("%d: at most %d", u.UID, maxUID))
	}
	if len(u.Groups) > MaxUserGroups {
		return errdefs.InvalidArgument("group_names", fmt.Sprintf("%d groups: at most %d", len(u.Groups), MaxUserGroups))
	}
	for _, g := range u.Groups {
		if !ValidUserName(g) {
			return errdefs.InvalidArgument("group_names", fmt.Sprintf("%q: want %s, at most %d bytes", g, userNameFormat, MaxUserName))
		}
	}
	return nil
}

// SetUpUser makes u's account in the guest of the running VM key (see
// GuestUsers).
func (m *Manager) SetUpUser(ctx context.Context, key Key, u User) (string, error) {
	if err := u.Validate(); err != nil {
		return "", err
	}
	_, guest, err := m.awake(ctx, key)
	if err != nil {
		return "", err
	}
	g, ok := guest.(GuestUsers)
	if !ok {
		return "", errdefs.Errorf(errdefs.ErrNotImplemented, "vm %s: its guest link cannot add users", key)
	}
	ctx, cancel := context.WithTimeout(ctx, guestCallTimeout)
	defer cancel()
	return g.SetUpUser(ctx, u)
}

// KernelVersion asks the guest of the running VM key which kernel it
// runs (see GuestKernel).
func (m *Manager) KernelVersion(ctx context.Context, key Key) (string, error) {
	_, guest, err := m.awake(ctx, key)
	if err != nil {
		return "", err
	}
	g, ok := guest.(GuestKernel)
	if !ok {
		return "", errdefs.Errorf(errdefs.ErrNotImplemented, "vm %s: its guest link cannot ask for the kernel version", key)
	}
	ctx, cancel := context.WithTimeout(ctx, guestCallTimeout)
	defer cancel()
	return g.KernelVersion(ctx)
}

// SyncTimes sets the clock of the guest of every VM which says to (all
// when it is nil) from the host's, concurrently, as upstream's
// SyncVmTimes does for every VM it has: requests counts the VMs tried,
// failures says why each that failed did, by VM name. A VM that is not
// running and awake counts as a failure: its clock could not be set
// (a suspended one's is set when it resumes).
func (m *Manager) SyncTimes(ctx context.Context, which func(Key) bool) (requests int, failures []error) {
	m.mu.Lock()
	var keys []Key
	for k := range m.vms {
		if which == nil || which(k) {
			keys = append(keys, k)
		}
	}
	m.mu.Unlock()
	slices.SortFunc(keys, func(a, b Key) int { return strings.Compare(a.String(), b.String()) })
	errs := make([]error, len(keys))
	gone := make([]bool, len(keys))
	var wg sync.WaitGroup
	for i, k := range keys {
		wg.Add(1)
		go func() {
			defer wg.Done()
			_, guest, err := m.awake(ctx, k)
			if errors.Is(err, errdefs.ErrNotFound) {
				gone[i] = true // stopped meanwhile: not one of the VMs
				return
			}
			if err == nil {
				gctx, cancel := context.WithTimeout(ctx, guestCallTimeout)
				err = guest.SetTime(gctx, time.Now())
				cancel()
			}
			if err != nil {
				errs[i] = fmt.Errorf("vm %s: set time: %w", k, err)
			}
		}()
	}
	wg.Wait()
	for i := range keys {
		if gone[i] {
			continue
		}
		requests++
		if errs[i] != nil {
			failures = append(failures, errs[i])
		}
	}
	return requests, failures
}
