package qemu

import (
	"errors"
	"fmt"
	"math"
	"time"
)

// tscWindow is how long HostTSCKHz counts ticks: long enough that the
// error of reading the clock (a few µs) stays below 0.01 %.
const tscWindow = 100 * time.Millisecond

// tscSampleSlack bounds the ticks between the two counter reads around a
// clock read; more means the thread was preempted, and the sample is
// retaken.
const tscSampleSlack = 20000

// HostTSCKHz measures the host's TSC frequency in kHz, which is the
// frequency a TCG guest's TSC runs at (QEMU answers a guest's RDTSC with
// the host counter). It takes about 100 ms.
//
// A TCG guest is told this frequency (Config.TSCKHz) because microvm has
// no HPET or ACPI PM timer: the guest kernel can only calibrate its TSC
// against the emulated PIT, which fails on a busy host ("tsc: Unable to
// calibrate against PIT"), and the kernel then waits forever for a timer
// interrupt microvm does not route. Measured here with two busy loops on
// two cores: 4 of 4 boots hung without tsc_early_khz=, 4 of 4 booted with
// it.
func HostTSCKHz() (int, error) {
	if err := haveTSC(); err != nil {
		return 0, err
	}
	t0, c0, err := tscSample()
	if err != nil {
		return 0, err
	}
	time.Sleep(tscWindow)
	t1, c1, err := tscSample()
	if err != nil {
		return 0, err
	}
	khz := math.Round(float64(c1-c0) / float64(t1.Sub(t0).Nanoseconds()) * 1e6)
	// Far outside any real CPU: the counter is not usable (or not constant).
	if khz < 100_000 || khz > 20_000_000 {
		return 0, fmt.Errorf("measure tsc: implausible %.0f kHz", khz)
	}
	return int(khz), nil
}

// tscSample reads the clock between two counter reads and returns the
// counter at their midpoint.
func tscSample() (time.Time, uint64, error) {
	for range 10 {
		a := rdtsc()
		now := time.Now()
		b := rdtsc()
		if b > a && b-a < tscSampleSlack {
			return now, a + (b-a)/2, nil
		}
	}
	return time.Time{}, 0, errors.New("measure tsc: no undisturbed sample")
}
