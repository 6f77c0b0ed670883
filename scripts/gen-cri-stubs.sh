#!/usr/bin/env bash
# Regenerate the CRI v1 Python stubs the agent and the doctor use to ask the node's
# runtime its name, version and status (operator/cni_operator/cri/).
#
#   scripts/gen-cri-stubs.sh [path/to/k8s.io/cri-api/pkg/apis/runtime/v1/api.proto]
#
# Without an argument the vendored cri_runtime_v1.proto is regenerated in place. With one, that
# upstream file (e.g. from the Go module cache: ~/go/pkg/mod/k8s.io/cri-api@vX/...)
# is vendored first, minus its gogoproto import and options, which only steer Go code
# generation and change nothing on the wire. tests/unit/operator/test_cri_stubs.py
# fails when the committed stubs differ from what this script makes.
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
dest=$here/operator/cni_operator/cri
python=${PYTHON:-$here/.venv/bin/python}
out=${CRI_STUBS_OUT:-$dest}
if [[ $# -ge 1 ]]; then
    grep -v 'gogoproto' "$1" > "$dest/cri_runtime_v1.proto.tmp"
    mv "$dest/cri_runtime_v1.proto.tmp" "$dest/cri_runtime_v1.proto"
fi
mkdir -p "$out"
"$python" -m grpc_tools.protoc -I "$dest" --python_out="$out" --pyi_out="$out" "$dest/cri_runtime_v1.proto"
