"""Shipping cniwarden onto a cluster from this checkout: helm, and running the
chart's workloads as processes on the local cluster (used by the e2e and `make demo`)."""
