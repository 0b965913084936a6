"""Minimal 3MF writer: one mesh object per file, units in millimetres (3MF carries units; STL does not)."""

import io
import zipfile
from typing import Optional

import numpy as np

from ..core.mesh import LPS_FROM_RAS, TriMesh, atomic_write_bytes

_CONTENT_TYPES = (
    '<?xml version="1.0" encoding="UTF-8"?>\n'
    '<Types xmlns="http://schemas.openxmlformats.org/package/2006/content-types">'
    '<Default Extension="rels" ContentType="application/vnd.openxmlformats-package.relationships+xml"/>'
    '<Default Extension="model" ContentType="application/vnd.ms-package.3dmanufacturing-3dmodel+xml"/>'
    "</Types>"
)
_RELS = (
    '<?xml version="1.0" encoding="UTF-8"?>\n'
    '<Relationships xmlns="http://schemas.openxmlformats.org/package/2006/relationships">'
    '<Relationship Target="/3D/3dmodel.model" Id="rel0" '
    'Type="http://schemas.microsoft.com/3dmanufacturing/2013/01/3dmodel"/>'
    "</Relationships>"
)


def _rows(template: str, values: np.ndarray) -> str:
    """``template`` filled with each row of ``values``, in one C-level %-formatting call over all rows (numpy's
    savetxt writes a row at a time: ~4x slower on a million-triangle part)."""
    if len(values) == 0:
        return ""
    items = values.astype(float if values.dtype.kind == "f" else np.int64).ravel().tolist()
    return (template * len(values)) % tuple(items)


def model_xml(mesh: TriMesh, name: str) -> str:
    # The float32 coordinates an STL stores, written exactly: rounding to fixed decimals flattened two slivers of a
    # lattice implant to zero area that file_safe had checked in float32. Each as the shortest text that reads back
    # as the same float32 (numpy's repr; 9 significant digits every time made the vertices 14 % larger zipped).
    shortest = mesh.vertices.astype(np.float32).astype(str)
    verts = ('<vertex x="%s" y="%s" z="%s"/>' * len(shortest)) % tuple(shortest.ravel().tolist())
    tris = _rows('<triangle v1="%d" v2="%d" v3="%d"/>', mesh.faces)
    safe = name.replace("&", "and").replace("<", "").replace(">", "").replace('"', "")
    return (
        '<?xml version="1.0" encoding="UTF-8"?>\n'
        '<model unit="millimeter" xml:lang="en-US" '
        'xmlns="http://schemas.microsoft.com/3dmanufacturing/core/2015/02">'
        f'<metadata name="Title">{safe}</metadata>'
        f'<resources><object id="1" type="model" name="{safe}"><mesh>'
        f"<vertices>{verts}</vertices><triangles>{tris}</triangles>"
        '</mesh></object></resources><build><item objectid="1"/></build></model>'
    )


def write_3mf(mesh: TriMesh, path: str, name: str, coordinate_system: str = "LPS", overwrite: bool = False) -> None:
    out = mesh
    if coordinate_system.upper() == "LPS":
        m = np.eye(4)
        m[:3, :3] = LPS_FROM_RAS
        out = mesh.transformed(m)
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr("[Content_Types].xml", _CONTENT_TYPES)
        z.writestr("_rels/.rels", _RELS)
        z.writestr("3D/3dmodel.model", model_xml(out, name))
    atomic_write_bytes(path, buf.getvalue(), overwrite=overwrite)


def read_3mf(path: str, coordinate_system: str = "LPS") -> TriMesh:
    """Read back the first object of a 3MF written by write_3mf (for verification), in RAS. The model's attributes
    are parsed with regular expressions over the whole text (an element tree of millions of nodes takes gigabytes)."""
    import re

    with zipfile.ZipFile(path) as z:
        text = z.read("3D/3dmodel.model")
    unit = re.search(rb'<model[^>]*\bunit="([^"]*)"', text)
    if unit is None or unit.group(1) != b"millimeter":
        raise ValueError(f"{path}: 3MF unit is {unit and unit.group(1)!r}, expected millimeter")
    v = _fast_section(text, b"vertices", (b'<vertex x="', b'" y="', b'" z="', b'"/>'), float)
    if v is None:
        v = np.array(re.findall(rb'<vertex x="([^"]+)" y="([^"]+)" z="([^"]+)"', text), dtype=float)
    f = _fast_section(text, b"triangles", (b'<triangle v1="', b'" v2="', b'" v3="', b'"/>'), np.int64)
    if f is None:
        f = np.array(re.findall(rb'<triangle v1="(\d+)" v2="(\d+)" v3="(\d+)"', text), dtype=np.int64)
    v, f = v.reshape(-1, 3), f.reshape(-1, 3)
    mesh = TriMesh(v, f)
    if coordinate_system.upper() == "LPS":
        m = np.eye(4)
        m[:3, :3] = LPS_FROM_RAS
        mesh = mesh.transformed(m)
    return mesh


def _fast_section(text: bytes, tag: bytes, pieces: tuple, dtype) -> Optional[np.ndarray]:
    """The numbers of a <tag> section written exactly as write_3mf writes it (each element the same four pieces,
    nothing else), parsed in one pass; None if the section looks any different (the caller then parses it with
    regular expressions)."""
    start, end = text.find(b"<" + tag + b">"), text.find(b"</" + tag + b">")
    if start < 0 or end < 0:
        return None
    section = text[start + len(tag) + 2:end]
    count = section.count(pieces[0])
    for piece in pieces:
        if section.count(piece) != count:
            return None
        section = section.replace(piece, b" ")
    try:
        values = np.array(section.split(), dtype=dtype)
    except ValueError:
        return None
    return values if len(values) == 3 * count else None
