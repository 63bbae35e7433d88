# Pinned versions of everything the real node builds or installs. Sourced by scripts/realnode.sh and
# scripts/realnode/*.sh; change a version here and in the matching tests/realnode/build/*/go.mod
# (scripts/realnode/gen-gomod.sh regenerates them), and the cache key changes with it.
#
# Kubernetes 1.34 is the newest line whose kubelet still starts on a cgroup v1 host without
# failCgroupV1: false; this machine's hierarchy is cgroup v1.
# shellcheck shell=bash disable=SC2034
REALNODE_K8S_VERSION="v1.34.4"
# The etcd that Kubernetes v1.34.4's own go.mod requires.
REALNODE_ETCD_VERSION="v3.6.4"
REALNODE_CRICTL_VERSION="v1.34.0"
# Tag of the pause image we build ourselves; containerd's sandbox_image points at it.
REALNODE_PAUSE_IMAGE="registry.k8s.io/pause:3.10"
REALNODE_WORKLOAD_IMAGE="localhost/ppm-workload:dev"
REALNODE_PRODUCT_IMAGE="localhost/pod-pacemaker:dev"
# Debian packages for the runtime side (containerd 1.6.20, runc, the reference CNI plugins).
REALNODE_DEBIAN_PACKAGES=(containerd runc containernetworking-plugins iproute2 iptables openssl util-linux)
