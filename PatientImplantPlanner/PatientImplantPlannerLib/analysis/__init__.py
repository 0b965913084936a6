"""Checks of a designed implant beyond geometry: the finite-element stress check against a reference rod."""
