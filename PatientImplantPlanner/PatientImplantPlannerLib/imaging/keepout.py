"""Keep-out anatomy: the structures an implant must not touch (great vessels, heart, airway, oesophagus, spinal cord),
their distance fields for placement, and the clearance / overlap of finished meshes against them.

Sources, best first:
- a label map or segmentation with TotalSegmentator names or numbering (``from_labels``);
- without labels, what the CT shows (``from_ct``): contrast-filled vessels and heart grown from the exclude seeds
  (without contrast, the blood pool ringed by fat and lung around each seed, followed slice by slice), the airway
  (air below AIRWAY_HU connected to the trachea at the top of the scan), and the spinal canal (the hole enclosed by
  each vertebra's bony ring behind the body). Structures the CT cannot show (the oesophagus) are listed as not
  checked.
Everything is numpy on the CT's voxel grid ([k, j, i] arrays, a 4x4 IJK-to-RAS matrix); no scene access.
"""

from dataclasses import dataclass, field
from typing import Optional

import numpy as np
from scipy import ndimage

from ..core.errors import PlanError
from ..core.grid import VoxelGrid
from ..core.mesh import TriMesh
from ..parts.gyroid import voxelise
from .canal import find_canal
from .thicklevels import thick_slice_axis
from .voxelops import bbox_slices, filled_in_slices, label_counts

DEFAULT_CLEARANCE_MM = 2.0
MEASURE_PITCH_MM = 0.5  # clearance and overlap are measured on this isotropic grid around the mesh
MEASURE_MARGIN_MM = 15.0
FIELD_PITCH_MM = 1.0  # placement searches on a coarser distance field
AIRWAY_HU = -950.0  # tracheal air; lung parenchyma (about -850 HU) stays above it
AIRWAY_TOP_MM = 10.0  # the airway is the air that reaches this far below the scan's top
# The trachea's wall around its air, kept out with it: on the chest CT the labelled trachea reaches 2.5 mm (95th
# percentile) beyond the air the CT shows; a contrast pool grown from a seed is its label within 1.0 mm.
AIRWAY_WALL_MM = 2.0
VESSEL_HU = (130.0, 900.0)  # contrast-filled blood pool, grown from an exclude seed
UNENHANCED_BLOOD_HU = (0.0, 90.0)  # blood, heart and vessel walls without contrast (two 5 mm chest CTs: 30-60 HU)
# Blood without contrast (_grow_unenhanced): its edge halfway between blood (30-60 HU) and fat (-100); rays within a
# slice; how far the pool may reach from its centre in a slice and along the spine; the cut of a ray running into
# touching soft tissue (times the median ray) and the change of radius that ends the pool (times its radius).
UNENHANCED_EDGE_HU = -30.0
UNENHANCED_RAYS = 64
UNENHANCED_MAX_MM = 60.0
UNENHANCED_ALONG_MM = 150.0
UNENHANCED_CLIP = 1.3
UNENHANCED_RADIUS_CHANGE = 0.4
UNENHANCED_MIN_RADIUS_MM = 5.0  # the descending aorta is 8-15 mm in radius
CONTRAST_NEAR_MM, CONTRAST_NEAR_ML = 10.0, 1.0  # contrast-filled blood this near a seed: a contrast CT

# TotalSegmentator "total" task (v2) numbering and names of the structures a spinal implant must stay clear of.
TOTALSEGMENTATOR_KEEP_OUT = {
    15: "esophagus",
    16: "trachea",
    51: "heart",
    52: "aorta",
    53: "pulmonary_vein",
    54: "brachiocephalic_trunk",
    55: "subclavian_artery_right",
    56: "subclavian_artery_left",
    57: "common_carotid_artery_right",
    58: "common_carotid_artery_left",
    59: "brachiocephalic_vein_left",
    60: "brachiocephalic_vein_right",
    61: "atrial_appendage_left",
    62: "superior_vena_cava",
    63: "inferior_vena_cava",
    64: "portal_vein_and_splenic_vein",
    65: "iliac_artery_left",
    66: "iliac_artery_right",
    67: "iliac_vena_left",
    68: "iliac_vena_right",
    79: "spinal_cord",
}
KEEP_OUT_NAMES = tuple(TOTALSEGMENTATOR_KEEP_OUT.values())
# What the CT alone cannot show; named in the record as not checked when there are no labels.
NOT_VISIBLE_WITHOUT_LABELS = ("esophagus",)


def keep_out_name(text: str) -> Optional[str]:
    """'aorta', 'Aorta', 'aorta (TotalSegmentator)' -> 'aorta'; a name that is no keep-out structure -> None."""
    t = text.strip().lower().replace(" ", "_")
    for name in KEEP_OUT_NAMES:
        if t == name or t.startswith(name + "_(") or t.startswith(name + "("):
            return name
    aliases = {"oesophagus": "esophagus", "cord": "spinal_cord", "svc": "superior_vena_cava",
               "ivc": "inferior_vena_cava"}
    return aliases.get(t)


@dataclass
class Structure:
    name: str
    source: str  # "labels", "exclude seed", "CT air and its wall", "bony ring"
    mask: np.ndarray  # bool crop [k, j, i]
    offset: np.ndarray  # crop origin (k, j, i) in the CT grid

    @property
    def voxels(self) -> int:
        return int(self.mask.sum())


@dataclass
class KeepOut:
    """The keep-out structures of one CT, on its grid."""

    ijk_to_ras: np.ndarray
    shape: tuple  # CT array shape (k, j, i)
    structures: list = field(default_factory=list)
    not_checked: dict = field(default_factory=dict)  # {structure: why it was not checked}
    source: str = ""

    @property
    def names(self) -> list:
        return [s.name for s in self.structures]

    def labelled_mask(self):
        """Bool [k, j, i] of the structures taken from labels (None when there are none): known not to be bone."""
        labelled = [s for s in self.structures if s.source == "labels"]
        if not labelled:
            return None
        out = np.zeros(self.shape, dtype=bool)
        for s in labelled:
            out[tuple(slice(o, o + n) for o, n in zip(s.offset, s.mask.shape))] |= s.mask
        return out

    def describe(self) -> dict:
        return {"source": self.source, "structures": {s.name: s.source for s in self.structures},
                "not_checked": dict(self.not_checked)}

    # ---- sampling on an arbitrary isotropic grid ---------------------------------------------------------------

    def _masks_on_grid(self, lo, shape, pitch: float) -> list:
        """Each structure's mask (or None where its box misses the grid) at the points lo + index * pitch (RAS),
        nearest-neighbour lookup; arrays [x, y, z] (RAS axes)."""
        shape = tuple(int(s) for s in shape)
        inv = np.linalg.inv(self.ijk_to_ras)
        xs = [lo[a] + pitch * np.arange(shape[a]) for a in range(3)]
        gx, gy, gz = np.meshgrid(*xs, indexing="ij")
        pts = np.stack([gx.ravel(), gy.ravel(), gz.ravel()], axis=1)
        kji = np.rint(pts @ inv[:3, :3].T + inv[:3, 3]).astype(np.int64)[:, ::-1]
        k_lo, k_hi = kji.min(axis=0), kji.max(axis=0)
        out = []
        for s in self.structures:
            if np.any(s.offset > k_hi) or np.any(s.offset + np.array(s.mask.shape) <= k_lo):
                out.append(None)  # the structure's box misses the grid
                continue
            local = kji - s.offset
            ok = np.all((local >= 0) & (local < np.array(s.mask.shape)), axis=1)
            hit = np.zeros(len(pts), dtype=bool)
            hit[ok] = s.mask[local[ok, 0], local[ok, 1], local[ok, 2]]
            out.append(hit.reshape(shape) if hit.any() else None)
        return out

    def _label_grid(self, lo, shape, pitch: float) -> np.ndarray:
        """Structure index + 1 (0 = none) at the points lo + index * pitch (RAS); where structures overlap (two
        blood pools grown from seeds in one contrast-filled system) the later one is kept: for the distance to the
        nearest structure only. ``measure`` takes each structure on its own."""
        out = np.zeros(tuple(int(s) for s in shape), dtype=np.int16)
        for n, m in enumerate(self._masks_on_grid(lo, shape, pitch)):
            if m is not None:
                out[m] = n + 1
        return out

    def distance_field(self, lo, hi, pitch: float = FIELD_PITCH_MM) -> "DistanceField":
        """Distance (mm) from every point of the box [lo, hi] (RAS) to each structure and to the nearest one."""
        lo = np.asarray(lo, dtype=float)
        shape = np.maximum(np.ceil((np.asarray(hi, dtype=float) - lo) / pitch).astype(int) + 1, 2)
        labels = self._label_grid(lo, shape, pitch)
        if not labels.any():
            return DistanceField(lo, pitch, np.full(labels.shape, np.inf, np.float32),
                                 np.full(labels.shape, -1, np.int16), [s.name for s in self.structures])
        # One transform for all structures: the distance to the nearest structure voxel centre, less half a grid
        # step (the surface lies between), and which structure that voxel belongs to.
        d, idx = ndimage.distance_transform_edt(labels == 0, sampling=pitch, return_indices=True)
        which = labels[idx[0], idx[1], idx[2]].astype(np.int16) - 1
        dist = (d - pitch / 2).astype(np.float32)
        dist[labels > 0] = -pitch / 2
        return DistanceField(lo, pitch, dist, which, [s.name for s in self.structures])

    # ---- measuring a finished mesh -------------------------------------------------------------------------------

    def measure(self, mesh: TriMesh, pitch: float = MEASURE_PITCH_MM) -> dict:
        """{structure: {"clearance_mm", "overlap_mm3"}} of a closed mesh (RAS): the smallest distance from the
        mesh's surface (vertices and face centres) to the structure, and the structure's volume inside the mesh,
        both on a ``pitch`` grid (labels resampled by nearest neighbour). Negative clearance = inside."""
        lo = mesh.vertices.min(axis=0) - MEASURE_MARGIN_MM
        hi = mesh.vertices.max(axis=0) + MEASURE_MARGIN_MM
        shape = np.ceil((hi - lo) / pitch).astype(int) + 1
        masks = self._masks_on_grid(lo, shape, pitch)  # each structure on its own (pools may overlap)
        inside = voxelise(mesh, lo, pitch, shape)
        centres = mesh.vertices[mesh.faces].mean(axis=1)
        samples = np.vstack([mesh.vertices, centres])
        out = {}
        from scipy.spatial import cKDTree

        at = np.clip(np.rint((samples - lo) / pitch).astype(int), 0, np.array(inside.shape) - 1)
        for s, m in zip(self.structures, masks):
            if m is None:
                out[s.name] = {"clearance_mm": None, "overlap_mm3": 0.0}  # farther than the margin
                continue
            # Distance to the structure's boundary voxel centres, less half a grid step (the surface between).
            rim = np.argwhere(m & ~ndimage.binary_erosion(m))
            d, _ = cKDTree(lo + rim * pitch).query(samples)
            d = d - pitch / 2
            d[m[at[:, 0], at[:, 1], at[:, 2]]] = -pitch / 2
            clearance = float(d.min())
            closest = samples[int(np.argmin(d))]
            overlap = float((inside & m).sum()) * pitch**3
            if overlap > 0:
                clearance = min(clearance, -pitch / 2)
            out[s.name] = {"clearance_mm": round(clearance, 2), "overlap_mm3": round(overlap, 1),
                           "closest_ras": [round(float(x), 2) for x in closest]}
        return out


@dataclass
class DistanceField:
    lo: np.ndarray
    pitch: float
    distance: np.ndarray  # [x, y, z] mm to the nearest structure (inf: none in the box)
    nearest: np.ndarray  # [x, y, z] index of that structure (-1: none)
    names: list

    def sample(self, points) -> tuple:
        """(distance mm, nearest structure index) at RAS points (trilinear / nearest); points outside the box
        get the box edge's values."""
        q = (np.atleast_2d(points) - self.lo) / self.pitch
        d = self.distance
        if not np.isfinite(d).any():
            return np.full(len(q), np.inf), np.full(len(q), -1)
        finite = np.where(np.isfinite(d), d, 1e3)
        dist = ndimage.map_coordinates(finite, q.T, order=1, mode="nearest")
        idx = np.clip(np.rint(q).astype(int), 0, np.array(d.shape) - 1)
        return dist, self.nearest[idx[:, 0], idx[:, 1], idx[:, 2]]


def _crop(mask: np.ndarray, pad: int = 1) -> tuple:
    idx = np.argwhere(mask)
    lo = np.maximum(idx.min(axis=0) - pad, 0)
    hi = np.minimum(idx.max(axis=0) + pad + 1, mask.shape)
    return mask[tuple(slice(a, b) for a, b in zip(lo, hi))].copy(), lo


def from_labels(label_map: np.ndarray, ijk_to_ras, values: Optional[dict] = None, names=None) -> KeepOut:
    """Keep-out structures from a label map on the CT grid. ``values`` {name: label value} (default
    TotalSegmentator numbering); ``names`` restricts them (default all keep-out structures present)."""
    labels = np.asarray(label_map)
    if values is None:
        values = {name: v for v, name in TOTALSEGMENTATOR_KEEP_OUT.items()}
    wanted = set(names) if names is not None else set(KEEP_OUT_NAMES)
    ko = KeepOut(np.asarray(ijk_to_ras, float), labels.shape, source="labels")
    boxes = ndimage.find_objects(labels.astype(np.int32)) if labels.dtype.kind in "iub" else None
    for name, v in sorted(values.items(), key=lambda kv: kv[1]):
        if name not in wanted:
            continue
        v = int(v)
        box = boxes[v - 1] if boxes is not None and 0 < v <= len(boxes) else None
        if box is None:
            continue
        m = labels[box] == v
        if m.any():
            ko.structures.append(Structure(name, "labels", m, np.array([b.start for b in box])))
    return ko


def _seed_box(seed_kji, reach_mm, spacing_kji, shape) -> tuple:
    """(slices, origin) of the box reaching ``reach_mm`` (per axis or one for all) from the seed, inside the array."""
    r = np.ceil(np.asarray(reach_mm, float) / np.asarray(spacing_kji, float)).astype(int)
    lo = np.maximum(np.asarray(seed_kji, int) - r, 0)
    hi = np.minimum(np.asarray(seed_kji, int) + r + 1, shape)
    return tuple(slice(a, b) for a, b in zip(lo, hi)), lo


def _grow_vessel(ct: np.ndarray, bone: np.ndarray, seed_kji, spacing_kji, max_radius_mm: float = 90.0):
    """Contrast-filled blood pool connected to the seed: VESSEL_HU voxels outside the bone, opened by one voxel
    so that a thin bridge (a vessel wall touching bone or another organ) does not carry the region further."""
    seed = np.asarray(seed_kji, int)
    box, lo = _seed_box(seed, max_radius_mm, spacing_kji, ct.shape)
    sub = ct[box]
    pool = (sub >= VESSEL_HU[0]) & (sub <= VESSEL_HU[1])
    if bone is not None:
        pool &= ~bone[box]
    opened = ndimage.binary_opening(pool, structure=ndimage.generate_binary_structure(3, 1))
    lab, _ = ndimage.label(opened)
    s = tuple(seed - lo)
    v = lab[s]
    if v == 0:
        # The seed sits on the pool's rim: take the nearest opened component within 3 mm (searched around the seed:
        # a distance map of the whole box with its indices took 2.5 GB on a 0.7 mm chest CT).
        w = np.ceil(3.0 / np.asarray(spacing_kji)).astype(int)
        w_lo = np.maximum(np.asarray(s) - w, 0)
        near = lab[tuple(slice(a, b) for a, b in zip(w_lo, np.asarray(s) + w + 1))]
        idx = np.argwhere(near > 0)
        d = np.linalg.norm((idx + w_lo - np.asarray(s)) * np.asarray(spacing_kji), axis=1)
        if len(idx) == 0 or d.min() > 3.0:
            return None
        v = near[tuple(idx[int(np.argmin(d))])]
    region = ndimage.binary_dilation(lab == v, structure=ndimage.generate_binary_structure(3, 1)) & pool
    return region, lo


def _contrast_pool_near(ct: np.ndarray, bone, seed_kji, spacing_kji) -> bool:
    """Whether contrast-filled blood (VESSEL_HU, not bone, CONTRAST_NEAR_ML or more in one piece, so not a calcified
    plaque) lies within CONTRAST_NEAR_MM of the seed."""
    box, _ = _seed_box(seed_kji, CONTRAST_NEAR_MM, spacing_kji, ct.shape)
    pool = (ct[box] >= VESSEL_HU[0]) & (ct[box] <= VESSEL_HU[1])
    if bone is not None:  # with the cancellous bone inside the cortex (as dense as diluted contrast)
        pool &= ~filled_in_slices(bone[box])
    lab, n = ndimage.label(pool)
    counts = label_counts(lab, n + 1)[1:]
    return bool(len(counts)) and counts.max() * float(np.prod(spacing_kji)) / 1000.0 >= CONTRAST_NEAR_ML


def _grow_unenhanced(ct: np.ndarray, seed_kji, ijk_to_ras):
    """(mask, origin) of blood without contrast around the seed, or None: in each axial slice the pool as seen from
    its centre (rays that stop at fat, lung, bone or a calcified wall: anything outside UNENHANCED_EDGE_HU to
    UNENHANCED_BLOOD_HU's top, on the CT smoothed by 1 mm against noise), each ray cut at UNENHANCED_CLIP times the
    pool's median radius where it runs on into touching soft tissue (a 3-D grow took the whole mediastinum of a 5 mm
    chest CT with the aorta); followed slice by slice from the seed while its centre stays in blood and its radius
    changes by less than UNENHANCED_RADIUS_CHANGE."""
    m = np.asarray(ijk_to_ras, float)
    sp = np.linalg.norm(m[:3, :3], axis=0)[::-1]
    axis = int(np.argmax(np.abs(m[2, :3] / sp[::-1])[::-1]))  # the array axis nearest the patient's S
    plane = [a for a in range(3) if a != axis]
    seed = np.asarray(seed_kji, int)
    box, lo = _seed_box(seed, [UNENHANCED_ALONG_MM if a == axis else UNENHANCED_MAX_MM for a in range(3)], sp,
                        ct.shape)
    sub = ndimage.gaussian_filter(ct[box].astype(np.float32), 1.0 / sp)
    sub = np.moveaxis(sub, axis, 0)
    sp2 = sp[plane]
    angles = np.linspace(0.0, 2 * np.pi, UNENHANCED_RAYS, endpoint=False)
    steps = np.arange(0.0, UNENHANCED_MAX_MM, 0.5)
    yy, xx = np.indices(sub.shape[1:], dtype=float)

    def pool_in(img, centre):
        """(slice mask, radius) of the pool seen from ``centre`` (row, column), or None."""
        ys = centre[0] + np.outer(np.sin(angles), steps) / sp2[0]
        xs = centre[1] + np.outer(np.cos(angles), steps) / sp2[1]
        v = ndimage.map_coordinates(img, [ys, xs], order=1, mode="constant", cval=-1000.0)
        inside = (v >= UNENHANCED_EDGE_HU) & (v <= UNENHANCED_BLOOD_HU[1])
        if not inside[:, 0].all():
            return None
        stop = np.where(inside.all(axis=1), len(steps), np.argmax(~inside, axis=1))
        if np.mean(stop == len(steps)) > 0.5:  # soft tissue on and on: no blood pool ringed by fat or lung
            return None
        r = steps[np.maximum(stop - 1, 0)] + 0.25
        r = np.minimum(r, UNENHANCED_CLIP * float(np.median(r)))
        dy, dx = (yy - centre[0]) * sp2[0], (xx - centre[1]) * sp2[1]
        theta = np.mod(np.arctan2(dy, dx), 2 * np.pi)
        limit = np.interp(theta, np.append(angles, 2 * np.pi), np.append(r, r[0]))
        # its size: the rays that end on its own wall (the shorter ones; the others run into touching tissue)
        return np.hypot(dy, dx) <= limit, float(np.percentile(r, 30))

    def middle(mask2d, near, radius):
        """The point deepest inside within half a radius of ``near``: the lumen's centre, which moves little from
        slice to slice, not the middle of the touching tissue the rays ran into."""
        depth = ndimage.distance_transform_edt(mask2d, sampling=sp2)
        depth[np.hypot((yy - near[0]) * sp2[0], (xx - near[1]) * sp2[1]) > 0.5 * radius] = -1.0
        return np.array(np.unravel_index(int(np.argmax(depth)), depth.shape), dtype=float)

    out = np.zeros(sub.shape, dtype=bool)
    s0 = int(seed[axis] - lo[axis])
    centre = (seed[plane] - lo[plane]).astype(float)
    first = None
    for _ in range(3):  # a seed off the pool's centre: look again from the centre of what it saw
        got = pool_in(sub[s0], centre)
        if got is None:
            break
        first = got
        centre = middle(got[0], centre, got[1])
    if first is None or first[1] < UNENHANCED_MIN_RADIUS_MM:  # a seed on the edge of some tissue, not in a pool
        return None
    out[s0] = first[0]
    for step in (1, -1):
        c, radius, k = centre, first[1], s0 + step
        while 0 <= k < sub.shape[0]:
            got = pool_in(sub[k], c)
            if got is None or abs(got[1] - radius) > UNENHANCED_RADIUS_CHANGE * radius:
                break
            out[k], radius = got[0], got[1]
            c = middle(got[0], c, radius)
            k += step
    return np.moveaxis(out, 0, axis), lo


def _airway(ct: np.ndarray, spacing_kji, ijk_to_ras) -> Optional[tuple]:
    """The trachea and main bronchi: the largest AIRWAY_HU air component that reaches the scan's top slices (the
    trachea enters the chest there) without touching the volume's sides, with AIRWAY_WALL_MM of wall around it;
    None when the scan shows none."""
    air = ct <= AIRWAY_HU
    if not air.any():
        return None
    lab, n = ndimage.label(air)
    if n == 0:
        return None
    m = np.asarray(ijk_to_ras, float)
    sup_axis = int(np.argmax(np.abs(m[2, :3])))  # the index axis (i, j or k) closest to patient superior
    kji_axis = 2 - sup_axis
    # The top AIRWAY_TOP_MM of the scan, at least 3 slices: on the chest CT (superior at index 0) the trachea's air
    # starts in the second slice; the first slice alone held only a pocket of air behind the back.
    count = max(3, int(np.ceil(AIRWAY_TOP_MM / spacing_kji[kji_axis])))
    sl = [slice(None)] * 3
    sl[kji_axis] = slice(-count, None) if m[2, sup_axis] > 0 else slice(0, count)
    top = lab[tuple(sl)]
    # Outside air (around the patient) also reaches the top slices: keep components that do not touch the
    # volume's side faces.
    side = set()
    for ax in range(3):
        if ax == kji_axis:
            continue
        for face in (0, -1):
            side |= set(np.unique(np.take(lab, face, axis=ax)).tolist())
    candidates = [v for v in np.unique(top) if v and v not in side]
    if not candidates:
        return None
    # Sizes counted slab by slab: a volume of ones and ndimage's float sums took 2.9 GB on a 0.7 mm chest CT.
    counts = label_counts(lab, n + 1)
    best = candidates[int(np.argmax(counts[candidates]))]
    return _grown(lab == best, spacing_kji, AIRWAY_WALL_MM)


def _grown(mask: np.ndarray, spacing_kji, mm: float) -> tuple:
    """(crop, offset) of the mask grown by ``mm``."""
    box = bbox_slices(mask, np.ceil(mm / np.asarray(spacing_kji, float)), mask.shape)
    crop, clo = _crop(ndimage.distance_transform_edt(~mask[box], sampling=spacing_kji) <= mm)
    return crop, clo + np.array([s.start for s in box])


def _box_around(points, ijk_to_ras, shape, pad_mm: float) -> tuple:
    """Index box (slices, origin) of the CT covering the RAS points plus pad_mm."""
    inv = np.linalg.inv(ijk_to_ras)
    p = np.asarray(points, float)
    lo_r, hi_r = p.min(axis=0) - pad_mm, p.max(axis=0) + pad_mm
    corners = np.array([[x, y, z] for x in (lo_r[0], hi_r[0]) for y in (lo_r[1], hi_r[1]) for z in (lo_r[2], hi_r[2])])
    kji = (corners @ inv[:3, :3].T + inv[:3, 3])[:, ::-1]
    lo = np.clip(np.floor(kji.min(axis=0)).astype(int), 0, np.array(shape))
    hi = np.clip(np.ceil(kji.max(axis=0)).astype(int) + 1, 0, np.array(shape))
    return tuple(slice(a, b) for a, b in zip(lo, hi)), lo


def from_ct(ct: np.ndarray, ijk_to_ras, bone_mask=None, exclude_seeds_ras=(), axis_points=None,
            pad_mm: float = 60.0) -> KeepOut:
    """Keep-out structures the CT itself shows: vessels / heart from each exclude seed, the airway, the canal
    (airway and canal searched within ``pad_mm`` of the spinal axis when it is given)."""
    m = np.asarray(ijk_to_ras, float)
    spacing_kji = np.linalg.norm(m[:3, :3], axis=0)[::-1]
    inv = np.linalg.inv(m)
    ko = KeepOut(m, ct.shape, source="CT")
    for n, p in enumerate(exclude_seeds_ras):
        kji = np.rint(inv[:3, :3] @ np.asarray(p, float) + inv[:3, 3])[::-1].astype(int)
        if np.any(kji < 0) or np.any(kji >= np.array(ct.shape)):
            raise PlanError(f"Exclude seed {n + 1} at {np.round(p, 1).tolist()} (RAS) is outside the CT.",
                            "Move the exclude seed into the vessel or heart it marks.")
        grown, how = _grow_vessel(ct, bone_mask, kji, spacing_kji), "exclude seed"
        around = ct[tuple(slice(max(c - 1, 0), c + 2) for c in kji)]
        hu = float(np.median(around))
        plain = UNENHANCED_BLOOD_HU[0] <= hu <= UNENHANCED_BLOOD_HU[1]
        # Beside a contrast-filled pool the seed slipped off the vessel into the tissue around it.
        plain = plain and grown is None and not _contrast_pool_near(ct, bone_mask, kji, spacing_kji)
        if plain:
            # No contrast: the blood pool is bounded by the fat and lung around it instead (more is kept out).
            grown, how = _grow_unenhanced(ct, kji, m), "exclude seed, no contrast"
        if grown is None:
            raise PlanError(
                f"Exclude seed {n + 1} at {np.round(p, 1).tolist()} (RAS) is not in contrast-filled blood "
                f"({VESSEL_HU[0]:g}-{VESSEL_HU[1]:g} HU): the CT there is {hu:.0f} HU"
                + (", soft tissue without contrast, but no blood pool ringed by fat or lung shows around it (a "
                   f"vessel {2 * UNENHANCED_MIN_RADIUS_MM:g} mm across or more, up to the heart; soft tissue running "
                   f"on beyond {UNENHANCED_MAX_MM:g} mm is none)." if plain else "."),
                "Click the exclude seed inside the aorta or the heart's contrast-filled chambers."
                + (" Without contrast, click the middle of the descending aorta (the round section beside the "
                   "vertebral bodies, ringed by fat or lung), or remove the exclude seeds and give keep-out labels "
                   "(--keep-out, or the keep-out segmentation in the module, e.g. TotalSegmentator's), or choose the "
                   "strut's side away from the aorta yourself (placement, e.g. anterolateral_right, or "
                   "placement_angle_deg in the plan; 'Placement' in the module) and check it on the CT." if plain
                   else ""))
        region, lo = grown
        crop, clo = _crop(region)
        _add_seed_pool(ko.structures, Structure(f"exclude_seed_{n + 1}_vessel", how, crop, clo + lo), n + 1)
    box, box_lo = (tuple(slice(0, n) for n in ct.shape), np.zeros(3, int))
    if axis_points is not None and len(axis_points):
        box, box_lo = _box_around(axis_points, m, ct.shape, pad_mm)
    sub_m = m.copy()
    sub_m[:3, 3] = m[:3, :3] @ box_lo[::-1] + m[:3, 3]
    air = _airway(ct[box], spacing_kji, sub_m) if axis_points is None else _airway_near(ct, spacing_kji, m, box)
    if air is not None:
        ko.structures.append(Structure("trachea", "CT air and its wall", air[0], air[1]))
    canal = find_canal(bone_mask[box], sub_m, axis_points, _slice_blur_mm(ct, m)) if bone_mask is not None else None
    if canal is not None:
        crop, clo = _crop(canal)
        ko.structures.append(Structure("spinal_canal", "bony ring", crop, clo + box_lo))
    ko.not_checked = {name: "not visible on CT without labels" for name in NOT_VISIBLE_WITHOUT_LABELS}
    if not exclude_seeds_ras:
        ko.not_checked["aorta / heart"] = "no exclude seed in them and no labels"
    return ko


SAME_POOL_FRACTION = 0.5  # two seeds' regions sharing this much of the smaller one are one blood pool


def _add_seed_pool(structures: list, pool: "Structure", seed: int) -> None:
    """Adds the region grown from exclude seed ``seed``, joined with an earlier seed's region when both are the same
    blood pool (on the chest CT the seeds in the aorta and the heart share 93 % of the smaller region: the contrast
    runs on through the arch), so one structure is measured, listed and drawn once, named after both seeds."""
    for i, other in enumerate(structures):
        lo = np.minimum(other.offset, pool.offset)
        hi = np.maximum(other.offset + np.array(other.mask.shape), pool.offset + np.array(pool.mask.shape))
        a, b = np.zeros(hi - lo, bool), np.zeros(hi - lo, bool)
        a[tuple(slice(o, o + n) for o, n in zip(other.offset - lo, other.mask.shape))] = other.mask
        b[tuple(slice(o, o + n) for o, n in zip(pool.offset - lo, pool.mask.shape))] = pool.mask
        if (a & b).sum() >= SAME_POOL_FRACTION * min(a.sum(), b.sum()):
            seeds = other.name.removeprefix("exclude_seeds_").removeprefix("exclude_seed_").removesuffix("_vessel")
            crop, clo = _crop(a | b)
            structures[i] = Structure(f"exclude_seeds_{seeds}_{seed}_vessel", other.source, crop, clo + lo)
            return
    structures.append(pool)


def _slice_blur_mm(ct, ijk_to_ras) -> Optional[float]:
    """How thick the axial slices blur, when a thin spacing keeps a thick slice's blur (an overlapping
    reconstruction, or thick slices resampled thin: the chest CT's 2.5 mm slices resampled to 1 mm measure 3.2 mm);
    None otherwise: the spacing is the figure (thick slices measure more, 4.3 mm on the chest CT's own 2.5 mm ones,
    but the widening was set against those at their spacing)."""
    m = np.asarray(ijk_to_ras, float)
    found = thick_slice_axis(VoxelGrid(m, ct.shape), ct)
    superior = 2 - int(np.argmax(np.abs(m[2, :3])))
    return found[1] if found is not None and found[2] and found[0] == superior else None


def _airway_near(ct, spacing_kji, ijk_to_ras, box):
    """The airway found on the whole scan (it starts at the top slices), kept only if it comes near the axis box."""
    air = _airway(ct, spacing_kji, ijk_to_ras)
    if air is None:
        return None
    crop, lo = air
    hi = lo + np.array(crop.shape)
    b_lo = np.array([s.start for s in box])
    b_hi = np.array([s.stop for s in box])
    if np.any(hi <= b_lo) or np.any(lo >= b_hi):
        return None
    return air
