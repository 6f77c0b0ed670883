"""The CNI protocol, independent of any plugin: environment and stdin validation (skel),
spec versions, the result in every version, error codes, CNI_ARGS and Go-style JSON decoding.

Pure: imports only the standard library and pydantic; never the kernel, never subprocess.
`skel` loads a plugin module by name (importlib) only when a request needs it.
"""
