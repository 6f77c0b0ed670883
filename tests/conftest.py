"""Shared pytest configuration for the whole suite."""

# The `cluster` marker and session fixture (a local Kubernetes at the tier the
# selected tests need); see devtools/localcluster/pytest_plugin.py.
pytest_plugins = ["devtools.localcluster.pytest_plugin"]
