#!/bin/sh
# A Docker engine for kind on a machine like ours (docs/install.md, "kind without
# a registry"): Debian's docker.io 20.10, kept away from the machine's network
# (no iptables rules, no docker0: its FORWARD policy DROP would break the tests'
# namespaces), its own socket, data and exec roots, and runc behind
# runc-capfilter so `--privileged` (kind's nodes) starts although the
# capability bounding set lacks CAP_SYS_RESOURCE.
#   tools/kind/dockerd.sh &            then   export DOCKER_HOST=unix:///run/cniwarden-docker.sock
set -eu
here=$(cd "$(dirname "$0")" && pwd)
exec dockerd --iptables=false --ip-masq=false --bridge=none \
  -H unix:///run/cniwarden-docker.sock --data-root /var/lib/cniwarden-docker \
  --exec-root /run/cniwarden-docker --pidfile /run/cniwarden-docker.pid \
  --containerd-namespace cniwarden-docker --containerd-plugins-namespace cniwarden-docker-plugins \
  --add-runtime capfilter="$here/../runc-capfilter" --default-runtime capfilter "$@"
