"""The only part of the engine that touches the MRML scene: the context (scene + logics), volume and segment
access, the plan folder with its markups, and the interactive workflow the Slicer module calls."""
