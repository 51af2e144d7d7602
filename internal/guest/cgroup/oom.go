package cgroup

import (
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"unsafe"

	"golang.org/x/sys/unix"
)

// memoryEvents is the file whose oom_kill counter OOMWatcher follows. The
// kernel notifies a change of it to inotify (cgroup v2's "modified"
// events), so watching it costs nothing while nothing happens.
const memoryEvents = "memory.events"

// OOMWatcher tells when the OOM killer takes a process in one of the
// cgroups it watches: their memory.events oom_kill counter grows.
type OOMWatcher struct {
	f      *os.File // the inotify instance
	notify func(key string)

	mu sync.Mutex
	// byWd is the watched cgroups by watch descriptor; byKey by key. Two
	// keys on one cgroup share its watch.
	byWd  map[int32]*watched
	byKey map[string]*watched
	done  chan struct{}
}

type watched struct {
	wd    int32
	dir   string
	keys  map[string]bool
	kills uint64
}

// NewOOMWatcher starts watching; notify is called, from the watcher's own
// goroutine, with a cgroup's key each time its oom_kill count has grown.
func NewOOMWatcher(notify func(key string)) (*OOMWatcher, error) {
	fd, err := unix.InotifyInit1(unix.IN_NONBLOCK | unix.IN_CLOEXEC)
	if err != nil {
		return nil, fmt.Errorf("inotify: %w", err)
	}
	w := &OOMWatcher{
		// Non-blocking: reads park in the runtime's poller, and Close
		// ends them.
		f:      os.NewFile(uintptr(fd), "inotify"),
		notify: notify,
		byWd:   map[int32]*watched{},
		byKey:  map[string]*watched{},
		done:   make(chan struct{}),
	}
	go w.run()
	return w, nil
}

// Add watches the cgroup at dir under key, counting OOM kills from now.
func (w *OOMWatcher) Add(key, dir string) error {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.byKey[key] != nil {
		return fmt.Errorf("oom watch %q: already watched", key)
	}
	file := filepath.Join(dir, memoryEvents)
	var wd int32
	err := w.rawControl(func(fd int) error {
		n, err := unix.InotifyAddWatch(fd, file, unix.IN_MODIFY)
		wd = int32(n)
		return err
	})
	if err != nil {
		return fmt.Errorf("watch %s: %w", file, err)
	}
	ws := w.byWd[wd]
	if ws == nil {
		ws = &watched{wd: wd, dir: dir, keys: map[string]bool{}}
		// Read after the watch is in place: a kill between the two is
		// then both counted and notified, and the notification finds
		// nothing new.
		kills, err := readOOMKills(dir)
		if err != nil {
			w.rmWatch(wd)
			return err
		}
		ws.kills = kills
		w.byWd[wd] = ws
	}
	ws.keys[key] = true
	w.byKey[key] = ws
	return nil
}

// Remove stops watching key. A key not watched is no error.
func (w *OOMWatcher) Remove(key string) {
	w.mu.Lock()
	defer w.mu.Unlock()
	ws := w.byKey[key]
	if ws == nil {
		return
	}
	delete(w.byKey, key)
	delete(ws.keys, key)
	if len(ws.keys) == 0 {
		delete(w.byWd, ws.wd)
		w.rmWatch(ws.wd)
	}
}

// Close stops the watcher; notify is not called once it returns.
func (w *OOMWatcher) Close() error {
	err := w.f.Close()
	<-w.done
	return err
}

func (w *OOMWatcher) rawControl(f func(fd int) error) error {
	rc, err := w.f.SyscallConn()
	if err != nil {
		return err
	}
	var ferr error
	if err := rc.Control(func(fd uintptr) { ferr = f(int(fd)) }); err != nil {
		return err
	}
	return ferr
}

// rmWatch removes a watch; one the kernel dropped already (its cgroup
// removed) fails with EINVAL, which is what was wanted.
func (w *OOMWatcher) rmWatch(wd int32) {
	_ = w.rawControl(func(fd int) error {
		_, err := unix.InotifyRmWatch(fd, uint32(wd))
		return err
	})
}

func (w *OOMWatcher) run() {
	defer close(w.done)
	buf := make([]byte, 64*(unix.SizeofInotifyEvent+unix.NAME_MAX+1))
	for {
		n, err := w.f.Read(buf)
		if err != nil {
			// Close (os.ErrClosed); nothing else ends a read of inotify.
			return
		}
		var keys []string
		w.mu.Lock()
		for off := 0; off+unix.SizeofInotifyEvent <= n; {
			ev := (*unix.InotifyEvent)(unsafe.Pointer(&buf[off]))
			off += unix.SizeofInotifyEvent + int(ev.Len)
			ws := w.byWd[ev.Wd]
			if ws == nil {
				continue
			}
			if ev.Mask&unix.IN_IGNORED != 0 {
				// The cgroup is gone, and the kernel dropped the watch.
				delete(w.byWd, ev.Wd)
				for k := range ws.keys {
					delete(w.byKey, k)
				}
				continue
			}
			kills, err := readOOMKills(ws.dir)
			if err != nil || kills <= ws.kills {
				continue
			}
			ws.kills = kills
			for k := range ws.keys {
				keys = append(keys, k)
			}
		}
		w.mu.Unlock()
		for _, k := range keys {
			w.notify(k)
		}
	}
}

// readOOMKills reads the cgroup's oom_kill count.
func readOOMKills(dir string) (uint64, error) {
	b, err := os.ReadFile(filepath.Join(dir, memoryEvents))
	if err != nil {
		return 0, err
	}
	return ParseFlatKeyed(b)["oom_kill"], nil
}
