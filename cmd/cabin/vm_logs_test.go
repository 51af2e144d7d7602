package main

import (
	"testing"

	"github.com/cabinvm/cabin/api/concierge"
)

func TestVMLogs(t *testing.T) {
	d := startDaemon(t)
	d.concierge.getVMLogs = func(req *concierge.GetVmLogsRequest) (*concierge.GetVmLogsResponse, error) {
		return &concierge.GetVmLogsResponse{Log: "[    0.000000] Linux version 6.1\ncabin-agent: up"}, nil
	}
	r := d.run(t, nil, "vm", "logs", "web")
	if r.code != 0 || r.stdout != "[    0.000000] Linux version 6.1\ncabin-agent: up\n" {
		t.Errorf("got %+v", r)
	}
}
