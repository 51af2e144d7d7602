package diskimage

import (
	"context"
	"fmt"
	"strings"

	"github.com/cabinvm/cabin/internal/errdefs"
)

// The options a caller may pass to mkfs.ext4 and tune2fs. Each takes a
// value, in the next word or attached ("-b 4096" or "-b4096"), except
// where the value is false. Left out on purpose: mkfs's -d (which copies
// a host directory into the image), -c and -l (bad block lists, read from
// host files), -S (rewrites superblocks only), -n, -F, -q, -t, -V; tune2fs's
// -f, -l (harmless but useless) and anything that names a host file.
var (
	mkfsOptions = map[string]bool{
		"-b": true, "-C": true, "-e": true, "-E": true, "-g": true, "-G": true, "-i": true, "-I": true,
		"-j": false, "-J": true, "-L": true, "-m": true, "-M": true, "-N": true, "-o": true, "-O": true,
		"-r": true, "-T": true, "-U": true, "-D": false,
	}
	tune2fsOptions = map[string]bool{
		"-c": true, "-C": true, "-e": true, "-E": true, "-g": true, "-i": true, "-I": true, "-j": false,
		"-L": true, "-m": true, "-M": true, "-o": true, "-O": true, "-r": true, "-T": true, "-u": true,
		"-U": true, "-Q": true,
	}
	// The extended options (-E) allowed, by key.
	mkfsExtended = map[string]bool{
		"stride": true, "stripe_width": true, "stripe-width": true, "resize": true, "packed_meta_blocks": true,
		"lazy_itable_init": true, "lazy_journal_init": true, "assume_storage_prezeroed": true, "root_owner": true,
		"discard": true, "nodiscard": true, "num_backup_sb": true, "quotatype": true, "encoding": true,
		"encoding_flags": true, "orphan_file_size": true, "no_copy_xattrs": true,
	}
	tune2fsExtended = map[string]bool{
		"clear_mmp": true, "hash_alg": true, "mount_opts": true, "mmp_update_interval": true, "stride": true,
		"stripe_width": true, "stripe-width": true, "test_fs": true, "^test_fs": true, "encoding": true,
		"encoding_flags": true, "orphan_file_size": true,
	}
)

// checkFsOptions checks the words of mkfs_opts or tune2fs_opts (field)
// against allowed and their extended options against extended.
func checkFsOptions(field string, words []string, allowed map[string]bool, extended map[string]bool) error {
	for i := 0; i < len(words); i++ {
		w := words[i]
		if strings.ContainsRune(w, 0) {
			return errdefs.InvalidArgument(field, fmt.Sprintf("word %d holds a NUL byte", i))
		}
		if len(w) < 2 || w[0] != '-' || w[1] == '-' {
			return errdefs.InvalidArgument(field, fmt.Sprintf("%q is not an option cabin passes on", w))
		}
		flag := w[:2]
		takesValue, ok := allowed[flag]
		if !ok {
			return errdefs.InvalidArgument(field, fmt.Sprintf("unknown or refused option %q", flag))
		}
		value := w[2:]
		if takesValue && value == "" {
			if i+1 >= len(words) {
				return errdefs.InvalidArgument(field, fmt.Sprintf("option %q needs a value", flag))
			}
			i++
			value = words[i]
			if strings.ContainsRune(value, 0) {
				return errdefs.InvalidArgument(field, fmt.Sprintf("word %d holds a NUL byte", i))
			}
		}
		if !takesValue && value != "" {
			return errdefs.InvalidArgument(field, fmt.Sprintf("option %q takes no value", flag))
		}
		if flag == "-E" {
			for kv := range strings.SplitSeq(value, ",") {
				key, _, _ := strings.Cut(kv, "=")
				if !extended[key] {
					return errdefs.InvalidArgument(field, fmt.Sprintf("unknown or refused extended option %q", key))
				}
			}
		}
	}
	return nil
}

// mkfs makes an ext4 filesystem filling the raw image at path.
func (s *Store) mkfs(ctx context.Context, path string, opts []string) error {
	args := append([]string{"-F", "-q", "-t", "ext4"}, opts...)
	args = append(args, path)
	_, err := s.run(ctx, nil, s.tools.Mkfs, args...)
	return err
}

func (s *Store) tune2fs(ctx context.Context, path string, opts []string) error {
	if len(opts) == 0 {
		return nil
	}
	_, err := s.run(ctx, nil, s.tools.Tune2fs, append(append([]string(nil), opts...), path)...)
	return err
}

// isExt tells whether the raw image at path holds an ext2/3/4 filesystem.
func (s *Store) isExt(ctx context.Context, path string) bool {
	_, err := s.run(ctx, nil, s.tools.Dumpe2fs, "-h", path)
	return err == nil
}

// minFsSize is the smallest the ext filesystem in the raw image at path
// can be shrunk to, in bytes (resize2fs -P).
func (s *Store) minFsSize(ctx context.Context, path string) (int64, error) {
	hdr, err := s.run(ctx, nil, s.tools.Dumpe2fs, "-h", path)
	if err != nil {
		return 0, err
	}
	bs, ok := parseInt(hdr, "Block size:")
	if !ok || bs <= 0 {
		return 0, fmt.Errorf("dumpe2fs: no block size")
	}
	out, err := s.run(ctx, nil, s.tools.Resize2fs, "-P", path)
	if err != nil {
		return 0, err
	}
	blocks, ok := parseInt(out, "Estimated minimum size of the filesystem:")
	if !ok {
		return 0, fmt.Errorf("resize2fs -P: no estimate in %q", out)
	}
	return blocks * bs, nil
}

// fsck checks and repairs what is safe to repair (e2fsck -p), which
// resize2fs asks for before it resizes. 1 means it fixed something.
func (s *Store) fsck(ctx context.Context, path string) error {
	_, err := s.run(ctx, nil, s.tools.E2fsck, "-f", "-p", path)
	if err != nil && exitCode(err) == 1 {
		return nil
	}
	return err
}
