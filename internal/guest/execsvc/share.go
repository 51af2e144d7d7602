package execsvc

import (
	"os"
	"path/filepath"
	"strings"

	"github.com/cabinvm/cabin/internal/bootcfg"
)

// The programs that are not needed to boot (iptables, e2fsprogs,
// cabin-runtime) live in the guest image's share, which the agent mounts
// after VmReady; their usual paths are links into it. An Exec of one in
// the moment between VmReady and the mount would find a dangling link
// and fail as if the program were missing, so the service waits for the
// share first (Config.WaitShare). The wait is for the mount only when
// argv[0] is such a link: other programs never wait.

// linksIntoShare says whether name, as Exec resolves argv[0] (a path, or
// the first of the agent's PATH directories holding an entry of that
// name), is a link into the share mounted at mount.
func linksIntoShare(name, mount string) bool {
	if name == "" || strings.IndexByte(name, 0) >= 0 {
		return false
	}
	candidates := []string{name}
	if !strings.Contains(name, "/") {
		candidates = candidates[:0]
		for _, dir := range filepath.SplitList(os.Getenv("PATH")) {
			if dir == "" {
				dir = "."
			}
			candidates = append(candidates, filepath.Join(dir, name))
		}
	}
	for _, c := range candidates {
		fi, err := os.Lstat(c)
		if err != nil {
			continue
		}
		if fi.Mode()&os.ModeSymlink == 0 {
			return false
		}
		target, err := os.Readlink(c)
		if err != nil {
			return false
		}
		if !filepath.IsAbs(target) {
			target = filepath.Join(filepath.Dir(c), target)
		}
		return strings.HasPrefix(filepath.Clean(target), mount+"/")
	}
	return false
}

// shareMount is where the share the moved programs link into is mounted.
const shareMount = bootcfg.RootfsMount
