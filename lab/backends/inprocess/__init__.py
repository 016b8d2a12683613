"""The in-process backend: every host in this process, on loopback addresses (net.py)."""
