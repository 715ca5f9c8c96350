"""The integration-test harness: a private real containerd, an offline busybox image, ctr and gRPC clients."""
