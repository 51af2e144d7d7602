package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"math"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"github.com/spf13/cobra"
	"golang.org/x/term"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	cabinv1 "github.com/cabinvm/cabin/api/cabin/v1"
	"github.com/cabinvm/cabin/api/concierge"
	"github.com/cabinvm/cabin/internal/caller"
)

const (
	// defaultStartTimeout is the daemon's own bring-up timeout when the
	// request sets none (upstream concierge's 60 s).
	defaultStartTimeout = 60 * time.Second
	// startMargin is added to the bring-up timeout for the CLI's wait, so
	// that the daemon, which knows why, reports a slow start before the CLI
	// gives up on it.
	startMargin = 15 * time.Second
	// subscribeWait bounds how long vm start waits for the event stream to
	// be confirmed before starting the VM anyway.
	subscribeWait = 2 * time.Second
	// defaultCPUs is what vm start asks for without --cpus. The API has no
	// "default" (0 is invalid, as upstream), so the CLI picks: one vCPU
	// boots fastest, which matters most under TCG.
	defaultCPUs = 1
)

type vmStartOptions struct {
	cpus       int
	memoryMiB  int
	kernel     string
	initrd     string
	timeoutSec int
	noWait     bool
	accel      string
	network    string
	hotplug    bool
	// storage is --disk, --share, --kernel-param (vm_start_storage.go).
	storage vmStartStorage
}

// accelerators are the values --accel takes.
var accelerators = map[string]cabinv1.Accelerator{
	"auto": cabinv1.Accelerator_ACCELERATOR_AUTO,
	"kvm":  cabinv1.Accelerator_ACCELERATOR_KVM,
	"tcg":  cabinv1.Accelerator_ACCELERATOR_TCG,
}

func newVMStartCmd(g *globals) *cobra.Command {
	var o vmStartOptions
	cmd := &cobra.Command{
		Use: "start NAME",
		Example: "  cabin vm start dev --cpus 2 --memory 1G\n" +
			"  cabin vm start db --disk ~/data.img,format=raw,mount=/data --share ~/src:/src:ro\n" +
			"  cabin vm start hp --hotplug --net tap",
		Short: "Start a VM and wait until it is up",
		Long: "start asks cabind to start the VM NAME and waits until the VM reports started\n" +
			"(its agent is up), showing progress on standard error. Without --kernel it\n" +
			"first has cabind build the default guest image if it is missing or stale,\n" +
			"which --timeout does not cover. A VM that already runs is left as it is.\n" +
			"Kernel and initramfs paths are on the daemon's host.",
		Args: nameArg,
		RunE: func(cmd *cobra.Command, args []string) error {
			return runVMStart(cmd, g, args[0], o)
		},
	}
	f := cmd.Flags()
	f.IntVar(&o.cpus, "cpus", defaultCPUs, "number of vCPUs (at least 1, at most the host's)")
	f.Var((*memMiB)(&o.memoryMiB), "memory", "guest memory: 512M, 2G, or MiB as a number (default: the daemon's)")
	f.StringVar(&o.kernel, "kernel", "", "kernel to boot instead of cabin's image")
	f.StringVar(&o.initrd, "initrd", "", "initramfs to use instead of cabin's image")
	f.IntVar(&o.timeoutSec, "timeout", 0, "seconds the VM has to come up (0: the daemon's default, 60)")
	f.BoolVar(&o.noWait, "no-wait", false, "return once the VM process runs, without waiting for it to be up")
	f.StringVar(&o.accel, "accel", "auto", "accelerator: auto (the daemon's choice), kvm or tcg")
	f.StringVar(&o.network, "net", "", "network: tap (an address of its own, reachable from the host), user (outbound only), none (loopback only); the daemon's choice when unset")
	addStorageFlags(f, &o.storage)
	f.BoolVar(&o.hotplug, "hotplug", false, "a machine that takes NICs and USB devices while it runs (cabin vm net, cabin vm usb): q35 instead of microvm, slower to boot")
	return cmd
}

// networks are the values --net takes.
var networks = map[string]cabinv1.Network{
	"":     cabinv1.Network_NETWORK_DEFAULT,
	"tap":  cabinv1.Network_NETWORK_TAP,
	"user": cabinv1.Network_NETWORK_USER,
	"none": cabinv1.Network_NETWORK_NONE,
}

// startRequest checks the local options and builds the request. Range
// checks beyond what the wire types force are the daemon's.
func startRequest(name, owner string, o vmStartOptions) (*cabinv1.StartVmRequest, error) {
	for _, n := range []struct {
		flag string
		v    int
	}{{"--cpus", o.cpus}, {"--memory", o.memoryMiB}, {"--timeout", o.timeoutSec}} {
		if n.v < 0 {
			return nil, usagef("%s must not be negative, got %d", n.flag, n.v)
		}
		if n.v > math.MaxUint32 {
			return nil, usagef("%s is too large: %d", n.flag, n.v)
		}
	}
	accel, ok := accelerators[o.accel]
	if !ok {
		return nil, usagef("--accel must be auto, kvm or tcg, got %q", o.accel)
	}
	network, ok := networks[o.network]
	if !ok {
		return nil, usagef("--net must be tap, user or none, got %q", o.network)
	}
	// The daemon opens these paths from its own working directory, so a
	// path relative to the user's must be made absolute here.
	kernel, err := absPath(o.kernel)
	if err != nil {
		return nil, fmt.Errorf("--kernel: %w", err)
	}
	initrd, err := absPath(o.initrd)
	if err != nil {
		return nil, fmt.Errorf("--initrd: %w", err)
	}
	req := &cabinv1.StartVmRequest{
		Request: &concierge.StartVmRequest{
			Name:    name,
			OwnerId: owner,
			Cpus:    uint32(o.cpus),
			Timeout: uint32(o.timeoutSec),
		},
		MemoryMib:   uint32(o.memoryMiB),
		KernelPath:  kernel,
		InitrdPath:  initrd,
		Accelerator: accel,
		Network:     network,
		Hotplug:     o.hotplug,
	}
	if err := o.storage.apply(req); err != nil {
		return nil, err
	}
	return req, nil
}

func absPath(p string) (string, error) {
	if p == "" {
		return "", nil
	}
	return filepath.Abs(p)
}

// startDeadline is how long vm start waits in all: the bring-up timeout
// the daemon applies plus a margin.
func startDeadline(timeoutSec int) time.Duration {
	t := defaultStartTimeout
	if timeoutSec > 0 {
		t = time.Duration(timeoutSec) * time.Second
	}
	return t + startMargin
}

func runVMStart(cmd *cobra.Command, g *globals, name string, o vmStartOptions) error {
	req, err := startRequest(name, g.owner, o)
	if err != nil {
		return err
	}
	conn, err := g.dial()
	if err != nil {
		return err
	}
	defer conn.Close()

	began := time.Now()
	ctx := cmd.Context()
	var p *startProgress
	var events <-chan watchResult
	if !o.noWait {
		p = newStartProgress(cmd.ErrOrStderr(), name, began)
		// Deferred too, so the line is cleared before any error is shown.
		defer p.finish()
		if o.kernel == "" {
			// The daemon builds the default image inside StartVm when it
			// is missing or stale, which can take minutes on a cold cache.
			// Asked for here, the build has no start deadline to be cut
			// off by, and its steps show; StartVm then finds it cached.
			if err := ensureImage(ctx, cabinv1.NewImagesClient(conn), p); err != nil {
				return fmt.Errorf("start %s: %w", name, err)
			}
		}
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, startDeadline(o.timeoutSec))
		defer cancel()
		// Subscribe before starting: the started event can follow StartVm's
		// answer closely, and events are not replayed.
		events, err = watchVM(ctx, cabinv1.NewEventsClient(conn), name, g.owner)
		if err != nil {
			return fmt.Errorf("watch events of %s: %w", name, err)
		}
	}

	resp, err := cabinv1.NewVmsClient(conn).StartVm(ctx, req)
	if err != nil {
		return fmt.Errorf("start %s: %w", name, err)
	}
	if !resp.GetSuccess() {
		return fmt.Errorf("start %s: %s", name, orUnknown(resp.GetFailureReason()))
	}
	out := cmd.OutOrStdout()
	switch resp.GetStatus() {
	case concierge.VmStatus_VM_STATUS_RUNNING:
		p.finish()
		fmt.Fprintf(out, "%s is already running (%s)\n", name, pidCID(resp.GetVmInfo()))
		return nil
	case concierge.VmStatus_VM_STATUS_FAILURE, concierge.VmStatus_VM_STATUS_STOPPED:
		return fmt.Errorf("start %s: the daemon reports status %s; see %s",
			name, statusWord(resp.GetStatus()), logsCommand(name, g.owner))
	}
	if o.noWait {
		fmt.Fprintf(out, "%s is starting (%s)\n", name, pidCID(resp.GetVmInfo()))
		return nil
	}

	p.note("booting (" + pidCID(resp.GetVmInfo()) + ")")
	info, err := waitStarted(ctx, p, name, g.owner, events)
	if errors.Is(err, context.DeadlineExceeded) {
		return fmt.Errorf("%s did not come up within %s: %w; see %s",
			name, startDeadline(o.timeoutSec), err, logsCommand(name, g.owner))
	}
	if err != nil {
		return err
	}
	if info == nil {
		info = resp.GetVmInfo()
	}
	p.finish()
	fmt.Fprintf(out, "started %s (%s) in %.1fs\n", name, pidCID(info), time.Since(began).Seconds())
	return nil
}

// ensureImage has the daemon build the default guest image if it is
// missing or stale, showing the build's steps on p. A daemon without the
// Images service (an older cabind) is left to build it inside StartVm.
func ensureImage(ctx context.Context, c cabinv1.ImagesClient, p *startProgress) error {
	stream, err := c.Build(ctx, &cabinv1.BuildImageRequest{Ensure: true})
	if err != nil {
		return imageError(err)
	}
	tenth := -1 // of the current download, last shown
	for {
		msg, err := stream.Recv()
		if errors.Is(err, io.EOF) {
			return nil
		}
		if err != nil {
			return imageError(err)
		}
		switch im := msg.GetImage(); {
		case im != nil:
			// The last message. A cached image is not news.
			if im.GetBuilt() {
				p.note("guest image built: kernel " + orDash(im.GetKernelVersion()))
			}
		case msg.GetTotalBytes() > 0:
			// A download: shown at every tenth, which on a terminal
			// moves the status line and otherwise adds a line.
			pct := int(min(msg.GetDoneBytes(), msg.GetTotalBytes()) * 100 / msg.GetTotalBytes())
			if pct/10 != tenth {
				tenth = pct / 10
				p.note(fmt.Sprintf("guest image: %s: %d%% of %s", msg.GetStep(), pct, formatBytes(msg.GetTotalBytes())))
			}
		case msg.GetDoneBytes() > 0:
		case msg.GetStep() != "":
			tenth = -1
			p.note("guest image: " + msg.GetStep())
		}
	}
}

// imageError is the error of a failed ensureImage call, or nil when the
// daemon does not offer it.
func imageError(err error) error {
	if status.Code(err) == codes.Unimplemented {
		return nil
	}
	return fmt.Errorf("guest image: %w", err)
}

// watchResult is one item of an event stream: an event or the error that
// ended the stream.
type watchResult struct {
	ev  *cabinv1.Event
	err error
}

// watchVM opens the event stream of one VM and delivers it on a channel
// until ctx ends. It returns once the daemon has confirmed the subscription
// by sending the response headers, or after subscribeWait when it does not.
func watchVM(ctx context.Context, c cabinv1.EventsClient, name, owner string) (<-chan watchResult, error) {
	stream, err := c.Watch(ctx, &cabinv1.WatchRequest{VmName: name, OwnerId: owner})
	if err != nil {
		return nil, err
	}
	type header struct {
		md  metadata.MD
		err error
	}
	hdr := make(chan header, 1)
	go func() {
		md, err := stream.Header()
		hdr <- header{md, err}
	}()
	select {
	case h := <-hdr:
		if h.err != nil {
			return nil, h.err
		}
		if h.md == nil {
			// No headers and no error: the stream ended at once, and
			// Recv has its status.
			if _, err := stream.Recv(); err != nil && !errors.Is(err, io.EOF) {
				return nil, err
			}
			return nil, errors.New("the daemon closed the event stream")
		}
	case <-time.After(subscribeWait):
		// An older daemon may only send headers with the first event;
		// go ahead rather than wait for an event that needs the start.
	case <-ctx.Done():
		return nil, ctx.Err()
	}
	ch := make(chan watchResult, 16)
	go func() {
		defer close(ch)
		for {
			ev, err := stream.Recv()
			if errors.Is(err, io.EOF) {
				err = errors.New("the daemon closed the event stream")
			}
			select {
			case ch <- watchResult{ev, err}:
			case <-ctx.Done():
				return
			}
			if err != nil {
				return
			}
		}
	}()
	return ch, nil
}

// waitStarted waits for the started or stopped event of the VM (name,
// owner) and returns the started VM's info.
func waitStarted(ctx context.Context, p *startProgress, name, owner string, events <-chan watchResult) (*concierge.VmInfo, error) {
	// The owner the VM has: the one named, or the one cabind gives a
	// caller that is not root (its own) when none is.
	want := owner
	if want == "" && os.Getuid() != 0 {
		want = caller.UserOwner(uint32(os.Getuid()))
	}
	for {
		select {
		case <-ctx.Done():
			return nil, ctx.Err()
		case r, ok := <-events:
			if !ok {
				// The stream gives up only when ctx ends.
				return nil, ctx.Err()
			}
			if r.err != nil {
				return nil, fmt.Errorf("waiting for %s to start: %w", name, r.err)
			}
			switch s := r.ev.GetSignal().(type) {
			case *cabinv1.Event_VmStarted:
				if s.VmStarted.GetName() == name && s.VmStarted.GetOwnerId() == want {
					return s.VmStarted.GetVmInfo(), nil
				}
			case *cabinv1.Event_VmStopped:
				if s.VmStopped.GetName() == name && s.VmStopped.GetOwnerId() == want {
					why := enumWord(s.VmStopped.GetReason().String(), "")
					if d := r.ev.GetDetail(); d != "" {
						why = d
					}
					return nil, fmt.Errorf("%s stopped before it was up: %s; see %s",
						name, why, logsCommand(name, owner))
				}
			}
			// The daemon filters by VM already; an event of another VM
			// would only confuse.
			if d := describeEvent(r.ev); d.vm == name && d.owner == want {
				p.note(strings.TrimSpace(d.kind + " " + d.details))
			}
		}
	}
}

// startProgress shows what vm start is waiting for. On a terminal it is one
// line redrawn in place with the elapsed time and the last event; otherwise
// one plain line per event, which reads well in logs. A nil *startProgress
// shows nothing.
type startProgress struct {
	w     io.Writer
	name  string
	began time.Time
	width int
	tty   bool
	stop  chan struct{}
	done  chan struct{}

	mu       sync.Mutex // orders writes by the ticker and the caller
	last     string
	finished bool
}

func newStartProgress(w io.Writer, name string, began time.Time) *startProgress {
	p := &startProgress{w: w, name: name, began: began, last: "asking cabind"}
	f, ok := w.(*os.File)
	if !ok || !term.IsTerminal(int(f.Fd())) {
		return p
	}
	p.tty = true
	if width, _, err := term.GetSize(int(f.Fd())); err == nil {
		p.width = width
	}
	p.stop, p.done = make(chan struct{}), make(chan struct{})
	p.redraw()
	// The elapsed time moves even when no event comes.
	go func() {
		defer close(p.done)
		t := time.NewTicker(100 * time.Millisecond)
		defer t.Stop()
		for {
			select {
			case <-p.stop:
				return
			case <-t.C:
				p.redraw()
			}
		}
	}()
	return p
}

// note shows text as the latest news.
func (p *startProgress) note(text string) {
	if p == nil {
		return
	}
	if p.tty {
		p.mu.Lock()
		p.last = text
		p.mu.Unlock()
		p.redraw()
		return
	}
	fmt.Fprintln(p.w, progressLine(p.name, time.Since(p.began), text, 0))
}

func (p *startProgress) redraw() {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.finished {
		return
	}
	fmt.Fprint(p.w, "\r\x1b[K"+progressLine(p.name, time.Since(p.began), p.last, p.width))
}

// finish stops the redraws and clears the line, so that the summary or
// error starts on a clean line. Calling it again does nothing.
func (p *startProgress) finish() {
	if p == nil || !p.tty {
		return
	}
	p.mu.Lock()
	if p.finished {
		p.mu.Unlock()
		return
	}
	p.finished = true
	fmt.Fprint(p.w, "\r\x1b[K")
	p.mu.Unlock()
	close(p.stop)
	<-p.done
}

// progressLine is the in-place progress text, cut to width (when known) so
// that it never wraps: a wrapped line could not be redrawn with \r.
func progressLine(name string, elapsed time.Duration, last string, width int) string {
	line := fmt.Sprintf("starting %s  %.1fs  %s", name, elapsed.Seconds(), last)
	// width-1: writing the last column makes some terminals wrap early.
	if r := []rune(line); width > 1 && len(r) > width-1 {
		line = string(r[:width-1])
	}
	return line
}

func pidCID(info *concierge.VmInfo) string {
	return fmt.Sprintf("pid %s, cid %s", dash(info.GetPid(), itoa[int32]), dash(info.GetCid(), itoa[int64]))
}

// logsCommand is the command that shows the VM's log, for error messages.
func logsCommand(name, owner string) string {
	if owner != "" {
		return fmt.Sprintf("`cabin --owner %s vm logs %s`", owner, name)
	}
	return fmt.Sprintf("`cabin vm logs %s`", name)
}

func orUnknown(reason string) string {
	if reason == "" {
		return "the daemon gave no reason"
	}
	return reason
}
