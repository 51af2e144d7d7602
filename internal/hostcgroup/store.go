package hostcgroup

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"

	"github.com/cabinvm/cabin/internal/statedir"
)

// restrictionsVersion is the version of the restrictions file's format.
const restrictionsVersion = 1

// restrictionsFile is what the restrictions file holds.
type restrictionsFile struct {
	Version int                   `json:"version"`
	Classes map[Class]Restriction `json:"classes"`
}

// readRestrictions reads the restrictions kept in file; none when it does
// not exist or file is "".
func readRestrictions(file string) (map[Class]Restriction, error) {
	out := map[Class]Restriction{}
	if file == "" {
		return out, nil
	}
	var st restrictionsFile
	found, err := statedir.ReadJSON(file, &st)
	if err != nil {
		return nil, fmt.Errorf("cpu restrictions: %w", err)
	}
	if !found {
		return out, nil
	}
	if st.Version != restrictionsVersion {
		return nil, fmt.Errorf("cpu restrictions %s: version %d, want %d", file, st.Version, restrictionsVersion)
	}
	for c, r := range st.Classes {
		if !c.valid() {
			return nil, fmt.Errorf("cpu restrictions %s: unknown class %q", file, c)
		}
		if !r.State.valid() {
			return nil, fmt.Errorf("cpu restrictions %s: %s: unknown state %q", file, c, r.State)
		}
		if r.Quota != 0 {
			if err := CheckQuota(r.Quota); err != nil {
				return nil, fmt.Errorf("cpu restrictions %s: %s: %w", file, c, err)
			}
		}
		out[c] = r
	}
	return out, nil
}

// writeRestrictions writes rs to a temporary file beside file and renames
// it into place, so that the file is always whole. Nothing is kept when
// file is "".
func writeRestrictions(file string, rs map[Class]Restriction) error {
	if file == "" {
		return nil
	}
	b, err := json.MarshalIndent(restrictionsFile{Version: restrictionsVersion, Classes: rs}, "", "  ")
	if err != nil {
		return err
	}
	tmp, err := os.CreateTemp(filepath.Dir(file), "."+filepath.Base(file)+".*")
	if err != nil {
		return fmt.Errorf("write cpu restrictions: %w", err)
	}
	defer os.Remove(tmp.Name())
	_, err = tmp.Write(append(b, '\n'))
	if err == nil {
		err = tmp.Sync()
	}
	if cerr := tmp.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(tmp.Name(), file)
	}
	if err != nil {
		return fmt.Errorf("write cpu restrictions: %w", err)
	}
	return nil
}
