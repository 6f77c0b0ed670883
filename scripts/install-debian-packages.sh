#!/bin/sh
# Installs the Debian packages the tests and the local cluster need, skipping
# the apt run entirely when every package is already installed.
set -eu
PACKAGES="iproute2 iptables nftables containernetworking-plugins containerd runc
busybox-static etcd-server etcd-client conntrack socat ethtool iputils-ping
netcat-openbsd hyperfine psmisc procps util-linux kmod gcc libc6-dev make"
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
