"""The node-resident CNI server that the static shim (shim/) forwards requests to."""
