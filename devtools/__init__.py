"""Developer tooling for cniwarden (not shipped in the wheel)."""
