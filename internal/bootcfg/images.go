package bootcfg

// ImagesTag is the 9p mount tag under which cabind shares, read-only, the
// flattened root filesystems of its OCI image store with every VM, one
// directory per image's manifest digest (hex): cabin run mounts it once
// in a VM (driver "9p", source ImagesTag) and gives each container an
// overlay with its image's directory as the lower layer.
const ImagesTag = "cabinImages"
