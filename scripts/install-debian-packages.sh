#!/bin/sh
# Installs the Debian packages the tests and the local cluster need, skipping
# the apt run entirely when every package is already installed.
set -eu
# What each is for: iproute2/iptables/nftables (plugins, host-gw, tests),
# containernetworking-plugins (the reference plugins we are compared with),
# containerd/runc (real nodes), conmon (CRI-O's container monitor; CRI-O itself
# is built by tools/build-tools.sh), busybox-static (pod image, udhcpd), iputils-ping,
# procps (sysctl, ps), util-linux (nsenter, unshare, mount), gcc/libc6-dev/make (the
# static shim and pause), python3-venv + ca-certificates (the venv on a stock Debian),
# buildah + mmdebstrap (`make images`: the builder, and the pinned base made from
# Debian's packages when no image registry answers), skopeo (images into a CRI-O
# node's containers-storage: CRI-O has no import command).
PACKAGES="iproute2 iptables nftables containernetworking-plugins containerd runc conmon
busybox-static iputils-ping procps util-linux gcc libc6-dev make python3-venv
ca-certificates buildah mmdebstrap skopeo bash curl netcat-openbsd bind9-dnsutils"
missing=""
for p in $PACKAGES; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing="$missing $p"
done
if [ -z "$missing" ]; then
  echo "debian packages: all present"
  exit 0
fi
echo "debian packages: installing$missing"
SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO="sudo"
$SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends $missing >/dev/null \
  || { $SUDO apt-get update -q >/dev/null && $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends $missing >/dev/null; }
