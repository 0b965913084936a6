"""Printable parts built on the designed implant: the porous lattice layer, docking and drill guides, and
engraved labels."""
