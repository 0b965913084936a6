"""Synthetic spine CT with exact ground truth, for testing segmentation, level detection and planning.

The phantom is a short run of vertebrae (default L1-L3) inside a soft-tissue torso, sampled like a clinical CT
(0.5-1 mm voxels, int16 HU, partial volume at every boundary, seeded Gaussian noise). Every number the planner
measures from a real CT is known exactly here: body centres, flat endplates with their normals, the spinal axis,
which voxels are bone and to which vertebra they belong.

Geometry, in each vertebra's own frame (u = patient right, v = anterior, w = cranial, origin = body centre):
- body: elliptic cylinder with flat endplates perpendicular to the local axis; cortical shell ``CORTEX_MM`` thick
  (endplates too) around an osteopenic cancellous core that is mostly below the 226 HU bone threshold, as in
  real patients, so that a threshold alone gives a hollow shell;
- posterior elements: pedicles (cortical wall, cancellous core), neural arch around the spinal canal, spinous and
  transverse processes, superior and inferior articular processes. The facet joints leave ``FACET_GAP_MM`` of
  soft tissue and discs separate the bodies, so each vertebra is its own connected component above 226 HU.
The spine bends only in the sagittal plane and only at the discs (vertebrae are rigid): every disc turns the
column by the same angle, so the body centres lie on a circular arc and the true axis is the polyline through the
body centres and endplate centres. Partial volume comes from approximate signed distances: each material covers
``clip(0.5 - d / voxel, 0, 1)`` of a voxel and is painted over the materials behind it.
"""

from dataclasses import dataclass, field

import numpy as np

from ..core.anatomy import Endplate, unit
from ..imaging.levelsource import TOTALSEGMENTATOR_VERTEBRAE
from ..scene.volumes import add_volume
from .shapes import PhantomGrid, cover, dense_polyline, paint, sd_ellipse, sd_range, write_image

AIR_HU = -1000.0
FAT_HU = -100.0
SOFT_TISSUE_HU = 40.0
CSF_HU = 10.0
DISC_HU = 80.0
CORTICAL_HU = 950.0
CANCELLOUS_HU = 160.0  # osteopenic: mean well below 226 HU
POSTERIOR_HU = 650.0  # thin posterior elements are mostly cortical bone
PEDICLE_CORE_HU = 200.0
TABLE_HU = 450.0
VESSEL_HU = 400.0  # contrast-filled aorta, inside the range of bone
HEART_HU = 320.0  # contrast blood pool (200-400 HU in contrast CT)
ESOPHAGUS_HU = 40.0  # soft tissue: invisible against the mediastinum, as in CT without oral contrast
CORD_HU = 30.0
MIN_HU, MAX_HU = -1024, 3071

CORTEX_MM = 1.2
ESOPHAGUS_RADIUS_MM = 6.0
TRACHEA_RADIUS_MM = 8.0
# TotalSegmentator ("total") values of the keep-out structures in ``SpinePhantom.keepout_labels``.
KEEP_OUT_LABELS = {"esophagus": 15, "trachea": 16, "heart": 51, "aorta": 52, "spinal_cord": 79}
VESSEL_RADIUS_MM = 11.0
FACET_GAP_MM = 3.0
MARGIN_MM = 10.0  # air around the outermost structure
SKIN_HALF_LR_MM = 55.0
SKIN_HALF_AP_MM = 57.0
SKIN_CENTRE_AP_MM = -15.0  # the torso outline is centred this far anterior (+) of the spinal axis
CHEST_HALF_AP_MM, CHEST_CENTRE_AP_MM = 86.0, 14.0  # with the mediastinum: room for the heart in front of the spine
FAT_MM = 6.0
TABLE_GAP_MM = 8.0  # >= 5 mm of clean air even after partial volume
TABLE_THICKNESS_MM = 9.0
MAX_KYPHOSIS_PER_DISC_DEG = 12.0
MAX_LORDOSIS_PER_DISC_DEG = 6.0  # the facets close posteriorly under lordosis

# Lumbar-sized reference dimensions (mm), scaled per level by ``level_size``.
BODY_HALF_LR, BODY_HALF_AP, BODY_HEIGHT = 21.0, 16.0, 25.0


def level_size(name: str) -> tuple:
    """(scale, disc_mm) of a vertebra: scale 1 is a mid-lumbar body 42 x 32 x 25 mm."""
    region, number = name[:1].upper(), name[1:]
    n = int(number) if number.isdigit() else -1
    if region == "L" and 1 <= n <= 5:
        return 0.96 + 0.02 * (n - 1), 9.0
    if region == "T" and 1 <= n <= 12:
        return 0.55 + 0.40 * (n - 1) / 11.0, 4.0 + 4.0 * (n - 1) / 11.0
    if region == "C" and 3 <= n <= 7:
        return 0.42 + 0.03 * (n - 3), 5.0
    raise ValueError(f"Unknown vertebra level {name!r}. Use C3-C7, T1-T12 or L1-L5.")


@dataclass
class VertebraTruth:
    name: str
    label: int  # value in SpinePhantom.vertebra_labels, proximal (most cranial) = 1
    body_centre: np.ndarray  # RAS mm
    superior_endplate: Endplate  # normal points cranially, out of the body
    inferior_endplate: Endplate  # normal points caudally
    body_height: float  # mm along the local axis
    axis_direction: np.ndarray  # unit, local spinal axis pointing caudally (proximal -> distal)
    canal_centre: np.ndarray = None  # RAS, centre of the spinal canal at mid-body height
    pedicle_centres: np.ndarray = None  # (2, 3) RAS, [right, left] pedicle isthmus centres

    @property
    def anterior_direction(self) -> np.ndarray:
        return self.superior_endplate.anterior


@dataclass
class SpinePhantom:
    array: np.ndarray  # int16 HU [k, j, i]
    ijk_to_ras: np.ndarray  # 4x4
    spacing: tuple  # (di, dj, dk) mm
    bone_mask: np.ndarray  # bool [k, j, i]: voxel centre inside any vertebra
    vertebra_labels: np.ndarray  # uint8 [k, j, i]
    table_mask: np.ndarray  # bool
    vessel_mask: np.ndarray  # bool (outside bone)
    vertebrae: list  # [VertebraTruth], proximal first
    axis_points: np.ndarray  # (N, 3) RAS, <= 1 mm apart, proximal first
    body_mask: np.ndarray = None  # bool: vertebral bodies only (cortex + core)
    # uint8, KEEP_OUT_LABELS values where a keep-out structure's centre-of-voxel is inside it (never on bone).
    keepout_labels: np.ndarray = None
    kyphosis_deg: float = 0.0
    seed: int = 0
    info: dict = field(default_factory=dict)

    def vertebra(self, name: str) -> VertebraTruth:
        for v in self.vertebrae:
            if v.name == name:
                return v
        raise KeyError(f"No vertebra {name!r} in the phantom; it has {[v.name for v in self.vertebrae]}.")

    def body_point(self, name: str) -> np.ndarray:
        """A RAS point deep inside the cancellous core of the body (a safe seed)."""
        return self.vertebra(name).body_centre.copy()

    def ras_to_ijk(self, points) -> np.ndarray:
        """Continuous (i, j, k) of RAS points (N, 3)."""
        p = np.atleast_2d(np.asarray(points, dtype=float))
        inv = np.linalg.inv(self.ijk_to_ras)
        return p @ inv[:3, :3].T + inv[:3, 3]

    def ijk_to_ras_points(self, ijk) -> np.ndarray:
        q = np.atleast_2d(np.asarray(ijk, dtype=float))
        return q @ self.ijk_to_ras[:3, :3].T + self.ijk_to_ras[:3, 3]

    def add_to_scene(self, ctx, name: str = "SpinePhantom"):
        """A scalar volume node with the phantom's voxels and geometry (same as writing and loading the file)."""
        return add_volume(ctx, self.array, self.ijk_to_ras, name)

    def add_labels_to_scene(self, ctx, name: str = "SpinePhantomLabels"):
        """The vertebra labels as a labelmap volume node (value = VertebraTruth.label)."""
        return add_volume(ctx, self.vertebra_labels, self.ijk_to_ras, name, labelmap=True)

    def write(self, path: str) -> str:
        """Write the CT (.nrrd, .nii.gz, ...) via SimpleITK; geometry stored in LPS as the formats require."""
        return write_image(self.array, self.ijk_to_ras, path)

    def write_labels(self, path: str) -> str:
        return write_image(self.vertebra_labels, self.ijk_to_ras, path)

    def vertebra_label_values(self) -> dict:
        """{vertebra name: TotalSegmentator value} of the phantom's vertebrae (T6 -> 38, L1 -> 31)."""
        values = {name: v for v, name in TOTALSEGMENTATOR_VERTEBRAE.items()}
        return {v.name: values[v.name] for v in self.vertebrae}

    def anatomy_labels(self) -> np.ndarray:
        """A TotalSegmentator-like label map: vertebrae (their TotalSegmentator values) and keep-out structures."""
        out = np.zeros(self.vertebra_labels.shape, np.uint8)
        if self.keepout_labels is not None:
            out[:] = self.keepout_labels
        values = self.vertebra_label_values()
        for v in self.vertebrae:
            out[self.vertebra_labels == v.label] = values[v.name]
        return out

    def write_anatomy_labels(self, path: str) -> str:
        return write_image(self.anatomy_labels(), self.ijk_to_ras, path)


# ----------------------------------------------------------------------------------------------------------------
# Signed distances (approximate, exact on the boundary's normal direction: enough for a one-voxel blend)


# ----------------------------------------------------------------------------------------------------------------
# The column: body centres, local frames, joints


@dataclass
class _Level:
    name: str
    scale: float
    disc: float  # own disc size (mm); the disc between two levels is the mean of theirs
    centre: np.ndarray
    axis: np.ndarray  # caudal unit
    anterior: np.ndarray
    half_lr: float
    half_ap: float
    height: float
    disc_above: float = 0.0
    disc_below: float = 0.0

    def local(self, x, y, z):
        """(u, v, w) of RAS grid coordinates; x is a 1D array, y and z broadcast as (k, j) arrays."""
        dy, dz = y - self.centre[1], z - self.centre[2]
        u = (x - self.centre[0])[None, None, :]
        v = (self.anterior[1] * dy + self.anterior[2] * dz)[..., None]
        w = (-(self.axis[1] * dy + self.axis[2] * dz))[..., None]
        return u, v, w

    def to_ras(self, uvw) -> np.ndarray:
        uvw = np.atleast_2d(np.asarray(uvw, dtype=float))
        lateral = np.array([1.0, 0.0, 0.0])
        return self.centre + uvw[:, :1] * lateral + uvw[:, 1:2] * self.anterior - uvw[:, 2:3] * self.axis


def _build_column(levels, kyphosis_deg) -> list:
    n = len(levels)
    theta = np.radians(kyphosis_deg)
    step = theta / (n - 1) if n > 1 else 0.0
    out = []
    for i, name in enumerate(levels):
        s, disc = level_size(name)
        phi = -theta / 2 + i * step  # sagittal tilt; 0 = vertical; the apex of a kyphosis is posterior
        axis = np.array([0.0, np.sin(phi), -np.cos(phi)])
        anterior = np.array([0.0, np.cos(phi), np.sin(phi)])
        out.append(
            _Level(name, s, disc, np.zeros(3), axis, anterior, BODY_HALF_LR * s, BODY_HALF_AP * s, BODY_HEIGHT * s)
        )
    for i in range(n):
        out[i].disc_above = 0.5 * (out[i].disc + out[i - 1].disc) if i > 0 else out[i].disc
        out[i].disc_below = 0.5 * (out[i].disc + out[i + 1].disc) if i < n - 1 else out[i].disc
    # Rigid bodies joined at the discs: the tangent lines of neighbours meet in the middle of the disc.
    for i in range(1, n):
        prev, cur = out[i - 1], out[i]
        joint = prev.centre + prev.axis * (prev.height / 2 + prev.disc_below / 2)
        cur.centre = joint + cur.axis * (cur.height / 2 + cur.disc_above / 2)
    mid = np.mean([lv.centre for lv in out], axis=0)
    for lv in out:
        lv.centre = lv.centre - mid
    return out


def _joints(column) -> list:
    """(point, caudal normal) of the plane halfway through each disc, between level i and i + 1."""
    out = []
    for prev, cur in zip(column[:-1], column[1:]):
        point = prev.centre + prev.axis * (prev.height / 2 + prev.disc_below / 2)
        out.append((point, unit(prev.axis + cur.axis)))
    return out


# ----------------------------------------------------------------------------------------------------------------
# Posterior elements, in the level's local frame (lumbar sizes times the level scale)


def _posterior_layout(lv: _Level) -> dict:
    s = lv.scale
    sc = max(s, 0.8)  # the canal shrinks less than the bones
    canal_lr, canal_ap = 9.0 * sc, 7.5 * sc
    cv = -(lv.half_ap + canal_ap)  # canal centre; its front wall is the back of the body
    ped_u = canal_lr + 4.5 * s
    facet_u = canal_lr + 6.0 * s
    h2 = lv.height / 2
    return {
        "canal": (cv, canal_lr, canal_ap),
        "arch": (canal_lr + 6.0 * s, canal_ap + 5.0 * s, cv + 2.0 * s, -10.0 * s, 8.0 * s),
        "pedicle": (ped_u, 3.0 * s, 4.5 * s, 7.0 * s, cv - 3.0 * s, -lv.half_ap + 4.0 * s),
        "transverse": (cv + 1.0 * s, 2.0 * s, 3.0 * s, 5.0 * s, canal_lr + 2.0 * s, 38.0 * s),
        "spinous": (3.0 * s, cv - canal_ap - 30.0 * s, cv - canal_ap - 4.0 * s, -12.0 * s, 4.0 * s),
        # inferior articular process: medial, hangs down; superior: lateral, rises (facet gap between them)
        "iap": (
            facet_u - FACET_GAP_MM / 2 - 5.0 * s,
            facet_u - FACET_GAP_MM / 2,
            cv - 11.0 * s,
            cv - 5.0 * s,
            -(h2 + lv.disc_below / 2 + 3.0 * s),
            -2.0 * s,
        ),
        "sap": (
            facet_u + FACET_GAP_MM / 2,
            facet_u + FACET_GAP_MM / 2 + 4.5 * s,
            cv - 8.0 * s,
            cv,
            2.0 * s,
            h2 + lv.disc_above / 2 + 3.0 * s,
        ),
    }


def _local_extent(lv: _Level) -> tuple:
    """(lo, hi) (u, v, w) corners of a box holding all of the vertebra's bone."""
    p = _posterior_layout(lv)
    h2 = lv.height / 2
    u = p["transverse"][5] + 1.0
    v_lo = p["spinous"][1] - 1.0
    w_lo = min(-h2, p["iap"][4], p["spinous"][3]) - 1.0
    w_hi = max(h2, p["sap"][5], p["arch"][4]) + 1.0
    return np.array([-u, v_lo, w_lo]), np.array([u, lv.half_ap + 1.0, w_hi])


def _posterior_sd(lv, u, v, w):
    """Signed distances of (posterior elements union, pedicle cores)."""
    p = _posterior_layout(lv)
    au = np.abs(u)
    cv, canal_lr, canal_ap = p["canal"]
    out_lr, out_ap, arch_v_max, arch_w_lo, arch_w_hi = p["arch"]
    d_canal = sd_ellipse(u, v - cv, canal_lr, canal_ap)
    arch = np.maximum(
        np.maximum(sd_ellipse(u, v - cv, out_lr, out_ap), -d_canal),
        np.maximum(v - arch_v_max, sd_range(w, arch_w_lo, arch_w_hi)),
    )
    ped_u, ped_w, ped_lr, ped_si, ped_v_lo, ped_v_hi = p["pedicle"]
    pedicle = np.maximum(sd_ellipse(au - ped_u, w - ped_w, ped_lr, ped_si), sd_range(v, ped_v_lo, ped_v_hi))
    core = np.maximum(
        sd_ellipse(au - ped_u, w - ped_w, ped_lr - CORTEX_MM, ped_si - CORTEX_MM),
        sd_range(v, ped_v_lo + 2.0 * lv.scale, ped_v_hi),
    )
    tv, tw, t_ap, t_si, t_u_lo, t_u_hi = p["transverse"]
    transverse = np.maximum(sd_ellipse(v - tv, w - tw, t_ap, t_si), sd_range(au, t_u_lo, t_u_hi))
    sp_half, sp_v_lo, sp_v_hi, sp_w_lo, sp_w_hi = p["spinous"]
    spinous = np.maximum(np.maximum(au - sp_half, sd_range(v, sp_v_lo, sp_v_hi)), sd_range(w, sp_w_lo, sp_w_hi))
    facets = []
    for key in ("iap", "sap"):
        u_lo, u_hi, v_lo, v_hi, w_lo, w_hi = p[key]
        facets.append(
            np.maximum(np.maximum(sd_range(au, u_lo, u_hi), sd_range(v, v_lo, v_hi)), sd_range(w, w_lo, w_hi))
        )
    union = np.minimum(
        np.minimum(np.minimum(arch, pedicle), np.minimum(transverse, spinous)), np.minimum(facets[0], facets[1])
    )
    return union, core


def _vessel_centre_uv(lv: _Level, overlap: float) -> tuple:
    """Local (u, v) of an aorta touching the body antero-left, sunk ``overlap`` mm into its cortex."""
    ang = np.radians(135.0)  # u < 0 is the patient's left
    pu, pv = lv.half_lr * np.cos(ang), lv.half_ap * np.sin(ang)
    n = unit([pu / lv.half_lr**2, pv / lv.half_ap**2, 0.0])
    r = VESSEL_RADIUS_MM - overlap
    return pu + n[0] * r, pv + n[1] * r


# ----------------------------------------------------------------------------------------------------------------
# The voxel grid (axes along LPS like a typical axial CT: i -> left, j -> posterior, k -> superior)


def _box_corners(lv: _Level, lo, hi) -> np.ndarray:
    corners = np.array([[a, b, c] for a in (lo[0], hi[0]) for b in (lo[1], hi[1]) for c in (lo[2], hi[2])])
    return lv.to_ras(corners)


# ----------------------------------------------------------------------------------------------------------------


def make_spine_phantom(
    spacing=0.7,
    levels=("L1", "L2", "L3"),
    kyphosis_deg: float = 0.0,
    with_table: bool = False,
    with_vessel: bool = False,
    noise_hu: float = 15.0,
    seed: int = 0,
    pad_outside_fov=None,
    with_mediastinum: bool = False,
    mirror_lr: bool = False,
) -> SpinePhantom:
    """Build a synthetic spine CT with its ground truth.

    spacing: voxel size in mm, one number or (di, dj, dk); clinical range 0.5-1.0.
    levels: vertebra names proximal (cranial) first, from C3-C7, T1-T12, L1-L5.
    kyphosis_deg: Cobb angle between the first vertebra's superior and the last one's inferior endplate, in the
        sagittal plane; positive = kyphosis (convex posteriorly), negative = lordosis. Spread evenly over the discs
        (at most 12 deg kyphosis or 6 deg lordosis per disc, where the facets would start to touch).
    with_table: a CT table slab under the patient's back. with_vessel: a contrast-filled aorta touching every body.
    noise_hu: standard deviation of the Gaussian noise. seed: makes texture and noise reproducible.
    pad_outside_fov: if set (e.g. -2048), the grid becomes square in the axial plane and voxels outside its
        inscribed circle (the scan field of view) get this value.
    with_mediastinum: contrast-CT mediastinum in its real places, by level name: the descending aorta
        (``VESSEL_HU``) anterolateral-left of and touching the bodies from T4 down, the heart (``HEART_HU``) in front
        of T5-T9, the oesophagus (soft tissue) just anterior-right of the cervical and thoracic bodies, the trachea
        (air) in front of it down to T4, the spinal cord (``CORD_HU``) in the canal down to L1. Their voxels are
        labelled in ``keepout_labels`` (``KEEP_OUT_LABELS``, TotalSegmentator numbering).
    mirror_lr: the same phantom mirrored left-right (aorta on the right); truth points mirrored too.
    """
    levels = tuple(levels)
    if not levels or len(set(levels)) != len(levels):
        raise ValueError(f"levels must be distinct vertebra names, proximal first; got {levels!r}.")
    for name in levels:
        level_size(name)
    spacing = tuple(float(s) for s in (np.broadcast_to(np.asarray(spacing, dtype=float), (3,))))
    if min(spacing) <= 0:
        raise ValueError(f"spacing must be positive, got {spacing}.")
    per_disc = kyphosis_deg / (len(levels) - 1) if len(levels) > 1 else 0.0
    if len(levels) == 1 and kyphosis_deg:
        raise ValueError("A single vertebra cannot bend: use kyphosis_deg=0 or give at least two levels.")
    if per_disc > MAX_KYPHOSIS_PER_DISC_DEG or -per_disc > MAX_LORDOSIS_PER_DISC_DEG:
        raise ValueError(
            f"kyphosis_deg={kyphosis_deg} is {per_disc:.1f} deg per disc; the phantom allows "
            f"-{MAX_LORDOSIS_PER_DISC_DEG} to {MAX_KYPHOSIS_PER_DISC_DEG} deg per disc. "
            "Use a smaller angle or more levels."
        )
    rng = np.random.default_rng(seed)
    column = _build_column(levels, kyphosis_deg)
    joints = _joints(column)
    width = float(np.cbrt(np.prod(spacing)))  # blend width of a boundary, mm
    overlap = 1.0 + max(spacing)  # vessel sunk into the cortex: at least one voxel of contact

    # Truth: axis polyline through endplate and body centres, kinked at mid-disc.
    first, last = column[0], column[-1]
    vertices = [first.centre - first.axis * first.height / 2]
    for i, lv in enumerate(column):
        vertices.append(lv.centre)
        if i < len(column) - 1:
            vertices.append(joints[i][0])
    vertices.append(last.centre + last.axis * last.height / 2)
    axis_points = dense_polyline(vertices, 0.5)

    # Grid extent: all bone, the torso outline (which follows the axis antero-posteriorly), the table.
    bone_corners = np.concatenate([_box_corners(lv, *_local_extent(lv)) for lv in column])
    z_lo, z_hi = bone_corners[:, 2].min() - MARGIN_MM, bone_corners[:, 2].max() + MARGIN_MM
    order = np.argsort(axis_points[:, 2])

    skin_half_ap, skin_centre = (
        (CHEST_HALF_AP_MM, CHEST_CENTRE_AP_MM) if with_mediastinum else (SKIN_HALF_AP_MM, SKIN_CENTRE_AP_MM)
    )

    def skin_centre_y(z):
        return np.interp(z, axis_points[order, 2], axis_points[order, 1]) + skin_centre

    zs = np.linspace(z_lo, z_hi, 200)
    yc_min, yc_max = skin_centre_y(zs).min(), skin_centre_y(zs).max()
    table_top = yc_min - skin_half_ap - TABLE_GAP_MM
    y_lo = (table_top - TABLE_THICKNESS_MM if with_table else yc_min - skin_half_ap) - MARGIN_MM
    y_hi = yc_max + skin_half_ap + MARGIN_MM
    x_half = SKIN_HALF_LR_MM + MARGIN_MM
    fov = None
    if pad_outside_fov is not None:
        radius = max(x_half, (y_hi - y_lo) / 2)
        y_mid = (y_hi + y_lo) / 2
        x_half, y_lo, y_hi = radius, y_mid - radius, y_mid + radius
        fov = (y_mid, radius)
    grid = PhantomGrid([-x_half, y_lo, z_lo], [x_half, y_hi, z_hi], spacing)

    values = np.full(grid.shape, AIR_HU, dtype=np.float32)
    # Torso: fat under the skin, soft tissue inside; an ellipse per axial slice centred on the axis.
    yc = skin_centre_y(grid.z).astype(np.float32)
    dx = grid.x[None, None, :]
    dy = grid.y[None, :, None] - yc[:, None, None]
    paint(values, sd_ellipse(dx, dy, SKIN_HALF_LR_MM, skin_half_ap), FAT_HU, width)
    paint(values, sd_ellipse(dx, dy, SKIN_HALF_LR_MM - FAT_MM, skin_half_ap - FAT_MM), SOFT_TISSUE_HU, width)
    del dx, dy

    table_mask = np.zeros(grid.shape, dtype=bool)
    if with_table:
        d_table = sd_range(grid.y, table_top - TABLE_THICKNESS_MM, table_top)[None, :, None]
        paint(values, np.broadcast_to(d_table, grid.shape), TABLE_HU, width)
        table_mask |= d_table < 0

    # Tubes along the column, one segment per level between the mid-disc planes: disc, canal, vessel, mediastinum.
    vessel_mask = np.zeros(grid.shape, dtype=bool)
    keepout = np.zeros(grid.shape, dtype=np.uint8)
    for idx, lv in enumerate(column):
        p = _posterior_layout(lv)
        cv, canal_lr, canal_ap = p["canal"]
        vu, vv = _vessel_centre_uv(lv, overlap)
        r = VESSEL_RADIUS_MM
        tubes = _mediastinal_tubes(lv, p["canal"]) if with_mediastinum else {}
        aorta = with_vessel or (with_mediastinum and _in_levels(lv.name, "T4-T12", "L1-L5"))
        u_lo = min(-lv.half_lr, vu - r) - 2.0 if aorta else -lv.half_lr - 2.0
        v_hi = max([lv.half_ap] + [vv + r] * aorta + [c[1] + radii[1] for c, radii, _ in tubes.values()]) + 2.0
        reach = abs(v_hi) + abs(cv - canal_ap) + abs(u_lo)
        tilt = np.tan(np.radians(abs(per_disc)) / 2) * reach + 2.0
        # The end segments run on to the grid's top or bottom.
        if idx > 0:
            w_hi = lv.height / 2 + lv.disc_above / 2 + tilt
        else:
            w_hi = (z_hi - lv.centre[2]) / abs(lv.axis[2]) + reach * abs(lv.axis[1]) + 2.0
        if idx < len(column) - 1:
            w_lo = -(lv.height / 2 + lv.disc_below / 2 + tilt)
        else:
            w_lo = -((lv.centre[2] - z_lo) / abs(lv.axis[2]) + reach * abs(lv.axis[1]) + 2.0)
        lo = np.array([u_lo, cv - canal_ap - 2.0, w_lo])
        hi = np.array([lv.half_lr + 2.0, v_hi, w_hi])
        ks, js, is_ = grid.box(_box_corners(lv, lo, hi), width)
        if ks.start >= ks.stop or js.start >= js.stop:
            continue
        y, z = grid.yz(ks, js)
        u, v, w = lv.local(grid.x[is_], y, z)
        inside = np.ones(v.shape, dtype=bool)
        if idx > 0:
            jp, jn = joints[idx - 1]
            inside &= ((y - jp[1]) * jn[1] + (z - jp[2]) * jn[2] >= 0)[..., None]
        if idx < len(column) - 1:
            jp, jn = joints[idx]
            inside &= ((y - jp[1]) * jn[1] + (z - jp[2]) * jn[2] < 0)[..., None]
        big = np.float32(1e3)
        sub = values[ks, js, is_]
        paint(sub, np.where(inside, sd_ellipse(u, v, lv.half_lr, lv.half_ap), big), DISC_HU, width)
        paint(sub, np.where(inside, sd_ellipse(u, v - cv, canal_lr, canal_ap), big), CSF_HU, width)
        ko = keepout[ks, js, is_]
        if aorta:
            d_vessel = np.where(inside, sd_ellipse(u - vu, v - vv, r, r), big)
            paint(sub, d_vessel, VESSEL_HU, width)
            vessel_mask[ks, js, is_] |= d_vessel < 0
            if with_mediastinum:
                ko[d_vessel < 0] = KEEP_OUT_LABELS["aorta"]
        for name, (c, radii, hu) in tubes.items():
            d = np.where(inside, sd_ellipse(u - c[0], v - c[1], *radii), big)
            paint(sub, d, hu, width)
            ko[d < 0] = KEEP_OUT_LABELS[name]
        values[ks, js, is_] = sub
    if with_mediastinum:
        _paint_heart(values, keepout, grid, column, width)

    # Bone, painted last: posterior elements, then the body over the pedicle roots.
    bone_mask = np.zeros(grid.shape, dtype=bool)
    body_mask = np.zeros(grid.shape, dtype=bool)
    labels = np.zeros(grid.shape, dtype=np.uint8)
    truths = []
    for idx, lv in enumerate(column):
        ks, js, is_ = grid.box(_box_corners(lv, *_local_extent(lv)), width)
        y, z = grid.yz(ks, js)
        u, v, w = lv.local(grid.x[is_], y, z)
        sub = values[ks, js, is_]
        d_post, d_core = _posterior_sd(lv, u, v, w)
        paint(sub, d_post, POSTERIOR_HU, width)
        paint(sub, d_core, PEDICLE_CORE_HU, width)
        d_body = np.maximum(sd_ellipse(u, v, lv.half_lr, lv.half_ap), np.abs(w) - lv.height / 2)
        d_spongy = np.maximum(
            sd_ellipse(u, v, lv.half_lr - CORTEX_MM, lv.half_ap - CORTEX_MM), np.abs(w) - (lv.height / 2 - CORTEX_MM)
        )
        paint(sub, d_body, CORTICAL_HU, width)
        # Cancellous core: per-vertebra density and a smooth trabecular-like texture, mostly below 226 HU.
        density = CANCELLOUS_HU + rng.uniform(-15.0, 15.0)
        texture = np.zeros(d_spongy.shape, dtype=np.float32)
        for _ in range(3):
            kvec = rng.normal(size=3)
            kvec *= 2 * np.pi / rng.uniform(5.0, 12.0) / np.linalg.norm(kvec)
            phase = (kvec[1] * y + kvec[2] * z)[..., None] + kvec[0] * grid.x[is_][None, None, :]
            texture += np.cos(phase + rng.uniform(0, 2 * np.pi)).astype(np.float32)
        f = cover(d_spongy, width)
        sub += f * (density + 12.0 * texture - sub)
        values[ks, js, is_] = sub
        bone = (d_post < 0) | (d_body < 0)
        bone_mask[ks, js, is_] |= bone
        body_mask[ks, js, is_] |= d_body < 0
        labels[ks, js, is_][bone] = idx + 1
        truths.append(_truth(lv, idx + 1))

    if noise_hu:
        values += rng.standard_normal(grid.shape, dtype=np.float32) * np.float32(noise_hu)
    array = np.clip(np.rint(values), MIN_HU, MAX_HU).astype(np.int16)
    del values
    vessel_mask &= ~bone_mask
    keepout[bone_mask] = 0
    if fov is not None:
        y_mid, radius = fov
        outside = (grid.x[None, :] ** 2 + (grid.y[:, None] - y_mid) ** 2) > radius**2
        array[:, outside] = int(pad_outside_fov)
        for m in (table_mask, vessel_mask, bone_mask, body_mask):
            m[:, outside] = False
        labels[:, outside] = 0
        keepout[:, outside] = 0

    ph = SpinePhantom(
        array=array,
        ijk_to_ras=grid.ijk_to_ras,
        spacing=spacing,
        bone_mask=bone_mask,
        vertebra_labels=labels,
        table_mask=table_mask,
        vessel_mask=vessel_mask,
        vertebrae=truths,
        axis_points=axis_points,
        body_mask=body_mask,
        keepout_labels=keepout,
        kyphosis_deg=float(kyphosis_deg),
        seed=seed,
        info={
            "noise_hu": noise_hu,
            "with_table": with_table,
            "with_vessel": with_vessel,
            "pad_outside_fov": pad_outside_fov,
            "levels": levels,
            "with_mediastinum": with_mediastinum,
            "mirror_lr": False,
        },
    )
    return mirror_lr_phantom(ph) if mirror_lr else ph


def mirror_lr_phantom(ph: SpinePhantom) -> SpinePhantom:
    """The phantom mirrored left-right: voxels flipped along i (the grid is symmetric about x = 0) and every truth
    point and direction with R negated; pedicles stay ordered [right, left]."""
    from dataclasses import replace

    x_ends = ph.ijk_to_ras_points([[0, 0, 0], [ph.array.shape[2] - 1, 0, 0]])[:, 0]
    if not np.isclose(x_ends[0], -x_ends[1]):
        raise ValueError("The phantom's grid is not symmetric about x = 0; it cannot be mirrored by flipping.")
    flip = np.array([-1.0, 1.0, 1.0])

    def voxels(m):
        return None if m is None else np.ascontiguousarray(m[:, :, ::-1])

    def endplate(e):
        return Endplate(e.centre * flip, e.normal * flip, e.anterior * flip, e.radius_lr, e.radius_ap, e.level)

    truths = [
        replace(
            v,
            body_centre=v.body_centre * flip,
            superior_endplate=endplate(v.superior_endplate),
            inferior_endplate=endplate(v.inferior_endplate),
            axis_direction=v.axis_direction * flip,
            canal_centre=None if v.canal_centre is None else v.canal_centre * flip,
            pedicle_centres=None if v.pedicle_centres is None else (v.pedicle_centres * flip)[::-1].copy(),
        )
        for v in ph.vertebrae
    ]
    masks = {k: voxels(getattr(ph, k)) for k in ("array", "bone_mask", "vertebra_labels", "table_mask", "vessel_mask",
                                                  "body_mask", "keepout_labels")}
    return replace(ph, vertebrae=truths, axis_points=ph.axis_points * flip,
                   info={**ph.info, "mirror_lr": not ph.info.get("mirror_lr", False)}, **masks)


def _in_levels(name: str, *ranges) -> bool:
    """Whether vertebra ``name`` lies in one of the ranges ("T4-T12", "C1-C7"), same region only."""
    region, n = name[:1].upper(), int(name[1:])
    for r in ranges:
        a, b = r.split("-")
        if region == a[0] and int(a[1:]) <= n <= int(b[1:]):
            return True
    return False


def _mediastinal_tubes(lv: _Level, canal) -> dict:
    """{name: ((u, v) centre, (radius_u, radius_v), HU)} of the tubes running along level ``lv`` (local frame)."""
    cv, canal_lr, canal_ap = canal
    tubes = {}
    v_eso = lv.half_ap + 1.5 + ESOPHAGUS_RADIUS_MM  # 1.5 mm of tissue in front of the body, a little to the right
    if _in_levels(lv.name, "C1-C7", "T1-T12"):
        tubes["esophagus"] = ((3.0, v_eso), (ESOPHAGUS_RADIUS_MM, ESOPHAGUS_RADIUS_MM), ESOPHAGUS_HU)
    if _in_levels(lv.name, "C1-C7", "T1-T4"):  # the carina is at T4-T5
        v_tr = v_eso + ESOPHAGUS_RADIUS_MM + 1.0 + TRACHEA_RADIUS_MM
        tubes["trachea"] = ((0.0, v_tr), (TRACHEA_RADIUS_MM, TRACHEA_RADIUS_MM), AIR_HU)
    if _in_levels(lv.name, "C1-C7", "T1-T12", "L1-L1"):  # the conus ends at L1-L2; cauda equina (CSF) below
        tubes["spinal_cord"] = ((0.0, cv), (0.55 * canal_lr, 0.55 * canal_ap), CORD_HU)
    return tubes


def _paint_heart(values, keepout, grid, column, width) -> None:
    """The heart: a contrast blood pool in front of T5-T9 (those present), behind the sternum, left of the midline,
    separated from the oesophagus and the aorta by a few mm of tissue."""
    mid = [lv for lv in column if _in_levels(lv.name, "T5-T9")]
    if not mid:
        return
    top = mid[0].centre - mid[0].axis * (mid[0].height / 2 + mid[0].disc_above / 2)
    bottom = mid[-1].centre + mid[-1].axis * (mid[-1].height / 2 + mid[-1].disc_below / 2)
    axis = unit(bottom - top)
    lateral = np.array([1.0, 0.0, 0.0])
    anterior = unit(np.mean([lv.anterior for lv in mid], axis=0))
    r_lr, r_ap, r_si = 30.0, 22.0, 0.5 * float(np.linalg.norm(bottom - top)) + 5.0
    gap = max(lv.half_ap for lv in mid) + 1.5 + 2 * ESOPHAGUS_RADIUS_MM + 1.5
    centre = 0.5 * (top + bottom) + anterior * (gap + r_ap) - lateral * 8.0
    ks, js, is_ = grid.box([centre - max(r_lr, r_ap, r_si), centre + max(r_lr, r_ap, r_si)], width)
    y, z = grid.yz(ks, js)
    dx = (grid.x[is_] - centre[0])[None, None, :]
    dy, dz = (y - centre[1])[..., None], (z - centre[2])[..., None]
    a = dx
    b = dy * anterior[1] + dz * anterior[2]
    c = dy * axis[1] + dz * axis[2]
    g = np.sqrt((a / r_lr) ** 2 + (b / r_ap) ** 2 + (c / r_si) ** 2)
    grad = np.sqrt((a / r_lr**2) ** 2 + (b / r_ap**2) ** 2 + (c / r_si**2) ** 2)
    d = ((g - 1.0) * g / np.maximum(grad, 1e-9)).astype(np.float32)
    sub = values[ks, js, is_]
    paint(sub, d, HEART_HU, width)
    values[ks, js, is_] = sub
    keepout[ks, js, is_][d < 0] = KEEP_OUT_LABELS["heart"]


def _truth(lv: _Level, label: int) -> VertebraTruth:
    h2 = lv.height / 2
    sup = Endplate(lv.centre - lv.axis * h2, -lv.axis, lv.anterior, lv.half_lr, lv.half_ap, lv.name)
    inf = Endplate(lv.centre + lv.axis * h2, lv.axis, lv.anterior, lv.half_lr, lv.half_ap, lv.name)
    p = _posterior_layout(lv)
    cv = p["canal"][0]
    ped_u, ped_w = p["pedicle"][0], p["pedicle"][1]
    ped_v = 0.5 * (p["pedicle"][4] - lv.half_ap)  # isthmus: between the body's back and the arch
    return VertebraTruth(
        name=lv.name,
        label=label,
        body_centre=lv.centre.copy(),
        superior_endplate=sup,
        inferior_endplate=inf,
        body_height=float(lv.height),
        axis_direction=lv.axis.copy(),
        canal_centre=lv.to_ras([0.0, cv, 0.0])[0],
        pedicle_centres=lv.to_ras([[ped_u, ped_v, ped_w], [-ped_u, ped_v, ped_w]]),
    )
