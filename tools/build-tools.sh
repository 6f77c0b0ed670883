#!/bin/bash
# Builds the pinned Go tools and links them into .tools/bin.
#
# Every tool is built once per pinned version into a cache OUTSIDE the clone,
#   ${CNIWARDEN_TOOLS_CACHE:-$HOME/.cache/cniwarden/tools}/<tool>-<version>/bin
# so a clean clone (CI) only re-links and does nothing slow. A build goes to a
# temporary directory first and is renamed into place when complete, so an
# interrupted build never looks cached. A stamp records the recipe (the wrapper
# module's go.mod/go.sum and the ldflags): changing either rebuilds that tool.
#
# Knobs: CNIWARDEN_TOOLS_CACHE (cache root), CNIWARDEN_GO_PARALLEL (go build -p,
# default 2), TOOLS (what to build, default "default"): tool names (the case
# list at the end) and groups:
#   default      kubernetes etcd helm kwok cnitool kube-proxy coredns crictl
#                containerd-1.7 containerd-2 crio   (`make tools`)
#   conformance  e2e ginkgo agnhost                 (the upstream e2e kit)
#   kind         kind (TOOLS=kind; docs/install.md "kind without a registry")
#   all          both
# Container runtimes are linked into .tools/runtimes/<name>/bin, the rest into
# .tools/bin.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/.." && pwd)
# shellcheck source=tools/versions.env
. "$here/versions.env"

cache=${CNIWARDEN_TOOLS_CACHE:-$HOME/.cache/cniwarden/tools}
bindir=$root/.tools/bin
parallel=${CNIWARDEN_GO_PARALLEL:-2}
expand() {
  local t
  for t in "$@"; do
    case $t in
      default) echo kubernetes etcd helm kwok cnitool kube-proxy coredns crictl \
        containerd-1.7 containerd-2 crio ;;
      conformance) echo e2e ginkgo agnhost ;;
      all) expand default conformance ;;
      *) echo "$t" ;;
    esac
  done
}
# shellcheck disable=SC2086 # TOOLS is a word list
tools=$(expand ${TOOLS:-default})
mkdir -p "$cache" "$bindir"

export CGO_ENABLED=0
export GOFLAGS="-buildvcs=false -p=$parallel"
export GOTOOLCHAIN=${GOTOOLCHAIN:-local}

log() { printf 'tools: %s\n' "$*" >&2; }

if ! command -v go >/dev/null; then
  log "the Go toolchain is missing (go >= 1.24 on PATH is needed to build the pinned tools)"
  exit 1
fi

# ensure <tool> <version> <recipe hash> <builder> [link dir]
# Builds into the cache unless it already holds a complete build of the same
# recipe, then symlinks every binary of that build into the link dir
# (.tools/bin unless given: container runtimes get a directory of their own so
# they never shadow Debian's containerd on PATH).
ensure() {
  local tool=$1 version=$2 recipe=$3 builder=$4 links=${5:-$bindir}
  local dest=$cache/$tool-$version want=$recipe have="" lock
  # One build per tool at a time across clones sharing the cache; the others
  # wait, then find it cached.
  exec {lock}>"$cache/.$tool.lock"
  flock "$lock"
  [ -f "$dest/.stamp" ] && have=$(cat "$dest/.stamp")
  if [ "$have" != "$want" ]; then
    local tmp start
    tmp=$(mktemp -d "$cache/.$tool-$version.XXXXXX")
    chmod 755 "$tmp"
    start=$(date +%s)
    log "building $tool $version (cold build; cached afterwards in $dest)"
    if ! "$builder" "$version" "$tmp/bin"; then
      rm -rf "$tmp"
      log "FAILED to build $tool $version"
      return 1
    fi
    echo "$want" > "$tmp/.stamp"
    echo "$(( $(date +%s) - start ))" > "$tmp/.build-seconds"
    rm -rf "$dest"
    mv "$tmp" "$dest"
    log "built $tool $version in $(cat "$dest/.build-seconds")s"
  fi
  local b
  mkdir -p "$links"
  for b in "$dest"/bin/*; do
    ln -sfn "$b" "$links/$(basename "$b")"
  done
  flock -u "$lock"
  exec {lock}>&-
}

# Version strings, as Kubernetes' own hack/lib/version.sh sets them. The
# release's publication time (from the module proxy's .info) is the buildDate.
kubernetes_ldflags() {
  local version=$1 minor info date p ld="-s -w"
  minor=${version#v1.}; minor=${minor%%.*}
  info=$(cd "$here/k8s" && go mod download -json "k8s.io/kubernetes@$version" \
    | sed -n 's/.*"Info": "\(.*\)".*/\1/p')
  date=$(sed -n 's/.*"Time": *"\([^"]*\)".*/\1/p' "$info")
  for p in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
    ld+=" -X $p.gitVersion=$version -X $p.gitMajor=1 -X $p.gitMinor=$minor"
    ld+=" -X $p.gitCommit= -X $p.gitTreeState=clean -X $p.buildDate=${date:-1970-01-01T00:00:00Z}"
  done
  echo "$ld"
}

build_kubernetes() {
  local version=$1 out=$2 pkgs=() p
  for p in kube-apiserver kube-controller-manager kube-scheduler kubelet kubectl; do
    pkgs+=("k8s.io/kubernetes/cmd/$p")
  done
  mkdir -p "$out"
  (cd "$here/k8s" && go build -mod=readonly -trimpath -ldflags "$(kubernetes_ldflags "$version")" \
    -o "$out/" "${pkgs[@]}")
}

build_etcd() {
  local out=$2
  mkdir -p "$out"
  (cd "$here/etcd" && go build -mod=readonly -trimpath -ldflags "-s -w" -o "$out/etcd" \
    go.etcd.io/etcd/server/v3)
}

helm_ldflags() {
  local version=$1 v=helm.sh/helm/v3 ld="-s -w"
  ld+=" -X $v/internal/version.version=$version -X $v/internal/version.metadata="
  ld+=" -X $v/internal/version.gitTreeState=clean"
  ld+=" -X $v/pkg/lint/rules.k8sVersionMajor=1 -X $v/pkg/lint/rules.k8sVersionMinor=33"
  ld+=" -X $v/pkg/chartutil.k8sVersionMajor=1 -X $v/pkg/chartutil.k8sVersionMinor=33"
  echo "$ld"
}

build_helm() {
  GOBIN=$2 go install -trimpath -ldflags "$(helm_ldflags "$1")" "helm.sh/helm/v3/cmd/helm@$1"
}

kwok_ldflags() {
  local c=sigs.k8s.io/kwok/pkg/consts
  echo "-s -w -X $c.Version=$1 -X $c.KubeVersion=$KUBERNETES_VERSION"
}

build_kwok() {
  GOBIN=$2 go install -trimpath -ldflags "$(kwok_ldflags "$1")" "sigs.k8s.io/kwok/cmd/kwok@$1"
}

build_kind() {
  GOBIN=$2 go install -trimpath -ldflags "-s -w" "sigs.k8s.io/kind@$1"
}

build_cnitool() {
  GOBIN=$2 go install -trimpath -ldflags "-s -w" "github.com/containernetworking/cni/cnitool@$1"
}

# kube-proxy, from tools/k8s-extra (its extra modules stay out of tools/k8s, so
# adding it did not change the control-plane build's recipe).
build_kube_proxy() {
  local version=$1 out=$2
  mkdir -p "$out"
  (cd "$here/k8s-extra" && go build -mod=readonly -trimpath \
    -ldflags "$(kubernetes_ldflags "$version")" -o "$out/" k8s.io/kubernetes/cmd/kube-proxy)
}

# module_dir <wrapper module dir> <module>: where the module's source is in the
# module cache, downloading it first if need be (`go list -m` alone leaves Dir
# empty on a fresh machine).
module_dir() {
  local dir
  dir=$(cd "$1" && go mod download -json "$2" | sed -n 's/.*"Dir": "\(.*\)".*/\1/p')
  if [ -z "$dir" ] || [ ! -d "$dir" ]; then
    log "cannot find the source of $2 (go mod download in $1)"
    return 1
  fi
  echo "$dir"
}

# The conformance kit, from tools/k8s-extra: e2e.test as Kubernetes builds it
# (go test -c, version ldflags), ginkgo's CLI at the version e2e.test's module
# pins, and agnhost (static, CGO off) at the tag e2e.test --list-images names,
# which is test/images/agnhost/VERSION of the same source.
build_e2e() {
  local version=$1 out=$2
  mkdir -p "$out"
  (cd "$here/k8s-extra" && go test -c -mod=readonly -trimpath \
    -ldflags "$(kubernetes_ldflags "$version")" -o "$out/e2e.test" k8s.io/kubernetes/test/e2e)
}

build_ginkgo() {
  local version=$1 out=$2 pinned
  pinned=$(cd "$here/k8s-extra" && go list -mod=readonly -m -f '{{.Version}}' github.com/onsi/ginkgo/v2)
  if [ "$pinned" != "$version" ]; then
    log "GINKGO_VERSION=$version, but e2e.test's module (tools/k8s-extra) pins ginkgo $pinned"
    return 1
  fi
  mkdir -p "$out"
  (cd "$here/k8s-extra" && go build -mod=readonly -trimpath -ldflags "-s -w" \
    -o "$out/ginkgo" github.com/onsi/ginkgo/v2/ginkgo)
}

build_agnhost() {
  local version=$1 out=$2 src tag
  src=$(module_dir "$here/k8s-extra" k8s.io/kubernetes) || return 1
  tag=$(cat "$src/test/images/agnhost/VERSION") || return 1
  if [ "$tag" != "$version" ]; then
    log "AGNHOST_VERSION=$version, but k8s.io/kubernetes in tools/k8s-extra carries agnhost $tag"
    return 1
  fi
  mkdir -p "$out"
  (cd "$here/k8s-extra" && go build -mod=readonly -trimpath -ldflags "-s -w -X main.Version=$version" \
    -o "$out/agnhost" k8s.io/kubernetes/test/images/agnhost)
}

# CoreDNS as its Makefile builds it (CGO off: static); plugins are those of the
# release (core/plugin/zplugin.go is generated in the module).
build_coredns() {
  GOBIN=$2 go install -trimpath -ldflags "-s -w -X github.com/coredns/coredns/coremain.GitCommit=" \
    "github.com/coredns/coredns@$1"
}

# crictl, with the version string cri-tools' Makefile sets (no leading v).
build_crictl() {
  GOBIN=$2 go install -trimpath -ldflags "-s -w -X sigs.k8s.io/cri-tools/pkg/version.Version=${1#v}" \
    "sigs.k8s.io/cri-tools/cmd/crictl@$1"
}

# containerd, as its Makefile builds a release, minus the snapshotters whose C
# libraries or devices this machine lacks: btrfs (needs cgo + libbtrfs; CGO is
# off here anyway) and devmapper (needs a thin pool and dmsetup). The shim is
# static upstream too. Each version is linked into a directory of its own
# (.tools/runtimes/containerd-<minor>/bin) so Debian's containerd 1.6 keeps
# being the one on PATH.
containerd_tags() { echo "no_btrfs no_devmapper urfave_cli_no_docs"; }
containerd_ldflags() {
  local pkg=$1 version=$2
  echo "-s -w -X $pkg/version.Version=$version -X $pkg/version.Revision= -X $pkg/version.Package=$pkg"
}

build_containerd_1_7() {
  local version=$1 out=$2 c=github.com/containerd/containerd
  mkdir -p "$out"
  (cd "$here/containerd-1.7" && go build -mod=readonly -trimpath -tags "$(containerd_tags)" \
    -ldflags "$(containerd_ldflags "$c" "$version")" -o "$out/" \
    "$c/cmd/containerd" "$c/cmd/containerd-shim-runc-v2" "$c/cmd/ctr")
}

build_containerd_2() {
  local version=$1 c=github.com/containerd/containerd/v2
  GOBIN=$2 go install -trimpath -tags "$(containerd_tags)" -ldflags "$(containerd_ldflags "$c" "$version")" \
    "$c/cmd/containerd@$version" "$c/cmd/containerd-shim-runc-v2@$version" "$c/cmd/ctr@$version"
}

# CRI-O without cgo: containers_image_openpgp (signatures in Go, not gpgme),
# no btrfs or devicemapper graph drivers, no ostree, and no seccomp tag (CRI-O's
# seccomp needs libseccomp through cgo; the OCI runtime, runc, still applies the
# profiles it is given). pinns, CRI-O's C helper that pins namespaces, is built
# from the module's pinns/src with gcc as its Makefile does (static). conmon is
# Debian's (scripts/install-debian-packages.sh).
crio_tags() {
  echo "containers_image_openpgp containers_image_ostree_stub exclude_graphdriver_btrfs" \
    "btrfs_noversion exclude_graphdriver_devicemapper"
}

build_crio() {
  local version=$1 out=$2 m=github.com/cri-o/cri-o src date
  src=$(module_dir "$here/crio" "$m") || return 1
  date=$(cd "$here/crio" && go list -mod=readonly -m -f '{{.Time.UTC.Format "2006-01-02T15:04:05Z"}}' "$m") \
    || return 1
  mkdir -p "$out"
  (cd "$here/crio" && go build -mod=readonly -trimpath -tags "$(crio_tags)" \
    -ldflags "-s -w -X $m/internal/version.buildDate=$date" -o "$out/crio" "$m/cmd/crio") &&
    gcc -std=c99 -Os -O3 -Wall -Werror -Wextra -static -o "$out/pinns" "$src"/pinns/src/*.c &&
    strip -s "$out/pinns"
}

# A recipe = the wrapper module's go.mod/go.sum plus the source of the functions
# that build the tool, so editing how a tool is built rebuilds it.
recipe() {
  local fns=$1; shift
  { [ $# -eq 0 ] || cat "$@"; declare -f $fns; } | sha256sum | cut -c1-16
}

for t in $tools; do
  case $t in
    kubernetes)
      ensure kubernetes "$KUBERNETES_VERSION" \
        "$(recipe "kubernetes_ldflags build_kubernetes" "$here/k8s/go.mod" "$here/k8s/go.sum")" \
        build_kubernetes ;;
    etcd)
      ensure etcd "$ETCD_VERSION" \
        "$(recipe build_etcd "$here/etcd/go.mod" "$here/etcd/go.sum")" build_etcd ;;
    helm) ensure helm "$HELM_VERSION" "$(recipe "helm_ldflags build_helm")" build_helm ;;
    kwok) ensure kwok "$KWOK_VERSION" "$(recipe "kwok_ldflags build_kwok")" build_kwok ;;
    cnitool) ensure cnitool "$CNITOOL_VERSION" "$(recipe build_cnitool)" build_cnitool ;;
    kind) ensure kind "$KIND_VERSION" "$(recipe build_kind)" build_kind ;;
    kube-proxy)
      ensure kube-proxy "$KUBERNETES_VERSION" \
        "$(recipe "kubernetes_ldflags build_kube_proxy" "$here/k8s-extra/go.mod" "$here/k8s-extra/go.sum")" \
        build_kube_proxy ;;
    coredns) ensure coredns "$COREDNS_VERSION" "$(recipe build_coredns)" build_coredns ;;
    crictl) ensure crictl "$CRICTL_VERSION" "$(recipe build_crictl)" build_crictl ;;
    containerd-1.7)
      ensure containerd-1.7 "$CONTAINERD_1_7_VERSION" \
        "$(recipe "containerd_tags containerd_ldflags build_containerd_1_7" \
          "$here/containerd-1.7/go.mod" "$here/containerd-1.7/go.sum")" \
        build_containerd_1_7 "$root/.tools/runtimes/containerd-1.7/bin" ;;
    containerd-2)
      ensure containerd-2 "$CONTAINERD_2_VERSION" \
        "$(recipe "containerd_tags containerd_ldflags build_containerd_2")" \
        build_containerd_2 "$root/.tools/runtimes/containerd-2/bin" ;;
    crio)
      ensure crio "$CRIO_VERSION" \
        "$(recipe "module_dir crio_tags build_crio" "$here/crio/go.mod" "$here/crio/go.sum")" build_crio \
        "$root/.tools/runtimes/crio/bin" ;;
    e2e)
      ensure e2e "$KUBERNETES_VERSION" \
        "$(recipe "kubernetes_ldflags build_e2e" "$here/k8s-extra/go.mod" "$here/k8s-extra/go.sum")" \
        build_e2e ;;
    ginkgo)
      ensure ginkgo "$GINKGO_VERSION" \
        "$(recipe build_ginkgo "$here/k8s-extra/go.mod" "$here/k8s-extra/go.sum")" build_ginkgo ;;
    agnhost)
      ensure agnhost "$AGNHOST_VERSION" \
        "$(recipe "module_dir build_agnhost" "$here/k8s-extra/go.mod" "$here/k8s-extra/go.sum")" build_agnhost ;;
    *) log "unknown tool $t"; exit 2 ;;
  esac
done
log "ready in $bindir: $(cd "$bindir" && echo *)"
if [ -d "$root/.tools/runtimes" ]; then
  log "runtimes in $root/.tools/runtimes: $(cd "$root/.tools/runtimes" && echo *)"
fi
