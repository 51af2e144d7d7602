package maitred

import (
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"strings"

	"github.com/cabinvm/cabin/internal/errdefs"
)

// ResolvConfig is the DNS setup written to /etc/resolv.conf.
type ResolvConfig struct {
	Nameservers   []string
	SearchDomains []string
}

// SetResolvConfig checks c and replaces /etc/resolv.conf with it.
func (m *Maitred) SetResolvConfig(c ResolvConfig) error {
	content, err := c.render()
	if err != nil {
		return err
	}
	return m.writeResolvConf(content)
}

// render checks c and returns it as resolv.conf says it. Fields are
// named as in Maitred's ResolvConfig, whichever call carries it.
func (c ResolvConfig) render() (string, error) {
	var b strings.Builder
	for i, ns := range c.Nameservers {
		if _, err := netip.ParseAddr(ns); err != nil {
			return "", errdefs.InvalidArgument(fmt.Sprintf("resolv_config.nameservers[%d]", i),
				fmt.Sprintf("%q is not an IP address", ns))
		}
		fmt.Fprintf(&b, "nameserver %s\n", ns)
	}
	for i, d := range c.SearchDomains {
		if !isDomain(d) {
			return "", errdefs.InvalidArgument(fmt.Sprintf("resolv_config.search_domains[%d]", i),
				fmt.Sprintf("%q is not a domain name", d))
		}
	}
	if len(c.SearchDomains) > 0 {
		fmt.Fprintf(&b, "search %s\n", strings.Join(c.SearchDomains, " "))
	}
	return b.String(), nil
}

// writeResolvConf replaces /etc/resolv.conf with content, atomically.
func (m *Maitred) writeResolvConf(content string) error {
	m.etcMu.Lock()
	defer m.etcMu.Unlock()
	dst := filepath.Join(m.cfg.EtcDir, "resolv.conf")
	err := replace(dst, func(tmp string) error {
		return writeFile(tmp, content)
	})
	if err != nil {
		return fmt.Errorf("write resolv.conf: %w", err)
	}
	return nil
}

func writeFile(name, content string) error {
	f, err := os.OpenFile(name, os.O_CREATE|os.O_EXCL|os.O_WRONLY, 0o644)
	if err != nil {
		return err
	}
	if _, err := f.WriteString(content); err != nil {
		f.Close()
		return err
	}
	// The rename must not publish a file whose data is not on disk yet.
	if err := f.Sync(); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}

// isDomain reports whether s is a domain name as resolv.conf takes it:
// dot-separated labels of letters, digits, '-' and '_' (service names use
// it), none empty or longer than 63, at most 253 characters; one trailing
// dot is allowed.
func isDomain(s string) bool {
	s = strings.TrimSuffix(s, ".")
	if s == "" || len(s) > 253 {
		return false
	}
	for _, label := range strings.Split(s, ".") {
		if label == "" || len(label) > 63 || label[0] == '-' || label[len(label)-1] == '-' {
			return false
		}
		for i := 0; i < len(label); i++ {
			c := label[i]
			if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '-' || c == '_') {
				return false
			}
		}
	}
	return true
}
