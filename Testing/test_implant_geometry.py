"""Implant geometry measured on the meshes it produces: straight and kyphotic paths, profiles, footplates on the
endplate planes, screw holes, oversized variants, no twist, and every degenerate input refused."""

import numpy as np
import pytest
from measure import basis, fit_circle

from PatientImplantPlannerLib.core.anatomy import Endplate
from PatientImplantPlannerLib.core.errors import GeometryError, PlanError
from PatientImplantPlannerLib.core.mesh import check_mesh, to_manifold
from PatientImplantPlannerLib.design.implant import HoleSpec, build_implant, measurements
from PatientImplantPlannerLib.design.strut import ImplantParameters, profile_polygon, section_properties

# Lumbar-sized endplates (footplate semi-axes at fraction 0.7: 12.6 mm lateral, 9.8 mm antero-posterior).
R_LR, R_AP = 18.0, 14.0
HOLE_D = 3.7  # 3.5 mm screw + clearance
KYPHOSIS_R, KYPHOSIS_DEG = 150.0, 25.0


def straight_case():
    prox = Endplate([0, 0, 40], [0, 0, -1], [0, 1, 0], R_LR, R_AP, "L1")
    dist = Endplate([0, 0, -40], [0, 0, 1], [0, 1, 0], R_LR, R_AP, "L3")
    axis = np.array([[0, 0, 70.0], [0, 0, 10.0], [0, 0, -70.0]])
    return axis, prox, dist


def arc_point(alpha):
    """Kyphotic arc in the sagittal (y-z) plane, centre of curvature anterior at (0, R, 0)."""
    return np.array([0.0, KYPHOSIS_R * (1 - np.cos(alpha)), KYPHOSIS_R * np.sin(alpha)])


def kyphotic_case(axis_margin_deg=5.0):
    a0 = np.radians(KYPHOSIS_DEG / 2)

    def tangent(a):  # proximal -> distal (alpha decreasing)
        return np.array([0.0, -np.sin(a), -np.cos(a)])

    def anterior(a):
        return np.array([0.0, np.cos(a), -np.sin(a)])

    prox = Endplate(arc_point(a0), tangent(a0), anterior(a0), R_LR, R_AP, "T10")
    dist = Endplate(arc_point(-a0), -tangent(-a0), anterior(-a0), R_LR, R_AP, "L1")
    lim = a0 + np.radians(axis_margin_deg)
    axis = np.array([arc_point(a) for a in np.linspace(lim, -lim, 40)])
    return axis, prox, dist


def signed(mesh, plate):
    return (mesh.vertices - plate.centre) @ plate.normal


def local_slice(mesh, origin, x, y):
    """Polygons of the mesh cut by the plane through origin spanned by x, y (local 2-D coordinates)."""
    z = np.cross(x, y)
    rot = np.array([x, y, z], dtype=float)
    m = np.column_stack([rot, -rot @ np.asarray(origin, float)])
    return [np.asarray(p) for p in to_manifold(mesh).transform(m).slice(0.0).to_polygons()]




def measure_hole(mesh, hole, plate, depth):
    """Cut perpendicular to the hole axis where it is ``depth`` mm from the contact plane; fit the hole loop."""
    s = (depth - (hole.entry - plate.centre) @ plate.normal) / (hole.direction @ plate.normal)
    origin = hole.entry + s * hole.direction
    u, v = basis(hole.direction)
    loops = local_slice(mesh, origin, u, v)
    fits = [fit_circle(p) for p in loops]
    near = [f for f in fits if np.linalg.norm(f[0]) < 1.0]
    assert len(near) == 1, f"expected one hole loop around the axis, got {len(near)}"
    return near[0]


def holes_for(prox, dist, t):
    tilt = np.radians(15)
    return [
        HoleSpec("proximal", prox.centre + t * prox.normal + 9.0 * prox.lateral, -prox.normal, HOLE_D),
        HoleSpec(
            "distal",
            dist.centre + t * dist.normal - 9.0 * dist.lateral,
            -np.cos(tilt) * dist.normal - np.sin(tilt) * dist.lateral,
            HOLE_D,
        ),
    ]


@pytest.fixture(scope="module")
def kyphotic_nominal():
    axis, prox, dist = kyphotic_case()
    params = ImplantParameters()
    holes = holes_for(prox, dist, params.footplate_thickness_mm)
    return axis, prox, dist, params, holes, build_implant(axis, prox, dist, params, holes)


# ---- profiles and section properties -------------------------------------------------------------------------


def test_section_properties_match_analytic_values():
    r = 6.0
    circle = section_properties(ImplantParameters(diameter_mm=2 * r))
    assert circle["area_mm2"] == pytest.approx(np.pi * r**2, rel=0.01)
    assert circle["Ia_mm4"] == pytest.approx(np.pi * r**4 / 4, rel=0.01)
    assert circle["Il_mm4"] == pytest.approx(np.pi * r**4 / 4, rel=0.01)
    assert circle["polar_mm4"] == pytest.approx(np.pi * r**4 / 2, rel=0.01)
    rect = section_properties(
        ImplantParameters(profile="rounded_rectangle", width_mm=10, depth_mm=5, corner_radius_mm=0)
    )
    assert rect["area_mm2"] == pytest.approx(50.0, rel=1e-9)
    assert rect["Ia_mm4"] == pytest.approx(10 * 5**3 / 12, rel=1e-9)  # about the lateral axis
    assert rect["Il_mm4"] == pytest.approx(5 * 10**3 / 12, rel=1e-9)
    assert rect["I_min_mm4"] == pytest.approx(rect["Ia_mm4"], rel=1e-9)
    for profile in ("circle", "rounded_rectangle", "curved_plate"):
        poly = profile_polygon(ImplantParameters(profile=profile))
        x, y = poly[:, 0], poly[:, 1]
        assert (x * np.roll(y, -1) - np.roll(x, -1) * y).sum() > 0, f"{profile} polygon is not CCW"


# ---- straight path ---------------------------------------------------------------------------------------------


def test_straight_circle_strut_volume_contact_faces_and_profile():
    axis, prox, dist = straight_case()
    params = ImplantParameters()
    geom = build_implant(axis, prox, dist, params)
    check = check_mesh(geom.mesh)
    assert check.ok and check.n_components == 1, check.problems
    assert geom.length_mm == pytest.approx(80.0, abs=0.01)
    for plate in (prox, dist):
        d = signed(geom.mesh, plate)
        assert abs(d.min()) < 0.05  # contact face on the plane and the extreme in that direction
    # Volume: footplates plus the strut between their inner faces.
    t, r = params.footplate_thickness_mm, params.diameter_mm / 2
    strut = geom.mesh.volume() - geom.proximal_footplate.volume() - geom.distal_footplate.volume()
    assert strut == pytest.approx(np.pi * r**2 * (geom.length_mm - 2 * t), rel=0.02)
    # Diameter on a cut through the middle.
    mid = len(geom.strut_path) // 2
    loops = local_slice(geom.mesh, geom.strut_path[mid], geom.frames[mid, 0], geom.frames[mid, 1])
    assert len(loops) == 1
    centre, radius = fit_circle(loops[0])
    assert 2 * radius == pytest.approx(params.diameter_mm, abs=0.1)
    assert np.linalg.norm(centre) < 0.05
    m = measurements(geom, params)
    assert m["mass_g"] == pytest.approx(geom.mesh.volume() * 4.43e-3, rel=1e-9)
    assert m["axial_stiffness_ratio"] == pytest.approx((12 / 5.5) ** 2, rel=0.01)
    assert m["bending_stiffness_ratio"] == pytest.approx((12 / 5.5) ** 4, rel=0.01)


def test_rounded_rectangle_offset_measured_on_cut():
    axis, prox, dist = straight_case()
    params = ImplantParameters(
        profile="rounded_rectangle",
        width_mm=10,
        depth_mm=5,
        corner_radius_mm=1,
        offset_anterior_mm=2.0,
        offset_lateral_mm=-1.0,
    )
    geom = build_implant(axis, prox, dist, params)
    assert check_mesh(geom.mesh).ok
    # Cut through the axis' middle in the world frame: anterior = +y, lateral = T x A = +x here.
    loops = local_slice(geom.mesh, [0, 0, 0], np.array([0, 1.0, 0]), np.array([1.0, 0, 0]))
    assert len(loops) == 1
    p = loops[0]
    assert p[:, 0].max() - p[:, 0].min() == pytest.approx(5.0, abs=0.1)  # depth
    assert p[:, 1].max() - p[:, 1].min() == pytest.approx(10.0, abs=0.1)  # width
    assert (p[:, 0].max() + p[:, 0].min()) / 2 == pytest.approx(2.0, abs=0.05)
    assert (p[:, 1].max() + p[:, 1].min()) / 2 == pytest.approx(-1.0, abs=0.05)
    for plate in (prox, dist):
        assert abs(signed(geom.mesh, plate).min()) < 0.05


# ---- kyphotic path ---------------------------------------------------------------------------------------------


def test_kyphotic_circle_strut(kyphotic_nominal):
    axis, prox, dist, params, holes, geom = kyphotic_nominal
    check = check_mesh(geom.mesh)
    assert check.ok and check.n_components == 1, check.problems
    arc = KYPHOSIS_R * np.radians(KYPHOSIS_DEG)
    assert geom.length_mm == pytest.approx(arc, abs=0.1)
    for plate in (prox, dist):
        assert abs(signed(geom.mesh, plate).min()) < 0.05
    # Pappus: tube volume = area x centre-line length between the footplates' inner faces.
    t = params.footplate_thickness_mm
    area = section_properties(params)["area_mm2"]
    strut = geom.mesh.volume() - geom.proximal_footplate.volume() - geom.distal_footplate.volume()
    strut += sum(geom.hole_volumes_mm3)  # the holes go through the footplates only
    assert strut == pytest.approx(area * (geom.length_mm - 2 * t), rel=0.02)
    mid = len(geom.strut_path) // 2
    loops = local_slice(geom.mesh, geom.strut_path[mid], geom.frames[mid, 0], geom.frames[mid, 1])
    assert len(loops) == 1
    assert 2 * fit_circle(loops[0])[1] == pytest.approx(params.diameter_mm, abs=0.1)
    # The path stays on the arc (smoothing shrinks it negligibly).
    centre = np.array([0.0, KYPHOSIS_R, 0.0])
    assert np.abs(np.linalg.norm(geom.strut_path - centre, axis=1) - KYPHOSIS_R).max() < 0.1


def test_frames_do_not_twist_on_kyphotic_path(kyphotic_nominal):
    geom = kyphotic_nominal[-1]
    f = geom.frames
    assert np.allclose(np.einsum("nij,nkj->nik", f, f), np.eye(3)[None], atol=1e-9)  # orthonormal
    assert np.allclose(np.linalg.det(f), 1.0)  # right-handed
    anterior, tangent = f[:, 0], f[:, 2]
    assert np.abs((anterior * tangent).sum(axis=1)).max() < 1e-9
    sagittal = np.cross([1.0, 0, 0], tangent)  # in-plane, perpendicular to the tangent, anterior-pointing
    sagittal /= np.linalg.norm(sagittal, axis=1, keepdims=True)
    deviation = np.degrees(np.arccos(np.clip((anterior * sagittal).sum(axis=1), -1, 1)))
    assert deviation.max() < 5.0
    # The path really is curved: the tangent turns by the kyphosis angle.
    turn = np.degrees(np.arccos(tangent[0] @ tangent[-1]))
    assert turn == pytest.approx(KYPHOSIS_DEG, abs=1.0)


def test_axis_stopping_short_is_extrapolated_to_the_planes():
    axis, prox, dist = kyphotic_case(axis_margin_deg=-3.0)  # axis ends 3 deg (~8 mm) inside the gap
    geom = build_implant(axis, prox, dist, ImplantParameters(diameter_mm=10))
    assert check_mesh(geom.mesh).ok
    for plate in (prox, dist):
        assert abs(signed(geom.mesh, plate).min()) < 0.05
    assert np.linalg.norm(geom.axis_path[0] - prox.centre) < 1e-9
    assert np.linalg.norm(geom.axis_path[-1] - dist.centre) < 1e-9


def test_curved_plate_profile_on_kyphotic_path():
    axis, prox, dist = kyphotic_case()
    params = ImplantParameters(
        profile="curved_plate", width_mm=10, depth_mm=5, plate_curvature_radius_mm=20, offset_anterior_mm=3.0
    )
    geom = build_implant(axis, prox, dist, params)
    assert check_mesh(geom.mesh).ok
    mid = len(geom.strut_path) // 2
    loops = local_slice(geom.mesh, geom.strut_path[mid], geom.frames[mid, 0], geom.frames[mid, 1])
    assert len(loops) == 1
    p = loops[0]
    assert p[:, 1].max() - p[:, 1].min() == pytest.approx(10.0, abs=0.1)
    poly = profile_polygon(params)
    ro = params.plate_curvature_radius_mm + params.depth_mm / 2
    centre = np.array([poly[:, 0].max() - ro, 0.0])  # centre of curvature, posterior of the plate
    assert centre[0] < -15
    radial = np.linalg.norm(p - centre, axis=1)
    assert radial.max() - radial.min() == pytest.approx(params.depth_mm, abs=0.1)
    assert abs(p[np.argmax(p[:, 0]), 1]) < 1.0  # bulges anteriorly in the middle: concave towards posterior
    q = np.roll(p, -1, axis=0)
    assert abs((p[:, 0] * q[:, 1] - q[:, 0] * p[:, 1]).sum() / 2) == pytest.approx(
        section_properties(params)["area_mm2"], rel=0.01
    )


# ---- holes and variants --------------------------------------------------------------------------------------


def test_hole_diameters_measured_on_mesh(kyphotic_nominal):
    axis, prox, dist, params, holes, geom = kyphotic_nominal
    assert len(geom.holes) == 2 and all(v > 1.0 for v in geom.hole_volumes_mm3)
    for hole, plate in zip(geom.holes, (prox, dist)):
        centre, radius = measure_hole(geom.mesh, hole, plate, params.footplate_thickness_mm / 2)
        assert 2 * radius == pytest.approx(hole.diameter_mm, abs=0.1)
        assert np.linalg.norm(centre) < 0.05


@pytest.mark.parametrize("extra", [2.0, 3.0, 4.0])
def test_variants_are_exactly_longer_with_distal_holes_moved(kyphotic_nominal, extra):
    axis, prox, dist, params, holes, nominal = kyphotic_nominal
    geom = build_implant(axis, prox, dist, params, holes, extra_length_mm=extra)
    assert check_mesh(geom.mesh).ok
    assert geom.length_mm - nominal.length_mm == pytest.approx(extra, abs=0.05)
    # The distal end moved by exactly `extra` along the axis (here about the distal normal: the endplate is
    # square to the arc); the proximal end did not move.
    assert np.linalg.norm(geom.distal_shift) == pytest.approx(extra, abs=1e-9)
    assert np.degrees(np.arccos(-geom.distal_shift @ dist.normal / extra)) < 2.0
    assert signed(geom.mesh, dist).min() == pytest.approx(geom.distal_shift @ dist.normal, abs=1e-4)  # float32
    assert signed(geom.mesh, prox).min() == pytest.approx(0.0, abs=0.05)
    assert np.allclose(geom.holes[0].entry, holes[0].entry)
    assert np.allclose(geom.holes[1].entry, holes[1].entry + geom.distal_shift)
    # Measured on the mesh: the distal hole sits at the shifted place, same size; the proximal one is unchanged.
    shifted = Endplate(dist.centre + geom.distal_shift, dist.normal, dist.anterior, R_LR, R_AP)
    t = params.footplate_thickness_mm
    for hole, plate in ((holes[0], prox), (holes[1].shifted(geom.distal_shift), shifted)):
        centre, radius = measure_hole(geom.mesh, hole, plate, t / 2)
        assert np.linalg.norm(centre) < 0.05
        assert 2 * radius == pytest.approx(HOLE_D, abs=0.1)
    # Footplates keep their shape.
    assert geom.distal_footplate.volume() == pytest.approx(nominal.distal_footplate.volume(), rel=1e-6)
    assert geom.porous_regions[1].centre == pytest.approx(dist.centre + geom.distal_shift)


def test_porous_regions_face_the_bone(kyphotic_nominal):
    axis, prox, dist, params, holes, geom = kyphotic_nominal
    for region, plate in zip(geom.porous_regions, (prox, dist)):
        assert np.allclose(region.normal, -plate.normal)
        assert np.allclose(region.centre, plate.centre)
        assert region.radius_lr == pytest.approx(0.7 * R_LR)
        assert region.thickness_mm == params.porous_layer_mm
        assert set(region.as_dict()) >= {"centre", "normal", "radius_ap", "thickness_mm"}


def test_parameters_round_trip():
    p = ImplantParameters(profile="curved_plate", width_mm=11)
    assert ImplantParameters.from_dict(p.as_dict()) == p
    with pytest.raises(PlanError):
        ImplantParameters.from_dict({"diameter": 3})


# ---- refused input -----------------------------------------------------------------------------------------------


def _bad_cases():
    axis, prox, dist = straight_case()
    ok = ImplantParameters()
    same = Endplate(prox.centre, [0, 0, 1], [0, 1, 0], R_LR, R_AP)
    parallel = Endplate(prox.centre, [0, 1, 0], [0, 0, 1], R_LR, R_AP)
    tilted = Endplate(prox.centre, [0, np.sin(np.radians(75)), -np.cos(np.radians(75))], [0, 0, 1], R_LR, R_AP)
    flipped = Endplate(prox.centre, [0, 0, 1], [0, 1, 0], R_LR, R_AP)
    miss = HoleSpec("proximal", [60.0, 0, 0], [0, 0, 1], HOLE_D)
    # name: (inputs, words the message must contain)
    return {
        "same place": ((axis, prox, same, ok, (), 0.0), "same place"),
        "plane parallel to axis": ((axis, parallel, dist, ok, (), 0.0), "parallel"),
        "plane 75 deg to axis": ((axis, tilted, dist, ok, (), 0.0), "nearly parallel"),
        "normal points away from gap": ((axis, flipped, dist, ok, (), 0.0), "away from the gap"),
        "one axis point": ((axis[:1], prox, dist, ok, (), 0.0), "two distinct points"),
        "profile wider than footplate": ((axis, prox, dist, ImplantParameters(diameter_mm=22), (), 0.0), "footplate"),
        "offset pushes strut off footplate": (
            (axis, prox, dist, ImplantParameters(offset_anterior_mm=5), (), 0.0),
            "beyond the proximal footplate",
        ),
        "negative variant": ((axis, prox, dist, ok, (), -2.0), "extra length"),
        "absurd variant": ((axis, prox, dist, ok, (), 31.0), "extra length"),
        "hole misses": ((axis, prox, dist, ok, (miss,), 0.0), "misses the implant"),
        "zero diameter": ((axis, prox, dist, ImplantParameters(diameter_mm=0), (), 0.0), "diameter_mm"),
        "fraction zero": ((axis, prox, dist, ImplantParameters(footplate_fraction=0), (), 0.0), "footplate_fraction"),
        "fraction above one": (
            (axis, prox, dist, ImplantParameters(footplate_fraction=1.5), (), 0.0),
            "footplate_fraction",
        ),
        "negative thickness": (
            (axis, prox, dist, ImplantParameters(footplate_thickness_mm=-1), (), 0.0),
            "footplate_thickness_mm",
        ),
        "unknown profile": ((axis, prox, dist, ImplantParameters(profile="hexagon"), (), 0.0), "profile"),
        "corner radius too big": (
            (axis, prox, dist, ImplantParameters(profile="rounded_rectangle", corner_radius_mm=3), (), 0.0),
            "corner_radius_mm",
        ),
        "plate wraps around": (
            (
                axis,
                prox,
                dist,
                ImplantParameters(profile="curved_plate", width_mm=20, plate_curvature_radius_mm=5),
                (),
                0.0,
            ),
            "arc would close",
        ),
        "gap shorter than footplates": (
            (axis, prox, Endplate([0, 0, 36], [0, 0, 1], [0, 1, 0], R_LR, R_AP), ok, (), 0.0),
            "too short",
        ),
    }


BAD = _bad_cases()


@pytest.mark.parametrize("name", sorted(BAD))
def test_bad_input_is_refused(name):
    (axis, prox, dist, params, holes, extra), words = BAD[name]
    with pytest.raises((PlanError, GeometryError)) as info:
        build_implant(axis, prox, dist, params, holes, extra_length_mm=extra)
    assert words in info.value.problem
    assert info.value.fix  # every refusal says how to fix it


def test_anterior_plate_docks_on_footplates_moved_anteriorly():
    """A plate lying in front of the bodies: refused with centred footplates, built when they reach forward."""
    axis, prox, dist = straight_case()
    params = ImplantParameters(profile="curved_plate", width_mm=10.0, depth_mm=5.0, offset_anterior_mm=14.0)
    with pytest.raises(PlanError, match="footplate"):
        build_implant(axis, prox, dist, params)
    params.footplate_offset_anterior_mm = 8.0
    geom = build_implant(axis, prox, dist, params)
    assert check_mesh(geom.mesh).ok
    for plate, fp in ((prox, geom.proximal_footplate), (dist, geom.distal_footplate)):
        contact = fp.vertices[np.abs(signed(fp, plate)) < 1e-6]
        shift = (contact.mean(axis=0) - plate.centre) @ plate.anterior
        assert shift == pytest.approx(8.0, abs=0.05)
    region = geom.porous_regions[0]
    assert (region.centre - prox.centre) @ prox.anterior == pytest.approx(8.0, abs=1e-9)


def test_offset_strut_may_sit_outside_a_tight_bend_but_not_inside():
    """Only a strut offset towards the centre of curvature can fold over itself."""
    r, half = 45.0, np.radians(15.0)

    def point(a):  # centre of curvature anterior, at (0, r, 0)
        return np.array([0.0, r * (1 - np.cos(a)), r * np.sin(a)])

    def tangent(a):
        return np.array([0.0, -np.sin(a), -np.cos(a)])

    def anterior(a):
        return np.array([0.0, np.cos(a), -np.sin(a)])

    prox = Endplate(point(half), tangent(half), anterior(half), 30.0, 30.0, "L1")
    dist = Endplate(point(-half), -tangent(-half), anterior(-half), 30.0, 30.0, "L3")
    axis = np.array([point(a) for a in np.linspace(half + 0.1, -half - 0.1, 60)])
    outside = ImplantParameters(diameter_mm=8.0, offset_anterior_mm=-16.0, footplate_fraction=1.0,
                                footplate_offset_anterior_mm=-16.0)
    geom = build_implant(axis, prox, dist, outside)
    assert check_mesh(geom.mesh).ok
    # 28 + 4 mm towards the centre of a 45 mm bend: beyond the 1.5x safety margin (30 mm).
    inside = ImplantParameters(diameter_mm=8.0, offset_anterior_mm=28.0, footplate_fraction=1.0,
                               footplate_offset_anterior_mm=28.0)
    with pytest.raises(PlanError, match="inside of the bend"):
        build_implant(axis, prox, dist, inside)


def test_front_along_the_axis_names_the_endplate_to_check():
    """Where the endplates' front runs along the path (a face far across the spine bends the path towards it), the
    refusal says where and which endplate to check, not only that the orientation is undefined."""
    from PatientImplantPlannerLib.design.strut import path_frames

    _, prox, dist = straight_case()
    # The path leaves the proximal face forwards, along its front, before turning down the spine.
    path = np.vstack([np.linspace([0, -30.0, 40], [0, 0, 40], 16)[:-1], np.linspace([0, 0, 40.0], [0, 0, -40], 41)])
    with pytest.raises(PlanError) as info:
        path_frames(path, prox, dist)
    assert "proximal endplate (L1)" in info.value.problem and "RAS (0.0, -" in info.value.problem
    assert "drag its plane" in info.value.fix
    assert path_frames(path[15:], prox, dist).shape == (41, 3, 3)  # the straight part alone is fine


def test_a_face_far_across_the_axis_is_named_as_the_cause():
    """A face misread across the spine makes the strut leave its footplate (the implant falls apart) or bends the
    axis's end (the sweep would fold); both refusals name the face by this text. Only a face beyond
    SLANTED_FACE_DEG (25) from the axis is named, with its tilt."""
    from PatientImplantPlannerLib.design.implant import _slanted_faces

    axis, prox, _ = straight_case()
    for tilt, named in ((10.0, []), (45.0, ["the distal endplate plane lies 45 deg from the spinal axis"])):
        t = np.radians(tilt)
        dist = Endplate([0, 0, -40], [0, np.sin(t), np.cos(t)], [0, np.cos(t), -np.sin(t)], R_LR, R_AP, "L3")
        assert _slanted_faces(axis, prox, dist) == named
