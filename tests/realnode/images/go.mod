// The static binaries inside the real node's locally built images (scripts/realnode/images.sh).
// Standard library only, so it builds without the module proxy.
module ppm.local/realnode/images

go 1.24.0
