"""The CRI scenario suite: containerd's CRI plugin driven over runtime.v1 gRPC, with pyoci and runc handlers."""
