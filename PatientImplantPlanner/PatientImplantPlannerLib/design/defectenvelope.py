"""The mirror-defect implant's envelope: the resection, the healthy side mirrored into it, less the remaining bone
enlarged by the fit clearance, the cut face filled, and its fit measured (volume, contact, gaps)."""

from dataclasses import dataclass, field
from typing import Optional

import numpy as np
from scipy import ndimage

from ..core.errors import PlanError
from ..core.mesh import (
    TriMesh,
    from_manifold,
    isosurface,
    require_manifold3d,
    signed_distance,
    to_manifold,
)
from .defectparams import MIN_REMAINING_FRACTION, MirrorDefectParameters, _nonzero, _vec
from .symmetry import SymmetryPlane, _require_cuts, find_symmetry_plane, given_plane, surface_points, voxel_centres_ras


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
