//go:build !amd64

package qemu

import "errors"

func rdtsc() uint64 { return 0 }

func haveTSC() error { return errors.New("no TSC on this architecture") }
