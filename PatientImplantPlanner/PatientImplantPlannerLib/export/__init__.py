"""Writing a plan to disk: the bundle of verified STL/3MF parts, the manifest with checksums, the bone model,
and staging so an interrupted export never leaves half a bundle."""
