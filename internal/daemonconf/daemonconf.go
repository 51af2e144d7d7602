// Package daemonconf reads cabind's TOML configuration file. Its keys are
// cabind's long flag names and its values what those flags take, so a
// setting is spelled the same on the command line and in the file, and
// each value is parsed and checked by the same code. A flag given on the
// command line wins over the file.
package daemonconf

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"sort"
	"strconv"

	"github.com/BurntSushi/toml"
	"github.com/spf13/pflag"

	"github.com/cabinvm/cabin/internal/errdefs"
)

// DefaultPath is where cabind looks for its configuration when no
// --config is given. A missing file there is not an error.
const DefaultPath = "/etc/cabin/cabind.toml"

// MaxSize bounds the file: a configuration is a few hundred bytes, and a
// larger file is not one.
const MaxSize = 1 << 20

// notKeys are flags that make no sense in the file.
var notKeys = map[string]bool{"config": true, "help": true, "version": true}

// Apply sets every flag of flags that the file at path names and that
// was not given on the command line. With required false, a missing file
// is no error (the default path); with required true it is. An empty
// path reads no file. It returns the keys it set, sorted.
func Apply(flags *pflag.FlagSet, path string, required bool) ([]string, error) {
	if path == "" {
		return nil, nil
	}
	data, err := read(path)
	if errors.Is(err, fs.ErrNotExist) && !required {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	return ApplyBytes(flags, path, data)
}

func read(path string) ([]byte, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("config: %w", err)
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return nil, fmt.Errorf("config: %w", err)
	}
	if !st.Mode().IsRegular() {
		return nil, errdefs.InvalidArgument("config", fmt.Sprintf("%s is not a regular file", path))
	}
	if st.Size() > MaxSize {
		return nil, errdefs.InvalidArgument("config", fmt.Sprintf("%s is %d bytes, more than %d", path, st.Size(), MaxSize))
	}
	data := make([]byte, st.Size())
	if _, err := f.ReadAt(data, 0); err != nil && st.Size() > 0 {
		return nil, fmt.Errorf("config %s: %w", path, err)
	}
	return data, nil
}

// ApplyBytes is Apply on the file's contents; name is how errors call the
// file.
func ApplyBytes(flags *pflag.FlagSet, name string, data []byte) ([]string, error) {
	var values map[string]any
	if _, err := toml.Decode(string(data), &values); err != nil {
		return nil, errdefs.InvalidArgument("config", fmt.Sprintf("%s: %v", name, err))
	}
	keys := make([]string, 0, len(values))
	for k := range values {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	// Every key is checked before any flag is set, so a bad file changes
	// nothing.
	texts := make(map[string]string, len(keys))
	for _, k := range keys {
		f := flags.Lookup(k)
		if f == nil || notKeys[k] {
			return nil, errdefs.InvalidArgument("config", fmt.Sprintf("%s: unknown key %q (the keys are cabind's flag names)", name, k))
		}
		text, err := scalar(values[k])
		if err != nil {
			return nil, errdefs.InvalidArgument("config", fmt.Sprintf("%s: key %q: %v", name, k, err))
		}
		texts[k] = text
	}
	var set []string
	old := make(map[string]string, len(keys))
	for _, k := range keys {
		if flags.Changed(k) {
			continue
		}
		f := flags.Lookup(k)
		old[k] = f.Value.String()
		if err := flags.Set(k, texts[k]); err != nil {
			// A value its flag refuses: it and the keys set before it
			// go back to what they were (pflag's numbers store what
			// they parsed even when they fail).
			f.Value.Set(old[k])
			for _, done := range set {
				d := flags.Lookup(done)
				d.Value.Set(old[done])
				d.Changed = false
			}
			return nil, errdefs.InvalidArgument("config", fmt.Sprintf("%s: key %q: %v", name, k, err))
		}
		set = append(set, k)
	}
	return set, nil
}

// scalar is a TOML value as the text its flag parses: strings, integers
// and booleans only.
func scalar(v any) (string, error) {
	switch v := v.(type) {
	case string:
		return v, nil
	case int64:
		return strconv.FormatInt(v, 10), nil
	case bool:
		return strconv.FormatBool(v), nil
	default:
		return "", fmt.Errorf("want a string, an integer or a boolean, not a %T", v)
	}
}
