"""pyoci's OCI runtime core: bundle/config validation, container state, namespaces, mounts, cgroups,
security and processes. Usable on its own (the ``pyoci`` CLI) and in-process by the shim."""

__version__ = "0.1.0"
