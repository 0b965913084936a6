"""Tetrahedral meshes for the finite-element check: the implant solid meshed with fTetWild (wildmeshing; several
solids side by side in worker processes, ``tetrahedralize_each``), the reference rod as a structured cylinder, and
the faces where the model is held and loaded."""

import os
import sys
import tempfile
import time
from dataclasses import dataclass
from typing import Optional

import numpy as np

from ..core.errors import GeometryError, PlannerError
from ..core.mesh import TriMesh, to_polydata

FE_INSTALL_HINT = (
    "Install the finite-element packages (inside Slicer the module offers to install them; headless: "
    "pip install scikit-fem wildmeshing pyamg)."
)


def require_fe():
    """Import the FE packages or raise a clear error saying how to install them."""
    try:
        import pyamg  # noqa: F401
        import skfem  # noqa: F401
        import wildmeshing  # noqa: F401
    except ImportError as exc:  # pragma: no cover - exercised only where they are missing
        raise PlannerError(f"A finite-element package is missing ({exc.name}).", FE_INSTALL_HINT) from exc


@dataclass
class Face:
    """A planar face of the solid: ``normal`` is its outward normal (out of the implant)."""

    centre: np.ndarray
    normal: np.ndarray


def thinnest_wall_mm(mesh: TriMesh, samples: int = 3000, percentile: float = 5.0, seed: int = 0) -> float:
    """Thinnest wall of a closed solid: rays shot inward along -normal from area-weighted random surface points,
    distance to where they leave the solid; a low percentile ignores rays grazing an edge or a rounded rim."""
    import vtk

    a, b, c = (mesh.vertices[mesh.faces[:, i]] for i in range(3))
    cross = np.cross(b - a, c - a)
    area = np.linalg.norm(cross, axis=1)
    ok = area > 1e-12
    rng = np.random.default_rng(seed)
    idx = rng.choice(np.nonzero(ok)[0], size=min(samples, int(ok.sum())), p=area[ok] / area[ok].sum())
    r = rng.random((len(idx), 2))
    flip = r.sum(axis=1) > 1
    r[flip] = 1 - r[flip]
    pts = a[idx] + r[:, :1] * (b[idx] - a[idx]) + r[:, 1:] * (c[idx] - a[idx])
    normals = cross[idx] / area[idx, None]
    tree = vtk.vtkOBBTree()
    tree.SetDataSet(to_polydata(mesh))
    tree.BuildLocator()
    reach = float(np.linalg.norm(np.ptp(mesh.vertices, axis=0)))
    hits, ids = vtk.vtkPoints(), vtk.vtkIdList()
    thickness = []
    for p, n in zip(pts, normals):
        start = p - 1e-4 * n
        if tree.IntersectWithLine(start, p - reach * n, hits, ids) == 0:
            continue
        d = [np.linalg.norm(np.array(hits.GetPoint(k)) - start) for k in range(hits.GetNumberOfPoints())]
        d = [x for x in d if x > 1e-3]
        if d:
            thickness.append(min(d))
    if not thickness:
        raise GeometryError("Could not measure the implant's wall thickness (no ray crossed it).",
                            "Check that the implant is a closed solid.")
    return float(np.percentile(thickness, percentile))


ELEMENT_PER_WALL = 4.0 / 3.0


def element_size_mm(thinnest_wall: float) -> float:
    """Target tetrahedron edge: 4/3 of the thinnest wall. Quadratic elements represent the linear through-thickness
    stress of a bending wall exactly, so one layer suffices; the convergence check measures what it costs. Measured
    on the demo (1.5 mm wall): 2.0 mm instead of 1.5 mm halves the tetrahedra and cuts fTetWild's time by a third,
    with the stiffness 0.4 % higher and the 99th-percentile stress 1 % lower (the peak stays averaged over a sphere
    of the wall's size, ``peak_radius_mm``: over the larger 2 mm sphere it fell by 10-15 %)."""
    return float(np.clip(ELEMENT_PER_WALL * thinnest_wall, 0.5, 5.0))


def peak_radius_mm(thinnest_wall: float) -> float:
    """Radius of the sphere the peak stress is averaged over: the thinnest wall (0.5-5 mm)."""
    return float(np.clip(thinnest_wall, 0.5, 5.0))


@dataclass
class TetMesh:
    points: np.ndarray  # (N, 3) mm
    tets: np.ndarray  # (M, 4), positively oriented
    how: str = ""  # how it was made

    @property
    def n_tets(self) -> int:
        return len(self.tets)

    def volumes(self) -> np.ndarray:
        a, b, c, d = (self.points[self.tets[:, i]] for i in range(4))
        return np.einsum("ij,ij->i", b - a, np.cross(c - a, d - a)) / 6.0


def _oriented(points, tets) -> TetMesh:
    tm = TetMesh(np.ascontiguousarray(points, float), np.ascontiguousarray(tets, np.int64))
    neg = tm.volumes() < 0
    tm.tets[neg] = tm.tets[neg][:, [0, 2, 1, 3]]
    return tm


def tetrahedralize(mesh: TriMesh, size_mm: float, epsilon_rel: float = 1e-3, threads: int = 2) -> TetMesh:
    """Tetrahedral mesh of a closed TriMesh with fTetWild (wildmeshing), target edge ``size_mm``; verified: no
    degenerate element, volume within 1 % of the surface's."""
    require_fe()
    # fTetWild fills the whole bounding box with elements before discarding the outside: meshing in the solid's
    # principal frame shrinks that box (measured: 52 s -> 32 s on the demo implant).
    centre = mesh.vertices.mean(axis=0)
    _, frame = np.linalg.eigh(np.cov((mesh.vertices - centre).T))
    if np.linalg.det(frame) < 0:  # a rotation, not a mirror: the surface must stay outward-facing
        frame[:, 0] = -frame[:, 0]
    local = (mesh.vertices - centre) @ frame
    diag = float(np.linalg.norm(np.ptp(local, axis=0)))
    # One optimisation pass, stop at AMIPS energy 100 (fTetWild: 80 passes, 10): measured on the demo implant at
    # 1.5 mm, 16 s instead of 94 s for the same stiffness (0.1 %) and 99th-percentile stress (0.1 %). Now and then
    # the quick pass leaves a hole's inside filled (volume off by ~1-2 %). fTetWild's result varies from run to run
    # (even on one thread), so the quick pass is simply tried again (measured: 1 run in 4 failed on the demo's
    # +3 mm size); after three failures fTetWild runs with its defaults (5-10x the time).
    attempts = ((100.0, 1), (100.0, 1), (100.0, 1), (10.0, 80))
    for k, (quality, passes) in enumerate(attempts):
        tm = _ftetwild(local, mesh.faces, float(size_mm) / diag, float(epsilon_rel), quality, passes, threads)
        tm = _oriented(tm.points @ frame.T + centre, tm.tets)
        tm.how = f"fTetWild, element {size_mm:.2f} mm" + (f", attempt {k + 1}" if k else "")
        tm.how += ", full optimisation" if passes > 1 else ""
        try:
            _verify_tets(tm, mesh.volume(), "implant")
            return tm
        except GeometryError:
            if k == len(attempts) - 1:
                raise
    raise AssertionError("unreachable")


def default_workers() -> int:
    """Processes meshing the sizes side by side: 2 on a multi-core machine (fTetWild holds the GIL and runs
    mostly on one thread, so threads would not help); 1 inside the Slicer application, whose executable cannot
    start a plain Python worker."""
    if getattr(sys.modules.get("slicer"), "app", None) is not None:
        return 1
    return max(1, min(2, os.cpu_count() or 1))


def _timed_tetrahedralize(mesh: TriMesh, size_mm: float, threads: int) -> tuple:
    t0 = time.perf_counter()
    tm = tetrahedralize(mesh, size_mm, threads=threads)
    return tm, time.perf_counter() - t0


def tetrahedralize_each(meshes: list, size_mm: float, workers: Optional[int] = None):
    """Yield (TetMesh, seconds) for each TriMesh in order, meshed by ``workers`` processes (default
    ``default_workers()``) side by side: the caller solves one size while the next are meshed. With one worker (or
    when the workers cannot start), meshed here one after the other, each when asked for."""
    workers = default_workers() if workers is None else int(workers)
    if workers <= 1 or len(meshes) <= 1:
        for m in meshes:
            yield _timed_tetrahedralize(m, size_mm, 2)
        return
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor
    from concurrent.futures.process import BrokenProcessPool

    # "spawn": a fresh interpreter per worker; forking a process that already ran fTetWild's or manifold3d's
    # thread pools can deadlock the child.
    pool, done = None, 0
    try:
        # Inside the try: the pool's queues start multiprocessing's resource tracker, itself a spawned process.
        pool = ProcessPoolExecutor(min(workers, len(meshes)), mp_context=multiprocessing.get_context("spawn"))
        futures = [pool.submit(_timed_tetrahedralize, m, size_mm, 1) for m in meshes]
        for f in futures:
            yield f.result()
            done += 1
    except (BrokenProcessPool, OSError, RuntimeError, ValueError):
        # A worker could not start or died: mesh the rest here, as with one worker. Depending on when the pool
        # notices, that surfaces as a broken pool, a closed pipe while submitting, a pool already shut down, or
        # (the resource tracker gone before the worker's spawn) "bad value(s) in fds_to_keep".
        pass
    finally:
        try:
            if pool is not None:
                pool.shutdown(wait=True, cancel_futures=True)
        except (OSError, RuntimeError):
            pass
    for m in meshes[done:]:
        yield _timed_tetrahedralize(m, size_mm, 2)


def _ftetwild(vertices, faces, edge_length_r: float, epsilon_rel: float, quality: float, passes: int,
              threads: int = 2) -> TetMesh:
    import wildmeshing

    cwd = os.getcwd()
    sys.stdout.flush()
    sys.stderr.flush()
    saved = os.dup(1), os.dup(2)
    with tempfile.TemporaryDirectory() as tmp, open(os.devnull, "w") as null:
        os.chdir(tmp)  # fTetWild drops debug STL files into the working directory ...
        os.dup2(null.fileno(), 1)  # ... and prints its log to the process's stdout whatever the log level
        os.dup2(null.fileno(), 2)
        try:
            tw = wildmeshing.Tetrahedralizer(stop_quality=quality, max_its=passes, edge_length_r=edge_length_r,
                                             epsilon=epsilon_rel, max_threads=threads)
            tw.set_log_level(6)
            tw.set_mesh(np.ascontiguousarray(vertices, float), np.ascontiguousarray(faces, np.int32))
            tw.tetrahedralize()
            points, tets = tw.get_tet_mesh()[:2]
        finally:
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            os.close(saved[0])
            os.close(saved[1])
            os.chdir(cwd)
    return TetMesh(np.asarray(points, float), np.asarray(tets, np.int64))


SLIVER_VOLUME = 1e-9  # an element below this fraction of the median element's volume is degenerate


def _verify_tets(tm: TetMesh, expected_volume: float, what: str) -> None:
    vol = tm.volumes()
    # Not just > 0: fTetWild now and then leaves a flat sliver of volume ~1e-16 of its neighbours'. It solves, but its
    # children in the convergence check's refinement come out exactly flat and the solver fails on NaN (seen once in
    # a clean CI rehearsal: "array must not contain infs or NaNs"). Such a mesh is made again, as a bad one is.
    if tm.n_tets == 0 or vol.min() <= SLIVER_VOLUME * float(np.median(vol)):
        raise GeometryError(f"The tetrahedral mesh of the {what} is empty or has degenerate elements.",
                            "Check that the solid is closed; a smaller element size may help.")
    if abs(vol.sum() - expected_volume) > 0.01 * expected_volume:
        raise GeometryError(
            f"The tetrahedral mesh of the {what} has volume {vol.sum():.0f} mm3 where the solid has "
            f"{expected_volume:.0f} mm3.", "Check that the solid is closed and not self-intersecting.")


def cylinder_tets(diameter_mm: float, length_mm: float, size_mm: float) -> TetMesh:
    """Structured tetrahedral mesh of a straight cylinder along +z from z = 0 (rings of points in the disc,
    extruded prisms split into three tetrahedra with index-sorted diagonals so neighbours conform). The boundary
    polygon's radius is set so the section has the exact circle's area."""
    from scipy.spatial import Delaunay

    r = diameter_mm / 2
    rings = max(1, int(np.ceil(r / size_mm)))
    n_out = max(16, int(np.ceil(2 * np.pi * r / size_mm)))
    r_eq = r * np.sqrt(2 * np.pi / (n_out * np.sin(2 * np.pi / n_out)))  # polygon area = pi r^2
    pts2 = [np.zeros((1, 2))]
    for k in range(1, rings + 1):
        rk = r_eq * k / rings
        n = max(6, int(np.ceil(n_out * k / rings)))
        t = 2 * np.pi * (np.arange(n) + 0.5 * (k % 2)) / n
        pts2.append(rk * np.stack([np.cos(t), np.sin(t)], axis=1))
    pts2 = np.concatenate(pts2)
    tri = Delaunay(pts2).simplices
    tri = np.sort(tri, axis=1)
    layers = max(1, int(np.ceil(length_mm / size_mm)))
    z = np.linspace(0.0, length_mm, layers + 1)
    n2 = len(pts2)
    points = np.concatenate([np.column_stack([pts2, np.full(n2, zz)]) for zz in z])
    tets = []
    for k in range(layers):
        lo, hi = k * n2, (k + 1) * n2
        a, b, c = tri[:, 0], tri[:, 1], tri[:, 2]
        tets += [np.stack([a + lo, b + lo, c + lo, c + hi], 1), np.stack([a + lo, b + lo, b + hi, c + hi], 1),
                 np.stack([a + lo, a + hi, b + hi, c + hi], 1)]
    tm = _oriented(points, np.concatenate(tets))
    _verify_tets(tm, np.pi * r**2 * length_mm, "rod")
    return tm


def place_along(tm: TetMesh, start, direction) -> TetMesh:
    """Move a mesh built along +z from the origin so it starts at ``start`` and runs along ``direction``."""
    d = np.asarray(direction, float)
    d = d / np.linalg.norm(d)
    u = np.cross(d, [1.0, 0, 0] if abs(d[0]) < 0.9 else [0, 1.0, 0])
    u /= np.linalg.norm(u)
    v = np.cross(d, u)
    rot = np.column_stack([u, v, d])
    return TetMesh(tm.points @ rot.T + np.asarray(start, float), tm.tets.copy())


def boundary_faces(tm: TetMesh) -> tuple:
    """(facet vertex triples oriented outward, owning tet) of the boundary."""
    t = tm.tets
    local = np.array([[1, 2, 3], [0, 3, 2], [0, 1, 3], [0, 2, 1]])  # outward for positive tets
    faces = t[:, local].reshape(-1, 3)
    owner = np.repeat(np.arange(len(t)), 4)
    key = np.sort(faces, axis=1)
    _, inv, count = np.unique(key, axis=0, return_inverse=True, return_counts=True)
    keep = count[inv.ravel()] == 1
    return faces[keep], owner[keep]


def _plane_facets(tm: TetMesh, face: Face, tol: float) -> np.ndarray:
    """Boundary triangles (vertex triples) lying on ``face``'s plane with outward normal along its normal."""
    tris, _ = boundary_faces(tm)
    p = tm.points
    a, b, c = p[tris[:, 0]], p[tris[:, 1]], p[tris[:, 2]]
    n = np.cross(b - a, c - a)
    n /= np.maximum(np.linalg.norm(n, axis=1, keepdims=True), 1e-30)
    dist = np.abs(((a + b + c) / 3 - face.centre) @ face.normal)
    return tris[(dist < tol) & (n @ face.normal > 0.95)]


def refined(tm: TetMesh) -> TetMesh:
    """Every tetrahedron split into eight (same boundary geometry, half the element size)."""
    from skfem import MeshTet

    m = MeshTet(np.ascontiguousarray(tm.points.T), np.ascontiguousarray(tm.tets.T)).refined()
    return _oriented(m.p.T, m.t.T)
