package daemon

import (
	"context"
	"log/slog"

	"github.com/cabinvm/cabin/internal/hostdns"
	"github.com/cabinvm/cabin/internal/vmm"
)

// hostDNS is the host's DNS settings as guests are given them; none when
// the host's resolv.conf cannot be read (logged).
func hostDNS(log *slog.Logger) vmm.DNS {
	c, err := hostdns.Read(hostdns.ResolvConf)
	if err != nil {
		log.Warn("guests get no DNS settings", "err", err)
		return vmm.DNS{}
	}
	return vmm.DNS(c)
}

// followDNS gives guests the host's DNS settings each time they change,
// until ctx ends.
func followDNS(ctx context.Context, m *vmm.Manager, log *slog.Logger) {
	err := hostdns.Watch(ctx, hostdns.ResolvConf, hostdns.Config(m.DNS()), func(c hostdns.Config) {
		log.Info("the host's DNS settings changed", "nameservers", c.Nameservers, "search", c.SearchDomains)
		m.SetDNS(vmm.DNS(c))
	}, log)
	if err != nil {
		log.Warn("guests will not follow the host's DNS settings", "err", err)
	}
}
