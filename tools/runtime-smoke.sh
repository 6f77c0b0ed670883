#!/bin/bash
# Proves that the container runtimes build-tools.sh built actually run: each
# starts with every path in a private temp dir (root, state, socket, net.d), is
# asked over its socket what it is (crictl version) and how it is (RuntimeReady,
# NetworkReady from crictl info), then stopped and its dir removed, even when a
# step fails. Nothing is written outside the temp dir; no container is started.
#
#   tools/runtime-smoke.sh [containerd-1.7] [containerd-2] [crio]   (default: all)
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/.." && pwd)
runtimes=$root/.tools/runtimes
crictl=$root/.tools/bin/crictl
deadline=30 # seconds for a runtime to open its socket

work="" pid=""
cleanup() {
  if [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null; then
    kill "$pid"
    timeout 20 tail --pid="$pid" -f /dev/null || kill -9 "$pid"
  fi
  pid=""
  if [ -n "$work" ]; then
    # CRI-O's storage may leave mounts behind on a failed start.
    { grep -o " $work/[^ ]*" /proc/self/mountinfo || true; } | sort -r | xargs -r -n1 umount -l
    rm -rf "$work"
  fi
  work=""
}
trap cleanup EXIT

containerd_config() { # <dir> <config version 2|3>
  local d=$1 cri=io.containerd.grpc.v1.cri
  [ "$2" = 3 ] && cri=io.containerd.cri.v1.runtime
  cat <<EOF
version = $2
root = "$d/root"
state = "$d/state"
[grpc]
  address = "$d/runtime.sock"
[ttrpc]
  address = "$d/runtime.sock.ttrpc"
[plugins."$cri".cni]
  conf_dir = "$d/net.d"
  bin_dir = "$d/cni-bin"
EOF
}

crio_config() { # <dir>
  local d=$1
  cat <<EOF
[crio]
root = "$d/storage"
runroot = "$d/runroot"
storage_driver = "vfs"
log_dir = "$d/pod-logs"
version_file = "$d/run/version"
version_file_persist = ""
clean_shutdown_file = "$d/lib/clean.shutdown"
[crio.api]
listen = "$d/runtime.sock"
stream_address = "127.0.0.1"
stream_port = "0"
[crio.runtime]
cgroup_manager = "cgroupfs"
default_runtime = "runc"
container_exits_dir = "$d/run/exits"
container_attach_socket_dir = "$d/run"
namespaces_dir = "$d/ns"
pinns_path = "$runtimes/crio/bin/pinns"
hooks_dir = ["$d/hooks.d"]
cdi_spec_dirs = ["$d/cdi"]
decryption_keys_path = "$d/keys"
[crio.runtime.runtimes.runc]
runtime_path = "$(command -v runc)"
runtime_type = "oci"
runtime_root = "$d/runc"
monitor_path = "$(command -v conmon)"
monitor_cgroup = "pod"
[crio.image]
signature_policy = "$d/policy.json"
[crio.network]
network_dir = "$d/net.d"
plugin_dirs = ["$d/cni-bin"]
[crio.nri]
enable_nri = false
EOF
}

smoke() { # <runtime>
  local rt=$1 bin=$runtimes/$1/bin i
  work=$(mktemp -d "/tmp/cniwarden-runtime-smoke-$rt.XXXXXX")
  mkdir -p "$work/net.d" "$work/cni-bin" "$work/conf.d"
  case $rt in
    containerd-1.7) containerd_config "$work" 2 > "$work/config.toml" ;;
    containerd-2) containerd_config "$work" 3 > "$work/config.toml" ;;
    crio)
      crio_config "$work" > "$work/config.toml"
      echo '{"default":[{"type":"insecureAcceptAnything"}]}' > "$work/policy.json" ;;
    *) echo "unknown runtime $rt (containerd-1.7, containerd-2, crio)" >&2; return 2 ;;
  esac
  if [ "$rt" = crio ]; then
    "$bin/crio" --version | head -1
    "$bin/crio" --config "$work/config.toml" --config-dir "$work/conf.d" > "$work/log" 2>&1 &
  else
    "$bin/containerd" --version
    "$bin/containerd" --config "$work/config.toml" > "$work/log" 2>&1 &
  fi
  pid=$!
  for ((i = 0; i < deadline * 10; i++)); do
    [ -S "$work/runtime.sock" ] && break
    if ! kill -0 "$pid" 2>/dev/null; then
      echo "$rt exited before opening its socket; log:" >&2; tail -20 "$work/log" >&2; return 1
    fi
    sleep 0.1
  done
  if [ ! -S "$work/runtime.sock" ]; then
    echo "$rt did not open its socket within ${deadline}s; log:" >&2; tail -20 "$work/log" >&2; return 1
  fi
  local ep=(--runtime-endpoint "unix://$work/runtime.sock" --timeout 10s)
  "$crictl" "${ep[@]}" version 2>/dev/null
  "$crictl" "${ep[@]}" info 2>/dev/null | python3 -c '
import json, sys
for c in json.load(sys.stdin)["status"]["conditions"]:
    print("  %s=%s %s %s" % (c["type"], c["status"], c.get("reason") or "", c.get("message") or ""))'
  cleanup
  echo "$rt: ok"
}

[ $# -gt 0 ] || set -- containerd-1.7 containerd-2 crio
for rt in "$@"; do smoke "$rt"; done
