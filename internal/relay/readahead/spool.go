package readahead

import (
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
)

// A spool keeps a stream's output read ahead in a file as well, so that
// a cabind that dies (SIGKILL, a crash, an upgrade) leaves what it had
// taken from the agent and no client had yet for the next cabind, which
// serves it first. Dying then loses only what is in flight: the answer
// being sent to a client, and a reply the agent has sent and cabind not
// yet read (up to FetchLen; before cabind read ahead, the client's own
// call was that reply, 32 KiB). Keeping that one too needs the agent to
// hold a reply until cabind acknowledges it, which Kata's ReadStdout has
// no field for. The file is not synced: a host that goes down takes the
// VM, and so the stream, with it.
//
// The file is a header, the offset of the first byte not yet handed out
// (little-endian, 8 bytes), then the output as it came from the agent.
// Each reply from the agent is appended as it comes; each call answered
// moves the header on before the answer leaves, and a file read to its
// end is cut back to the header. Each step is one pwrite or truncate.
// The header's 8 bytes and a truncate land whole or not at all; a reply's
// append that a SIGKILL cuts short (the kernel stops a write between
// pages for a fatal signal) leaves a first part of it, which is output in
// order all the same. A header past the file's end reads as nothing
// unread. So a spool never gives out a byte twice, and loses only what
// was in flight.
type spool struct {
	mu   sync.Mutex
	f    *os.File // nil once closed
	path string
	head int64 // the header: where the unread output starts
	end  int64 // where the next reply goes
}

// headerLen is the size of a spool file's header.
const headerLen = 8

// maxSpool bounds the unread output a spool file may give back: what one
// cabind can have read ahead of a stream (the stream's output and a
// reply under way), with room. A larger file is not one cabind wrote.
const maxSpool = 4 * FetchLen

// spoolName is the file name of k's spool in its VM's spool directory:
// hashes of the container and of the exec, so that every process of a
// container is found by the first, and which output.
func spoolName(k key) string {
	out := ".out"
	if k.stderr {
		out = ".err"
	}
	return containerPrefix(k.container) + hash16(k.exec) + out
}

// containerPrefix begins the names of every spool of the container's
// processes.
func containerPrefix(container string) string { return hash16(container) + "." }

// hash16 is the first 16 hex digits of SHA-256(s): a safe path element
// whatever s holds.
func hash16(s string) string {
	sum := sha256.Sum256([]byte(s))
	return hex.EncodeToString(sum[:8])
}

// openSpool opens (making it if need be) the spool file path in dir, a
// directory made here if it is not there, its parent (the VM's
// directory) never. It returns the spool and the output an earlier
// cabind left unread in it. Neither dir nor the file may be a symbolic
// link.
func openSpool(dir, name string) (*spool, []byte, error) {
	if err := os.Mkdir(dir, 0o700); err != nil && !errors.Is(err, fs.ErrExist) {
		return nil, nil, err
	}
	if st, err := os.Lstat(dir); err != nil {
		return nil, nil, err
	} else if !st.IsDir() {
		return nil, nil, &fs.PathError{Op: "spool", Path: dir, Err: syscall.ENOTDIR}
	}
	path := filepath.Join(dir, name)
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE|syscall.O_NOFOLLOW, 0o600)
	if err != nil {
		return nil, nil, err
	}
	sp := &spool{f: f, path: path, head: headerLen, end: headerLen}
	left, err := sp.load()
	if err != nil {
		sp.remove()
		return nil, nil, err
	}
	return sp, left, nil
}

// load reads back what the file holds unread; the spool goes on from
// there.
func (sp *spool) load() ([]byte, error) {
	st, err := sp.f.Stat()
	if err != nil {
		return nil, err
	}
	size := st.Size()
	head := int64(headerLen)
	if size > headerLen {
		var h [headerLen]byte
		if _, err := sp.f.ReadAt(h[:], 0); err != nil {
			return nil, err
		}
		head = int64(binary.LittleEndian.Uint64(h[:]))
	}
	if head < headerLen || head >= size {
		// Nothing unread: the file starts as a new one.
		return nil, sp.reset()
	}
	if size-head > maxSpool {
		return nil, errors.New("spool holds more than cabind reads ahead")
	}
	left := make([]byte, size-head)
	if _, err := sp.f.ReadAt(left, head); err != nil {
		return nil, err
	}
	sp.head, sp.end = head, size
	return left, nil
}

func (sp *spool) writeHead(head int64) error {
	var h [headerLen]byte
	binary.LittleEndian.PutUint64(h[:], uint64(head))
	_, err := sp.f.WriteAt(h[:], 0)
	return err
}

// append adds b, output the agent gave, at the file's end.
func (sp *spool) append(b []byte) error {
	sp.mu.Lock()
	defer sp.mu.Unlock()
	if sp.f == nil || len(b) == 0 {
		return nil
	}
	if _, err := sp.f.WriteAt(b, sp.end); err != nil {
		return err
	}
	sp.end += int64(len(b))
	return nil
}

// take records that n bytes were handed out: the header moves on, and a
// file read to its end is cut back to the header.
func (sp *spool) take(n int) error {
	sp.mu.Lock()
	defer sp.mu.Unlock()
	if sp.f == nil {
		return nil
	}
	sp.head += int64(n)
	if sp.head < sp.end {
		return sp.writeHead(sp.head)
	}
	return sp.reset()
}

// reset makes the file one with nothing in it: cut first, since a header
// left past the end reads as nothing unread.
func (sp *spool) reset() error {
	if err := sp.f.Truncate(headerLen); err != nil {
		return err
	}
	sp.head, sp.end = headerLen, headerLen
	return sp.writeHead(headerLen)
}

// remove closes the spool and removes its file: the stream ended, or
// cabind no longer keeps it (Forget, an error writing). Later calls do
// nothing.
func (sp *spool) remove() {
	sp.mu.Lock()
	defer sp.mu.Unlock()
	if sp.f == nil {
		return
	}
	// Only the file this spool made: a stream made anew under the key
	// has a file of its own at the path.
	if fi, err := sp.f.Stat(); err == nil {
		if at, err := os.Lstat(sp.path); err == nil && os.SameFile(fi, at) {
			os.Remove(sp.path)
		}
	}
	sp.f.Close()
	sp.f = nil
}

// removeSpools removes the spool files of a container's processes in dir:
// every one, or with exec set that exec's.
func removeSpools(dir, container, exec string) {
	entries, err := os.ReadDir(dir)
	if err != nil {
		return
	}
	prefix := containerPrefix(container)
	if exec != "" {
		prefix += hash16(initExec(container, exec)) + "."
	}
	for _, e := range entries {
		if strings.HasPrefix(e.Name(), prefix) {
			os.Remove(filepath.Join(dir, e.Name()))
		}
	}
}
