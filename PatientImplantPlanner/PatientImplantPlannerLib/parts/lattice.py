"""Porous bone-interface layer: a gyroid lattice fused to the solid core of an implant footplate.

The bone-contact layer of a footplate (the part of the implant within ``layer_thickness_mm`` of the contact plane,
optionally limited to an elliptic footprint) is replaced by a triply periodic minimal-surface lattice so bone can
grow in. Published reference: pores 500-600 um, 70 % porosity.

Which lattice. The gyroid "network" solid (solid where g(p) < t, g = sin x cos y + sin y cos z + sin z cos x,
x = 2 pi p / L) is the default: calibrated on a unit cell, 70 % porosity with 550 um pores gives a 0.96 mm cell
whose struts' largest inscribed spheres are about 0.32 mm across, comfortably printable by titanium powder-bed
fusion (LPBF). The sheet gyroid (solid where |g| < t) splits the void into two labyrinths, so for the same pores
and porosity it needs a 1.5 mm cell with walls only about 0.22 mm thick, at the limit of what titanium LPBF builds
reliably; it is available as ``kind="sheet_gyroid"`` but not the default. Both have one connected solid and a
connected void (no closed cells: powder can be removed, bone can grow through). A warning is returned when the
calibrated strut (or wall) size is below 200 um (e.g. 300 um pores at 85 % porosity: ~100 um struts).

Calibration (measured, not guessed). Porosity fixes the level t (a quantile of g over a period); pore size then
fixes the cell L because the pore diameter scales with L: pore = c(t) * L, with c measured once per porosity on a
periodic unit cell with the same pore measurement as used on the part, and cached (~0.2 s). On the part the level
is re-fitted to the quantile of g at random points of the layer, so the porosity of a thin layer is hit even when
it is not a whole number of cells thick.

Definitions used for the measured figures:
- porosity = 1 - (lattice volume inside the layer) / (volume of the layer region), from the exact meshes;
- pore size = mean diameter of the maximal inscribed spheres of the void, one per pore: local maxima (3x3x3) of the
  Euclidean distance transform of the void voxels, one per plateau, dropping any whose sphere contains the centre
  of a larger one; diameter = 2 x distance from the void voxel centre to the nearest solid voxel centre, sampled at
  about cell / 24.6 (within ~2 % of 48 samples a cell). On the part the result mesh is voxelised, sphere centres are
  restricted to the layer, and outside the layer (bone side, core, outside the footprint) the lattice pattern is
  continued: the figure is the pore size of the lattice as built, not of half-pores cut by the layer's faces.

Measured on a 20 x 14 mm footplate (1.5 mm layer): porosity within 2 points and pore size within 3 % of the
target over the whole range.

Geometry is done in the plane frame (u = anterior, v = lateral, w = normal out of the implant into bone). The pores
(the gyroid's void) are meshed once per tile of periods and copied (``gyrocell.pore_cells``; the sheet gyroid:
``gyroid.pore_mesh`` over the layer as a whole, as before): a 2 x 2 x 1-period tile's void surface is contoured
(cell / 12), every vertex moved onto the exact implicit surface, remeshed along it (``remesh``: isotropic to the
curvature, then every collapse the 27 um bound allows; the vertices on the tile's faces pinned so opposite faces
stay translates of each other) and every triangle with a point of its grid of sixths more than 27 um off split until
none does; the tile is closed with planar caps on its faces and cached (~0.8 s a new level). Copies of it cover
every tile the layer's samples reach, welded by index, the caps between copies dropped: one closed mesh of the void,
its outer caps outside the layer. The porous part is then the part minus the pores within the layer's prism, one
manifold3d boolean: the contact face, the layer's floor, the walls and a footprint are exact, and their edges with
the gyroid carry only the pore mesh's error. Chordal error over every triangle of the layer, cut edges included:
mean 7 um, max 27 um at the defaults (tested), at 300-330 triangles per mm3 of layer (about as many as the layer
remeshed at once by ``gyroid.pore_mesh``, which took ~55-80 s for a 40 x 30 mm plate against ~5 s tiled). Solid
pieces the pores cut off from the core are dropped. With ``cut_mm`` (the export) only each end's footplate slab
above the cut is made porous, once, and glued to every size along the cut loop: no boolean with the pores per size.
``overlap_mm`` only places that cut (bundle).
"""

import math
import time
from dataclasses import asdict, dataclass, field, fields
from typing import Callable, Optional, Sequence

import numpy as np

from ..core.errors import GeometryError, PlanError
from ..core.mesh import TriMesh, face_components, from_manifold, require_manifold3d, to_manifold
from ..core.progress import Progress
from .gyrocell import pore_cells
from .gyroid import (
    KINDS,
    MEASURE_SAMPLES_PER_CELL,
    MESH_SAMPLES_PER_CELL,
    VOXELS_PER_CELL,
    Calibration,
    _box,
    _grid,
    _implicit,
    calibrate,
    gyroid,
    inscribed_sphere_diameters,
    pore_mesh,
    voxelise,
)
from .porousends import _CACHE_SIZE, _glue_ends, _Piece, _porous_end, verify_closed

PORE_RANGE_UM = (300.0, 1000.0)
POROSITY_RANGE = (0.50, 0.85)
THICKNESS_RANGE_MM = (0.3, 5.0)
MIN_VOXELS_PER_CELL = 8  # coarser sampling does not resolve the struts
# Where the lattice is cut (contact face, walls, holes) flying edges bevels the edge by up to about half a step:
# the default step is at most 0.1 mm whatever the cell (large pores, sheet walls), so cut edges stay printer-sharp.
MAX_STEP_MM = 0.1
BYTES_PER_VOXEL = 600  # measured peak 520-920 bytes per sampled voxel (field, meshes, booleans)
MEASURE_MAX_VOXELS = 4_000_000  # pore size is measured in a central window at most this large
LEVEL_FIT_POINTS = 400_000  # random points in the layer the level is fitted on (porosity standard error < 0.1 pt)
MIN_PRINTABLE_STRUT_UM = 200.0  # below this titanium powder-bed fusion does not build struts reliably


@dataclass
class LatticeParameters:
    """Porous layer settings. Defaults follow the published case: 550 um pores, 70 % porosity, 1.5 mm layer."""

    layer_thickness_mm: float = 1.5
    pore_size_um: float = 550.0
    porosity: float = 0.70
    kind: str = "gyroid"
    voxel_mm: Optional[float] = None  # sampling step; default cell_size / 10
    max_voxels: int = 10_000_000  # budget for one layer box: ~6 GB at peak; a 60 x 45 mm footplate at defaults
    overlap_mm: float = 0.15  # clearance of the glue cut below the layer (bundle); the pores are cut exactly

    def validate(self) -> None:
        """Raise PlanError naming the bad value and its allowed range."""

        def bad(what: str, value, allowed: str) -> PlanError:
            return PlanError(f"Lattice {what} {value} is out of range.", f"Use {allowed}.")

        if self.kind not in KINDS:
            raise PlanError(f"Unknown lattice kind {self.kind!r}.", f"Use one of {', '.join(KINDS)}.")
        if not (PORE_RANGE_UM[0] <= self.pore_size_um <= PORE_RANGE_UM[1]):
            raise bad("pore size (um)", self.pore_size_um, f"{PORE_RANGE_UM[0]:.0f}-{PORE_RANGE_UM[1]:.0f} um")
        if not (POROSITY_RANGE[0] <= self.porosity <= POROSITY_RANGE[1]):
            raise bad("porosity", self.porosity, f"a fraction {POROSITY_RANGE[0]}-{POROSITY_RANGE[1]} (e.g. 0.70)")
        if not (THICKNESS_RANGE_MM[0] <= self.layer_thickness_mm <= THICKNESS_RANGE_MM[1]):
            raise bad("layer thickness (mm)", self.layer_thickness_mm,
                      f"{THICKNESS_RANGE_MM[0]}-{THICKNESS_RANGE_MM[1]} mm")
        if self.voxel_mm is not None and not (0.005 <= self.voxel_mm <= 0.5):
            raise bad("voxel size (mm)", self.voxel_mm, "0.005-0.5 mm, or leave it empty for about cell size / 12")
        if self.voxel_mm is not None and self.voxel_mm > self.cell_size_mm() / MIN_VOXELS_PER_CELL:
            raise PlanError(
                f"Lattice voxel size {self.voxel_mm} mm is too coarse for a {self.cell_size_mm():.2f} mm cell.",
                f"Use at most {self.cell_size_mm() / MIN_VOXELS_PER_CELL:.3f} mm, or leave it empty.",
            )
        if int(self.max_voxels) <= 0:
            raise bad("voxel budget", self.max_voxels, "a positive number of voxels")
        if not (0.1 <= self.overlap_mm <= 1.0):
            raise bad("overlap into the core (mm)", self.overlap_mm, "0.1-1.0 mm")

    def calibration(self) -> "Calibration":
        return calibrate(self.kind, self.porosity)

    def cell_size_mm(self) -> float:
        """Gyroid cell size L giving the target pore size at the target porosity (unit-cell calibration)."""
        return self.pore_size_um / 1000.0 / self.calibration().pore_per_cell

    def step_mm(self) -> float:
        return float(self.voxel_mm) if self.voxel_mm else min(self.cell_size_mm() / VOXELS_PER_CELL, MAX_STEP_MM)

    def mesh_step_mm(self) -> float:
        """Grid step the pores are meshed at (the cell's contour takes at least gyrocell.CELL_SAMPLES a period;
        see :func:`gyroid.pore_mesh`): coarse for the network gyroid; the sheet's thin walls keep the fine step."""
        if self.voxel_mm or self.kind == "sheet_gyroid":
            return self.step_mm()
        return self.cell_size_mm() / MESH_SAMPLES_PER_CELL

    def as_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "LatticeParameters":
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in (d or {}).items() if k in names})


@dataclass
class LatticeResult:
    mesh: TriMesh  # the whole part: solid core fused with the lattice layer, verified watertight
    layer_mesh: TriMesh  # the lattice inside the layer only
    measured_porosity: float  # 1 - lattice volume / layer volume, in the layer, from the meshes
    measured_pore_size_um: float  # mean maximal-inscribed-sphere diameter of the void (see module docstring)
    cell_size_mm: float
    level: float  # t actually used (solid where g < t; sheet: |g| < t)
    layer_volume_mm3: float
    voxels: int  # samples of the layer box used to build the lattice
    seconds: float
    voxel_mm: float = 0.0
    strut_size_um: float = 0.0  # calibrated mean maximal-inscribed-sphere diameter of the solid (min feature guide)
    pore_count: int = 0  # inscribed-sphere maxima the pore size was averaged over
    fragments_removed: int = 0  # lattice pieces not attached to the core, dropped
    fragments_volume_mm3: float = 0.0
    triangles: int = 0
    warnings: list = field(default_factory=list)  # e.g. struts too thin to print

    def summary(self) -> dict:
        """Plain numbers for the design record (no meshes)."""
        return {
            "measured_porosity": round(self.measured_porosity, 4),
            "measured_pore_size_um": round(self.measured_pore_size_um, 1),
            "strut_size_um": round(self.strut_size_um, 1),
            "cell_size_mm": round(self.cell_size_mm, 4),
            "level": round(self.level, 4),
            "layer_volume_mm3": round(self.layer_volume_mm3, 2),
            "voxel_mm": round(self.voxel_mm, 4),
            "voxels": int(self.voxels),
            "triangles": int(self.triangles),
            "pore_count": int(self.pore_count),
            "fragments_removed": int(self.fragments_removed),
            "fragments_volume_mm3": round(self.fragments_volume_mm3, 4),
            "seconds": round(self.seconds, 2),
            "warnings": list(self.warnings),
        }


# ---- the implicit field ------------------------------------------------------------------------------


# ---- measurements ------------------------------------------------------------------------------------


# ---- unit-cell calibration ---------------------------------------------------------------------------


# ---- budget ------------------------------------------------------------------------------------------


def estimate_voxels(bounds, params: Optional[LatticeParameters] = None, check: bool = True) -> int:
    """Samples needed for a layer box ``bounds`` ([[min xyz], [max xyz]] or a size (3,), mm) at the parameters'
    step. With ``check`` raises PlanError when it exceeds ``params.max_voxels`` - before anything is allocated.
    """
    params = params or LatticeParameters()
    b = np.asarray(bounds, dtype=float)
    size = b[1] - b[0] if b.ndim == 2 else b
    h = params.step_mm()
    n = int(np.prod(np.ceil(np.maximum(size, 0.0) / h).astype(np.int64) + 5))
    if check and n > params.max_voxels:
        gb = n * BYTES_PER_VOXEL / 1e9
        raise PlanError(
            f"The porous layer's requested resolution needs {n:,} voxels ({gb:.1f} GB) > budget of "
            f"{int(params.max_voxels):,} voxels.",
            "Raise the pore size or the voxel size, make the layer or footprint smaller, or raise the budget.",
        )
    return n


# ---- geometry helpers --------------------------------------------------------------------------------


def plane_frame(centre, normal, anterior=None) -> np.ndarray:
    """4x4 transform world -> plane frame (u = anterior, v = normal x anterior, w = normal, origin = centre)."""
    w = np.asarray(normal, dtype=float)
    if np.linalg.norm(w) == 0:
        raise PlanError("The contact plane normal is zero.", "Give the direction pointing out of the implant.")
    w = w / np.linalg.norm(w)
    a = np.asarray(anterior if anterior is not None else np.eye(3)[int(np.argmin(np.abs(w)))], dtype=float)
    a = a - np.dot(a, w) * w
    if np.linalg.norm(a) < 1e-6:
        raise PlanError("The anterior direction is parallel to the contact plane normal.",
                        "Give an anterior direction lying in the contact plane.")
    u = a / np.linalg.norm(a)
    v = np.cross(w, u)
    m = np.eye(4)
    m[:3, :3] = np.stack([u, v, w])
    m[:3, 3] = -m[:3, :3] @ np.asarray(centre, dtype=float)
    return m


def _zone(m3d, bottom_w: float, bbox, footprint_radii) -> object:
    """Prism from w = bottom_w up past the part: the footprint ellipse, or the whole bbox, extruded along w."""
    lo, hi = np.asarray(bbox[:3]), np.asarray(bbox[3:])
    top = hi[2] + 1.0
    if footprint_radii is None:
        size = (hi[0] - lo[0] + 2.0, hi[1] - lo[1] + 2.0, top - bottom_w)
        return m3d.Manifold.cube(size).translate((lo[0] - 1.0, lo[1] - 1.0, bottom_w))
    ra, rl = (float(r) for r in footprint_radii)
    cyl = m3d.Manifold.cylinder(top - bottom_w, 1.0, 1.0, 128)
    return cyl.scale((ra, rl, 1.0)).translate((0.0, 0.0, bottom_w))


# ---- the porous layer --------------------------------------------------------------------------------


def _layer_params(params, thickness_mm):
    params = params or LatticeParameters()
    if thickness_mm is not None:
        params = LatticeParameters.from_dict({**params.as_dict(), "layer_thickness_mm": float(thickness_mm)})
    params.validate()
    return params


def _check_footprint(footprint_radii, anterior):
    if footprint_radii is not None:
        if len(footprint_radii) != 2 or min(footprint_radii) <= 0:
            raise PlanError(f"Footprint radii {footprint_radii} are invalid.", "Give two positive radii in mm.")
        if anterior is None and abs(footprint_radii[0] - footprint_radii[1]) > 1e-9:
            raise PlanError("An elliptic footprint needs the anterior direction.", "Pass anterior=(x, y, z).")


def _porous_piece(m3d, part_world, centre, normal, anterior, footprint_radii, params, prog) -> _Piece:
    """The lattice of one contact layer of ``part_world`` (a Manifold), made in the layer's plane frame.

    The contoured lattice is cached by its region in the plane frame: the oversized variants carry the same
    footplates, moved, so each end's lattice is made once per export.
    """
    th = params.layer_thickness_mm
    # Everything in the plane frame: the contact plane is w = 0, bone is w > 0.
    to_pf = plane_frame(centre, normal, anterior)
    from_pf = np.linalg.inv(to_pf)
    part = part_world.transform(to_pf[:3, :])
    bbox = part.bounding_box()
    layer_zone = _zone(m3d, -th, bbox, footprint_radii)
    region = part ^ layer_zone
    layer_volume = region.volume()
    if region.is_empty() or layer_volume <= 0:
        raise PlanError(
            "The porous layer region is empty: the contact plane does not cut the part.",
            "Put the plane centre on the part's bone-contact face with the normal pointing out of the implant.",
        )
    above = region.bounding_box()[5]
    if above > th:
        raise PlanError(
            f"The part reaches {above:.1f} mm beyond the contact plane, more than the {th} mm layer.",
            "Check the plane normal points out of the implant into the bone and the centre is on the contact face.",
        )
    rb = np.asarray(region.bounding_box(), dtype=float)
    n_vox = estimate_voxels([rb[:3] - params.step_mm(), rb[3:] + params.step_mm()], params)  # before any allocation
    cal = params.calibration()
    cell = params.cell_size_mm()
    h = params.mesh_step_mm()
    # Rounded to 1 um and 0.1 mm3: the same footplate moved to a variant's position differs by float32 noise.
    key = (tuple(np.round(rb, 3)), round(float(layer_volume), 1), tuple(sorted(params.as_dict().items())))
    cached = _CHUNK_CACHE.get(key)
    if cached is not None:
        prog.report(0.5, "Porous layer: reusing the lattice of the same footplate")
        piece, level = cached
    else:
        prog.report(0.1, "Porous layer: fitting the level to the layer")
        # Fit the level to this layer (a thin layer is not a whole number of cells thick): the quantile of the
        # field at random points of the layer voxels, jittered within each voxel so the grid's phase plays no part.
        # The pores: whole meshed periods over every cell the layer's samples (grown by a step) reach, closed off
        # beyond (outside the part, or below the layer's floor where the prism cuts them off exactly).
        lo, hi = rb[:3] - 6.0 * h, rb[3:] + 6.0 * h
        axes = _grid(lo, hi, h)
        region_mask = voxelise(from_manifold(region), [a[0] for a in axes], h, tuple(len(a) for a in axes))
        level = _fit_level(region_mask, axes, h, cell, params, cal.level)
        prog.report(0.3, "Porous layer: meshing the pores")
        pores = None
        if params.kind == "gyroid":  # the sheet's two close surfaces leave no tile within the bound (~20 s a try)
            try:
                pores, _ = pore_cells(axes, h, region_mask, cell, level, params.kind, h)
            except GeometryError:  # no tile could be made: the layer's pores as a whole
                pass
        if pores is None:
            pores, _ = pore_mesh(lo, hi, cell, level, params.kind, h, inside=region_mask)
        del region_mask
        piece = _lattice_manifold(m3d, pores) ^ layer_zone
        del pores
        if len(_CHUNK_CACHE) >= _CACHE_SIZE:  # lattices are large: keep the last few (both ends of an implant)
            _CHUNK_CACHE.pop(next(iter(_CHUNK_CACHE)))
        _CHUNK_CACHE[key] = (piece, level)
    return _Piece(piece.transform(from_pf[:3, :]), piece, layer_zone, key, layer_zone.transform(from_pf[:3, :]), to_pf,
                  region, level, cell, float(layer_volume), int(n_vox), float(h))


def _fuse(m3d, part, pieces: list):
    """The part minus every layer's pores; lattice pieces left unattached to the core are dropped."""
    n_parts = len(part.decompose())
    fused = m3d.Manifold.batch_boolean([part] + [p.piece for p in pieces], m3d.OpType.Subtract)
    parts = sorted(fused.decompose(), key=lambda q: -q.volume())
    kept, dropped = parts[:n_parts], [q for q in parts[n_parts:] if q.volume() > 0]
    result = m3d.Manifold.compose(kept) if len(kept) > 1 else kept[0]
    return result, (len(dropped), float(sum(q.volume() for q in dropped)))


def _layer_result(m3d, piece: _Piece, params, measure, fragments, seconds, layer_mesh=True,
                  lattice_volume=None) -> LatticeResult:
    # The lattice's part of the layer: the layer minus the pores (dropped fragments are a few mm3 at most).
    layer = piece.region_pf - piece.piece_pf if layer_mesh or (measure and lattice_volume is None) else None
    if lattice_volume is None and layer is not None:
        lattice_volume = layer.volume()
    if layer is not None:
        layer = layer.transform(np.linalg.inv(piece.to_pf)[:3, :])
    measured_porosity = 1.0 - lattice_volume / piece.layer_volume if lattice_volume is not None else float("nan")
    pores = (
        _measure_part_pores(m3d, piece.region_pf, params.kind, piece.cell, piece.level)
        if measure
        else np.zeros(0)
    )
    cal = params.calibration()
    strut_um = cal.strut_per_cell * piece.cell * 1000.0
    warnings = []
    if strut_um < MIN_PRINTABLE_STRUT_UM:
        warnings.append(
            f"Lattice struts are about {strut_um:.0f} um thick, below the {MIN_PRINTABLE_STRUT_UM:.0f} um titanium "
            "powder-bed fusion builds reliably: raise the pore size or lower the porosity."
        )
    return LatticeResult(
        mesh=None,
        layer_mesh=from_manifold(layer) if layer_mesh and layer is not None else None,
        measured_porosity=float(measured_porosity),
        measured_pore_size_um=float(pores.mean() * 1000.0) if len(pores) else float("nan"),
        cell_size_mm=float(piece.cell),
        level=piece.level,
        layer_volume_mm3=piece.layer_volume,
        voxels=piece.voxels,
        seconds=seconds,
        voxel_mm=piece.h,
        strut_size_um=float(strut_um),
        pore_count=int(len(pores)),
        fragments_removed=fragments[0],
        fragments_volume_mm3=fragments[1],
        warnings=warnings,
    )


def _verified(result) -> TriMesh:
    mesh = from_manifold(result)
    problems = verify_closed(mesh)
    if problems:
        raise GeometryError(f"The porous part failed verification: {'; '.join(problems)}.",
                            "Try a slightly different pore size or voxel size; report this as a bug.")
    return mesh


def apply_porous_layer(
    solid: TriMesh,
    centre,
    normal,
    thickness_mm: Optional[float] = None,
    params: Optional[LatticeParameters] = None,
    footprint_radii: Optional[Sequence[float]] = None,
    anterior=None,
    progress: Optional[Callable[[float, str], None]] = None,
    measure: bool = True,
    layer_mesh: bool = True,
) -> LatticeResult:
    """Make the bone-contact layer of ``solid`` porous and return the fused part with measurements.

    ``solid``: the implant (or a footplate) as a closed TriMesh, RAS mm. The layer is the part of the solid within
    ``thickness_mm`` (default ``params.layer_thickness_mm``) of the contact plane through ``centre`` whose
    ``normal`` points out of the implant into bone, limited to the ellipse ``footprint_radii`` = (radius along
    ``anterior``, radius along lateral) around ``centre`` if given. Result = solid - (pores within the layer's
    prism), one exact boolean; solid pieces the pores cut off from the core are dropped.
    ``measure`` False skips the pore-size measurement (NaN), e.g. for variants of a measured part. ``layer_mesh``
    False leaves out the lattice-only mesh of the layer (a measurement aid, not part of the printed part; one more
    boolean with the pores): the porosity then comes from the volumes of the part, its core and the result.
    """
    t0 = time.perf_counter()
    m3d = require_manifold3d()
    params = _layer_params(params, thickness_mm)
    _check_footprint(footprint_radii, anterior)
    prog = Progress(progress)
    prog.report(0.02, "Porous layer: preparing the part")
    part = to_manifold(solid)
    piece = _porous_piece(m3d, part, centre, normal, anterior, footprint_radii, params, prog.sub(0.02, 0.5))
    prog.report(0.5, "Porous layer: fusing the lattice to the core")
    result, fragments = _fuse(m3d, part, [piece])
    prog.report(0.75, "Porous layer: measuring")
    volume = None
    if not layer_mesh:  # the lattice's volume in the layer: the result minus the core (both cheap to measure)
        volume = float(result.volume() - (part - piece.zone).volume())
    out = _layer_result(m3d, piece, params, measure, fragments, 0.0, layer_mesh=layer_mesh, lattice_volume=volume)
    out.mesh = _verified(result)
    out.triangles = out.mesh.n_triangles
    out.seconds = time.perf_counter() - t0
    prog.report(1.0, "Porous layer: done")
    return out


def apply_porous_layers(solid: TriMesh, regions: Sequence, params: Optional[LatticeParameters] = None,
                        measure: bool = True, progress=None, as_manifold: bool = False,
                        cut_mm: Optional[float] = None) -> tuple:
    """Porous layers on several contact faces at once; returns (fused part, [LatticeResult per region]).

    The fused part is a verified TriMesh, or with ``as_manifold`` the manifold3d.Manifold itself.
    Without ``measure`` the results carry no porosity, pore size or layer mesh (variants of a measured part).

    ``regions``: objects with centre, normal (out of the implant), anterior, radius_ap, radius_lr and thickness_mm
    (implant.PorousRegion). Each layer's lattice is made on the plain part and cached (the oversized variants carry
    the nominal's footplates, moved).

    ``cut_mm``: depth below every contact plane where the part is the same solid in every size (a footplate slab
    between the layer and the strut). Each end above it is fused with its lattice once and cached; a size is then
    its own body below the cuts with the ends glued on along the cut loops (the same polygon on both sides): no
    boolean with a million-triangle lattice per size. Without it (or if the loops do not match) the lattices are
    fused to the whole part in one union.
    """
    t0 = time.perf_counter()
    m3d = require_manifold3d()
    prog = Progress(progress)
    part = to_manifold(solid)
    pieces, layer_params = [], []
    for n, r in enumerate(regions):
        lp = _layer_params(params, r.thickness_mm)
        footprint = (r.radius_ap, r.radius_lr)
        _check_footprint(footprint, r.anterior)
        sub = prog.sub(0.6 * n / len(regions), 0.6 * (n + 1) / len(regions))
        pieces.append(_porous_piece(m3d, part, r.centre, r.normal, r.anterior, footprint, lp, sub))
        layer_params.append(lp)
    prog.report(0.6, "Porous layers: fusing the lattices to the core")
    mesh, ends = None, None
    if cut_mm is not None:
        ends = [_porous_end(m3d, part, p, lp, float(cut_mm)) for p, lp in zip(pieces, layer_params)]
        mesh = _glue_ends(m3d, part, pieces, ends, float(cut_mm))
    if mesh is None:
        result, fragments = _fuse(m3d, part, pieces)
        ends = None
    prog.report(0.8, "Porous layers: measuring")
    seconds = time.perf_counter() - t0
    rows = []
    for n, (p, lp) in enumerate(zip(pieces, layer_params)):
        frag = ends[n].fragments if ends else fragments
        volume = ends[n].lattice_volume if ends else None
        rows.append(_layer_result(m3d, p, lp, measure, frag, seconds, layer_mesh=False, lattice_volume=volume))
    if mesh is not None:
        mesh, specks = _without_loose_specks(mesh, len(part.decompose()))
        for centre, volume in specks:  # counted with the nearest end's dropped fragments
            n = int(np.argmin([np.linalg.norm(np.asarray(r.centre) - centre) for r in regions]))
            count, vol = rows[n].fragments_removed, rows[n].fragments_volume_mm3
            rows[n].fragments_removed, rows[n].fragments_volume_mm3 = count + 1, vol + volume
        out = to_manifold(mesh) if as_manifold else mesh
    else:
        out = result if as_manifold else _verified(result)
    prog.report(1.0, "Porous layers: done")
    return out, rows


def _without_loose_specks(mesh: TriMesh, n_bodies: int) -> tuple:
    """(mesh, [(centre, volume mm3) of each shell dropped]): the part with only its ``n_bodies`` largest shells.
    A lattice speck can come loose where an end is cut or its slivers collapsed (measured on the demo: one 14-face
    shell of 0.1 mm next to the layer's rim); printed, it would be a loose grain in the pores."""
    labels = face_components(len(mesh.vertices), mesh.faces)
    n = int(labels.max()) + 1 if len(labels) else 0
    if n <= n_bodies:
        return mesh, []
    v = mesh.vertices[mesh.faces]
    signed = np.einsum("ij,ij->i", v[:, 0], np.cross(v[:, 1], v[:, 2])) / 6.0
    volume = np.bincount(labels, weights=signed, minlength=n)
    keep_ids = np.argsort(-volume)[:n_bodies]
    keep = np.isin(labels, keep_ids)
    dropped = [(v[labels == k].reshape(-1, 3).mean(axis=0), float(volume[k])) for k in range(n) if k not in keep_ids]
    used = np.zeros(len(mesh.vertices), dtype=bool)
    used[mesh.faces[keep]] = True
    remap = np.cumsum(used) - 1
    return TriMesh(mesh.vertices[used], remap[mesh.faces[keep]]), dropped


# The last contoured lattices (lattice within its region, plane frame), keyed by region and parameters.
_CHUNK_CACHE: dict = {}


def _fit_level(region_mask: np.ndarray, axes, h: float, cell: float, params: LatticeParameters,
               fallback: float) -> float:
    inside = np.flatnonzero(region_mask)
    if inside.size < 1000:
        return fallback
    rng = np.random.default_rng(0)  # fixed seed: regenerating a plan gives the same part
    pick = rng.choice(inside, size=min(inside.size, LEVEL_FIT_POINTS), replace=False)
    ijk = np.unravel_index(pick, region_mask.shape)
    x, y, z = (2.0 * np.pi / cell * (axes[d][ijk[d]] + rng.uniform(-h / 2, h / 2, pick.size)) for d in range(3))
    g = np.sin(x) * np.cos(y) + np.sin(y) * np.cos(z) + np.sin(z) * np.cos(x)
    return float(np.quantile(np.abs(g) if params.kind == "sheet_gyroid" else g, 1.0 - params.porosity))


def _measure_part_pores(m3d, region, kind: str, cell: float, level: float) -> np.ndarray:
    """Inscribed-sphere diameters (mm) of the lattice's pores in the layer ``region`` (plane frame).

    Sampled at cell / MEASURE_SAMPLES_PER_CELL, independent of the meshing step, as in the calibration.
    The grid covers the layer plus a margin of one cell, at most MEASURE_MAX_VOXELS (a central window of the
    footprint if larger); sphere centres count only inside the layer, and the lattice pattern is continued
    beyond it (bone side, core, outside the footprint), so what is measured is the pore size of the lattice as
    built, not half-pores cut by the layer's faces. The solid is the implicit the mesh is contoured from, at the
    level fitted to this layer: the mesh lies within the chordal error of it (tested: max <= 30 um), and voxelising
    a raw contour of a million triangles is slower and trips the stencil on its near-degenerate triangles.
    """
    h = cell / MEASURE_SAMPLES_PER_CELL
    rb = np.asarray(region.bounding_box(), dtype=float)
    lo, hi = rb[:3] - cell, rb[3:] + cell
    span = hi - lo
    n_full = np.prod(np.ceil(span / h) + 3)
    if n_full > MEASURE_MAX_VOXELS:  # shrink u, v around the middle; keep the full depth
        s = math.sqrt(MEASURE_MAX_VOXELS / n_full)
        mid = (lo + hi) / 2
        for i in (0, 1):
            lo[i], hi[i] = mid[i] - span[i] * s / 2, mid[i] + span[i] * s / 2
    axes = _grid(lo, hi, h)
    shape = tuple(len(a) for a in axes)
    window = _box(m3d, [a[0] - h for a in axes], [a[-1] + h for a in axes])
    in_layer = voxelise(from_manifold(region ^ window), [a[0] for a in axes], h, shape)
    solid = _implicit(gyroid(*[2.0 * np.pi * a / cell for a in axes]), kind) < level
    return inscribed_sphere_diameters(~solid, h, in_layer)


def _lattice_manifold(m3d, mesh: TriMesh):
    """Manifold straight from flying-edges output (its points are already shared); weld first only if needed."""
    mm = m3d.Mesh(vert_properties=np.ascontiguousarray(mesh.vertices, dtype=np.float32),
                  tri_verts=np.ascontiguousarray(mesh.faces, dtype=np.uint32))
    result = m3d.Manifold(mm)
    return result if result.status() == m3d.Error.NoError else to_manifold(mesh)


# ---- benchmark ---------------------------------------------------------------------------------------


def elliptic_plate(radius_a: float, radius_l: float, thickness: float, segments: int = 96) -> TriMesh:
    """A footplate phantom: elliptic plate centred on the origin, top face at z = 0, bottom at -thickness."""
    m3d = require_manifold3d()
    plate = m3d.Manifold.cylinder(thickness, 1.0, 1.0, segments).scale((radius_a, radius_l, 1.0))
    return from_manifold(plate.translate((0.0, 0.0, -thickness)))


def lattice_benchmark_rows(plates_mm=((20, 14), (30, 22), (40, 30)), params: Optional[LatticeParameters] = None,
                           thickness: float = 3.0) -> list:
    """Lattice generation time against layer volume on elliptic footplates (diameters in mm), for the report."""
    rows = []
    for da, dl in plates_mm:
        plate = elliptic_plate(da / 2.0, dl / 2.0, thickness)
        r = apply_porous_layer(plate, (0, 0, 0), (0, 0, 1), params=params, anterior=(1, 0, 0), layer_mesh=False)
        rows.append({"plate_mm": f"{da} x {dl} x {thickness}", **r.summary()})
    return rows
