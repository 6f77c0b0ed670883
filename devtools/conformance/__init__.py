"""Kubernetes' own sig-network e2e tests against cniwarden on the local cluster."""
