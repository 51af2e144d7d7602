// Package integration holds cabin's end-to-end tests: they build cabind,
// the cabin CLI and the guest agent, start a private cabind, boot real QEMU
// VMs through it and drive them over its public gRPC APIs and the CLI.
//
// TestMain sets up one environment for the whole package — the binaries,
// one cabind on a temporary state dir, the guest image and one shared VM —
// and tears it down at the end (StopAllVms, which is checked too). Tests
// that only run commands in a VM use the shared VM; tests that need a VM's
// whole life boot their own.
//
// The tests skip, saying why, when they cannot run: without root, without
// qemu-system-x86_64, without apt-get and dpkg-deb (the guest image build),
// or with -short. CI installs what they need, so there they run.
package integration
