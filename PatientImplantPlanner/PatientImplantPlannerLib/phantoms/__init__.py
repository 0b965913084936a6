"""Synthetic CTs with known truth (a thoracolumbar spine with vessels and organs, a symmetric pelvis), used by
the tests, the benchmarks and the demo."""
