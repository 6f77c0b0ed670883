"""Operator integration tests against the real local cluster."""
