"""Shared foundations with no knowledge of the pipeline: errors (problem + fix), progress reporting, anatomy
names, and the triangle-mesh type with its checks. Every other sub-package may import from here; this imports none."""
