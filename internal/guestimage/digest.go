package guestimage

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"os"
	"syscall"
)

// digests are those of the binaries the initramfs carries, which name it,
// and the kernel given as a file (zero for Debian's).
type digests struct {
	agent, runtime string
	kernel         pkgRef
}

// digests checks the agent and runtime binaries and returns their
// digests. Called with the build lock held.
func (b *Builder) digests() (digests, error) {
	agent, err := b.agentDigest()
	if err != nil {
		return digests{}, err
	}
	runtime, err := b.runtimeDigest()
	if err != nil {
		return digests{}, err
	}
	sums := digests{agent: agent, runtime: runtime}
	if b.Kernel != "" {
		if sums.kernel, err = b.customKernelRef(); err != nil {
			return digests{}, err
		}
	}
	return sums, nil
}

// cachedDigest is a binary's SHA-256 and the state of the file it is of.
type cachedDigest struct {
	sum string
	of  fileIdentity
}

// agentDigest checks the agent binary and returns its SHA-256.
func (b *Builder) agentDigest() (string, error) {
	return digestBinary("agent binary", b.AgentBinary, checkAgent, &b.agent)
}

// runtimeDigest checks the runtime binary and returns its SHA-256.
func (b *Builder) runtimeDigest() (string, error) {
	return digestBinary("runtime binary", b.RuntimeBinary, checkRuntime, &b.runtime)
}

// digestBinary checks the binary at path and returns its SHA-256. The
// digest is kept in c while the file stays the same one, unchanged
// (device, inode, size, modification and status-change times): otherwise
// every StartVm would read and hash the whole binary, ~30 ms here for the
// agent. Replacing or rewriting the file moves its change time, which no
// program can set back. Called with the build lock held.
func digestBinary(what, path string, check func(string) error, c *cachedDigest) (string, error) {
	if err := check(path); err != nil {
		return "", err
	}
	f, err := os.Open(path)
	if err != nil {
		return "", fmt.Errorf("%s: %w", what, err)
	}
	defer f.Close()
	before, err := identify(f)
	if err != nil {
		return "", fmt.Errorf("%s: %w", what, err)
	}
	if c.sum != "" && before == c.of {
		return c.sum, nil
	}
	h := sha256.New()
	if _, err := io.Copy(h, f); err != nil {
		return "", fmt.Errorf("%s: %w", what, err)
	}
	sum := hex.EncodeToString(h.Sum(nil))
	// Kept only if the file did not change while it was read.
	if after, err := identify(f); err == nil && after == before {
		*c = cachedDigest{sum: sum, of: before}
	}
	return sum, nil
}

// fileIdentity is what tells one state of a file from another without
// reading it.
type fileIdentity struct {
	dev, ino     uint64
	size         int64
	mtime, ctime syscall.Timespec
}

func identify(f *os.File) (fileIdentity, error) {
	fi, err := f.Stat()
	if err != nil {
		return fileIdentity{}, err
	}
	st, ok := fi.Sys().(*syscall.Stat_t)
	if !ok {
		return fileIdentity{}, fmt.Errorf("%s: no stat data", f.Name())
	}
	return fileIdentity{dev: st.Dev, ino: st.Ino, size: st.Size, mtime: st.Mtim, ctime: st.Ctim}, nil
}
