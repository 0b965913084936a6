"""Triangle meshes as plain numpy arrays, with conversions, verification and atomic STL writing.

``TriMesh`` is the currency between VTK (surfaces from segmentations, rendering, STL I/O) and manifold3d
(exact booleans that always return manifold meshes). Verification is done on every mesh we produce:
non-empty, closed (every edge shared by exactly two triangles, consistently oriented), positive volume.
"""

import os
import tempfile
from dataclasses import dataclass, field
from typing import Optional

import numpy as np

from .errors import GeometryError, OutputExistsError

LPS_FROM_RAS = np.diag([-1.0, -1.0, 1.0])
_UMASK = os.umask(0o022)
os.umask(_UMASK)


@dataclass
class TriMesh:
    vertices: np.ndarray  # (N, 3) float64, mm
    faces: np.ndarray  # (M, 3) int64, counter-clockwise seen from outside

    def __post_init__(self):
        self.vertices = np.ascontiguousarray(self.vertices, dtype=np.float64).reshape(-1, 3)
        self.faces = np.ascontiguousarray(self.faces, dtype=np.int64).reshape(-1, 3)

    @property
    def n_triangles(self) -> int:
        return len(self.faces)

    def copy(self) -> "TriMesh":
        return TriMesh(self.vertices.copy(), self.faces.copy())

    def transformed(self, matrix4: np.ndarray) -> "TriMesh":
        """Apply a 4x4 homogeneous transform; flips face orientation if it mirrors."""
        m = np.asarray(matrix4, dtype=float)
        v = self.vertices @ m[:3, :3].T + m[:3, 3]
        f = self.faces if np.linalg.det(m[:3, :3]) > 0 else self.faces[:, ::-1]
        return TriMesh(v, f.copy())

    def volume(self) -> float:
        """Signed volume (mm3) by the divergence theorem; positive for outward-facing triangles."""
        a, b, c = (self.vertices[self.faces[:, i]] for i in range(3))
        return float(np.einsum("ij,ij->i", a, np.cross(b, c)).sum() / 6.0)

    def area(self) -> float:
        a, b, c = (self.vertices[self.faces[:, i]] for i in range(3))
        return float(np.linalg.norm(np.cross(b - a, c - a), axis=1).sum() / 2.0)

    def bounds(self) -> np.ndarray:
        """[[xmin, ymin, zmin], [xmax, ymax, zmax]]."""
        if len(self.vertices) == 0:
            return np.zeros((2, 3))
        return np.array([self.vertices.min(axis=0), self.vertices.max(axis=0)])


@dataclass
class MeshCheck:
    """Result of verifying one mesh; ``ok`` is True when it is printable as a closed solid."""

    n_triangles: int
    n_vertices: int
    watertight: bool
    manifold: bool
    consistently_oriented: bool
    outward_normals: bool
    volume_mm3: float
    area_mm2: float
    n_components: int
    bounds: list
    problems: list = field(default_factory=list)
    n_degenerate: int = 0  # triangles with a repeated vertex or no area (a slicer drops them, leaving holes)

    @property
    def ok(self) -> bool:
        return not self.problems

    def as_dict(self) -> dict:
        return {
            "ok": self.ok,
            "triangles": self.n_triangles,
            "vertices": self.n_vertices,
            "watertight": self.watertight,
            "manifold": self.manifold,
            "consistently_oriented": self.consistently_oriented,
            "outward_normals": self.outward_normals,
            "volume_mm3": round(self.volume_mm3, 3),
            "area_mm2": round(self.area_mm2, 3),
            "components": self.n_components,
            "degenerate_triangles": self.n_degenerate,
            "bounds_mm": self.bounds,
            "problems": list(self.problems),
        }


def merge_duplicate_vertices(mesh: TriMesh, tolerance: Optional[float] = 1e-6) -> TriMesh:
    """Weld coincident vertices (STL files store every triangle's corners separately) and drop
    triangles that collapse. ``tolerance`` None welds only exactly equal positions."""
    if len(mesh.vertices) == 0:
        return mesh.copy()
    if tolerance is None:
        first, inverse = _weld_exact(mesh.vertices)
    else:
        key = np.round(mesh.vertices / tolerance).astype(np.int64)
        _, first, inverse = np.unique(key, axis=0, return_index=True, return_inverse=True)
    faces = inverse.reshape(-1)[mesh.faces]
    keep = (faces[:, 0] != faces[:, 1]) & (faces[:, 1] != faces[:, 2]) & (faces[:, 0] != faces[:, 2])
    return TriMesh(mesh.vertices[first], faces[keep])


def _weld_exact(vertices: np.ndarray) -> tuple:
    """(first index of each distinct position, inverse) for exactly equal positions, as readers weld float32 STL:
    one lexsort of 1-D bit keys instead of np.unique over rows (several times faster on millions). Positions that
    are float32 values (every file read back) are sorted on two keys, x and y's float32 bits in one (2.4x faster)."""
    v = np.ascontiguousarray(vertices, dtype=np.float64)
    v32 = v.astype(np.float32)
    if np.array_equal(v32, v):
        b = (v32 + np.float32(0.0)).view(np.uint32).reshape(-1, 3).astype(np.uint64)  # -0.0 and 0.0 are one
        bits = np.stack([(b[:, 0] << np.uint64(32)) | b[:, 1], b[:, 2]], axis=1)
        order = np.lexsort((bits[:, 1], bits[:, 0]))
    else:
        bits = v.view(np.uint64).reshape(-1, 3)
        bits = np.where(v == 0, np.uint64(0), bits)  # -0.0 and 0.0 are one position
        order = np.lexsort((bits[:, 2], bits[:, 1], bits[:, 0]))
    s = bits[order]
    new = np.ones(len(s), dtype=bool)
    new[1:] = np.any(s[1:] != s[:-1], axis=1)
    group = np.cumsum(new) - 1
    inverse = np.empty(len(s), dtype=np.int64)
    inverse[order] = group
    return order[new], inverse


def face_components(n_vertices: int, faces: np.ndarray) -> np.ndarray:
    """Component label of each face (faces sharing a vertex are connected), 0..n-1."""
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    rows = np.concatenate([faces[:, 0], faces[:, 1]])
    cols = np.concatenate([faces[:, 1], faces[:, 2]])
    graph = coo_matrix((np.ones(len(rows)), (rows, cols)), shape=(n_vertices, n_vertices))
    _, labels = connected_components(graph, directed=False)
    return np.unique(labels[faces[:, 0]], return_inverse=True)[1]


def _component_count(n_vertices: int, faces: np.ndarray) -> int:
    if len(faces) == 0:
        return 0
    return int(face_components(n_vertices, faces).max()) + 1


def closed_edges(faces: np.ndarray, n_vertices: int) -> bool:
    """Every directed edge occurs once and its reverse once: closed, manifold and consistently oriented. Two sorts
    of 1-D edge keys, fast on million-triangle meshes (the detailed counts are only worked out when this fails)."""
    n = np.int64(max(n_vertices, int(faces.max()) + 1))
    a = np.concatenate([faces[:, 0], faces[:, 1], faces[:, 2]])
    b = np.concatenate([faces[:, 1], faces[:, 2], faces[:, 0]])
    fwd = np.sort(a * n + b)
    return bool(not np.any(fwd[1:] == fwd[:-1]) and np.array_equal(fwd, np.sort(b * n + a)))


def degenerate_faces(mesh: TriMesh, min_area_mm2: float = 1e-12) -> np.ndarray:
    """Mask of triangles with a repeated vertex or (next to) no area."""
    f, v = mesh.faces, mesh.vertices
    cross = np.cross(v[f[:, 1]] - v[f[:, 0]], v[f[:, 2]] - v[f[:, 0]])
    repeated = (f[:, 0] == f[:, 1]) | (f[:, 1] == f[:, 2]) | (f[:, 0] == f[:, 2])
    return repeated | (np.einsum("ij,ij->i", cross, cross) <= (2.0 * min_area_mm2) ** 2)


def check_mesh(mesh: TriMesh, min_volume_mm3: float = 0.0) -> MeshCheck:
    """Verify a mesh is a closed, manifold, consistently and outward oriented solid; the one verification used for
    every part and every file read back. Degenerate (zero-area) triangles are counted, not refused here: booleans
    leave a few inside parts; the export removes them (file_safe) and refuses files that still have any.

    Works on welded meshes; call :func:`merge_duplicate_vertices` first for STL triangle soup.
    """
    faces = mesh.faces
    problems = []
    if len(faces) == 0:
        return MeshCheck(0, len(mesh.vertices), False, False, False, False, 0.0, 0.0, 0, [[0] * 3] * 2, ["empty mesh"])
    if closed_edges(faces, len(mesh.vertices)):
        watertight = manifold = consistent = True
    else:
        # Directed half-edges: in a closed oriented 2-manifold each appears once and its twin once.
        he = np.concatenate([faces[:, [0, 1]], faces[:, [1, 2]], faces[:, [2, 0]]])
        n = np.int64(max(len(mesh.vertices), int(faces.max()) + 1))
        undirected = np.minimum(he[:, 0], he[:, 1]) * n + np.maximum(he[:, 0], he[:, 1])
        _, ucounts = np.unique(undirected, return_counts=True)
        watertight = bool(np.all(ucounts >= 2))
        manifold = bool(np.all(ucounts == 2))
        _, dcounts = np.unique(he[:, 0] * n + he[:, 1], return_counts=True)
        consistent = bool(np.all(dcounts == 1)) and manifold
        if not watertight:
            problems.append(f"{int(np.sum(ucounts < 2))} open (boundary) edges: not watertight")
        if not manifold:
            problems.append(f"{int(np.sum(ucounts > 2))} edges shared by more than two triangles: not manifold")
        if manifold and not consistent:
            problems.append("inconsistent triangle orientation")
    volume = mesh.volume()
    area = mesh.area()
    outward = volume > 0
    n_comp = _component_count(len(mesh.vertices), faces)
    n_degenerate = int(degenerate_faces(mesh).sum())
    if not outward:
        problems.append(f"volume {volume:.3f} mm3 is not positive: normals point inward or mesh is degenerate")
    elif volume < min_volume_mm3:
        problems.append(f"volume {volume:.3f} mm3 is below the plausible minimum {min_volume_mm3:.3f} mm3")
    b = mesh.bounds()
    return MeshCheck(
        n_triangles=len(faces),
        n_vertices=len(mesh.vertices),
        watertight=watertight,
        manifold=manifold,
        consistently_oriented=consistent,
        outward_normals=outward,
        volume_mm3=volume,
        area_mm2=area,
        n_components=n_comp,
        bounds=[[round(float(x), 4) for x in b[0]], [round(float(x), 4) for x in b[1]]],
        problems=problems,
        n_degenerate=n_degenerate,
    )


def require_valid(mesh: TriMesh, what: str, min_volume_mm3: float = 0.0) -> MeshCheck:
    """check_mesh, raising GeometryError naming ``what`` if the mesh is not a valid solid."""
    result = check_mesh(mesh, min_volume_mm3)
    if not result.ok:
        raise GeometryError(
            f"The {what} mesh failed verification: {'; '.join(result.problems)}.",
            "Check the inputs that define it (markups, parameters); this is a bug if they are sensible.",
        )
    return result


# ---- VTK conversions -------------------------------------------------------------------------------


def from_polydata(polydata) -> TriMesh:
    """TriMesh from a vtkPolyData (polygons are triangulated; points welded only if VTK shares them)."""
    import vtk
    from vtk.util.numpy_support import vtk_to_numpy

    tri = vtk.vtkTriangleFilter()
    tri.SetInputData(polydata)
    tri.PassLinesOff()
    tri.PassVertsOff()
    tri.Update()
    pd = tri.GetOutput()
    if pd.GetNumberOfPoints() == 0 or pd.GetNumberOfPolys() == 0:
        return TriMesh(np.zeros((0, 3)), np.zeros((0, 3), dtype=np.int64))
    verts = vtk_to_numpy(pd.GetPoints().GetData()).astype(np.float64)
    conn = vtk_to_numpy(pd.GetPolys().GetConnectivityArray()).astype(np.int64)
    return TriMesh(verts, conn.reshape(-1, 3))


def isosurface(field, level: float, spacing=(1.0, 1.0, 1.0), origin=(0.0, 0.0, 0.0)) -> TriMesh:
    """Flying-edges contour of a [k, j, i] image at ``level``, in grid coordinates (x = i * spacing + origin).

    The result is closed where the field's border is on the outside of the level (callers pad it)."""
    import vtk
    from vtk.util.numpy_support import numpy_to_vtk

    arr = np.ascontiguousarray(field)
    image = vtk.vtkImageData()
    image.SetDimensions(arr.shape[2], arr.shape[1], arr.shape[0])
    image.SetSpacing(*map(float, spacing))
    image.SetOrigin(*map(float, origin))
    image.GetPointData().SetScalars(numpy_to_vtk(arr.ravel(), deep=True))
    fe = vtk.vtkFlyingEdges3D()
    fe.SetInputData(image)
    fe.SetValue(0, float(level))
    fe.ComputeNormalsOff()
    fe.ComputeGradientsOff()
    fe.ComputeScalarsOff()
    fe.Update()
    return from_polydata(fe.GetOutput())


def to_polydata(mesh: TriMesh):
    """vtkPolyData (triangles) from a TriMesh."""
    import vtk
    from vtk.util.numpy_support import numpy_to_vtk, numpy_to_vtkIdTypeArray

    pts = vtk.vtkPoints()
    pts.SetData(numpy_to_vtk(np.ascontiguousarray(mesh.vertices), deep=True))
    offsets = np.arange(0, 3 * len(mesh.faces) + 1, 3, dtype=np.int64)
    cells = vtk.vtkCellArray()
    cells.SetData(
        numpy_to_vtkIdTypeArray(offsets, deep=True),
        numpy_to_vtkIdTypeArray(np.ascontiguousarray(mesh.faces.reshape(-1)), deep=True),
    )
    pd = vtk.vtkPolyData()
    pd.SetPoints(pts)
    pd.SetPolys(cells)
    return pd


# ---- manifold3d ------------------------------------------------------------------------------------

MANIFOLD_INSTALL_HINT = (
    "Install the 'manifold3d' Python package (inside Slicer the module offers to install it; "
    "headless: pip install manifold3d)."
)


def require_manifold3d():
    """Import manifold3d, or raise a clear error saying how to install it."""
    try:
        import manifold3d
    except ImportError as exc:  # pragma: no cover - exercised only where it is missing
        raise GeometryError("The mesh boolean library manifold3d is not installed.", MANIFOLD_INSTALL_HINT) from exc
    return manifold3d


def to_manifold(mesh: TriMesh):
    """manifold3d.Manifold from a closed TriMesh; raises GeometryError if it is not a valid solid.

    Indexed meshes (ours, VTK surfaces) are taken as they are; triangle soup (STL) is welded first. Welding an
    indexed mesh is avoided: distinct vertices at one position (where a surface touches itself) must stay distinct.
    """
    m3d = require_manifold3d()

    def build(m: TriMesh):
        return m3d.Manifold(
            m3d.Mesh(
                vert_properties=np.ascontiguousarray(m.vertices, dtype=np.float32),
                tri_verts=np.ascontiguousarray(m.faces, dtype=np.uint32),
            )
        )

    result = build(mesh)
    if result.status() != m3d.Error.NoError:
        result = build(merge_duplicate_vertices(mesh))
    if result.status() != m3d.Error.NoError:
        raise GeometryError(
            f"The mesh is not a closed manifold solid ({result.status()}); booleans need one.",
            "Check the mesh with check_mesh(); surfaces from segmentations and our own parts are closed.",
        )
    return result


def file_safe(mesh, tolerance_mm: float = 1e-3, separation_mm: float = 5e-4) -> TriMesh:
    """The mesh as it must be for a mesh file: still manifold after float32 rounding and welding by position, and
    without degenerate (zero-area) triangles.

    Mesh files store float32 triangle soup that readers weld by position, so vertices that round to one float32
    position merge and leave edges shared by four triangles. Contoured lattices have two sources of these: edges
    shorter than float32 precision, collapsed here with manifold3d's simplify (``tolerance_mm``, 1 um, far below
    any printer's resolution), and pinch points where the surface touches itself (distinct vertices, one
    position), separated by moving each such vertex ``separation_mm`` into its own solid along its normal.
    """
    out = mesh if isinstance(mesh, TriMesh) else from_manifold(mesh)
    # Rebuilding and simplifying costs seconds a million triangles: only when there is something to collapse.
    as_stored = TriMesh(out.vertices.astype(np.float32), out.faces)  # a thin sliver can flatten to no area in float32
    if _shortest_edge(out) < tolerance_mm or degenerate_faces(as_stored).any():
        # Usually (lattice parts whose slivers were collapsed where they were made) only a few triangles are
        # degenerate in float32: shrinking those to a point is enough, and costs a fraction of a simplification.
        quick = _collapse_specks(_separated(out, separation_mm))
        if _clean_in_float32(quick) and abs(quick.volume() - out.volume()) <= 1e-5 * max(abs(out.volume()), 1.0):
            return quick
        # A Manifold straight from a boolean is rebuilt from its mesh first: simplifying it directly left pinch
        # vertices that could not be separated (measured on a lattice implant); the rebuilt one has none left.
        simplified = to_manifold(out).simplify(tolerance_mm)
        # Collapsing a boolean's sub-um slivers can leave a flat shell of a few triangles and no volume (measured:
        # 6 triangles, 5e-13 mm3, on a lattice implant): not a body, dropped.
        out = from_manifold(without_flat_shells(simplified))
    return _collapse_specks(_separated(out, separation_mm))


FLAT_SHELL_MM3 = 1e-6  # a piece of a boolean's result with less volume than this is a flat shell, not a body
SPECK_MM3 = 1e-3  # far below anything a printer makes: a speck a boolean cut off, not a part


def without_flat_shells(manifold, min_volume_mm3: float = FLAT_SHELL_MM3):
    """The manifold without the pieces of (next to) no volume a boolean can leave where surfaces touch or graze (a
    flat shell or speck of a few triangles would count as a body of its own: a part 'in 2 pieces')."""
    pieces = manifold.decompose()
    solid = [p for p in pieces if abs(p.volume()) > min_volume_mm3]
    if not solid or len(solid) == len(pieces):
        return manifold
    return require_manifold3d().Manifold.compose(solid) if len(solid) > 1 else solid[0]


def _separated(out: TriMesh, separation_mm: float) -> TriMesh:
    """Vertices sharing a float32 position with another (pinch points) moved ``separation_mm`` into the solid."""
    for _ in range(3):
        shared = _shares_float32_position(out.vertices)
        if not shared.any():
            break
        normals = _vertex_normals(out)
        v = out.vertices.copy()
        v[shared] -= separation_mm * normals[shared]
        out = TriMesh(v, out.faces)
    return out


def _clean_in_float32(mesh: TriMesh) -> bool:
    """Closed and manifold, no two vertices at one float32 position, no triangle degenerate in float32."""
    return bool(len(mesh.faces)) and closed_edges(mesh.faces, len(mesh.vertices)) \
        and not _shares_float32_position(mesh.vertices).any() \
        and not degenerate_faces(TriMesh(mesh.vertices.astype(np.float32), mesh.faces)).any()


def _collapse_specks(mesh: TriMesh) -> TriMesh:
    """Triangles that are still degenerate in float32 after simplifying (a few, with um-long edges that the
    simplification could not collapse) shrunk to a point, the neighbours they flatten dropped; kept only if the mesh
    stays closed and clean, else returned unchanged (the export's check then refuses the file)."""
    bad = degenerate_faces(TriMesh(mesh.vertices.astype(np.float32), mesh.faces))
    if not bad.any():
        return mesh
    target = np.arange(len(mesh.vertices))
    for a, b, c in mesh.faces[bad]:
        target[target == target[b]] = target[a]
        target[target == target[c]] = target[a]
    f = target[mesh.faces]
    f = f[(f[:, 0] != f[:, 1]) & (f[:, 1] != f[:, 2]) & (f[:, 0] != f[:, 2])]
    out = TriMesh(mesh.vertices, f)
    clean = len(f) and closed_edges(f, len(mesh.vertices)) and not degenerate_faces(
        TriMesh(mesh.vertices.astype(np.float32), f)).any()
    return out if clean else mesh


def _shortest_edge(mesh: TriMesh) -> float:
    v, f = mesh.vertices, mesh.faces
    if len(f) == 0:
        return float("inf")
    return float(min(np.einsum("ij,ij->i", d, d).min() for d in (v[f[:, 1]] - v[f[:, 0]], v[f[:, 2]] - v[f[:, 1]],
                                                                 v[f[:, 0]] - v[f[:, 2]])) ** 0.5)


def _shares_float32_position(vertices: np.ndarray) -> np.ndarray:
    """Per vertex: another vertex has the same float32 position (sorting rows of bits: fast on millions)."""
    v = vertices.astype(np.float32) + np.float32(0.0)  # -0.0 -> 0.0: readers compare values, not bits
    bits = v.view(np.uint32).reshape(-1, 3)
    order = np.lexsort((bits[:, 2], bits[:, 1], bits[:, 0]))
    s = bits[order]
    same = np.all(s[1:] == s[:-1], axis=1)
    flag = np.zeros(len(v), bool)
    flag[1:] |= same
    flag[:-1] |= same
    out = np.zeros(len(v), bool)
    out[order] = flag
    return out


def _vertex_normals(mesh: TriMesh) -> np.ndarray:
    a, b, c = (mesh.vertices[mesh.faces[:, i]] for i in range(3))
    fn = np.cross(b - a, c - a)  # area-weighted
    vn = np.zeros_like(mesh.vertices)
    for i in range(3):
        np.add.at(vn, mesh.faces[:, i], fn)
    norm = np.linalg.norm(vn, axis=1, keepdims=True)
    return np.divide(vn, norm, out=np.zeros_like(vn), where=norm > 0)


def from_manifold(manifold) -> TriMesh:
    """TriMesh from a manifold3d.Manifold (arrays copied: manifold3d returns read-only views)."""
    m = manifold.to_mesh()
    return TriMesh(np.array(m.vert_properties[:, :3], dtype=np.float64), np.array(m.tri_verts, dtype=np.int64))


# ---- STL ---------------------------------------------------------------------------------------------


def atomic_write_bytes(path: str, data: bytes, overwrite: bool = False) -> None:
    """Write via a temporary file in the same folder and rename, so a file is never half-written.

    Refuses (OutputExistsError) to replace an existing file unless ``overwrite``.
    """
    path = os.fspath(path)
    if os.path.exists(path) and not overwrite:
        raise OutputExistsError(
            f"Output file already exists: {path}.", "Choose another folder or name, or allow overwriting."
        )
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", dir=folder)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes files private; give them the usual permissions
        if not overwrite and os.path.exists(path):
            raise OutputExistsError(f"Output file already exists: {path}.", "Choose another folder or name.")
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def atomic_write_node(node, storage, path: str, overwrite: bool = False) -> str:
    """Write an MRML node with a storage node under a temporary name in the target folder, then rename.

    The storage node is used only for this write; if it has to join the scene (markups storage needs it), it
    leaves again, so the scene is unchanged afterwards."""
    path = os.fspath(path)
    if os.path.exists(path) and not overwrite:
        raise OutputExistsError(f"Output file already exists: {path}.", "Choose a new folder or allow overwriting.")
    tmp = os.path.join(os.path.dirname(os.path.abspath(path)), f".tmp-{os.getpid()}-{os.path.basename(path)}")
    storage.SetFileName(tmp)
    scene = node.GetScene() if storage.GetScene() is None and node.GetScene() is not None else None
    if scene is not None:
        scene.AddNode(storage)
    try:
        if not storage.WriteData(node):
            raise OutputExistsError(f"Could not write {path}.", "Check that the folder exists and is writable.")
        os.replace(tmp, path)
    finally:
        if scene is not None:
            scene.RemoveNode(storage)
        if os.path.exists(tmp):
            os.remove(tmp)
    return path


def stl_bytes(mesh: TriMesh, header: str = "PatientImplantPlanner") -> bytes:
    """Binary STL (little-endian, 50 bytes a triangle) with per-facet normals."""
    v = mesh.vertices[mesh.faces].astype(np.float32)  # (M, 3, 3)
    n = np.cross(v[:, 1] - v[:, 0], v[:, 2] - v[:, 0])
    norm = np.linalg.norm(n, axis=1, keepdims=True)
    n = np.where(norm > 0, n / np.where(norm > 0, norm, 1), 0).astype(np.float32)
    rec = np.zeros(len(mesh.faces), dtype=[("n", "<f4", 3), ("v", "<f4", (3, 3)), ("attr", "<u2")])
    rec["n"] = n
    rec["v"] = v
    head = header.encode("ascii", "replace")[:80].ljust(80, b" ")
    return head + np.uint32(len(mesh.faces)).tobytes() + rec.tobytes()


def write_stl(mesh: TriMesh, path: str, coordinate_system: str = "LPS", overwrite: bool = False) -> None:
    """Write a RAS mesh as binary STL in LPS (Slicer's default for model files) or RAS, atomically."""
    cs = coordinate_system.upper()
    if cs not in ("LPS", "RAS"):
        raise ValueError(f"coordinate_system must be 'LPS' or 'RAS', not {coordinate_system!r}")
    out = mesh
    if cs == "LPS":
        m = np.eye(4)
        m[:3, :3] = LPS_FROM_RAS
        out = mesh.transformed(m)  # a mirror of two axes is a rotation: orientation is kept
    atomic_write_bytes(path, stl_bytes(out, f"PatientImplantPlanner binary STL, {cs}, mm"), overwrite=overwrite)


def read_stl(path: str, coordinate_system: str = "LPS") -> TriMesh:
    """Read a binary or ASCII STL and return it welded, in RAS (converting from LPS if stated)."""
    mesh = _read_binary_stl(path)
    if mesh is None:  # ASCII
        import vtk

        reader = vtk.vtkSTLReader()
        reader.SetFileName(os.fspath(path))
        reader.Update()
        mesh = from_polydata(reader.GetOutput())
    # Weld exactly equal float32 positions, as slicers do: a tolerance would merge distinct close vertices.
    mesh = merge_duplicate_vertices(mesh, tolerance=None)
    if coordinate_system.upper() == "LPS":
        m = np.eye(4)
        m[:3, :3] = LPS_FROM_RAS
        mesh = mesh.transformed(m)
    return mesh


def _read_binary_stl(path: str) -> Optional[TriMesh]:
    """Triangle soup of a binary STL read straight into numpy (its size must match the triangle count), else None."""
    with open(path, "rb") as f:
        data = f.read()
    if len(data) < 84:
        return None
    n = int(np.frombuffer(data, dtype="<u4", count=1, offset=80)[0])
    if len(data) != 84 + 50 * n:
        return None
    rec = np.frombuffer(data, dtype=[("n", "<f4", 3), ("v", "<f4", (3, 3)), ("attr", "<u2")], count=n, offset=84)
    return TriMesh(rec["v"].reshape(-1, 3), np.arange(3 * n).reshape(-1, 3))


def polydata_volume(polydata) -> float:
    import vtk

    mp = vtk.vtkMassProperties()
    tri = vtk.vtkTriangleFilter()
    tri.SetInputData(polydata)
    mp.SetInputConnection(tri.GetOutputPort())
    mp.Update()
    return float(mp.GetVolume())


def decimate(mesh: TriMesh, target_triangles: Optional[int]) -> TriMesh:
    """Reduce to about ``target_triangles`` keeping topology (vtkDecimatePro scales; quadric does not)."""
    import vtk

    if not target_triangles or mesh.n_triangles <= target_triangles:
        return mesh
    dec = vtk.vtkDecimatePro()
    dec.SetInputData(to_polydata(mesh))
    dec.SetTargetReduction(1.0 - target_triangles / mesh.n_triangles)
    dec.PreserveTopologyOn()
    dec.SplittingOff()
    dec.BoundaryVertexDeletionOff()
    dec.Update()
    return merge_duplicate_vertices(from_polydata(dec.GetOutput()))


def distance_function(mesh: TriMesh):
    """A reusable signed distance (negative inside) to a closed mesh: points (N, 3) -> (N,) (VTK, vectorised; the
    locator is built once, so many small queries stay cheap)."""
    import vtk
    from vtk.util.numpy_support import numpy_to_vtk, vtk_to_numpy

    f = vtk.vtkImplicitPolyDataDistance()
    f.SetInput(to_polydata(mesh))

    def distance(pts) -> np.ndarray:
        out = vtk.vtkDoubleArray()
        f.FunctionValue(numpy_to_vtk(np.ascontiguousarray(np.atleast_2d(pts), dtype=np.float64), deep=True), out)
        return vtk_to_numpy(out).copy()

    return distance


def signed_distance(mesh: TriMesh, pts) -> np.ndarray:
    """Signed distance (negative inside) from points (N, 3) to a closed mesh (VTK, vectorised)."""
    return distance_function(mesh)(pts)
