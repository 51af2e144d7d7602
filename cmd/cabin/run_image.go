package main

import (
	"context"
	"fmt"
	"maps"
	"path"
	"slices"
	"strings"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	cabinv1 "github.com/cabinvm/cabin/api/cabin/v1"
	"github.com/cabinvm/cabin/internal/bootcfg"
)

// defaultPath is the PATH a container gets when its image sets none, as
// Docker gives.
const defaultPath = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

// runImage is the root a container of cabin run is made from: an image
// of cabind's store (digest set), or one of the root filesystems cabind
// builds (builtin set).
type runImage struct {
	// ref is the image as the user named it.
	ref string
	// digest is the image's manifest digest (sha256:HEX): its tree is
	// HEX in the images share.
	digest string
	// builtin is the root's directory in the rootfs share.
	builtin string
	config  imageConfig
}

// imageConfig is what an image's config says of running it.
type imageConfig struct {
	Entrypoint, Cmd, Env []string
	User, WorkingDir     string
}

// lowerDir is the image's tree in the guest: the overlay's lower layer.
func (img runImage) lowerDir() string {
	if img.digest != "" {
		return imagesMount + "/" + strings.TrimPrefix(img.digest, "sha256:")
	}
	return rootfsMount + "/" + img.builtin
}

// findImage looks ref up in cabind's image store; a name the store does
// not have that is one of the roots cabind builds (busybox) is that root.
// vmNamed tells whether a VM of that name exists, for a better word to a
// user of the old form (cabin run VM CMD).
func findImage(ctx context.Context, conn grpc.ClientConnInterface, ref string, vmNamed func(string) bool) (runImage, error) {
	det, err := cabinv1.NewOciImagesClient(conn).Inspect(ctx, &cabinv1.InspectOciImageRequest{Reference: ref})
	switch status.Code(err) {
	case codes.OK:
		c := det.GetConfig()
		return runImage{ref: ref, digest: det.GetImage().GetDigest(), config: imageConfig{
			Entrypoint: c.GetEntrypoint(), Cmd: c.GetCmd(), Env: c.GetEnv(), User: c.GetUser(), WorkingDir: c.GetWorkingDir(),
		}}, nil
	case codes.NotFound, codes.Unimplemented:
		if ref == bootcfg.RootfsBusybox {
			return runImage{ref: ref, builtin: ref}, nil
		}
		if vmNamed(ref) {
			return runImage{}, usagef("no image %q, but a VM has that name: cabin run now takes an image; "+
				"run a command in VM %s with: cabin run --vm %s busybox CMD...", ref, ref, ref)
		}
		if status.Code(err) == codes.Unimplemented {
			return runImage{}, fmt.Errorf("image %q: this cabind has no image store (only %s)", ref, bootcfg.RootfsBusybox)
		}
		return runImage{}, fmt.Errorf("no image %q (cabin image ls lists them; cabin image import or pull adds one)", ref)
	case codes.InvalidArgument:
		return runImage{}, usagef("IMAGE %q: %s", ref, status.Convert(err).Message())
	}
	return runImage{}, fmt.Errorf("image %q: %w", ref, err)
}

// processPlan is a container's process as Docker makes it from the image
// config and run's flags.
type processPlan struct {
	argv []string
	env  []string // sorted by key, K=V
	cwd  string
	// user is as Docker takes it (NAME, UID, NAME:GROUP, UID:GID), for
	// the agent to resolve against the image's /etc/passwd and
	// /etc/group; "" is root.
	user string
}

// planProcess applies Docker's rules: the entrypoint is the image's
// unless --entrypoint replaces it (and then the image's Cmd is dropped
// too); CMD replaces the image's Cmd; argv is entrypoint then cmd. The
// environment is the image's Env with -e on top, PATH set when neither
// sets it, HOSTNAME the container's id, TERM for a terminal. -w and -u
// replace the image's WorkingDir and User.
func planProcess(img imageConfig, cmdArgs []string, entrypoint *string, env map[string]string, workdir, user, id string, tty bool) (processPlan, error) {
	ep, cmd := img.Entrypoint, img.Cmd
	if entrypoint != nil {
		ep, cmd = nil, nil
		if *entrypoint != "" {
			ep = []string{*entrypoint}
		}
	}
	if len(cmdArgs) > 0 {
		cmd = cmdArgs
	}
	argv := append(slices.Clone(ep), cmd...)
	if len(argv) == 0 {
		return processPlan{}, usagef("no command: the image sets no entrypoint or cmd; give one after IMAGE")
	}
	vars := map[string]string{}
	for _, kv := range img.Env {
		k, v, ok := strings.Cut(kv, "=")
		if !ok || k == "" {
			continue // as Docker does with an entry it cannot read
		}
		vars[k] = v
	}
	vars["HOSTNAME"] = id
	if _, ok := vars["PATH"]; !ok {
		vars["PATH"] = defaultPath
	}
	if tty {
		if _, ok := vars["TERM"]; !ok {
			vars["TERM"] = "xterm"
		}
	}
	maps.Copy(vars, env)
	p := processPlan{argv: argv, cwd: "/", user: img.User}
	for _, k := range slices.Sorted(maps.Keys(vars)) {
		p.env = append(p.env, k+"="+vars[k])
	}
	if img.WorkingDir != "" {
		// Docker takes a relative WorkingDir from /.
		p.cwd = path.Clean("/" + img.WorkingDir)
	}
	if workdir != "" {
		p.cwd = path.Clean(workdir)
	}
	if user != "" {
		p.user = user
	}
	if strings.ContainsAny(p.user, "\x00\n") || strings.Count(p.user, ":") > 1 || strings.HasPrefix(p.user, ":") || strings.HasSuffix(p.user, ":") {
		return processPlan{}, usagef("user %q: want NAME, UID, NAME:GROUP or UID:GID", p.user)
	}
	return p, nil
}
