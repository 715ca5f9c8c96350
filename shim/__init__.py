"""containerd-shim-pyoci-v2: the containerd runtime shim v2 serving the Task API with pyoci's runtime."""
