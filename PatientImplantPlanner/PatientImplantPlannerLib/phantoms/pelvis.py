"""Synthetic pelvis CT (L5, sacrum, both ilia) mirror-symmetric about a known, slightly oblique plane.

Used to test the mirror-defect implant: the symmetry plane the planner finds can be compared with the truth, and
a one-sided resection can be compared with its exact mirror image. The shapes are built in a local frame
(u = patient right, v = anterior, w = cranial, origin on the plane) and placed in RAS by a small rotation and an
offset, so the plane is neither a grid plane nor through the grid centre (a planner that assumed x = 0 would fail).
Shapes are even in u, so the phantom is symmetric up to sampling. Partial volume as in phantom.py.
"""

from dataclasses import dataclass

import numpy as np

from .shapes import cover, paint, sd_range, write_image

CORTICAL_HU = 900.0
CANCELLOUS_HU = 260.0
SOFT_TISSUE_HU = 40.0
AIR_HU = -1000.0
CORTEX_MM = 1.5
# Local extent of the phantom (mm): u across, v front-back, w up-down.
HALF_U, V_RANGE, W_RANGE = 118.0, (-45.0, 50.0), (-60.0, 75.0)
S1_TOP_W = 30.0  # S1 endplate height; L5 sits above a 5 mm disc
SACRUM_HALF_TOP, SACRUM_HALF_BOTTOM = 50.0, 12.0
SI_GAP_MM = 3.0  # sacroiliac joint space: each ilium is its own bone piece, as in CT


@dataclass
class PelvisPhantom:
    array: np.ndarray  # int16 HU [k, j, i]
    ijk_to_ras: np.ndarray  # 4x4
    bone_mask: np.ndarray  # bool [k, j, i]: voxel centre inside bone
    plane_origin: np.ndarray  # RAS, on the true symmetry plane
    plane_normal: np.ndarray  # RAS unit normal pointing to patient right
    frame: np.ndarray  # 4x4 local (u, v, w) -> RAS

    def local_to_ras(self, uvw) -> np.ndarray:
        p = np.atleast_2d(np.asarray(uvw, dtype=float))
        return p @ self.frame[:3, :3].T + self.frame[:3, 3]

    def local_direction(self, uvw) -> np.ndarray:
        return self.frame[:3, :3] @ np.asarray(uvw, dtype=float)

    def hemisacrectomy_planes(self, side: str = "left") -> list:
        """Resection planes of a hemisacrectomy (the sacral half between the midline and the sacroiliac joint,
        below L5): dicts origin_ras, normal_ras, remove "positive" (the side the normal points to is removed)."""
        s = {"left": -1.0, "right": 1.0}[side]
        planes = [((s * 6.0, 0, 0), (s, 0, 0)),  # 6 mm beside the midline, removing the outer part
                  ((s * (SACRUM_HALF_TOP + 0.5 * SI_GAP_MM), 0, 0), (-s, 0, 0)),  # at the SI joint
                  ((0, 0, S1_TOP_W + 2.5), (0, 0, -1))]  # in the L5-S1 disc: L5 stays
        return [{"origin_ras": [float(x) for x in self.local_to_ras(o)[0]],
                 "normal_ras": [float(x) for x in self.local_direction(n)], "remove": "positive"} for o, n in planes]

    def write(self, path: str) -> str:
        return write_image(self.array, self.ijk_to_ras, path)


def _rotation(deg_about_w: float, deg_about_v: float) -> np.ndarray:
    a, b = np.radians(deg_about_w), np.radians(deg_about_v)
    rz = np.array([[np.cos(a), -np.sin(a), 0], [np.sin(a), np.cos(a), 0], [0, 0, 1]])
    ry = np.array([[np.cos(b), 0, np.sin(b)], [0, 1, 0], [-np.sin(b), 0, np.cos(b)]])
    return rz @ ry


def _bone_distances(u, v, w) -> list:
    """Approximate signed distances (negative inside) of the bones, in the local frame; all even in u."""
    au = np.abs(u)
    # L5: elliptic body above the disc, with a spinous process behind it.
    r = np.sqrt((u / 24.0) ** 2 + ((v - 5.0) / 17.0) ** 2)
    l5 = np.maximum((r - 1.0) * 20.0, sd_range(w, S1_TOP_W + 5.0, S1_TOP_W + 30.0))
    spine = np.maximum.reduce([sd_range(u, -4.0, 4.0), sd_range(v, -38.0, -12.0), sd_range(w, 40.0, 55.0)])
    # Sacrum: a plate tapering downwards and tilted back, narrowing from the ala to the coccyx.
    t = np.clip((S1_TOP_W - w) / (S1_TOP_W - W_RANGE[0] - 5.0), 0.0, 1.0)
    half_w = SACRUM_HALF_TOP + (SACRUM_HALF_BOTTOM - SACRUM_HALF_TOP) * t
    centre_v, half_v = 5.0 - 25.0 * t, 16.0 - 9.0 * t
    sacrum = np.maximum.reduce([au - half_w, np.abs(v - centre_v) - half_v,
                                sd_range(w, W_RANGE[0] + 5.0, S1_TOP_W)])
    # Sacral canal: a tube behind the S1 body, so the sacrum is not a plain slab.
    canal = np.sqrt(u * u + ((v - (centre_v - 6.0)) / 1.4) ** 2) - 6.0
    sacrum = np.maximum(sacrum, -canal)
    # Ilia: flared wings beside the SI joints, 9 mm thick, tilted 35 degrees forwards.
    lat = au - (SACRUM_HALF_TOP + SI_GAP_MM)
    wing_n = np.array([np.cos(np.radians(35.0)), -np.sin(np.radians(35.0))])
    across = (lat - 25.0) * wing_n[0] + (v + 5.0) * wing_n[1]
    along = -(lat - 25.0) * wing_n[1] + (v + 5.0) * wing_n[0]
    e = np.sqrt((along / 42.0) ** 2 + ((w - 15.0) / 45.0) ** 2)
    ilium = np.maximum.reduce([np.abs(across) - 4.5, (e - 1.0) * 40.0, -lat])
    return [l5, spine, sacrum, ilium]


def make_pelvis_phantom(spacing: float = 1.0, rotation_deg=(4.0, 3.0), offset_mm=(7.0, -3.0, 5.0),
                        seed: int = 0, noise_hu: float = 20.0) -> PelvisPhantom:
    """The pelvis phantom on an axis-aligned RAS grid; the symmetry plane is rotated by ``rotation_deg`` (about the
    cranial, then the anterior axis) and passes through ``offset_mm``."""
    frame = np.eye(4)
    frame[:3, :3] = _rotation(*rotation_deg)
    frame[:3, 3] = offset_mm
    corners = np.array([[x, y, z] for x in (-HALF_U, HALF_U) for y in V_RANGE for z in W_RANGE])
    ras = corners @ frame[:3, :3].T + frame[:3, 3]
    lo, hi = ras.min(axis=0) - 5.0, ras.max(axis=0) + 5.0
    n = np.ceil((hi - lo) / spacing).astype(int) + 1
    ijk_to_ras = np.diag([spacing, spacing, spacing, 1.0])
    ijk_to_ras[:3, 3] = lo
    z, y, x = (lo[d] + spacing * np.arange(n[d]) for d in (2, 1, 0))
    X, Y, Z = np.meshgrid(x, y, z, indexing="ij")  # [i, j, k], transposed to [k, j, i] below
    rel = np.stack([X - offset_mm[0], Y - offset_mm[1], Z - offset_mm[2]], axis=-1)
    local = rel @ frame[:3, :3]  # inverse rotation: RAS -> (u, v, w)
    u, v, w = (local[..., d].astype(np.float32) for d in range(3))
    del rel, local, X, Y, Z
    bones = _bone_distances(u, v, w)
    body = np.sqrt((u / 125.0) ** 2 + ((v - 2.0) / 60.0) ** 2) - 1.0  # soft-tissue outline
    values = np.full(u.shape, AIR_HU, np.float32)
    paint(values, body * 60.0, SOFT_TISSUE_HU, spacing)
    inside = np.zeros(u.shape, bool)
    for d in bones:
        paint(values, d, CORTICAL_HU, spacing)
        paint(values, d + CORTEX_MM, CANCELLOUS_HU, spacing)
        inside |= d < 0
    rng = np.random.default_rng(seed)
    values += rng.normal(0.0, noise_hu, values.shape).astype(np.float32) * (cover(body * 60.0, spacing) > 0)
    array = np.clip(np.rint(values), -1024, 3071).astype(np.int16).transpose(2, 1, 0).copy()
    return PelvisPhantom(array, ijk_to_ras, inside.transpose(2, 1, 0).copy(), frame[:3, 3].copy(),
                         frame[:3, 0].copy(), frame)


def mirror_lr_pelvis(ph: PelvisPhantom) -> PelvisPhantom:
    """The phantom flipped left-right on its grid (the voxels of patient left become patient right)."""
    nx = ph.array.shape[2]
    x0 = ph.ijk_to_ras[0, 3]
    x1 = x0 + ph.ijk_to_ras[0, 0] * (nx - 1)
    flip = np.diag([-1.0, 1.0, 1.0, 1.0])
    flip[0, 3] = x0 + x1  # x -> x0 + x1 - x: the grid maps onto itself
    frame = flip @ ph.frame
    frame[:3, 0] *= -1.0  # keep u = patient right (the mirror of right is left)
    return PelvisPhantom(ph.array[:, :, ::-1].copy(), ph.ijk_to_ras.copy(), ph.bone_mask[:, :, ::-1].copy(),
                         frame[:3, 3].copy(), frame[:3, 0].copy(), frame)
