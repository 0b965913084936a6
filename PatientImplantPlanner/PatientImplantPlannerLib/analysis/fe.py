"""Finite-element strength check of the implant: linear elasticity on a tetrahedral mesh, headless.

No MRML, no Qt: numpy, scipy, scikit-fem (BSD-3, assembly), wildmeshing (fTetWild, MPL-2.0, tetrahedral meshes
of the implant), pyamg (MIT, algebraic multigrid for the linear systems), VTK for ray casting and pictures.

Model (what the design record states):
- Solid: the implant of one size (strut, footplates, screw holes). The porous layer is LEFT OUT: the
  ``porous_layer_mm`` next to each contact plane is cut off, so support and load act on the solid core behind the
  lattice. Conservative: the lattice's own stiffness and strength are ignored.
- Material: Ti6Al4V ELI, linear elastic, isotropic (E 110 GPa, nu 0.34, yield 795 MPa, fatigue limit below).
- Supports: the distal contact face is held (all displacements zero: footplate fixed to the vertebra).
- Load: the proximal contact face is bonded to a rigid platen loaded through a ball joint at the footplate centre,
  as in an axial compression test (ASTM F2077 style; the reference case argued strength by such a test): the force
  (500 N) acts along the spinal axis (proximal -> distal contact centre), the platen is free to tilt, so an
  eccentric strut bends as it would under the vertebra, and the face carries the load over its whole area. A
  pressure load on a bare thin footplate would instead measure mostly the plate's own bending under the uniform
  pressure (its rim is not held by anything), not the implant. Second case: a moment (7.5 N m) about the
  lateral axis (flexion) through the same platen.
- Elements: quadratic tetrahedra (P2), mesh size 4/3 of the thinnest wall; a uniform refinement checks
  convergence. The sizes are meshed in 2 worker processes while this one solves (docs/performance.md section 4).
- Figures: axial stiffness = force / platen travel; peak von Mises stress = the largest average over a sphere of the
  thinnest wall's size (sharp re-entrant corners are singular: their vertex values depend on the mesh), the vertex
  maximum kept beside it; the volume-weighted 99th percentile; first yield = load x yield / peak (linear); the same
  pipeline on a 5.5 mm titanium rod of the endplate-to-endplate length gives the stiffness and strength ratios.
"""

import functools
import time
from dataclasses import dataclass, field
from typing import Optional

import numpy as np

from ..core.errors import GeometryError, PlannerError
from ..core.mesh import TriMesh, from_manifold, to_manifold, to_polydata
from ..core.progress import Progress
from ..record.render import BACKGROUND_RGB, frame_parallel, write_window_png
from .tetmesh import (
    Face,
    TetMesh,
    _plane_facets,
    boundary_faces,
    cylinder_tets,
    element_size_mm,
    peak_radius_mm,
    refined,
    require_fe,
    tetrahedralize_each,
    thinnest_wall_mm,
)

ROD_DIAMETER_MM = 5.5
DEFAULT_LOAD_N = 500.0
DEFAULT_BENDING_NM = 7.5
MANIFEST_KEYS = (
    "load_N",
    "axial_stiffness_N_per_mm",
    "rod_axial_stiffness_N_per_mm",
    "stiffness_ratio_vs_rod",
    "max_von_mises_MPa",
    "p99_von_mises_MPa",
    "safety_factor_yield",
    "strength_ratio_vs_rod",
    "tetrahedra",
    "porous_layer",
)


@dataclass(frozen=True)
class Material:
    name: str
    youngs_modulus_MPa: float
    poisson_ratio: float
    yield_MPa: float
    fatigue_limit_MPa: float
    fatigue_source: str


# Fatigue: the 10^7-cycle fatigue strength of Ti6Al4V made by powder-bed fusion, HIP-treated and machined, is about
# 500-600 MPa; as-built (unmachined) surfaces fall to about 200-300 MPa. The lower machined+HIP value is used; the
# record states it. Source: Li P, Warner DH, Fatemi A, Phan N, "Critical assessment of the fatigue performance of
# additively manufactured Ti-6Al-4V and perspective for future research", Int J Fatigue 85 (2016) 130-143.
TI6AL4V_ELI = Material(
    name="Ti6Al4V ELI (ASTM F136 / F3001)",
    youngs_modulus_MPa=110_000.0,
    poisson_ratio=0.34,
    yield_MPa=795.0,
    fatigue_limit_MPa=500.0,
    fatigue_source=(
        "10^7-cycle fatigue strength of powder-bed-fusion Ti6Al4V, HIP + machined (Li et al., Int J Fatigue 85 "
        "(2016) 130-143: 500-600 MPa; as-built surfaces 200-300 MPa)"
    ),
)


# ---- geometry -------------------------------------------------------------------------------------------------


def analysis_solid(geom, porous_layer: str = "left out") -> tuple:
    """(solid TriMesh, distal held Face, proximal loaded Face, description) for one implant size.

    ``porous_layer``: "left out" cuts the porous layer off each footplate (conservative); "solid" keeps the full
    footplates (the implant as if printed without lattice)."""
    regions = {r.end: r for r in geom.porous_regions}
    faces = {}
    if porous_layer == "left out":
        solid = to_manifold(geom.mesh)
        for end in ("proximal", "distal"):
            r = regions[end]
            n = np.asarray(r.normal, float)  # into the bone = outward from the implant
            centre = np.asarray(r.centre, float) - float(r.thickness_mm) * n
            solid = solid.trim_by_plane(list(map(float, -n)), float(-n @ centre))
            faces[end] = Face(centre, n)
        mesh = from_manifold(solid)
        depth = max(float(r.thickness_mm) for r in regions.values())
        text = (f"left out: the {depth:g} mm porous layer cut off each footplate, support and load on the solid "
                "core (lattice stiffness ignored, conservative)")
    elif porous_layer == "solid":
        mesh = geom.mesh
        for end in ("proximal", "distal"):
            r = regions[end]
            faces[end] = Face(np.asarray(r.centre, float), np.asarray(r.normal, float))
        text = "solid: footplates modelled fully solid (no lattice)"
    else:
        raise PlannerError(f"Unknown porous layer model {porous_layer!r}.", "Use 'left out' or 'solid'.")
    return mesh, faces["distal"], faces["proximal"], text


# ---- tetrahedral meshes ---------------------------------------------------------------------------------------


# ---- solver -----------------------------------------------------------------------------------------------------


@dataclass
class Solution:
    """The mesh, its P2 basis and the four unit responses of the platen (travel along the load axis, three
    rotations about the ball joint); any load on the platen is a combination of them."""

    mesh: TetMesh
    material: Material
    axis: np.ndarray  # unit load direction
    joint: np.ndarray  # ball-joint centre
    basis: object
    unit_responses: np.ndarray  # (4, ndofs) displacement for a unit platen motion q_k
    schur: np.ndarray  # 4x4 platen stiffness: generalised forces = schur @ q
    loaded_area_mm2: float
    held_area_mm2: float
    seconds: dict = field(default_factory=dict)

    def displacement(self, force_N: float = 0.0, moment_Nmm=(0.0, 0.0, 0.0)) -> np.ndarray:
        q = np.linalg.solve(self.schur, np.concatenate([[force_N], np.asarray(moment_Nmm, float)]))
        return q @ self.unit_responses

    def axial_stiffness(self) -> float:
        """N/mm: force over platen travel with the platen free to tilt."""
        return float(1.0 / np.linalg.inv(self.schur)[0, 0])

    def guided_axial_stiffness(self) -> float:
        """N/mm: the same with the platen kept parallel (flat platens of a testing machine: no tilt)."""
        return float(self.schur[0, 0])


def solve(tm: TetMesh, held: Face, loaded: Face, axis, material: Material = TI6AL4V_ELI, joint=None,
          tol_mm: Optional[float] = None) -> Solution:
    """Assemble linear elasticity (P2) on ``tm``, hold the ``held`` face, bond the ``loaded`` face to a rigid platen
    with a ball joint at ``joint`` (default: the loaded face's centre) guided along ``axis``; solve the four unit
    platen motions (sparse LU, or multigrid-preconditioned conjugate gradients for large meshes)."""
    require_fe()
    from skfem import Basis, ElementTetP2, ElementVector, MeshTet
    from skfem.models.elasticity import lame_parameters

    t0 = time.perf_counter()
    axis = np.asarray(axis, float) / np.linalg.norm(axis)
    joint = np.asarray(loaded.centre if joint is None else joint, float)
    scale = float(np.linalg.norm(np.ptp(tm.points, axis=0)))
    tol = tol_mm if tol_mm is not None else max(0.05, 2e-3 * scale)
    held_tris, loaded_tris = _plane_facets(tm, held, tol), _plane_facets(tm, loaded, tol)

    def area(tris):
        p = tm.points
        return float(np.linalg.norm(np.cross(p[tris[:, 1]] - p[tris[:, 0]], p[tris[:, 2]] - p[tris[:, 0]]),
                                    axis=1).sum() / 2)

    a_held, a_loaded = area(held_tris), area(loaded_tris)
    if a_held < 1.0 or a_loaded < 1.0:
        raise GeometryError("The implant's contact faces were not found on the tetrahedral mesh.",
                            "Check the endplate planes; the footplates must lie on them.")
    mesh = MeshTet(np.ascontiguousarray(tm.points.T), np.ascontiguousarray(tm.tets.T))
    # Degree-2 quadrature integrates the P2 stiffness exactly on straight tetrahedra (3x faster than skfem's default).
    basis = Basis(mesh, ElementVector(ElementTetP2()), intorder=2)
    lam, mu = lame_parameters(material.youngs_modulus_MPa, material.poisson_ratio)
    K = _stiffness(mesh, basis, lam, mu)
    t1 = time.perf_counter()

    def facet_ids(tris):
        key = {tuple(f) for f in np.sort(tris, axis=1)}
        allf = np.sort(mesh.facets.T, axis=1)
        return np.array([i for i, f in enumerate(map(tuple, allf)) if f in key], dtype=np.int64)

    held_dofs = basis.get_dofs(facet_ids(held_tris)).all()
    plat_dofs = np.setdiff1d(basis.get_dofs(facet_ids(loaded_tris)).all(), held_dofs)
    if len(plat_dofs) == 0:
        raise GeometryError("The loaded face touches the held face everywhere.", "Check the contact planes.")
    ndof = basis.N
    comp = np.zeros(ndof, dtype=np.int64)
    for c in range(3):
        comp[basis.nodal_dofs[c]] = c
        if hasattr(basis, "edge_dofs") and basis.edge_dofs.size:
            comp[basis.edge_dofs[c]] = c
    loc = basis.doflocs.T
    # Platen dofs follow the rigid motion u = q0 axis + theta x (x - joint); theta = (q1, q2, q3).
    r = loc[plat_dofs] - joint
    c = comp[plat_dofs]
    T = np.zeros((len(plat_dofs), 4))
    T[:, 0] = axis[c]
    rot = np.zeros((len(plat_dofs), 3, 3))  # d(theta x r)_c / d theta
    rot[:, 0, 1], rot[:, 0, 2] = r[:, 2], -r[:, 1]
    rot[:, 1, 0], rot[:, 1, 2] = -r[:, 2], r[:, 0]
    rot[:, 2, 0], rot[:, 2, 1] = r[:, 1], -r[:, 0]
    T[:, 1:] = rot[np.arange(len(c)), c]
    free = np.setdiff1d(np.arange(ndof), np.concatenate([held_dofs, plat_dofs]))
    Kff = K[free][:, free].tocsr()
    Kfp = K[free][:, plat_dofs].tocsr()
    Kpp = K[plat_dofs][:, plat_dofs].tocsr()
    rhs = -(Kfp @ T)  # (nfree, 4)
    uf = _solve_spd(Kff, rhs, loc[free], comp[free])
    t2 = time.perf_counter()
    units = np.zeros((4, ndof))
    units[:, free] = uf.T
    units[:, plat_dofs] = T.T
    schur = T.T @ (Kpp @ T) + T.T @ (Kfp.T @ uf)
    schur = (schur + schur.T) / 2
    t3 = time.perf_counter()
    return Solution(tm, material, axis, joint, basis, units, schur, a_loaded, a_held,
                    {"assemble": t1 - t0, "solve": t2 - t1, "schur": t3 - t2})


def _stiffness(mesh, basis, lam: float, mu: float):
    """The P2 elasticity stiffness matrix, numbered as ``basis`` (vector P2, dof 3 a + i = component i of scalar
    function a): the same matrix as skfem's ``asm(linear_elasticity)`` (checked to round-off), 4-5x faster because
    the 30x30 element blocks are built from the 10 scalar gradients in a few array operations instead of 900 forms."""
    import scipy.sparse as sp
    from skfem import Basis, ElementTetP2

    sb = Basis(mesh, ElementTetP2(), quadrature=(basis.X, basis.W))
    g = np.stack([np.asarray(sb.basis[a][0].grad) for a in range(sb.Nbfun)])  # (10, 3, nel, nqp)
    gg = np.einsum("aine,bjne->nabij", g * np.asarray(sb.dx), g, optimize=True)  # sum_q w g_a^i g_b^j
    ke = lam * gg + mu * gg.transpose(0, 1, 2, 4, 3)
    ke += mu * np.einsum("nabkk->nab", gg)[..., None, None] * np.eye(3)
    nel, n = ke.shape[0], 3 * sb.Nbfun
    ke = ke.transpose(0, 1, 3, 2, 4).reshape(nel, n, n)
    dofs = basis.element_dofs.T  # (nel, 30)
    rows = np.broadcast_to(dofs[:, :, None], ke.shape).ravel()
    cols = np.broadcast_to(dofs[:, None, :], ke.shape).ravel()
    return sp.csr_matrix((ke.ravel(), (rows, cols)), shape=(basis.N, basis.N))


DIRECT_MAX_DOFS = 120_000  # sparse LU below (fast, ~10 kB of factor per dof measured); multigrid above


def _solve_spd(A, rhs: np.ndarray, locations: np.ndarray, components: np.ndarray) -> np.ndarray:
    """Solve A X = rhs (A symmetric positive definite, elasticity): sparse LU for moderate sizes, smoothed-
    aggregation multigrid with conjugate gradients (rigid-body modes as near-null space) for large ones."""
    import scipy.sparse.linalg as sla

    if A.shape[0] <= DIRECT_MAX_DOFS:
        # Symmetric mode with a minimum-degree ordering of A + A^T: a third fewer factor entries than the default
        # COLAMD and 1.5x faster on the demo (A is SPD, so no pivoting is needed).
        lu = sla.splu(A.tocsc(), permc_spec="MMD_AT_PLUS_A", diag_pivot_thresh=0.0, options={"SymmetricMode": True})
        return np.asarray(lu.solve(np.ascontiguousarray(rhs)))
    import pyamg

    n = A.shape[0]
    x = locations - locations.mean(axis=0)
    B = np.zeros((n, 6))
    B[np.arange(n), components] = 1.0
    B[:, 3:] = np.cross(np.eye(3)[None, :, :], x[:, None, :])[np.arange(n), :, components]
    ml = pyamg.smoothed_aggregation_solver(A.tocsr(), B=B, symmetry="symmetric", max_coarse=1000)
    out = np.zeros_like(rhs)
    for k in range(rhs.shape[1]):
        if np.any(rhs[:, k]):
            out[:, k] = ml.solve(rhs[:, k], tol=1e-9, accel="cg", maxiter=1000)
    return out


# ---- stresses ---------------------------------------------------------------------------------------------------


def _stress(sol: Solution, u: np.ndarray, basis) -> np.ndarray:
    """Stress tensors (3, 3, nel, nqp) at ``basis``'s quadrature points."""
    from skfem.models.elasticity import lame_parameters

    lam, mu = lame_parameters(sol.material.youngs_modulus_MPa, sol.material.poisson_ratio)
    g = basis.interpolate(u).grad
    eps = 0.5 * (g + g.transpose(1, 0, 2, 3))
    tr = eps[0, 0] + eps[1, 1] + eps[2, 2]
    return 2 * mu * eps + lam * tr[None, None] * np.eye(3)[:, :, None, None]


def _von_mises(s: np.ndarray) -> np.ndarray:
    return np.sqrt(0.5 * ((s[0, 0] - s[1, 1]) ** 2 + (s[1, 1] - s[2, 2]) ** 2 + (s[2, 2] - s[0, 0]) ** 2)
                   + 3 * (s[0, 1] ** 2 + s[1, 2] ** 2 + s[0, 2] ** 2))


@dataclass
class StressField:
    vertex_von_mises: np.ndarray  # (N,) MPa, averaged over the elements at each mesh vertex
    qp_von_mises: np.ndarray  # (nel, nqp) MPa at quadrature points
    qp_weight: np.ndarray  # (nel, nqp) mm3
    qp_points: np.ndarray  # (3, nel, nqp)
    qp_stress: np.ndarray  # (3, 3, nel, nqp) MPa
    vertices: np.ndarray  # (N, 3) mm
    displacement: np.ndarray  # (N, 3) mm at mesh vertices
    peak_radius_mm: float = 0.0

    @property
    def vertex_max_von_mises(self) -> float:
        return float(self.vertex_von_mises.max())

    @property
    def max_von_mises(self) -> float:
        """Peak von Mises stress: the largest volume average over a sphere of ``peak_radius_mm`` centred on a mesh
        vertex (the vertex maximum when the radius is 0). A sharp re-entrant corner is singular in linear
        elasticity, so its vertex value grows as elements shrink there (measured on the demo: 330-1450 MPa from
        mesh to mesh); the sphere average converges with refinement. Printed corners are rounded anyway."""
        if self.peak_radius_mm <= 0:
            return self.vertex_max_von_mises
        return float(self.sphere_average(self.peak_radius_mm).max())

    def sphere_average(self, radius_mm: float, points=None) -> np.ndarray:
        from scipy.spatial import cKDTree

        qp = self.qp_points.reshape(3, -1).T
        w = self.qp_weight.ravel()
        wv = w * self.qp_von_mises.ravel()
        centres = self.vertices if points is None else np.asarray(points, float)
        hits = cKDTree(qp).query_ball_point(centres, radius_mm)
        counts = np.array([len(h) for h in hits])
        rows = np.repeat(np.arange(len(centres)), counts)
        cols = np.concatenate([np.asarray(h, dtype=np.int64) for h in hits]) if counts.sum() else np.zeros(0, int)
        num = np.bincount(rows, weights=wv[cols], minlength=len(centres))
        den = np.bincount(rows, weights=w[cols], minlength=len(centres))
        return np.where(den > 0, num / np.maximum(den, 1e-30), 0.0)

    def percentile_von_mises(self, q: float) -> float:
        """Volume-weighted percentile: the stress exceeded in (100 - q) % of the material."""
        v, w = self.qp_von_mises.ravel(), self.qp_weight.ravel()
        order = np.argsort(v)
        cum = np.cumsum(w[order])
        return float(v[order][np.searchsorted(cum, q / 100.0 * cum[-1])])

    def mean_normal_stress(self, centre, normal, half_width_mm: float) -> float:
        """Volume-weighted mean of n.sigma.n over the slab |(x - centre).n| < half_width (a strut section)."""
        n = np.asarray(normal, float) / np.linalg.norm(normal)
        d = np.einsum("i,inq->nq", n, self.qp_points - np.asarray(centre, float)[:, None, None])
        sel = np.abs(d) < half_width_mm
        snn = np.einsum("i,ijnq,j->nq", n, self.qp_stress, n)
        return float((snn[sel] * self.qp_weight[sel]).sum() / self.qp_weight[sel].sum())


def stress_field(sol: Solution, u: np.ndarray, peak_radius_mm: float = 0.0) -> StressField:
    from skfem import Basis

    b = sol.basis
    s = _stress(sol, u, b)
    vm = _von_mises(s)
    weight = np.asarray(b.dx)
    # Stresses at each element's corners (quadrature at the reference vertices), averaged per mesh vertex.
    corners = Basis(b.mesh, b.elem, quadrature=(np.array([[0.0, 1, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1]]),
                                                 np.full(4, 1 / 24)))
    vm_c = _von_mises(_stress(sol, u, corners))  # (nel, 4), corner k = tets[:, k]
    vol = sol.mesh.volumes()
    tets = sol.mesh.tets
    acc = np.bincount(tets.ravel(), weights=(vm_c * vol[:, None]).ravel(), minlength=len(sol.mesh.points))
    wsum = np.bincount(tets.ravel(), weights=np.repeat(vol, 4), minlength=len(sol.mesh.points))
    vertex_vm = acc / np.maximum(wsum, 1e-30)
    disp = np.stack([u[b.nodal_dofs[c]] for c in range(3)], axis=1)
    return StressField(vertex_vm, vm, weight, np.asarray(b.mapping.F(b.X)), s, sol.mesh.points, disp,
                       float(peak_radius_mm))


# ---- one size, the rod, a whole plan ------------------------------------------------------------------------------


@dataclass
class SizeResult:
    label: str
    load_N: float
    axial_stiffness_N_per_mm: float
    rod_axial_stiffness_N_per_mm: float
    max_von_mises_MPa: float
    p99_von_mises_MPa: float
    max_displacement_mm: float
    rod_max_von_mises_MPa: float
    guided_axial_stiffness_N_per_mm: float
    tetrahedra: int
    porous_layer: str
    material: Material
    bending_moment_Nm: float = 0.0
    bending_max_von_mises_MPa: float = float("nan")
    element_size_mm: float = 0.0
    mesh_source: str = ""
    seconds: float = 0.0  # solve, stresses and rod
    mesh_seconds: float = 0.0
    solution: Optional[Solution] = field(default=None, repr=False)
    field: Optional[StressField] = field(default=None, repr=False)

    @property
    def safety_factor_yield(self) -> float:
        return self.material.yield_MPa / self.max_von_mises_MPa

    @property
    def safety_factor_fatigue(self) -> float:
        return self.material.fatigue_limit_MPa / self.max_von_mises_MPa

    @property
    def first_yield_load_N(self) -> float:
        return self.load_N * self.safety_factor_yield

    @property
    def rod_first_yield_load_N(self) -> float:
        return self.load_N * self.material.yield_MPa / self.rod_max_von_mises_MPa

    def manifest_dict(self) -> dict:
        """Exactly the manifest's keys."""
        return {
            "load_N": float(self.load_N),
            "axial_stiffness_N_per_mm": round(float(self.axial_stiffness_N_per_mm), 1),
            "rod_axial_stiffness_N_per_mm": round(float(self.rod_axial_stiffness_N_per_mm), 1),
            "stiffness_ratio_vs_rod": round(float(self.axial_stiffness_N_per_mm / self.rod_axial_stiffness_N_per_mm),
                                            3),
            "max_von_mises_MPa": round(float(self.max_von_mises_MPa), 2),
            "p99_von_mises_MPa": round(float(self.p99_von_mises_MPa), 2),
            "safety_factor_yield": round(float(self.safety_factor_yield), 2),
            "strength_ratio_vs_rod": round(float(self.first_yield_load_N / self.rod_first_yield_load_N), 3),
            "tetrahedra": int(self.tetrahedra),
            "porous_layer": self.porous_layer,
        }

    def details(self) -> dict:
        """Everything else for the design record (not for the manifest's "fe" entry)."""
        return {
            "safety_factor_fatigue": float(self.safety_factor_fatigue),
            "fatigue_limit_MPa": self.material.fatigue_limit_MPa,
            "fatigue_source": self.material.fatigue_source,
            "yield_MPa": self.material.yield_MPa,
            "max_displacement_mm": float(self.max_displacement_mm),
            "peak_stress_sphere_radius_mm": float(self.field.peak_radius_mm) if self.field is not None else None,
            "vertex_max_von_mises_MPa": float(self.field.vertex_max_von_mises) if self.field is not None else None,
            "guided_axial_stiffness_N_per_mm": float(self.guided_axial_stiffness_N_per_mm),
            "first_yield_load_N": float(self.first_yield_load_N),
            "rod_first_yield_load_N": float(self.rod_first_yield_load_N),
            "bending_moment_Nm": float(self.bending_moment_Nm),
            "bending_max_von_mises_MPa": float(self.bending_max_von_mises_MPa),
            "bending_safety_factor_yield": float(self.material.yield_MPa / self.bending_max_von_mises_MPa)
            if self.bending_moment_Nm
            else None,
            "element_size_mm": float(self.element_size_mm),
            "mesh": self.mesh_source,
            "seconds": float(self.seconds),
            "mesh_seconds": float(self.mesh_seconds),
        }


def load_axis(held: Face, loaded: Face) -> np.ndarray:
    """Compression along the spinal axis: from the proximal (loaded) contact centre to the distal (held) one."""
    d = held.centre - loaded.centre
    return d / np.linalg.norm(d)


def lateral_axis(loaded: Face, anterior) -> np.ndarray:
    """Flexion moment axis: in the loaded face, perpendicular to the anterior direction."""
    n = loaded.normal
    a = np.asarray(anterior, float)
    a = a - (a @ n) * n
    return np.cross(n, a / np.linalg.norm(a))


@functools.lru_cache(maxsize=16)
def _rod_figures(length_mm: float, size_mm: float, load_N: float, material: Material) -> tuple:
    # Elements of half the rod's diameter: P2 holds its uniform axial stress exactly; measured on the demo's 49 mm
    # rod against d/4: stiffness +0.17 %, peak +0.3 %, 0.1 s instead of 1.0 s of CPU per size.
    k, vm, _ = rod_result(length_mm, size_mm, load_N, material, element_mm=ROD_DIAMETER_MM / 2)
    return k, vm


def rod_result(length_mm: float, size_mm: float, load_N: float, material: Material = TI6AL4V_ELI,
               diameter_mm: float = ROD_DIAMETER_MM, element_mm: Optional[float] = None) -> tuple:
    """(axial stiffness N/mm, max von Mises MPa at ``load_N``, Solution) of a straight rod through the same pipeline
    (held at one end, rigid platen with a ball joint at the other); peak stress over a sphere of ``size_mm``, elements
    of ``element_mm`` (default ``size_mm``, at most a quarter of the diameter)."""
    tm = cylinder_tets(diameter_mm, length_mm, element_mm or min(size_mm, diameter_mm / 4))
    held = Face(np.zeros(3), np.array([0.0, 0.0, -1.0]))
    loaded = Face(np.array([0.0, 0.0, length_mm]), np.array([0.0, 0.0, 1.0]))
    sol = solve(tm, held, loaded, load_axis(held, loaded), material)
    f = stress_field(sol, sol.displacement(load_N), peak_radius_mm=size_mm)
    return sol.axial_stiffness(), f.max_von_mises, sol


def analyse_solid(tm: TetMesh, held: Face, loaded: Face, label: str, load_N: float, rod_length_mm: float,
                  porous_text: str, material: Material = TI6AL4V_ELI, bending_Nm: float = DEFAULT_BENDING_NM,
                  anterior=None, size_mm: float = 1.0, mesh_source: str = "",
                  peak_radius: Optional[float] = None) -> SizeResult:
    """One size: ``size_mm`` is its element size (recorded); the peak stress is averaged over a sphere of
    ``peak_radius`` (default ``size_mm``), and the rod is meshed and evaluated at that length scale too."""
    t0 = time.perf_counter()
    r = float(size_mm if peak_radius is None else peak_radius)
    axis = load_axis(held, loaded)
    sol = solve(tm, held, loaded, axis, material)
    u = sol.displacement(load_N)
    fld = stress_field(sol, u, peak_radius_mm=r)
    bend_vm = float("nan")
    if bending_Nm and anterior is not None:
        m_axis = lateral_axis(loaded, anterior)
        bend_vm = stress_field(sol, sol.displacement(0.0, 1000.0 * bending_Nm * m_axis), r).max_von_mises
    k_rod, vm_rod = _rod_figures(round(float(rod_length_mm), 3), r, float(load_N), material)
    return SizeResult(
        label=label, load_N=float(load_N), axial_stiffness_N_per_mm=sol.axial_stiffness(),
        rod_axial_stiffness_N_per_mm=k_rod, max_von_mises_MPa=fld.max_von_mises,
        p99_von_mises_MPa=fld.percentile_von_mises(99.0),
        max_displacement_mm=float(np.linalg.norm(fld.displacement, axis=1).max()), rod_max_von_mises_MPa=vm_rod,
        guided_axial_stiffness_N_per_mm=sol.guided_axial_stiffness(),
        tetrahedra=tm.n_tets, porous_layer=porous_text, material=material, bending_moment_Nm=float(bending_Nm or 0),
        bending_max_von_mises_MPa=bend_vm, element_size_mm=size_mm, mesh_source=mesh_source,
        seconds=time.perf_counter() - t0, solution=sol, field=fld,
    )


@dataclass
class PlanFE:
    sizes: dict  # {label: SizeResult}, "nominal" first
    convergence: Optional[dict]
    seconds: float
    element_size_mm: float
    thinnest_wall_mm: float

    def manifest(self) -> dict:
        return {label: r.manifest_dict() for label, r in self.sizes.items()}


def size_label(extra_mm: float) -> str:
    return "nominal" if not extra_mm else f"+{extra_mm:g} mm"


def analyse_plan(result, load_N: float = DEFAULT_LOAD_N, bending_Nm: float = DEFAULT_BENDING_NM,
                 material: Material = TI6AL4V_ELI, porous_layer: str = "left out", check_convergence: bool = False,
                 size_mm: Optional[float] = None, progress=None, workers: Optional[int] = None) -> PlanFE:
    """FE check of every size of a designed plan (plan.PlanResult), each size meshed and solved on its own (a
    stretched nominal mesh was tried for the variants: on the demo's curved axis it missed the variant's surface by
    0.3-0.6 mm, so it is not used). The element size comes from the nominal's thinnest wall. The sizes are meshed
    by ``workers`` processes side by side (tetmesh.tetrahedralize_each; default 2, 1 inside Slicer) while this
    process solves the sizes already meshed. The workers are started with ``spawn``, which imports the main script
    again in each: a script calling this must keep its work under ``if __name__ == "__main__":`` (the CLI, the
    benchmarks and pytest do), or pass ``workers=1``."""
    require_fe()
    if not (np.isfinite(load_N) and load_N > 0):
        raise PlannerError(f"FE load {load_N!r} N is not a positive force.",
                           "Give the axial load in newtons, e.g. 500.")
    prog = Progress(progress)
    t0 = time.perf_counter()
    sizes = [(0.0, result.nominal)] + sorted(result.variants.items())
    anterior = result.proximal_endplate.anterior
    solids = [analysis_solid(geom, porous_layer) for _, geom in sizes]
    _, held, loaded, text = solids[0]
    wall = thinnest_wall_mm(solids[0][0])
    h = float(size_mm) if size_mm else element_size_mm(wall)
    radius = min(h, peak_radius_mm(wall))
    out, convergence, tm_nom = {}, None, None
    meshes = tetrahedralize_each([s[0] for s in solids], h, workers)
    try:
        for i, ((extra, geom), (_, s_held, s_loaded, _)) in enumerate(zip(sizes, solids)):
            prog.report(0.05 + 0.8 * i / len(sizes),
                        f"FE: {size_label(extra)}: meshing (element {h:.2f} mm), solving")
            tm, t_mesh = next(meshes)
            tm_nom = tm if extra == 0 else tm_nom
            out[size_label(extra)] = analyse_solid(
                tm, s_held, s_loaded, size_label(extra), load_N, geom.length_mm, text, material, bending_Nm,
                anterior, h, tm.how, radius)
            out[size_label(extra)].mesh_seconds = t_mesh
    finally:
        meshes.close()  # stops the worker processes, also when a size fails
    if check_convergence:
        prog.report(0.85, "FE: mesh convergence check")
        convergence = convergence_check(tm_nom, held, loaded, material, base=out["nominal"].axial_stiffness_N_per_mm)
    prog.report(1.0, "FE done")
    return PlanFE(out, convergence, time.perf_counter() - t0, h, wall)


def convergence_check(tm: TetMesh, held: Face, loaded: Face, material: Material = TI6AL4V_ELI,
                      base: Optional[float] = None) -> dict:
    """Axial stiffness on the mesh and on its uniform refinement (half the element size)."""
    axis = load_axis(held, loaded)
    k0 = base if base is not None else solve(tm, held, loaded, axis, material).axial_stiffness()
    fine = refined(tm)
    k1 = solve(fine, held, loaded, axis, material).axial_stiffness()
    return {"stiffness_N_per_mm": float(k0), "refined_stiffness_N_per_mm": float(k1),
            "relative_change": float(abs(k1 - k0) / k1), "tetrahedra": tm.n_tets, "refined_tetrahedra": fine.n_tets}


# ---- pictures and scene data ----------------------------------------------------------------------------------------


def von_mises_surface(size: SizeResult):
    """vtkPolyData of the analysed solid's surface (RAS mm) with the point scalar "von Mises (MPa)" (active), for a
    Slicer model node with a colour map."""
    from vtk.util.numpy_support import numpy_to_vtk

    tm = size.solution.mesh
    tris, _ = boundary_faces(tm)
    used, inv = np.unique(tris, return_inverse=True)
    pd = to_polydata(TriMesh(tm.points[used], inv.reshape(-1, 3)))
    arr = numpy_to_vtk(np.ascontiguousarray(size.field.vertex_von_mises[used], dtype=np.float32), deep=True)
    arr.SetName("von Mises (MPa)")
    pd.GetPointData().AddArray(arr)
    pd.GetPointData().SetActiveScalars("von Mises (MPa)")
    return pd


def render_von_mises(size: SizeResult, path: str, size_px=(1000, 800), view: str = "anterior-oblique",
                     overwrite: bool = False, max_MPa: Optional[float] = None) -> str:
    """Offscreen PNG of the von Mises field on the implant surface, with a colour bar (MPa). Returns ``path``."""
    import vtk

    pd = von_mises_surface(size)
    top = float(max_MPa or max(size.max_von_mises_MPa, 1e-6))
    lut = vtk.vtkLookupTable()
    lut.SetHueRange(0.667, 0.0)  # blue (low) -> red (high), the usual stress map
    lut.SetTableRange(0.0, top)
    lut.Build()
    normals = vtk.vtkPolyDataNormals()
    normals.SetInputData(pd)
    normals.SetFeatureAngle(60.0)
    normals.ConsistencyOff()
    mapper = vtk.vtkPolyDataMapper()
    mapper.SetInputConnection(normals.GetOutputPort())
    mapper.SetLookupTable(lut)
    mapper.SetScalarRange(0.0, top)
    mapper.SetScalarModeToUsePointData()
    mapper.ScalarVisibilityOn()
    actor = vtk.vtkActor()
    actor.SetMapper(mapper)
    renderer = vtk.vtkRenderer()
    renderer.SetBackground(*BACKGROUND_RGB)
    renderer.AddActor(actor)
    bar = vtk.vtkScalarBarActor()
    bar.SetLookupTable(lut)
    bar.SetTitle("von Mises (MPa)")
    bar.SetNumberOfLabels(5)
    bar.SetLabelFormat("%.0f")
    bar.SetWidth(0.14)
    bar.SetHeight(0.6)
    bar.SetPosition(0.84, 0.2)
    # Fixed, plain text: VTK's automatic sizing drew the labels in large bold italics over the title.
    font_px = max(12, int(size_px[1]) // 40)
    bar.UnconstrainedFontSizeOn()
    bar.SetVerticalTitleSeparation(font_px // 2)
    bar.SetTextPad(4)
    for prop in (bar.GetTitleTextProperty(), bar.GetLabelTextProperty()):
        prop.SetColor(0.1, 0.1, 0.1)
        prop.ShadowOff()
        prop.ItalicOff()
        prop.BoldOff()
        prop.SetFontSize(font_px)
    renderer.AddViewProp(bar)
    title = vtk.vtkTextActor()
    title.SetInput(f"{size.label}: {size.load_N:g} N axial, max {size.max_von_mises_MPa:.0f} MPa, "
                   f"safety factor {size.safety_factor_yield:.1f} (yield)")
    title.GetTextProperty().SetColor(0.1, 0.1, 0.1)
    title.GetTextProperty().SetFontSize(max(12, int(size_px[1]) // 40))
    title.SetDisplayPosition(10, int(size_px[1]) - 10 - max(12, int(size_px[1]) // 40))
    renderer.AddViewProp(title)
    vtk.vtkLightKit().AddLightsToRenderer(renderer)
    window = vtk.vtkRenderWindow()
    window.SetOffScreenRendering(1)
    window.SetSize(int(size_px[0]), int(size_px[1]))
    window.AddRenderer(renderer)
    window.SetMultiSamples(0)
    # The same framing and PNG writer (with scale bar) as the record's other 3D pictures.
    scale = frame_parallel(renderer.GetActiveCamera(), np.array(pd.GetBounds()).reshape(3, 2).T, view,
                            int(size_px[0]), int(size_px[1]))
    renderer.ResetCameraClippingRange()
    return write_window_png(window, path, scale, overwrite)
