"""Solid text for engraved or embossed labels on printed guides: a small single-stroke font of our own.

Each glyph is a few polylines on a 4 x 6 unit grid (width x cap height). Strokes are thickened into capsules
(convex hull of two discs per segment) and unioned with manifold3d, so the outline is always a clean 2-D
region; extruding it gives a closed solid. Strokes are 15 % of the text height (0.6 mm at 4 mm), which SLS
polyamide prints and a surgeon can read at arm's length.

Supported: A-Z (lower case is upper-cased), 0-9, + - . and space.
"""

import numpy as np

from ..core.errors import PlanError
from ..core.mesh import TriMesh, from_manifold, require_manifold3d, require_valid

GRID_HEIGHT = 6.0
GLYPH_GAP = 1.6  # units between glyphs
STROKE_FRACTION = 0.15  # stroke width / total text height
ARC_STEPS = 24  # polyline points per full turn


def _arc(cx, cy, rx, ry, a0_deg, a1_deg):
    """Points on an elliptic arc from a0 to a1 (degrees; a1 < a0 runs clockwise)."""
    n = max(3, int(np.ceil(abs(a1_deg - a0_deg) / 360.0 * ARC_STEPS)) + 1)
    a = np.radians(np.linspace(a0_deg, a1_deg, n))
    return [(cx + rx * np.cos(t), cy + ry * np.sin(t)) for t in a]


def _ring(cx, cy, rx, ry):
    return _arc(cx, cy, rx, ry, 0.0, 360.0)


# Glyph -> (advance width in units, [stroke polylines]).
GLYPHS = {
    "A": (4, [[(0, 0), (2, 6), (4, 0)], [(0.67, 2), (3.33, 2)]]),
    "B": (
        4,
        [
            [(0, 3), (0, 6), (2.5, 6)]
            + _arc(2.5, 4.5, 1.5, 1.5, 90, -90)
            + [(0, 3), (0, 0), (2.5, 0)]
            + _arc(2.5, 1.5, 1.5, 1.5, -90, 90)
            + [(0, 3)]
        ],
    ),
    "C": (4, [_arc(2, 3, 2, 3, 40, 320)]),
    "D": (4, [[(0, 0), (0, 6), (1.5, 6)] + _arc(1.5, 3, 2.5, 3, 90, -90) + [(0, 0)]]),
    "E": (4, [[(4, 6), (0, 6), (0, 0), (4, 0)], [(0, 3), (3, 3)]]),
    "F": (4, [[(4, 6), (0, 6), (0, 0)], [(0, 3), (3, 3)]]),
    "G": (4, [_arc(2, 3, 2, 3, 40, 360) + [(2.2, 3)]]),
    "H": (4, [[(0, 0), (0, 6)], [(4, 0), (4, 6)], [(0, 3), (4, 3)]]),
    "I": (2, [[(1, 0), (1, 6)], [(0, 0), (2, 0)], [(0, 6), (2, 6)]]),
    "J": (4, [[(4, 6), (4, 2)] + _arc(2, 2, 2, 2, 0, -180)]),
    "K": (4, [[(0, 0), (0, 6)], [(4, 6), (0, 2)], [(1.4, 3.4), (4, 0)]]),
    "L": (4, [[(0, 6), (0, 0), (4, 0)]]),
    "M": (4, [[(0, 0), (0, 6), (2, 2.5), (4, 6), (4, 0)]]),
    "N": (4, [[(0, 0), (0, 6), (4, 0), (4, 6)]]),
    "O": (4, [_ring(2, 3, 2, 3)]),
    "P": (4, [[(0, 0), (0, 6), (2.5, 6)] + _arc(2.5, 4.5, 1.5, 1.5, 90, -90) + [(0, 3)]]),
    "Q": (4, [_ring(2, 3, 2, 3), [(2.5, 1.5), (4, 0)]]),
    "R": (4, [[(0, 0), (0, 6), (2.5, 6)] + _arc(2.5, 4.5, 1.5, 1.5, 90, -90) + [(0, 3)], [(2, 3), (4, 0)]]),
    "S": (4, [_arc(2, 4.5, 2, 1.5, 20, 270) + _arc(2, 1.5, 2, 1.5, 90, -160)]),
    "T": (4, [[(0, 6), (4, 6)], [(2, 6), (2, 0)]]),
    "U": (4, [[(0, 6), (0, 2)] + _arc(2, 2, 2, 2, 180, 360) + [(4, 6)]]),
    "V": (4, [[(0, 6), (2, 0), (4, 6)]]),
    "W": (4, [[(0, 6), (1, 0), (2, 4), (3, 0), (4, 6)]]),
    "X": (4, [[(0, 0), (4, 6)], [(0, 6), (4, 0)]]),
    "Y": (4, [[(0, 6), (2, 3), (4, 6)], [(2, 3), (2, 0)]]),
    "Z": (4, [[(0, 6), (4, 6), (0, 0), (4, 0)]]),
    "0": (4, [_ring(2, 3, 2, 3), [(0.8, 1.2), (3.2, 4.8)]]),  # slashed: never read as O
    "1": (4, [[(0.8, 4.6), (2, 6), (2, 0)], [(0.8, 0), (3.2, 0)]]),
    "2": (4, [_arc(2, 4, 2, 2, 160, -20) + [(0, 0), (4, 0)]]),
    "3": (4, [_arc(2, 4.5, 2, 1.5, 150, -90) + _arc(2, 1.5, 2, 1.5, 90, -150)]),
    "4": (4, [[(3, 0), (3, 6), (0, 2), (4, 2)]]),
    "5": (4, [[(4, 6), (0.5, 6), (0.3, 3.3)] + _arc(2, 2, 2, 2, 140, -140)]),
    "6": (4, [_ring(2, 2, 2, 2), [(0.15, 2.8), (2.6, 6)]]),
    "7": (4, [[(0, 6), (4, 6), (1.5, 0)]]),
    "8": (4, [_ring(2, 4.6, 1.7, 1.4), _ring(2, 1.6, 2, 1.6)]),
    "9": (4, [_ring(2, 4, 2, 2), [(3.85, 3.2), (1.4, 0)]]),
    "+": (4, [[(0, 3), (4, 3)], [(2, 1), (2, 5)]]),
    "-": (3, [[(0, 3), (3, 3)]]),
    ".": (1, [[(0.5, 0)]]),
    " ": (3, []),
}


def _check_text(text: str) -> str:
    up = str(text).upper()
    bad = sorted({c for c in up if c not in GLYPHS})
    if bad:
        raise PlanError(
            f"The label {text!r} contains characters the label font cannot print: {' '.join(map(repr, bad))}.",
            "Use only letters A-Z, digits 0-9, '+', '-', '.' and spaces.",
        )
    if not up.strip():
        raise PlanError("The label text is empty.", "Give the label at least one printable character.")
    return up


def text_size(text: str, height_mm: float) -> tuple:
    """(width, height) in mm of the label ``text`` at ``height_mm``, stroke ends included."""
    up = _check_text(text)
    stroke = STROKE_FRACTION * height_mm
    scale = (height_mm - stroke) / GRID_HEIGHT
    units = sum(GLYPHS[c][0] for c in up) + GLYPH_GAP * (len(up) - 1)
    return units * scale + stroke, float(height_mm)


def text_outline(text: str, height_mm: float):
    """The label as a manifold3d CrossSection in the XY plane, its bounding box starting at (0, 0)."""
    m3d = require_manifold3d()
    if not (np.isfinite(height_mm) and 1.0 <= height_mm <= 50.0):
        raise PlanError(f"Label height {height_mm!r} mm is invalid.", "Use a label height between 1 and 50 mm.")
    up = _check_text(text)
    stroke = STROKE_FRACTION * height_mm
    r = stroke / 2
    scale = (height_mm - stroke) / GRID_HEIGHT
    disc = m3d.CrossSection.circle(r, 16)
    pieces = []
    x0 = 0.0
    for c in up:
        width, strokes = GLYPHS[c]
        for line in strokes:
            pts = [(r + (x0 + x) * scale, r + y * scale) for x, y in line]
            if len(pts) == 1:
                pieces.append(disc.translate(pts[0]))
            for a, b in zip(pts[:-1], pts[1:]):
                pieces.append(m3d.CrossSection.batch_hull([disc.translate(a), disc.translate(b)]))
        x0 += width + GLYPH_GAP
    return m3d.CrossSection.batch_boolean(pieces, m3d.OpType.Add)


def text_mesh(text: str, height_mm: float, depth_mm: float) -> TriMesh:
    """A closed solid of the label's glyphs lying in the XY plane (bounding box from the origin), extruded from
    z = 0 to z = ``depth_mm``. Glyphs of one label may be separate solids (e.g. "L1" has two)."""
    if not (np.isfinite(depth_mm) and 0.05 <= depth_mm <= 20.0):
        raise PlanError(f"Label depth {depth_mm!r} mm is invalid.", "Use a label depth between 0.05 and 20 mm.")
    mesh = from_manifold(text_outline(text, height_mm).extrude(float(depth_mm)))
    require_valid(mesh, f"label {text!r}")
    return mesh
