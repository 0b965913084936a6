"""The plan and its geometry: the plan document and schema, strut placement around the spinal axis, screw
trajectories, the implant body, and the mirror-defect implant kind."""
