"""Custom operators across runtimes: DeformConv lowerings' op contracts and CPU reference implementations."""
