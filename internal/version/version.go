// Package version holds the version cabin's binaries report.
package version

// Version is set at link time:
//
//	go build -ldflags "-X github.com/cabinvm/cabin/internal/version.Version=v1.2.3"
//
// It is the one mutable package variable the project allows, because the
// linker can only set a variable.
var Version = "dev"
