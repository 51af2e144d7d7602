// Package runtimebuild says how cabin-runtime must be built: with cgo,
// for libcontainer's nsenter and for libseccomp (the seccomp tag), and
// linked statically, since the guest has no C library. The Makefile builds
// it so, and so do the tests that build it; a test in internal/container
// holds the Makefile to this. It is a package of its own so that tests
// elsewhere need not import libcontainer to read two strings.
package runtimebuild

const (
	// Tags are the build tags.
	Tags = "netgo osusergo seccomp"
	// LDFlags are the linker flags: stripped, static.
	LDFlags = "-s -w -extldflags -static"
)
