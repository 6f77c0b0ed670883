#!/bin/sh
# Builds the pinned Go tools into .tools/bin (filled in by the local-cluster work).
set -eu
mkdir -p .tools/bin
