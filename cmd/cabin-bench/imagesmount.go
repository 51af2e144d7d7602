package main

import (
	"context"
	"fmt"
	"strconv"
	"time"

	"github.com/cabinvm/cabin/api/concierge"
	"github.com/cabinvm/cabin/internal/bootcfg"
)

// The images-share part: what a cabin run paid for mounting the images
// share (9p) in the guest and unmounting it when its container went, which
// the agent no longer does once the share is mounted (docs/decisions.md
// §32): a mount and unmount of the share, timed in the guest's shell, in
// a loop, against the same loop without them, taking turns.

const (
	imagesMountVM    = "bench-imgmount"
	imagesMountLoops = 20
	imagesMountRuns  = 8
)

func benchImagesMount(ctx context.Context, e *env, _ options, t *table) error {
	if _, err := startThroughDaemon(ctx, e.cc, imagesMountVM); err != nil {
		return err
	}
	defer concierge.NewVmConciergeClient(e.cc).StopVm(context.WithoutCancel(ctx), &concierge.StopVmRequest{Name: imagesMountVM})
	loop := func(body string) string {
		return "mkdir -p /run/bench-images; i=0; while [ $i -lt " + strconv.Itoa(imagesMountLoops) + " ]; do " + body + "; i=$((i+1)); done"
	}
	mount := loop("mount -t 9p -o trans=virtio,version=9p2000.L,ro,nodev " + bootcfg.ImagesTag + " /run/bench-images && ls /run/bench-images >/dev/null && umount /run/bench-images")
	empty := loop("ls /run/bench-images >/dev/null")
	timed := func(script string) (time.Duration, error) {
		start := time.Now()
		if _, err := execIO(ctx, e.cc, imagesMountVM, nil, "sh", "-c", script); err != nil {
			return 0, fmt.Errorf("%s: %w", script, err)
		}
		return time.Since(start), nil
	}
	// Once first: the 9p module, the share's first attach.
	if _, err := timed(mount); err != nil {
		return err
	}
	var with, without []time.Duration
	for range imagesMountRuns {
		a, err := timed(mount)
		if err != nil {
			return err
		}
		b, err := timed(empty)
		if err != nil {
			return err
		}
		with, without = append(with, a/imagesMountLoops), append(without, b/imagesMountLoops)
	}
	t.add(row{metric: "images share: mount+unmount of the 9p share in the guest (what each cabin run paid before §32)",
		value: median(with), baseline: "the same loop without them", base: median(without),
		detail: fmt.Sprintf("%d per exec, %d execs each way: with %s, without %s", imagesMountLoops, imagesMountRuns, spread(with), spread(without))})
	return nil
}
