// Package cgrouptest finds cgroups for the tests that make them, on
// whichever hierarchy the test host mounts: cgroup v2's one, or v1's one
// per controller.
package cgrouptest

import (
	"os"
	"path/filepath"
)

// Dirs returns the directories of the cgroup at path (relative to the
// hierarchy's root, with a leading slash) in every mounted hierarchy.
func Dirs(path string) []string {
	var dirs []string
	for _, pattern := range []string{"/sys/fs/cgroup" + path, "/sys/fs/cgroup/*" + path} {
		matches, _ := filepath.Glob(pattern)
		for _, m := range matches {
			if fi, err := os.Stat(filepath.Join(m, "cgroup.procs")); err == nil && !fi.IsDir() {
				dirs = append(dirs, m)
			}
		}
	}
	return dirs
}
