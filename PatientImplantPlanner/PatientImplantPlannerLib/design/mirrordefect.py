"""Mirror-defect implant: fill a one-sided bone resection (e.g. a hemisacrectomy) with the healthy side, mirrored.

Pipeline (numpy, VTK, manifold3d; no MRML; RAS mm; numpy volumes [k, j, i]):
1. Symmetry plane: the bone's surface voxels are registered to their own mirror image. Candidates through the
   centroid normal to each principal axis and to the patient left-right axis are refined by a reflection ICP
   (mirror the points, pair each with its nearest surface point, fit the best improper rigid transform, take its
   reflection plane), trimming the worst-matched 20 % so a tumour or a missing part does not pull the plane.
   The candidate with the smallest residual wins; its residual (RMS distance of the matched 80 %) is reported.
2. Resection: a mask on the CT grid, and/or planes (each removes the side given by ``remove``; several planes
   intersect), and/or an RAS box. Remaining bone = bone outside the resection.
3. Envelope: on a working grid (``grid_mm``) around the resection, fields positive inside are combined by min:
   the mirrored remaining bone (trilinear mask occupancy in mm, exact for planar cuts), the resection region
   (analytic for planes and boxes), and the distance to the remaining bone's surface less the fit clearance. That
   distance is exact (to the contoured remaining-bone mesh) near the bone, so the clearance holds to ~0.01 mm.
   One flying-edges contour gives the envelope; the same grid gives the remaining bone and the defect meshes.
4. Structure: dense skin where the envelope faces soft tissue, dense struts along paths, a porous gyroid body
   (lattice.py's field, wrapped in ``_gyroid_solid``); all one field contoured once. A lattice at 550 um pores
   needs ~10 samples a cell: a hemisacral body is ~10^8 samples, beyond any budget here, so over the budget the
   porous body is exported as a zone (the envelope less the dense parts) for the printer's build preparation to
   fill, with the lattice parameters in the manifest. Rod connector and screw holes are exact manifold booleans.
"""

import json
import os
import shutil
import tempfile
from dataclasses import asdict, dataclass, field, fields
from typing import Optional

import numpy as np
from scipy import ndimage
from scipy.spatial import cKDTree

from ..core.anatomy import distance_to_polyline
from ..core.errors import GeometryError, OutputExistsError, PlanError
from ..core.mesh import (
    TriMesh,
    check_mesh,
    file_safe,
    from_manifold,
    isosurface,
    merge_duplicate_vertices,
    read_stl,
    require_manifold3d,
    signed_distance,
    to_manifold,
    write_stl,
)
from ..export.threemf import read_3mf, write_3mf
from ..parts.defectguides import DefectGuideParameters, defect_drill_guide
from ..parts.guides import GuideParameters
from ..parts.lattice import LatticeParameters, gyroid
from ..record.defectrecord import write_defect_record
from .screws import ScrewParameters, Trajectory, hole_specs, plan_screws, screw_type

SYMMETRY_POINTS = 30000  # surface points registered (a deterministic subsample)
SYMMETRY_TRIM = 0.8  # share of best-matched points the plane is fitted to
SYMMETRY_ITERATIONS = 40
MIN_REMAINING_FRACTION = 0.05  # a resection leaving less than this of the bone "removes everything"
ROD_SEAT_TOLERANCE_MM = 1.0  # the rod seat's base point may lie this far outside the envelope
ROD_SEAT_MAX_DEPTH_MM = 3.0  # ... or this far inside it (a point clicked on the surface model lies on it)
ROD_CLEARANCE_MM = 0.1  # rod channel diameter = rod + 2 x this
SET_SCREW_DIAMETER_MM = 8.0
CONNECTOR_WALL_MM = 3.0
CONNECTOR_LENGTH_MM = 14.0
REMOVE_SIDES = ("positive", "negative")
POROUS_MODES = ("auto", "lattice", "zone")


# ---- parameters ----------------------------------------------------------------------------------------------


def _vec(value, what: str) -> list:
    a = np.asarray(value, dtype=float).reshape(-1) if value is not None else np.zeros(0)
    if a.shape != (3,) or not np.all(np.isfinite(a)):
        raise PlanError(f"{what} must be three finite RAS numbers, got {value!r}.", "Give [R, A, S] in mm.")
    return [float(x) for x in a]


def _unknown(d: dict, known, what: str) -> None:
    extra = sorted(set(d or {}) - set(known))
    if extra:
        raise PlanError(f"Unknown {what} key(s): {', '.join(extra)}.", f"Use only: {', '.join(known)}.")


@dataclass
class MirrorDefectParameters:
    """Everything that defines a mirror-defect implant besides the CT, the bone mask and a painted resection."""

    symmetry_plane: Optional[dict] = None  # {"origin_ras", "normal_ras"}; None: found from the bone
    resection_planes: list = field(default_factory=list)  # [{"origin_ras", "normal_ras", "remove"}], intersected
    resection_roi: Optional[dict] = None  # {"center_ras", "size_mm"}: an RAS-aligned box, full edge lengths
    fit_clearance_mm: float = 0.2  # gap left to the remaining bone so the implant seats (printer dependent)
    margin_mm: float = 0.0  # grows (+) or trims (-) the mirrored shape
    # Next to the remaining bone the mirrored shape is grown by up to this to meet the cut face (the two sides of a
    # real pelvis differ by a CT voxel or more there); 0: the pure mirror image.
    cut_face_fill_mm: float = 3.0
    grid_mm: float = 0.5  # working grid of the envelope
    max_voxels: int = 30_000_000  # working-grid budget; the lattice grid has its own (lattice.max_voxels)
    skin_mm: float = 1.0  # dense skin where the implant faces soft tissue; 0: none
    contact_band_mm: float = 1.0  # surface within clearance + this of the remaining bone faces bone (porous)
    struts: list = field(default_factory=list)  # paths, each a list of RAS points
    strut_diameter_mm: float = 6.0
    rod: Optional[dict] = None  # {"point_ras", "direction_ras"}: rod seat on the implant, rod direction
    rod_diameter_mm: float = 5.5
    screws: list = field(default_factory=list)  # [{"name", "entry", "target", "end"}]
    screw_parameters: dict = field(default_factory=dict)  # screws.ScrewParameters
    lattice: dict = field(default_factory=dict)  # lattice.LatticeParameters
    porous: str = "auto"  # "lattice": gyroid mesh; "zone": porous zone for build preparation; "auto": by budget
    drill_guides: bool = True  # a PA12 drill guide seated on the implant per screw (defectguides.py)
    guides: dict = field(default_factory=dict)  # guides.GuideParameters (clearances, walls, sleeves, drills)
    guide_pad_radius_mm: float = 12.0  # extent of each drill guide's pad around the drill axis

    def validate(self) -> None:
        """PlanError naming the bad value and what to use instead."""

        def rng(name, lo, hi):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not np.isfinite(v) or not lo <= v <= hi:
                raise PlanError(f"Mirror-defect parameter {name} = {v!r} is invalid.", f"Use {lo} to {hi}.")

        rng("fit_clearance_mm", 0.0, 2.0)
        rng("margin_mm", -3.0, 3.0)
        rng("cut_face_fill_mm", 0.0, 10.0)
        rng("grid_mm", 0.1, 2.0)
        rng("max_voxels", 1e5, 5e8)
        rng("skin_mm", 0.0, 5.0)
        rng("contact_band_mm", 0.2, 5.0)
        rng("strut_diameter_mm", 2.0, 20.0)
        rng("rod_diameter_mm", 3.0, 8.0)
        if self.porous not in POROUS_MODES:
            raise PlanError(f"Porous mode {self.porous!r} is unknown.", f"Use one of {', '.join(POROUS_MODES)}.")
        if self.symmetry_plane is not None:
            _unknown(self.symmetry_plane, ("origin_ras", "normal_ras"), "symmetry plane")
            _vec(self.symmetry_plane.get("origin_ras"), "Symmetry plane origin")
            _nonzero(self.symmetry_plane.get("normal_ras"), "Symmetry plane normal")
        for n, p in enumerate(self.resection_planes):
            _unknown(p, ("origin_ras", "normal_ras", "remove"), f"resection plane {n + 1}")
            _vec(p.get("origin_ras"), f"Resection plane {n + 1} origin")
            _nonzero(p.get("normal_ras"), f"Resection plane {n + 1} normal")
            if p.get("remove", "positive") not in REMOVE_SIDES:
                raise PlanError(f"Resection plane {n + 1} removes {p.get('remove')!r}.",
                                "Use 'positive' (the side the normal points to) or 'negative'.")
        if self.resection_roi is not None:
            _unknown(self.resection_roi, ("center_ras", "size_mm"), "resection ROI")
            _vec(self.resection_roi.get("center_ras"), "Resection ROI centre")
            if min(_vec(self.resection_roi.get("size_mm"), "Resection ROI size")) <= 0:
                raise PlanError("The resection ROI has a zero or negative size.", "Give three positive lengths (mm).")
        for n, path in enumerate(self.struts):
            pts = np.asarray(path, dtype=float)
            if pts.ndim != 2 or pts.shape[1] != 3 or len(pts) < 2 or not np.all(np.isfinite(pts)):
                raise PlanError(f"Strut path {n + 1} is not a list of at least two RAS points.",
                                "Give each strut as [[R, A, S], [R, A, S], ...].")
        if self.rod is not None:
            _unknown(self.rod, ("point_ras", "direction_ras"), "rod")
            _vec(self.rod.get("point_ras"), "Rod seat point")
            _nonzero(self.rod.get("direction_ras"), "Rod direction")
        for s in self.screws:
            _unknown(s, ("name", "entry", "target", "end"), "screw")
            _vec(s.get("entry"), f"Screw {s.get('name')!r} entry")
            _vec(s.get("target"), f"Screw {s.get('name')!r} target")
        sp = ScrewParameters.from_dict(self.screw_parameters)
        sp.validate()
        self.lattice_parameters().validate()
        if not isinstance(self.drill_guides, bool):
            raise PlanError(f"drill_guides = {self.drill_guides!r} is invalid.", "Use true or false.")
        gp = self.guide_parameters()  # unknown keys and ranges
        if self.drill_guides and self.screws:
            gp.drill_for(screw_type(sp.screw_type).diameter_mm)  # a drill is set for the screws
            DefectGuideParameters(pad_radius_mm=self.guide_pad_radius_mm).validate(gp)

    def guide_parameters(self):
        return GuideParameters.from_dict(dict(self.guides or {}))

    def lattice_parameters(self) -> LatticeParameters:
        _unknown(self.lattice, [f.name for f in fields(LatticeParameters)], "lattice")
        return LatticeParameters.from_dict(self.lattice)

    def as_dict(self) -> dict:
        return json.loads(json.dumps(asdict(self)))

    @classmethod
    def from_dict(cls, d: dict) -> "MirrorDefectParameters":
        _unknown(d, [f.name for f in fields(cls)], "mirror-defect parameter")
        out = cls(**(d or {}))
        out.validate()
        return out


def _nonzero(v, what: str) -> np.ndarray:
    a = np.asarray(_vec(v, what))
    if np.linalg.norm(a) < 1e-9:
        raise PlanError(f"{what} is a zero vector.", "Give a direction, e.g. [1, 0, 0].")
    return a / np.linalg.norm(a)


# ---- symmetry plane -------------------------------------------------------------------------------------------


@dataclass
class SymmetryPlane:
    origin: np.ndarray  # RAS, the bone's centroid projected on the plane
    normal: np.ndarray  # unit, pointing to patient right (+R) where that is defined
    residual_mm: float  # RMS distance of the best-matched 80 % of mirrored surface points to the surface
    matched_fraction: float = 1.0  # mirrored surface points within 2 mm of the surface
    found: bool = True  # False: given by the user

    def reflect(self, pts) -> np.ndarray:
        p = np.atleast_2d(np.asarray(pts, dtype=float))
        return p - 2.0 * ((p - self.origin) @ self.normal)[:, None] * self.normal

    def matrix(self) -> np.ndarray:
        """4x4 reflection across the plane."""
        m = np.eye(4)
        m[:3, :3] -= 2.0 * np.outer(self.normal, self.normal)
        m[:3, 3] = 2.0 * (self.origin @ self.normal) * self.normal
        return m

    def as_dict(self) -> dict:
        return {"origin_ras": [round(float(x), 4) for x in self.origin],
                "normal_ras": [round(float(x), 6) for x in self.normal],
                "residual_mm": round(float(self.residual_mm), 4), "matched_fraction": round(self.matched_fraction, 4),
                "found_automatically": self.found}


def voxel_centres_ras(ijk_to_ras, kji) -> np.ndarray:
    """RAS of voxel indices given as [k, j, i] rows (numpy order)."""
    m = np.asarray(ijk_to_ras, dtype=float)
    return kji[:, ::-1].astype(float) @ m[:3, :3].T + m[:3, 3]


def surface_points(bone_mask: np.ndarray, ijk_to_ras) -> np.ndarray:
    """RAS centres of the bone's boundary voxels (bone with a non-bone 6-neighbour)."""
    mask = np.asarray(bone_mask, bool)
    return voxel_centres_ras(ijk_to_ras, np.argwhere(mask & ~ndimage.binary_erosion(mask, border_value=0)))


def _reflection_fit(p: np.ndarray, q: np.ndarray) -> tuple:
    """Plane (normal, offset) of the reflection that best maps points p onto q (orthogonal Procrustes, det -1)."""
    mp, mq = p.mean(axis=0), q.mean(axis=0)
    u, _, vt = np.linalg.svd((p - mp).T @ (q - mq))
    r = vt.T @ u.T
    if np.linalg.det(r) > 0:
        r = vt.T @ np.diag([1.0, 1.0, -1.0]) @ u.T
    # R = I - 2 n n^T for a pure reflection: n is the eigenvector of (I - R) / 2 with the largest eigenvalue.
    a = (np.eye(3) - r)
    w, v = np.linalg.eigh(0.5 * (a + a.T))
    n = v[:, int(np.argmax(w))]
    return n, float(n @ (0.5 * (mp + mq)))


def _refine_plane(pts, tree, n, d, iterations: int = SYMMETRY_ITERATIONS) -> tuple:
    for _ in range(iterations):
        mirrored = pts - 2.0 * (pts @ n - d)[:, None] * n
        dist, idx = tree.query(mirrored)
        keep = dist <= np.quantile(dist, SYMMETRY_TRIM)
        n_new, d_new = _reflection_fit(pts[keep], tree.data[idx[keep]])
        if n_new @ n < 0:
            n_new, d_new = -n_new, -d_new
        moved = np.degrees(np.arccos(np.clip(n_new @ n, -1.0, 1.0))) + abs(d_new - d)
        n, d = n_new, d_new
        if moved < 1e-3:
            break
    dist, _ = tree.query(pts - 2.0 * (pts @ n - d)[:, None] * n)
    keep = dist <= np.quantile(dist, SYMMETRY_TRIM)
    return n, d, float(np.sqrt(np.mean(dist[keep] ** 2))), float(np.mean(dist <= 2.0))


def find_symmetry_plane(bone_mask: np.ndarray, ijk_to_ras, initial: Optional[dict] = None) -> SymmetryPlane:
    """The bone's mirror-symmetry plane by reflection ICP on its surface voxels (see the module docstring)."""
    pts = surface_points(bone_mask, ijk_to_ras)
    if len(pts) < 100:
        raise PlanError(f"The bone mask has only {len(pts)} surface voxels: too little to find a symmetry plane.",
                        "Check the bone segmentation covers both sides of the pelvis (or other paired bone).")
    tree = cKDTree(pts)
    sample = pts[np.random.default_rng(0).permutation(len(pts))[:SYMMETRY_POINTS]]
    centroid = pts.mean(axis=0)
    if initial is not None:
        n0 = _nonzero(initial["normal_ras"], "Symmetry plane normal")
        starts = [(n0, float(n0 @ np.asarray(_vec(initial["origin_ras"], "Symmetry plane origin"))))]
    else:
        _, axes = np.linalg.eigh(np.cov((pts - centroid).T))
        starts = [(a, float(a @ centroid)) for a in [*axes.T, np.array([1.0, 0.0, 0.0])]]
    # Each start refined coarsely on a tenth of the points, then the best one on all of them.
    coarse = [_refine_plane(sample[: SYMMETRY_POINTS // 10], tree, np.asarray(n0, float), d0, 15)
              for n0, d0 in starts]
    n, d, _, _ = min(coarse, key=lambda c: c[2])
    n, d, res, matched = _refine_plane(sample, tree, n, d)
    if n[0] < 0:  # normal to patient right, for a stable report
        n, d = -n, -d
    origin = centroid - (centroid @ n - d) * n
    return SymmetryPlane(origin, n, res, matched)


def given_plane(bone_mask, ijk_to_ras, plane: dict) -> SymmetryPlane:
    """A user-set symmetry plane with its residual measured the same way (no refinement)."""
    pts = surface_points(bone_mask, ijk_to_ras)
    n = _nonzero(plane["normal_ras"], "Symmetry plane normal")
    o = np.asarray(_vec(plane["origin_ras"], "Symmetry plane origin"))
    _require_cuts(pts, o, n, "The symmetry plane")
    tree = cKDTree(pts)
    sample = pts[np.random.default_rng(0).permutation(len(pts))[:SYMMETRY_POINTS]]
    dist, _ = tree.query(sample - 2.0 * ((sample - o) @ n)[:, None] * n)
    keep = dist <= np.quantile(dist, SYMMETRY_TRIM)
    return SymmetryPlane(o, n, float(np.sqrt(np.mean(dist[keep] ** 2))), float(np.mean(dist <= 2.0)), found=False)


def _require_cuts(pts, origin, normal, what: str) -> None:
    s = (pts - origin) @ normal
    if s.min() > 0 or s.max() < 0:
        raise PlanError(f"{what} through {np.round(origin, 1).tolist()} (RAS) misses the bone: all of the bone lies "
                        f"{min(abs(s.min()), abs(s.max())):.1f} mm or more to one side of it.",
                        "Move the plane so it passes through the bone.")


# ---- resection -------------------------------------------------------------------------------------------------


class _Sampler:
    """Trilinear samples of CT-grid masks at RAS points, as mm-scaled occupancy (positive inside)."""

    def __init__(self, ijk_to_ras):
        self.m = np.asarray(ijk_to_ras, dtype=float)
        self.inv = np.linalg.inv(self.m)
        self.spacing = float(np.linalg.norm(self.m[:3, :3], axis=0).mean())

    def __call__(self, mask_f32: np.ndarray, pts: np.ndarray) -> np.ndarray:
        ijk = pts @ self.inv[:3, :3].T + self.inv[:3, 3]
        occ = ndimage.map_coordinates(mask_f32, ijk[:, ::-1].T, order=1, mode="constant", cval=0.0)
        return (occ - 0.5) * self.spacing


class Resection:
    """The region removed: the intersection of the given planes' removed sides, an RAS box and a painted mask."""

    def __init__(self, params: MirrorDefectParameters, mask: Optional[np.ndarray], sampler: _Sampler):
        self.planes = [(np.asarray(_vec(p["origin_ras"], "origin")),
                        _nonzero(p["normal_ras"], "normal") * (1.0 if p.get("remove", "positive") == "positive"
                                                               else -1.0)) for p in params.resection_planes]
        roi = params.resection_roi
        self.box = None if roi is None else (np.asarray(roi["center_ras"], float),
                                             0.5 * np.asarray(roi["size_mm"], float))
        self.mask = None if mask is None else np.asarray(mask, np.float32)
        self.sampler = sampler
        if not self.planes and self.box is None and self.mask is None:
            raise PlanError("No resection is given.", "Paint the resection, or give resection planes or a box.")

    def signed(self, pts: np.ndarray) -> np.ndarray:
        """Approximate signed distance, positive inside the removed region (exact for one plane)."""
        out = np.full(len(pts), np.inf)
        for o, n in self.planes:
            out = np.minimum(out, (pts - o) @ n)
        if self.box is not None:
            c, h = self.box
            out = np.minimum(out, (h - np.abs(pts - c)).min(axis=1))
        if self.mask is not None:
            out = np.minimum(out, self.sampler(self.mask, pts))
        return out


# ---- the envelope -----------------------------------------------------------------------------------------------


@dataclass
class _Grid:
    origin: np.ndarray  # RAS of sample [0, 0, 0]
    h: float
    shape: tuple  # (nz, ny, nx)

    def points(self, k0: int = 0, k1: Optional[int] = None) -> np.ndarray:
        k1 = self.shape[0] if k1 is None else k1
        z = self.origin[2] + self.h * np.arange(k0, k1)
        y = self.origin[1] + self.h * np.arange(self.shape[1])
        x = self.origin[0] + self.h * np.arange(self.shape[2])
        zz, yy, xx = np.meshgrid(z, y, x, indexing="ij")
        return np.stack([xx.ravel(), yy.ravel(), zz.ravel()], axis=1)

    def field(self, fn) -> np.ndarray:
        """fn(points) sampled on the grid slab by slab, as float32 [nz, ny, nx]."""
        out = np.empty(self.shape, np.float32)
        step = max(1, 2_000_000 // (self.shape[1] * self.shape[2]))
        for k0 in range(0, self.shape[0], step):
            k1 = min(k0 + step, self.shape[0])
            out[k0:k1] = fn(self.points(k0, k1)).reshape(k1 - k0, self.shape[1], self.shape[2])
        return out

    def contour(self, values: np.ndarray) -> TriMesh:
        """Closed outward surface of values > 0 (the border is padded outside)."""
        padded = np.pad(values, 1, constant_values=-1.0)
        mesh = isosurface(padded, 0.0, (self.h,) * 3, self.origin - self.h)
        if len(mesh.faces) and mesh.volume() < 0:
            mesh = TriMesh(mesh.vertices, mesh.faces[:, ::-1])
        return mesh

    def sample(self, values: np.ndarray, pts: np.ndarray, outside: float) -> np.ndarray:
        idx = (np.atleast_2d(pts) - self.origin) / self.h
        return ndimage.map_coordinates(values, idx[:, ::-1].T, order=1, mode="constant", cval=outside)


def _extended(occ: np.ndarray, h: float, band: float) -> np.ndarray:
    """A signed-distance-like field (positive inside): ``occ`` within ``band`` of its zero level, the Euclidean
    distance transform beyond (occupancy saturates half a CT voxel from the surface)."""
    inside = occ > 0
    far = np.where(inside, ndimage.distance_transform_edt(inside, sampling=h) - 0.5 * h,
                   -(ndimage.distance_transform_edt(~inside, sampling=h) - 0.5 * h))
    far = np.sign(occ) * np.maximum(np.abs(far), band)
    return np.where(np.abs(occ) < band, occ, far).astype(np.float32)


@dataclass
class DefectResult:
    plane: SymmetryPlane
    envelope: TriMesh  # the implant's outer shape (pores' envelope)
    remaining_bone: TriMesh  # the remaining bone inside the working grid
    defect: TriMesh  # the resected bone
    measurements: dict
    grid: _Grid
    envelope_field: np.ndarray  # positive inside, on grid
    bone_distance: np.ndarray  # signed distance to the remaining bone's surface (positive outside), on grid
    region_field: np.ndarray  # resection signed distance (positive inside), on grid
    remaining_mask: np.ndarray  # remaining bone on the CT grid (for screws)
    warnings: list = field(default_factory=list)
    bone_mask: Optional[np.ndarray] = None  # the whole bone on the CT grid
    resection: Optional["Resection"] = None


def build_envelope(bone_mask: np.ndarray, ijk_to_ras, params: MirrorDefectParameters,
                   resection_mask: Optional[np.ndarray] = None, plane: Optional[SymmetryPlane] = None
                   ) -> DefectResult:
    """Symmetry plane, remaining bone, defect and implant envelope with their measurements."""
    params.validate()
    bone = np.asarray(bone_mask, bool)
    if resection_mask is not None and np.shape(resection_mask) != bone.shape:
        raise PlanError(f"The resection mask {np.shape(resection_mask)} is not on the bone's grid {bone.shape}.",
                        "Paint the resection on the CT the bone was segmented from.")
    sampler = _Sampler(ijk_to_ras)
    resection = Resection(params, resection_mask, sampler)
    surf = surface_points(bone, ijk_to_ras)
    if len(surf) == 0:
        raise PlanError("The bone mask is empty.", "Segment the bone first.")
    for n, (o, nn) in enumerate(resection.planes):
        _require_cuts(surf, o, nn, f"Resection plane {n + 1}")
    centres = voxel_centres_ras(ijk_to_ras, np.argwhere(bone))
    removed = resection.signed(centres) > 0
    if not removed.any():
        raise PlanError("The resection is empty: it removes no bone.",
                        "Place the resection (planes, box or painted segment) over the bone to be removed.")
    if removed.mean() > 1.0 - MIN_REMAINING_FRACTION:
        raise PlanError(f"The resection removes {100 * removed.mean():.0f} % of the bone: nothing is left to mirror "
                        "or to fix the implant to.",
                        "Limit the resection to one side (check each plane's 'remove' side).")
    if plane is None:
        plane = (given_plane(bone, ijk_to_ras, params.symmetry_plane) if params.symmetry_plane
                 else find_symmetry_plane(bone, ijk_to_ras))
    warnings = []
    kept = centres[~removed]
    mirrored_in = plane.reflect(kept)
    mirrored_in = mirrored_in[resection.signed(mirrored_in) > 0]
    if len(mirrored_in) == 0:
        raise PlanError("The mirror image of the remaining bone does not reach into the resection.",
                        "Check the symmetry plane: the healthy side must mirror onto the resected side.")
    pad = 3.0 * params.grid_mm + 2.0 * sampler.spacing + abs(params.margin_mm) + params.fit_clearance_mm + 2.0 + \
        params.cut_face_fill_mm
    lo = np.minimum(centres[removed].min(axis=0), mirrored_in.min(axis=0)) - pad
    hi = np.maximum(centres[removed].max(axis=0), mirrored_in.max(axis=0)) + pad
    h = float(params.grid_mm)
    lo = np.floor(lo / h) * h  # grid on a fixed lattice: regenerating gives the same samples
    shape = tuple(int(x) for x in (np.ceil((hi - lo) / h).astype(int) + 1)[::-1])
    if np.prod(shape) > params.max_voxels:
        raise PlanError(f"The working grid would need {np.prod(shape) / 1e6:.0f} M samples at {h} mm "
                        f"(budget {params.max_voxels / 1e6:.0f} M).",
                        "Use a coarser grid_mm, a smaller resection, or raise max_voxels.")
    grid = _Grid(lo, h, shape)
    bone_f = bone.astype(np.float32)

    def remaining(p):
        return np.minimum(sampler(bone_f, p), -resection.signed(p))

    rem = grid.field(remaining)
    defect = grid.field(lambda p: np.minimum(sampler(bone_f, p), resection.signed(p)))
    mirror = grid.field(lambda p: remaining(plane.reflect(p)))
    region = grid.field(resection.signed)
    remaining_mesh = grid.contour(rem)
    defect_mesh = grid.contour(defect)
    # Distance to the remaining bone: exact to its mesh near it (where the clearance is decided), EDT beyond.
    band = 0.4 * sampler.spacing
    dist = -_extended(rem, h, band)
    near = np.flatnonzero(np.abs(dist) < params.fit_clearance_mm + params.contact_band_mm + 2.0 * h)
    if len(near) and len(remaining_mesh.faces):
        pts = grid.points()[near]
        dist.ravel()[near] = signed_distance(remaining_mesh, pts)
    if params.margin_mm or params.cut_face_fill_mm:
        mirror = _extended(mirror, h, band) + np.float32(params.margin_mm)
    fill_voxels = 0
    if params.cut_face_fill_mm:
        mirror, fill_voxels = _cut_face_fill(grid, mirror, defect, dist, params, band)
    env = np.minimum(np.minimum(mirror, region), dist - np.float32(params.fit_clearance_mm))
    envelope = grid.contour(env)
    if len(envelope.faces) == 0 or envelope.volume() <= 0:
        raise PlanError("The implant envelope is empty: the mirrored healthy side does not fill the resection.",
                        "Check the symmetry plane and the resection side.")
    # Drop crumbs (thin slivers of mirrored bone beside the cut); the implant is the pieces that matter.
    envelope, crumbs = _drop_crumbs(envelope)
    if crumbs >= 1.0:
        warnings.append(f"{crumbs:.1f} mm3 of small envelope pieces (< 1 % of the largest) were dropped")
    remaining_ct = bone.copy()  # only bone voxels are evaluated: a full-CT index grid would need gigabytes
    remaining_ct[tuple(np.argwhere(bone)[removed].T)] = False
    result = DefectResult(plane, envelope, remaining_mesh, defect_mesh, {}, grid, env, dist, region, remaining_ct,
                          warnings, bone, resection)
    result.measurements = measure(result, params)
    result.measurements["cut_face_fill_mm3"] = round(fill_voxels * h ** 3, 1)
    return result


def _cut_face_fill(grid: _Grid, mirror: np.ndarray, defect: np.ndarray, dist: np.ndarray,
                   params: MirrorDefectParameters, band: float) -> tuple:
    """The mirrored shape grown to meet the cut face where the two sides differ: (field, voxels added).

    A point is filled when it lies within ``cut_face_fill_mm`` (+ clearance) of the remaining bone, within the same
    reach of the mirror image, and inside the resected bone's own outline (the defect): so the gap between the
    mirror image and the cut face closes, while nothing grows past the bone's outline at the cut face's rim (which a
    plain dilation would add as a lip on the soft-tissue side)."""
    fill, c = np.float32(params.cut_face_fill_mm), np.float32(params.fit_clearance_mm)
    inside_defect = _extended(defect, grid.h, band)
    grown = np.maximum(mirror, np.minimum.reduce([fill + c - dist, mirror + fill, inside_defect]))
    added = int(np.count_nonzero((np.minimum(grown, dist - c) > 0) & (np.minimum(mirror, dist - c) <= 0)
                                 & (inside_defect > 0)))
    return grown, added


def _drop_crumbs(mesh: TriMesh, fraction: float = 0.01) -> tuple:
    parts = to_manifold(mesh).decompose()
    if len(parts) < 2:
        return mesh, 0.0
    vols = np.array([p.volume() for p in parts])
    keep = vols >= fraction * vols.max()
    m3d = require_manifold3d()
    return from_manifold(m3d.Manifold.batch_boolean([p for p, k in zip(parts, keep) if k], m3d.OpType.Add)), \
        float(vols[~keep].sum())


def measure(result: DefectResult, params: MirrorDefectParameters) -> dict:
    """Defect and implant figures for the manifest (see the module docstring)."""
    env, rem = result.envelope, result.remaining_bone
    overlap = (to_manifold(env) ^ to_manifold(rem)).volume() if len(rem.faces) else 0.0
    tri = env.vertices[env.faces]
    area = 0.5 * np.linalg.norm(np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0]), axis=1)
    d_env = result.grid.sample(result.bone_distance, tri.mean(axis=1), 1e3)
    contact = float(area[d_env <= params.fit_clearance_mm + 0.5].sum())
    _, faces_a, gaps = resection_surface_gaps(result)
    tol = params.fit_clearance_mm + 0.5
    covered = float(faces_a[gaps <= tol].sum() / faces_a.sum()) if len(faces_a) else 0.0
    return {
        "symmetry_plane": result.plane.as_dict(),
        "defect_volume_mm3": round(result.defect.volume(), 2),
        "implant_volume_mm3": round(env.volume(), 2),
        "bone_overlap_mm3": round(float(overlap), 4),
        "contact_area_mm2": round(contact, 2),
        "resection_surface_mm2": round(float(faces_a.sum()), 2),
        "resection_surface_within_tolerance": round(covered, 4),
        "max_gap_mm": round(float(gaps.max()), 3) if len(gaps) else None,
        "fit_clearance_mm": params.fit_clearance_mm,
    }


def resection_surface_gaps(result: DefectResult) -> tuple:
    """(centroids, areas, distance to the implant) of the remaining bone's cut-face triangles."""
    m = result.remaining_bone
    tri = m.vertices[m.faces]
    c = tri.mean(axis=1)
    area = 0.5 * np.linalg.norm(np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0]), axis=1)
    # On a cut face the resection's boundary passes (|region| small) through bone (envelope-side neighbour is
    # resected bone or the mirrored implant): take faces whose outward normal points into the resection.
    normals = np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0])
    normals /= np.maximum(np.linalg.norm(normals, axis=1, keepdims=True), 1e-12)
    g = result.grid
    probe_in = g.sample(result.region_field, c + 0.5 * g.h * normals, -1.0)
    sel = (probe_in > 0) & (np.abs(g.sample(result.region_field, c, -1.0)) < g.h)
    if not sel.any():
        return c[:0], area[:0], np.zeros(0)
    gaps = np.maximum(signed_distance(result.envelope, c[sel]), 0.0)
    return c[sel], area[sel], gaps




# ---- structure: skin, struts, porous body, rod connector, screw holes -----------------------------------------------


def _gyroid_solid(axes, lp: LatticeParameters) -> np.ndarray:
    """The porous body's field on grid axes (x, y, z): positive in the lattice's solid, about mm-scaled, [z, y, x].
    The only use of lattice.py: its public gyroid field, cell size and calibrated level."""
    cell = lp.cell_size_mm()
    g = gyroid(*[2.0 * np.pi * a / cell for a in axes])
    if lp.kind == "sheet_gyroid":
        g = np.abs(g)
    return ((lp.calibration().level - g) * (cell / (2.0 * np.pi))).transpose(2, 1, 0).copy()


def _cylinder(m3d, start, axis, length: float, radius: float, segments: int = 48):
    """A manifold cylinder from ``start`` along unit ``axis``."""
    axis = np.asarray(axis, float)
    a = np.cross(axis, [1.0, 0.0, 0.0] if abs(axis[0]) < 0.9 else [0.0, 1.0, 0.0])
    a /= np.linalg.norm(a)
    b = np.cross(axis, a)
    return m3d.Manifold.cylinder(float(length), float(radius), float(radius), segments).transform(
        np.column_stack([a, b, axis, np.asarray(start, float)]))


@dataclass
class StructureResult:
    implant: TriMesh  # the part to print (lattice mode: lattice + dense; zone mode: the outline)
    dense: TriMesh  # skin, struts and connector
    porous_zone: Optional[TriMesh]  # zone mode: the volume the build preparation fills with the lattice
    mode: str  # "lattice" | "zone"
    screws: list  # screws.ScrewPlan
    figures: dict
    warnings: list = field(default_factory=list)


def _dense_field(result: DefectResult, params: MirrorDefectParameters) -> np.ndarray:
    """Skin (facing soft tissue) and struts, clipped to the envelope, on the working grid (positive inside)."""
    g, env = result.grid, result.envelope_field
    out = np.full(env.shape, -1e3, np.float32)
    if params.skin_mm > 0:
        depth = _extended(env, g.h, 0.5 * g.h)
        facing_tissue = result.bone_distance - np.float32(params.fit_clearance_mm + params.contact_band_mm)
        out = np.minimum.reduce([env, np.float32(params.skin_mm) - depth, facing_tissue])
    r = 0.5 * params.strut_diameter_mm
    for path in params.struts:
        path = np.asarray(path, float)

        def strut(p, path=path):
            d = np.full(len(p), -1e3)
            near = np.all((p >= path.min(axis=0) - r - g.h) & (p <= path.max(axis=0) + r + g.h), axis=1)
            for s in range(0, int(near.sum()), 200_000):  # bounded memory: points x segments x 3
                idx = np.flatnonzero(near)[s:s + 200_000]
                d[idx] = r - distance_to_polyline(p[idx], path)
            return d

        out = np.maximum(out, np.minimum(env, g.field(strut)))
    return out


def _connector(m3d, result: DefectResult, params: MirrorDefectParameters) -> tuple:
    """(boss to add, channel and set-screw hole to cut) of the rod connector, or (None, None)."""
    if params.rod is None:
        return None, None
    p = np.asarray(params.rod["point_ras"], float)
    # Exact signed distance to the envelope mesh (the field saturates half a CT voxel from the surface); its
    # gradient is the outward surface normal.
    h = 0.25
    probes = np.vstack([p, p + h * np.eye(3), p - h * np.eye(3)])
    dist = signed_distance(result.envelope, probes)
    if dist[0] > ROD_SEAT_TOLERANCE_MM:
        raise PlanError(f"The rod seat at {np.round(p, 1).tolist()} (RAS) lies {dist[0]:.1f} mm outside the implant.",
                        f"Click the rod seat on the implant's surface (within {ROD_SEAT_TOLERANCE_MM:g} mm of it).")
    if dist[0] < -ROD_SEAT_MAX_DEPTH_MM:
        raise PlanError(f"The rod seat at {np.round(p, 1).tolist()} (RAS) lies {-dist[0]:.1f} mm inside the implant, "
                        "not on its surface.", "Click the rod seat on the implant's surface.")
    grad = dist[1:4] - dist[4:7]
    if np.linalg.norm(grad) < 1e-6:
        raise PlanError("The rod seat lies where the implant's surface has no direction.",
                        "Click the rod seat on a smooth part of the implant's surface.")
    n = grad / np.linalg.norm(grad)
    d = _nonzero(params.rod["direction_ras"], "Rod direction")
    d = d - (d @ n) * n
    if np.linalg.norm(d) < 0.3:
        raise PlanError("The rod direction points into the implant's surface, not along it.",
                        "Give the rod direction along the surface (e.g. towards L3).")
    d /= np.linalg.norm(d)
    r_rod = 0.5 * params.rod_diameter_mm
    r_boss = r_rod + CONNECTOR_WALL_MM
    c = p + n * (r_rod + 1.0)  # rod axis just outside the surface
    boss = m3d.Manifold.batch_boolean([
        _cylinder(m3d, c - 0.5 * CONNECTOR_LENGTH_MM * d, d, CONNECTOR_LENGTH_MM, r_boss),
        _cylinder(m3d, p - 3.0 * n, n, r_rod + 4.0, r_boss),  # footing sunk 3 mm into the implant
        _cylinder(m3d, c, n, r_rod + 5.0, 0.5 * SET_SCREW_DIAMETER_MM + 2.0),  # set-screw boss
    ], m3d.OpType.Add)
    r_chan = r_rod + ROD_CLEARANCE_MM
    cut = _cylinder(m3d, c - (0.5 * CONNECTOR_LENGTH_MM + 2.0) * d, d, CONNECTOR_LENGTH_MM + 4.0, r_chan) + \
        _cylinder(m3d, c, n, r_rod + 10.0, 0.5 * SET_SCREW_DIAMETER_MM)
    return boss, cut


def _screws(ct_array, ijk_to_ras, result: DefectResult, params: MirrorDefectParameters) -> list:
    if not params.screws:
        return []
    sp = ScrewParameters.from_dict(params.screw_parameters)
    trajectories = [Trajectory(s.get("name", f"screw {i + 1}"), s.get("end", "proximal"), s["entry"], s["target"])
                    for i, s in enumerate(params.screws)]
    plans = plan_screws(trajectories, ct_array, result.remaining_mask, ijk_to_ras, sp)
    breached = [p for p in plans if p.breach]
    if breached:
        raise PlanError("Screw(s) " + ", ".join(repr(p.trajectory.name) for p in breached) + " leave the remaining "
                        "bone before their tip (cortical breach): " + "; ".join(p.warnings[-1] for p in breached) + ".",
                        "Re-aim those screws through more of the remaining bone.")
    return plans


def build_structure(ct_array, ijk_to_ras, result: DefectResult, params: MirrorDefectParameters) -> StructureResult:
    """Dense skin and struts, porous body (lattice or zone), rod connector and screw holes (module docstring)."""
    m3d = require_manifold3d()
    lp = params.lattice_parameters()
    g = result.grid
    warnings = []
    boss, cut = _connector(m3d, result, params)  # checks the rod seat first: nothing is built for a bad one
    plans = _screws(ct_array, ijk_to_ras, result, params)
    dense_g = _dense_field(result, params)
    b = result.envelope.bounds()
    step = lp.step_mm()
    n_fine = int(np.prod(np.ceil((b[1] - b[0]) / step) + 3))
    mode = params.porous
    if mode == "auto":
        mode = "lattice" if n_fine <= lp.max_voxels else "zone"
        if mode == "zone":
            warnings.append(f"the porous body would need {n_fine / 1e6:.0f} M lattice samples (budget "
                            f"{lp.max_voxels / 1e6:.0f} M): exported as a porous zone for the build preparation to "
                            f"fill "
                            f"with the {lp.kind} lattice ({lp.pore_size_um:g} um pores, {100 * lp.porosity:.0f} % "
                            "porosity)")
    elif mode == "lattice" and n_fine > lp.max_voxels:
        raise PlanError(f"The porous body needs {n_fine / 1e6:.0f} M lattice samples, over the budget of "
                        f"{lp.max_voxels / 1e6:.0f} M.", "Use porous 'zone' (or 'auto'), larger pores, or a larger "
                        "lattice max_voxels.")
    dense = g.contour(dense_g) if dense_g.max() > 0 else None
    zone = None
    if mode == "lattice":
        lo = b[0] - step
        fine = _Grid(lo, step, tuple(int(x) for x in (np.ceil((b[1] - b[0]) / step) + 3).astype(int)[::-1]))
        axes = [lo[d] + step * np.arange(fine.shape[2 - d]) for d in range(3)]
        env_f = fine.field(lambda p: g.sample(result.envelope_field, p, -1e3))
        total = np.minimum(env_f, _gyroid_solid(axes, lp))
        del env_f
        total = np.maximum(total, fine.field(lambda p: g.sample(dense_g, p, -1e3)))
        implant, dropped = _drop_crumbs(fine.contour(total))
        del total
        if dropped >= 0.01:
            warnings.append(f"{dropped:.2f} mm3 of lattice fragments not attached to the part were dropped")
    else:
        implant = result.envelope
        if dense is not None:
            # Slivers of zone left between the skin and the bone-facing faces (hundreds on a 3 mm CT) are too
            # thin to hold a lattice: they join the dense part, so dense + zone is still exactly the envelope.
            env_m = to_manifold(result.envelope)
            dense = from_manifold(env_m ^ to_manifold(dense))  # not in the envelope's dropped crumbs
            zone, slivers = _drop_crumbs(from_manifold(env_m - to_manifold(dense)))
            if slivers:
                dense = from_manifold(env_m - to_manifold(zone))
    v_env, v_dense = result.envelope.volume(), (dense.volume() if dense is not None else 0.0)
    figures = {"mode": mode, "dense_volume_mm3": round(v_dense, 2), "lattice": lp.as_dict(),
               "cell_size_mm": round(lp.cell_size_mm(), 4)}
    if mode == "lattice":
        figures["measured_porosity"] = round(1.0 - (implant.volume() - v_dense) / max(v_env - v_dense, 1e-9), 4)
    # Each hole runs back from the screw's entry right through the implant, so the screw goes in from outside
    # wherever along its line the entry was put.
    back = float(np.linalg.norm(b[1] - b[0])) + 5.0
    holes = [_cylinder(m3d, h.entry - back * h.direction, h.direction, h.length_mm + back, 0.5 * h.diameter_mm)
             for h in hole_specs(plans)]
    cut = m3d.Manifold.batch_boolean(([cut] if cut is not None else []) + holes, m3d.OpType.Add) \
        if (cut is not None or holes) else None

    def finish(mesh, add_boss: bool):
        if mesh is None:
            return None
        m = to_manifold(mesh)
        if add_boss and boss is not None:
            m = m + boss
        if cut is not None:
            m = m - cut
        out = from_manifold(m)
        check = check_mesh(out)
        if not check.ok:
            raise GeometryError(f"The mirror-defect implant failed verification: {'; '.join(check.problems)}.",
                                "Report this with the plan; a slightly different grid_mm usually avoids it.")
        return out

    implant = finish(implant, True)
    if dense is None and boss is not None:  # no skin or strut: the connector is the only dense part
        dense = from_manifold(boss - cut if cut is not None else boss)
    else:
        dense = finish(dense, True)
    zone = finish(zone, False)
    figures["implant_volume_mm3"] = round(implant.volume(), 2)
    # The finished part (connector, holes) against the remaining bone: the envelope's clearance must survive.
    overlap = (to_manifold(implant) ^ to_manifold(result.remaining_bone)).volume() if len(result.remaining_bone.faces) \
        else 0.0
    figures["implant_bone_overlap_mm3"] = round(float(overlap), 4)
    if overlap > 1.0:
        warnings.append(f"the finished implant overlaps the remaining bone by {overlap:.1f} mm3 (rod connector or "
                        "strut beyond the envelope): move the rod seat away from the bone")
    figures["implant_triangles"] = int(implant.n_triangles)
    return StructureResult(implant, dense, zone, mode, plans, figures, warnings)


EXAMPLE_BONE_SEED_RAS = (-0.5, 106.0, 221.0)  # in the S1 body of the bundled sample CT


def example_parameters() -> dict:
    """A left hemisacrectomy on the bundled sample CT (3 mm, L5 to the pelvis), as a plan would give it.

    The resected block: left of 5 mm beside the midline, medial of the sacroiliac joint (x = -48), behind the
    pubis (A < 145), above the lower sacrum (S > 140) and below the L5-S1 disc (a horizontal cap at S = 242 and a
    plane along the S1 endplate, tilted 30 degrees). The strut runs from the S1 endplate side down to the ilium,
    the rod seat sits on the implant's posterior face (towards L3), one 6.5 mm screw goes in through the implant's
    posterior face and converges 33 degrees medially into the remaining S1 body (33 mm of it in bone), one runs into
    the ilium; each has a drill guide seated on the implant (a screw drilled from the side would have to pass the
    ilium first, so no guide could reach it). Checked breach-free on this CT with the bone segmented by ``segment_bone``
    from the seed ``EXAMPLE_BONE_SEED_RAS`` in S1, which a plan's segmentation block should give."""
    remove = "positive"
    return {
        "resection_planes": [
            {"origin_ras": [-5.0, 0.0, 0.0], "normal_ras": [-1.0, 0.0, 0.0], "remove": remove},
            {"origin_ras": [-48.0, 0.0, 0.0], "normal_ras": [1.0, 0.0, 0.0], "remove": remove},
            {"origin_ras": [0.0, 145.0, 0.0], "normal_ras": [0.0, -1.0, 0.0], "remove": remove},
            {"origin_ras": [0.0, 0.0, 140.0], "normal_ras": [0.0, 0.0, 1.0], "remove": remove},
            {"origin_ras": [0.0, 0.0, 242.0], "normal_ras": [0.0, 0.0, -1.0], "remove": remove},
            {"origin_ras": [0.0, 120.0, 244.0], "normal_ras": [0.0, -0.5, -0.866], "remove": remove},
        ],
        "grid_mm": 1.0,  # a third of the CT's 3 mm voxel
        "struts": [[[-12.0, 118.0, 236.0], [-44.0, 90.0, 200.0]]],
        "rod": {"point_ras": [-24.0, 57.7, 202.0], "direction_ras": [0.0, 0.3, 1.0]},
        "screws": [{"name": "S1", "entry": [-25.0, 70.0, 215.0], "target": [8.0, 120.0, 220.0]},
                   {"name": "ilium", "end": "distal", "entry": [-42.0, 90.0, 220.0], "target": [-78.2, 120.4, 203.8]}],
        "screw_parameters": {"screw_type": "6.5 cancellous"},
    }


# ---- the whole run: files and a manifest-like summary -----------------------------------------------------------


def _two_bodies(a: TriMesh, b: TriMesh) -> TriMesh:
    """Two closed meshes as one file's bodies (the plastic check model: remaining bone + implant)."""
    return TriMesh(np.vstack([a.vertices, b.vertices]), np.vstack([a.faces, b.faces + len(a.vertices)]))


def _survives_float32(mesh: TriMesh) -> bool:
    """True when the mesh, stored as float32 triangles and welded by exact position as readers do, is still a
    closed manifold (measured: a porous zone on the sample CT left 2 edges shared by four triangles at 0.5 um)."""
    soup = mesh.vertices[mesh.faces].reshape(-1, 3).astype(np.float32).astype(np.float64)
    welded = merge_duplicate_vertices(TriMesh(soup, np.arange(len(soup)).reshape(-1, 3)), None)
    return check_mesh(welded).ok


def _separate_pinches(mesh: TriMesh, step_mm: float) -> TriMesh:
    """Vertices that share a float32 position moved ``step_mm`` towards the centre of their own triangle fan.

    file_safe moves them along their normals; where the surface touches itself along two edges with common ends
    (measured on a porous zone of the sample CT) both copies have nearly the same normal and stay together, while
    their fans lie on different sides, so this pulls them apart (microns: far below any printer's resolution)."""
    v = mesh.vertices.copy()
    _, inverse, counts = np.unique(v.astype(np.float32), axis=0, return_inverse=True, return_counts=True)
    dup = np.flatnonzero(counts[inverse.reshape(-1)] > 1)
    if len(dup) == 0:
        return mesh
    sums = np.zeros_like(v)
    n = np.zeros(len(v))
    np.add.at(sums, mesh.faces.ravel(), np.repeat(v[mesh.faces].mean(axis=1), 3, axis=0))
    np.add.at(n, mesh.faces.ravel(), 1.0)
    d = sums[dup] / np.maximum(n[dup], 1.0)[:, None] - v[dup]
    v[dup] += step_mm * d / np.maximum(np.linalg.norm(d, axis=1, keepdims=True), 1e-12)
    return TriMesh(v, mesh.faces)


def _for_file(mesh: TriMesh, min_fraction: float = 0.0, dropped: Optional[list] = None) -> TriMesh:
    """mesh.file_safe, then without the zero-volume slivers its simplification can leave (measured: 2 pieces of
    -2e-6 mm3 on a lattice), which would count as bodies of their own. Implant parts also lose pieces below
    ``min_fraction`` of the largest: separating pinch vertices frees bits that hung on by one point (1.5 mm3 on
    the sample CT), which would print loose; their volume is appended to ``dropped``."""
    # Specks first (measured: a 4e-6 mm3 body sharing an edge with a porous zone, which no separation frees).
    pieces = to_manifold(mesh).decompose()
    if len(pieces) > 1 and min(p.volume() for p in pieces) <= 1e-3:
        kept = [p for p in pieces if p.volume() > 1e-3]
        mesh = from_manifold(kept[0])
        for piece in kept[1:]:
            mesh = _two_bodies(mesh, from_manifold(piece))
    safe = file_safe(mesh)
    for step in (2e-3, 1e-2):
        if _survives_float32(safe):
            break
        safe = _separate_pinches(safe, step)
    pieces = to_manifold(safe).decompose()
    vols = [p.volume() for p in pieces]
    kept = [p for p, v in zip(pieces, vols) if v > max(1e-3, min_fraction * max(vols))]
    if len(kept) == len(pieces):
        return safe
    if dropped is not None:
        dropped.append(sum(v for v in vols if v > 1e-3) - sum(p.volume() for p in kept))
    out = from_manifold(kept[0])
    for piece in kept[1:]:  # disjoint bodies side by side: a boolean union could weld the separated vertices again
        out = _two_bodies(out, from_manifold(piece))
    return out


def remaining_bone_distance(result: DefectResult, ijk_to_ras):
    """points -> mm-scaled signed field of the remaining bone (positive outside), anywhere on the CT: the same
    definition as the remaining bone's mesh (the bone mask's trilinear occupancy, cut analytically by the
    resection), so guides built and checked with it agree with that mesh. It saturates half a CT voxel from the
    surface (enough for clearances and for telling inside from outside)."""
    sampler = _Sampler(ijk_to_ras)
    bone_f = result.bone_mask.astype(np.float32)

    def distance(pts):
        pts = np.atleast_2d(np.asarray(pts, float))
        return -np.minimum(sampler(bone_f, pts), -result.resection.signed(pts))

    return distance


def drill_guides(result: DefectResult, structure: StructureResult, ijk_to_ras, params: MirrorDefectParameters) -> list:
    """[(guides.Guide, figures)] one drill guide per planned screw, seated on the implant (defectguides.py)."""
    if not (params.drill_guides and structure.screws):
        return []
    seat = from_manifold(to_manifold(structure.implant) + to_manifold(result.envelope))  # holes closed, connector on
    gp = params.guide_parameters()
    dp = DefectGuideParameters(pad_radius_mm=params.guide_pad_radius_mm)
    bone = remaining_bone_distance(result, ijk_to_ras)
    reach = float(np.linalg.norm(np.subtract(*result.envelope.bounds()))) + 5.0
    return [defect_drill_guide(seat, bone, p, gp, dp, reach, implant=structure.implant) for p in structure.screws]


PRINTED_ROLES = ("implant", "drill guide")  # one body each; also written as 3MF


def _verify_written(path: str, role: str, mesh: TriMesh, coordinate_system: str) -> object:
    back = read_3mf(path, coordinate_system) if path.endswith(".3mf") else read_stl(path, coordinate_system)
    check = check_mesh(back)
    problems = list(check.problems)
    if role in PRINTED_ROLES and check.n_components != 1:
        problems.append(f"{check.n_components} separate shells (a printed part must be one body)")
    if abs(check.volume_mm3 - mesh.volume()) > 1e-3 * max(abs(mesh.volume()), 1.0):
        problems.append(f"volume {check.volume_mm3:.2f} mm3 read back for {mesh.volume():.2f} written")
    if problems:
        raise GeometryError(f"The written {os.path.basename(path)} failed verification: {'; '.join(problems)}.",
                            "Report this with the plan; nothing was kept.")
    return check


def run_mirror_defect(ct_array, ijk_to_ras, bone_mask, params, out_folder: str, resection_mask=None,
                      coordinate_system: str = "LPS", formats=("stl", "3mf"), record: bool = True,
                      case_id: str = "", ct_description: Optional[dict] = None,
                      segmentation: Optional[dict] = None) -> dict:
    """Plan the mirror-defect implant and its drill guides, and write verified files, ``manifest.json`` and the
    design record (``design_record.html``/``.pdf``, defectrecord.py) to a new folder.

    ``params``: MirrorDefectParameters or its dict. Everything is computed and checked before anything is
    written; the files are written to a temporary sibling folder, each read back and verified, then the folder
    is renamed, so a failure leaves nothing behind and an existing folder with files in it is never touched.
    Every part is written as STL; the printed parts (implant, drill guides) also as 3MF when ``formats`` has
    "3mf". Returns the manifest dict (also written as manifest.json)."""
    import hashlib


    params = params if isinstance(params, MirrorDefectParameters) else MirrorDefectParameters.from_dict(params)
    params.validate()
    bad = [f for f in formats if f not in ("stl", "3mf")]
    if bad or "stl" not in formats:
        raise PlanError(f"Unknown or missing export formats {list(formats)}.", "Use ('stl',) or ('stl', '3mf').")
    out_folder = os.path.abspath(out_folder)
    if os.path.exists(out_folder) and (not os.path.isdir(out_folder) or os.listdir(out_folder)):
        raise OutputExistsError(f"Output folder {out_folder} already exists and is not empty.",
                                "Choose a new folder; nothing existing is overwritten.")
    result = build_envelope(bone_mask, ijk_to_ras, params, resection_mask)
    structure = build_structure(ct_array, ijk_to_ras, result, params)
    guides = drill_guides(result, structure, ijk_to_ras, params)
    # file_safe: float32 STL welding must not merge a lattice's pinch points into non-manifold edges.
    loose: list = []

    def part(mesh):
        return _for_file(mesh, 0.01, loose)

    implant, bone = part(structure.implant), _for_file(result.remaining_bone)
    parts = {"implant": implant, "implant_envelope": part(result.envelope), "defect": _for_file(result.defect),
             "remaining_bone_local": bone, "check_model": _two_bodies(bone, implant)}
    if structure.dense is not None:
        parts["implant_dense"] = part(structure.dense)
    if structure.porous_zone is not None:
        parts["implant_porous_zone"] = part(structure.porous_zone)
    roles = {k: k for k in parts}
    for g, _ in guides:
        parts[g.file_stem] = file_safe(g.mesh)
        roles[g.file_stem] = "drill guide"
    parent = os.path.dirname(out_folder)
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=".tmp-mirror-defect-", dir=parent)
    try:
        files = []
        for stem, mesh in parts.items():
            role = roles[stem]
            for fmt in ("stl", "3mf") if role in PRINTED_ROLES and "3mf" in formats else ("stl",):
                path = os.path.join(tmp, f"{stem}.{fmt}")
                if fmt == "stl":
                    write_stl(mesh, path, coordinate_system)
                else:
                    write_3mf(mesh, path, f"{case_id or 'mirror defect'} {stem}", coordinate_system)
                check = _verify_written(path, role, mesh, coordinate_system)
                with open(path, "rb") as f:
                    digest = hashlib.sha256(f.read()).hexdigest()
                files.append({"file": os.path.basename(path), "role": role, "format": fmt,
                              "material": "PA12" if role == "drill guide" else ("Ti6Al4V ELI" if role in (
                                  "implant", "implant_dense", "implant_porous_zone") else ""),
                              "coordinate_system": coordinate_system.upper(), "units": "mm",
                              "volume_mm3": round(check.volume_mm3, 2), "area_mm2": round(check.area_mm2, 2),
                              "triangles": check.n_triangles, "components": check.n_components, "sha256": digest,
                              "check": check.as_dict()})
        manifest = {
            "kind": "mirror_defect",
            "case_id": case_id,
            "parameters": params.as_dict(),
            "defect": {**result.measurements, "structure": structure.figures},
            "screws": [p.as_dict() for p in structure.screws],
            "drill_guides": [fig for _, fig in guides],
            "oversized_variants": "not applicable: the implant is shaped to the defect",
            "files": files,
            "warnings": result.warnings + structure.warnings + [w for p in structure.screws for w in p.warnings]
            + ([f"{sum(loose):.2f} mm3 of implant bits attached by a single point were left out of the files"]
               if sum(loose) >= 0.01 else []),
        }
        if record:
            manifest["files"] += write_defect_record(manifest, result, structure, guides, tmp, ct_array, ijk_to_ras,
                                                     ct_description=ct_description, segmentation=segmentation)
        with open(os.path.join(tmp, "manifest.json"), "w") as f:
            json.dump(manifest, f, indent=2)
        if os.path.isdir(out_folder):
            os.rmdir(out_folder)  # empty (checked above)
        os.replace(tmp, out_folder)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return manifest
