package qemu

import (
	"context"
	"encoding/json"
	"fmt"
)

// Status is QEMU's answer to query-status: whether the vCPUs run, and
// its run state ("running", "paused", "prelaunch", "suspended", ...).
type Status struct {
	Running bool   `json:"running"`
	Status  string `json:"status"`
}

// QueryStatus asks QEMU for its run state.
func QueryStatus(ctx context.Context, c *Client) (Status, error) {
	var raw json.RawMessage
	if err := c.Execute(ctx, "query-status", nil, &raw); err != nil {
		return Status{}, err
	}
	return ParseStatus(raw)
}

// ParseStatus reads query-status's return value. Both fields must be
// there: a reply without "running" cannot say the VM is paused.
func ParseStatus(b []byte) (Status, error) {
	var st struct {
		Running *bool   `json:"running"`
		Status  *string `json:"status"`
	}
	if err := json.Unmarshal(b, &st); err != nil {
		return Status{}, fmt.Errorf("qmp query-status: %w", err)
	}
	if st.Running == nil || st.Status == nil {
		return Status{}, fmt.Errorf("qmp query-status: reply %.100q lacks running or status", b)
	}
	return Status{Running: *st.Running, Status: *st.Status}, nil
}
