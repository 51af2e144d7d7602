package main

import (
	"testing"

	"github.com/cabinvm/cabin/api/concierge"
)

func TestFormatBytes(t *testing.T) {
	for _, tc := range []struct {
		n    int64
		want string
	}{
		{0, "0 B"},
		{1023, "1023 B"},
		{1024, "1 KiB"},
		{512 << 20, "512 MiB"},
		{1536 << 20, "1.5 GiB"},
		{24_117_248, "23 MiB"},
		{25_000_000, "23.8 MiB"},
	} {
		if got := formatBytes(tc.n); got != tc.want {
			t.Errorf("formatBytes(%d) = %q, want %q", tc.n, got, tc.want)
		}
	}
}

// 100.115.92.26 as the wire carries it: network byte order in a fixed32.
const webIPv4 = uint32(100) | 115<<8 | 92<<16 | 26<<24

func TestFormatIPv4(t *testing.T) {
	if got := formatIPv4(webIPv4); got != "100.115.92.26" {
		t.Errorf("formatIPv4 = %q, want 100.115.92.26 (network byte order)", got)
	}
}

func TestStatusWord(t *testing.T) {
	if got := statusWord(concierge.VmStatus_VM_STATUS_DISK_OP_IN_PROGRESS); got != "disk_op_in_progress" {
		t.Errorf("statusWord = %q", got)
	}
}
