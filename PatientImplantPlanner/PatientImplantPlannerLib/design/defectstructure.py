"""The mirror-defect implant's structure inside its envelope: solid skin, dense struts along the load path, the
porous body, the rod connector and the screw holes."""

from dataclasses import dataclass, field
from typing import Optional

import numpy as np

from ..core.anatomy import distance_to_polyline
from ..core.errors import GeometryError, PlanError
from ..core.mesh import (
    TriMesh,
    check_mesh,
    from_manifold,
    require_manifold3d,
    signed_distance,
    to_manifold,
)
from ..parts.gyroid import gyroid
from ..parts.lattice import LatticeParameters
from .defectenvelope import DefectResult, _drop_crumbs, _extended, _Grid
from .defectparams import (
    CONNECTOR_LENGTH_MM,
    CONNECTOR_WALL_MM,
    ROD_CLEARANCE_MM,
    ROD_SEAT_MAX_DEPTH_MM,
    ROD_SEAT_TOLERANCE_MM,
    SET_SCREW_DIAMETER_MM,
    MirrorDefectParameters,
    _nonzero,
)
from .screws import ScrewParameters, Trajectory, hole_specs, plan_screws


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
