#!/bin/sh
# prune-venv.sh VENV: remove from the installed virtualenv what cniwarden never
# runs: the installers (pip, setuptools, wheel; nothing is installed at run
# time) and kubernetes.aio, the client's asyncio twin (68 MB; cniwarden uses
# the synchronous client, kopf its own). The image build then runs
# `cniwarden --help` and the e2e suite runs every command the chart uses.
# The generated kubernetes.client (API classes and models, 33 MB of source)
# stays as bytecode only: its pyc files are needed anyway (it imports every
# model at start), the source is read by nobody in a container.
set -eu
venv=$1
site=$(echo "$venv"/lib/python3.*/site-packages)
rm -rf "$site"/pip "$site"/pip-* "$site"/setuptools "$site"/setuptools-* \
  "$site"/pkg_resources "$site"/_distutils_hack "$site"/distutils-precedence.pth \
  "$site"/wheel "$site"/wheel-* "$site"/kubernetes/aio \
  "$venv"/bin/pip "$venv"/bin/pip3* "$venv"/bin/activate* "$venv"/bin/Activate.ps1
client=$site/kubernetes/client
"$venv"/bin/python -m compileall -q -b "$client"
find "$client" -name '*.py' -delete
find "$client" -name __pycache__ -prune -exec rm -rf {} +
