"""Compiled attention kernels registered as torch custom ops."""
