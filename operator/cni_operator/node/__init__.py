"""Node-side I/O: the files under a host root (net.d, bin dir, /var/lib/cni)."""
