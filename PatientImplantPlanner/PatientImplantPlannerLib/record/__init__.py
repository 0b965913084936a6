"""The design record: one typed record built from a plan and its results, its sections and checklist, the
HTML/PDF renderers, and the pictures (offscreen renders and Slicer-view screenshots)."""
