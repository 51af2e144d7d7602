package vmm

import (
	"context"
	"slices"
	"time"

	"github.com/cabinvm/cabin/internal/resource"
)

// DNS returns the DNS settings guests are given.
func (m *Manager) DNS() DNS {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.dns
}

// SetDNS changes the DNS settings guests are given (the host's
// resolv.conf changed): the running guests with a network get them at
// once, those that come up later at bring-up, and the change is announced
// (EventDNSChanged). Settings equal to the current ones change nothing.
func (m *Manager) SetDNS(d DNS) {
	m.mu.Lock()
	if slices.Equal(d.Nameservers, m.dns.Nameservers) && slices.Equal(d.SearchDomains, m.dns.SearchDomains) {
		m.mu.Unlock()
		return
	}
	m.dns = d
	var vs []*vm
	for _, v := range m.vms {
		vs = append(vs, v)
	}
	m.mu.Unlock()
	m.bus.publish(Event{Kind: EventDNSChanged, Time: time.Now(), DNS: d})
	for _, v := range vs {
		v.mu.Lock()
		guest, res, state := v.guest, v.res, v.state
		v.mu.Unlock()
		n, ok := resource.Find[Networked](res)
		if !ok || guest == nil || state != StateRunning || len(n.GuestNetwork().DNS.Nameservers) > 0 {
			// No network, or one with a resolver of its own.
			continue
		}
		m.wg.Add(1)
		go func() {
			defer m.wg.Done()
			ctx, cancel := context.WithTimeout(m.ctx, 10*time.Second)
			defer cancel()
			if err := guest.SetDNS(ctx, d); err != nil {
				m.log.Warn("give the guest the new DNS settings", "vm", v.key.String(), "err", err)
			}
		}()
	}
}
