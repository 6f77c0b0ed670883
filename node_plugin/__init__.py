"""cniwarden's CNI plugins: bridge and host-local IPAM (CNI 1.1.0)."""
