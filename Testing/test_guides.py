"""PA12 surgical guides measured on the meshes they produce: docking guides reproduce the implant's ends,
drill sleeves lie on the planned trajectories with the planned bore, drill guides seat on the footplate with the
planned clearance and come off past the strut, labels are really cut, every size gets its guides, and bad
parameters are refused."""

from dataclasses import dataclass

import numpy as np
import pytest
from measure import basis, fit_circle

from PatientImplantPlannerLib.core.anatomy import Endplate
from PatientImplantPlannerLib.core.errors import PlanError
from PatientImplantPlannerLib.core.mesh import TriMesh, check_mesh, from_manifold, to_manifold, to_polydata
from PatientImplantPlannerLib.design.implant import HoleSpec, build_implant
from PatientImplantPlannerLib.design.strut import ImplantParameters
from PatientImplantPlannerLib.parts.guides import (
    GuideParameters,
    check_docking_room,
    docking_guide,
    drill_guide,
    guides_for_plan,
    strut_deviation_mm,
    stub_room_mm,
)
from PatientImplantPlannerLib.parts.textmesh import text_mesh, text_outline, text_size
from PatientImplantPlannerLib.record.values import MIN_GUIDE_WALL_MM

# Lumbar-sized endplates (footplates 12.6 x 9.8 mm semi-axes) on a kyphotic arc: nothing lines up with RAS axes.
R_LR, R_AP = 18.0, 14.0
ARC_R, ARC_DEG = 150.0, 25.0
T = 3.0  # footplate thickness
SCREW_D = 3.5
DRILL_D = 2.5


@dataclass
class Traj:
    name: str
    end: str
    entry: np.ndarray
    direction: np.ndarray


def arc_point(alpha):
    return np.array([0.0, ARC_R * (1 - np.cos(alpha)), ARC_R * np.sin(alpha)])


def kyphotic_case():
    a0 = np.radians(ARC_DEG / 2)

    def tangent(a):
        return np.array([0.0, -np.sin(a), -np.cos(a)])

    def anterior(a):
        return np.array([0.0, np.cos(a), -np.sin(a)])

    prox = Endplate(arc_point(a0), tangent(a0), anterior(a0), R_LR, R_AP, "T12")
    dist = Endplate(arc_point(-a0), -tangent(-a0), anterior(-a0), R_LR, R_AP, "L2")
    lim = a0 + np.radians(5)
    axis = np.array([arc_point(a) for a in np.linspace(lim, -lim, 40)])
    return axis, prox, dist


def straight_case():
    prox = Endplate([0, 0, 40], [0, 0, -1], [0, 1, 0], R_LR, R_AP, "L1")
    dist = Endplate([0, 0, -40], [0, 0, 1], [0, 1, 0], R_LR, R_AP, "L3")
    return np.array([[0, 0, 70.0], [0, 0, -70.0]]), prox, dist


def trajectories(prox, dist, converge_deg=10.0, lateral_mm=9.5):
    """Two screws per end beside the strut, entry on the free face, converging into the body."""
    c = np.radians(converge_deg)
    out = []
    for end, p in (("proximal", prox), ("distal", dist)):
        for side in (1.0, -1.0):
            entry = p.centre + T * p.normal + side * lateral_mm * p.lateral + 1.0 * p.anterior
            direction = -np.cos(c) * p.normal - side * np.sin(c) * p.lateral
            out.append(Traj(f"{end} {'a' if side > 0 else 'b'}", end, entry, direction))
    return out


def build(case, extra=0.0):
    axis, prox, dist = case()
    params = ImplantParameters(footplate_thickness_mm=T)
    trs = trajectories(prox, dist)
    holes = [HoleSpec(t.end, t.entry, t.direction, SCREW_D + 0.25) for t in trs]
    return params, trs, build_implant(axis, prox, dist, params, holes, extra_length_mm=extra)


@pytest.fixture(scope="module")
def kyphotic():
    params, trs, nominal = build(kyphotic_case)
    _, _, plus2 = build(kyphotic_case, 2.0)
    return params, trs, nominal, plus2


def surface_samples(mesh: TriMesh, n: int, seed: int = 0) -> np.ndarray:
    """Vertices, triangle centroids and area-weighted random points on the triangles."""
    rng = np.random.default_rng(seed)
    v = mesh.vertices[mesh.faces]
    area = np.linalg.norm(np.cross(v[:, 1] - v[:, 0], v[:, 2] - v[:, 0]), axis=1)
    pick = rng.choice(len(v), size=n, p=area / area.sum())
    r1, r2 = rng.random(n), rng.random(n)
    flip = r1 + r2 > 1
    r1[flip], r2[flip] = 1 - r1[flip], 1 - r2[flip]
    rand = v[pick, 0] + r1[:, None] * (v[pick, 1] - v[pick, 0]) + r2[:, None] * (v[pick, 2] - v[pick, 0])
    return np.concatenate([mesh.vertices, v.mean(axis=1), rand])


def distances(points: np.ndarray, surface: TriMesh) -> np.ndarray:
    """Unsigned distance from each point to a triangle surface (open or closed)."""
    import vtk

    f = vtk.vtkImplicitPolyDataDistance()
    f.SetInput(to_polydata(surface))
    return np.abs(np.array([f.EvaluateFunction(*map(float, p)) for p in points]))


def contact_face(mesh: TriMesh, centre, normal_into_gap, tol=1e-3) -> TriMesh:
    """Triangles of ``mesh`` on the contact plane facing the bone: measured independently of guides.py."""
    v = mesh.vertices[mesh.faces]
    z = (v - centre) @ normal_into_gap
    n = np.cross(v[:, 1] - v[:, 0], v[:, 2] - v[:, 0])
    on = np.all(np.abs(z) < tol, axis=1) & (n @ -normal_into_gap > 0.999 * np.linalg.norm(n, axis=1))
    used, inverse = np.unique(mesh.faces[on], return_inverse=True)
    return TriMesh(mesh.vertices[used], inverse.reshape(-1, 3))


def region(geom, end):
    r = next(r for r in geom.porous_regions if r.end == end)
    return np.asarray(r.centre), -np.asarray(r.normal)




# ---- text ----------------------------------------------------------------------------------------------------------


def test_text_mesh_is_a_closed_solid_of_the_right_size():
    mesh = text_mesh("L3 nominal", 4.0, 0.6)
    check = check_mesh(mesh)
    assert check.ok, check.problems
    assert check.n_components == 9  # L 3 N O M I N A L: one solid per glyph
    lo, hi = mesh.bounds()
    assert lo == pytest.approx([0, 0, 0], abs=1e-4) and hi[1] == pytest.approx(4.0, abs=1e-4)
    assert hi[2] == pytest.approx(0.6, abs=1e-6)
    assert hi[0] == pytest.approx(text_size("L3 NOMINAL", 4.0)[0], abs=1e-3)
    assert check.volume_mm3 == pytest.approx(text_outline("L3 NOMINAL", 4.0).area() * 0.6, rel=1e-6)
    # Strokes are 0.6 mm wide at 4 mm: the "1" stem is a 0.6 mm bar, so its area is about 0.6 x its length.
    one = text_outline("1", 4.0).area()
    assert 0.6 * 3.4 < one < 0.6 * (3.4 + 2 * 1.4 + 1.0)
    with pytest.raises(PlanError):
        text_mesh("L1/2", 4.0, 0.6)
    with pytest.raises(PlanError):
        text_mesh("   ", 4.0, 0.6)


# ---- docking guides --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("end", ["proximal", "distal"])
def test_docking_guide_reproduces_the_implant_end(kyphotic, end):
    params, _, _, plus2 = kyphotic  # the +2 variant: its distal end has been moved
    gp = GuideParameters()
    guide = docking_guide(plus2, params, end, "T12" if end == "proximal" else "L2", "+2 mm", gp)
    check = check_mesh(guide.mesh)
    assert check.ok and check.n_components == 1, check.problems
    centre, n = region(plus2, end)
    implant_face = contact_face(plus2.mesh, centre, n)
    guide_face = contact_face(guide.mesh, centre, n)
    assert implant_face.area() > 200.0  # the footplate (about 388 mm2) minus two screw holes
    assert guide_face.area() == pytest.approx(implant_face.area(), rel=1e-4)
    assert guide.docking_face.area() == pytest.approx(implant_face.area(), rel=1e-4)
    # Hausdorff distance between the two docking faces, sampled both ways.
    a_to_b = distances(surface_samples(guide_face, 1500), implant_face)
    b_to_a = distances(surface_samples(implant_face, 1500, seed=1), guide_face)
    hausdorff = max(a_to_b.max(), b_to_a.max())
    assert hausdorff < 0.05, hausdorff
    # The whole end (footplate, holes, stub up to 2 mm before the cut) lies on the implant's surface.
    pts = surface_samples(guide.mesh, 3000)
    height = (pts - centre) @ n
    end_pts = pts[height < T + gp.stub_length_mm - 2.0]
    assert distances(end_pts, plus2.mesh).max() < 0.05
    # The stub ends where asked, then the handle: the guide reaches stub + handle along the axis.
    assert height.max() == pytest.approx(T + gp.stub_length_mm + gp.handle_length_mm, abs=1.5)
    assert guide.label_text == ("T12 +2" if end == "proximal" else "L2 +2")
    assert guide.min_wall_mm >= 0.8


def test_docking_guide_label_is_engraved_or_embossed(kyphotic):
    params, _, nominal, _ = kyphotic
    plain = docking_guide(nominal, params, "proximal", "T12", "nominal", GuideParameters(labels=False))
    engraved = docking_guide(nominal, params, "proximal", "T12", "nominal", GuideParameters())
    embossed = docking_guide(nominal, params, "proximal", "T12", "nominal", GuideParameters(emboss=True))
    label = text_mesh("T12 NOMINAL", 4.0, GuideParameters().label_depth_mm).volume()
    assert engraved.label_text == "T12 NOMINAL"
    assert plain.mesh.volume() - engraved.mesh.volume() == pytest.approx(label, rel=0.02)
    assert embossed.mesh.volume() - plain.mesh.volume() == pytest.approx(label, rel=0.02)
    for g in (engraved, embossed):
        assert check_mesh(g.mesh).ok and check_mesh(g.mesh).n_components == 1


# ---- drill guides ----------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def distal_drill(kyphotic):
    """Drill guide on the +2 variant's distal footplate (moved by the variant; trajectories as planned)."""
    _, trs, _, plus2 = kyphotic
    mine = [t for t in trs if t.end == "distal"]
    guide = drill_guide(plus2, "distal", mine, [SCREW_D] * len(mine), "+2 mm", GuideParameters(), level="L2")
    return plus2, mine, guide


def test_drill_sleeves_follow_the_trajectories(distal_drill):
    geom, trs, guide = distal_drill
    gp = GuideParameters()
    assert check_mesh(guide.mesh).ok and check_mesh(guide.mesh).n_components == 1
    expected_d = DRILL_D + gp.sleeve_clearance_mm
    assert guide.sleeve_inner_diameters_mm == pytest.approx([expected_d] * 2)
    manifold = to_manifold(guide.mesh)
    for traj in trs:
        entry = traj.entry + geom.distal_shift  # the variant moved the footplate and its holes
        d = traj.direction
        u, v = basis(d)
        centres, radii = [], []
        # Cut perpendicular to the axis through the sleeve: it runs from ~2.2 to ~17.2 mm above the entry.
        for back in np.linspace(4.0, 16.0, 7):
            origin = entry - back * d
            rot = np.array([u, v, d])
            loops = [
                np.asarray(p)
                for p in manifold.transform(np.column_stack([rot, -rot @ origin])).slice(0.0).to_polygons()
            ]
            fits = [fit_circle(p) for p in loops]
            bore = [f for f in fits if np.linalg.norm(f[0]) < 1.0 and f[1] < expected_d]
            assert len(bore) == 1, f"{traj.name}: expected one bore loop at {back} mm, got {len(bore)}"
            c2, r = bore[0]
            centres.append(origin + c2[0] * u + c2[1] * v)
            radii.append(r)
        centres = np.array(centres)
        mean = centres.mean(axis=0)
        axis = np.linalg.svd(centres - mean)[2][0]
        angle = np.degrees(np.arccos(min(abs(float(axis @ d)), 1.0)))
        off = np.linalg.norm(np.cross(centres - entry, d), axis=1).max()
        assert angle < 0.5, (traj.name, angle)
        assert off < 0.1, (traj.name, off)
        assert 2 * np.mean(radii) == pytest.approx(expected_d, abs=0.05)
    # The reported axes agree with the plan too.
    for (p, axis_d), traj in zip(guide.sleeve_axes, trs):
        assert np.degrees(np.arccos(min(float(axis_d @ traj.direction), 1.0))) < 0.01
        assert np.linalg.norm(np.cross(p - (traj.entry + geom.distal_shift), traj.direction)) < 1e-6


def test_drill_guide_seats_with_the_fit_clearance_and_comes_off(distal_drill):
    geom, _, guide = distal_drill
    gp = GuideParameters()
    centre, n = region(geom, "distal")
    footplate = geom.distal_footplate
    pts = surface_samples(guide.mesh, 20000)
    d = distances(pts, footplate)
    near = d[d < 0.5]  # the inner surface facing the footplate's free face and rim
    assert len(near) > 500
    assert near.min() == pytest.approx(gp.fit_clearance_mm, abs=0.05)
    assert np.median(near) == pytest.approx(gp.fit_clearance_mm, abs=0.05)
    # It covers both the free face and the rim.
    h = (pts[d < 0.5] - centre) @ n
    assert h.max() > T and h.min() < T / 2
    # Nothing of the guide is on the bone side of the rim relief; the contact face stays uncovered.
    assert ((guide.mesh.vertices - centre) @ n).min() == pytest.approx(gp.rim_relief_mm, abs=1e-3)
    implant = to_manifold(geom.mesh)
    g = to_manifold(guide.mesh)
    assert (g ^ implant).volume() < 1e-3
    assert (g ^ to_manifold(footplate)).volume() < 1e-3
    # Lift it along the footplate normal until clear of the rim, then slide it off the strut through the slot.
    slot = guide.removal_direction
    assert abs(float(slot @ n)) < 1e-6
    for lift in np.linspace(0.0, T + 1.0, 5):
        assert (g.translate(tuple(lift * n)) ^ implant).volume() < 1e-2, lift
    for side in np.linspace(0.0, 40.0, 9):
        moved = g.translate(tuple((T + 1.0) * n + side * slot))
        assert (moved ^ implant).volume() < 1e-2, side
    # Sliding the other way hits the strut: the slot is what lets it off.
    assert (g.translate(tuple((T + 1.0) * n - 20.0 * slot)) ^ implant).volume() > 10.0
    assert guide.min_wall_mm >= MIN_GUIDE_WALL_MM  # the design record's limit, with the engraved label's default depth
    assert guide.label_text == "L2 +2"


def test_drill_guide_label_volume(kyphotic):
    _, trs, nominal, _ = kyphotic
    mine = [t for t in trs if t.end == "proximal"]
    plain = drill_guide(nominal, "proximal", mine, [SCREW_D] * 2, "nominal", GuideParameters(labels=False), "T12")
    labelled = drill_guide(nominal, "proximal", mine, [SCREW_D] * 2, "nominal", GuideParameters(), "T12")
    assert labelled.label_text == "T12"
    removed = plain.mesh.volume() - labelled.mesh.volume()
    assert removed == pytest.approx(text_mesh("T12", 4.0, GuideParameters().label_depth_mm).volume(), rel=0.02)


# ---- all guides of a plan -------------------------------------------------------------------------------------


def test_guides_for_every_size(kyphotic):
    params, trs, nominal, plus2 = kyphotic
    guides = guides_for_plan(nominal, {2.0: plus2}, params, trs, [SCREW_D] * 4, "T12", "L2", GuideParameters())
    docking = [(g.end, g.size_label, g.label_text) for g in guides if g.role == "docking guide"]
    assert sorted(docking) == sorted(
        [
            ("proximal", "nominal", "T12 NOMINAL"),
            ("proximal", "+2 mm", "T12 +2"),
            ("distal", "nominal", "L2 NOMINAL"),
            ("distal", "+2 mm", "L2 +2"),
        ]
    )
    drills = [(g.end, g.size_label) for g in guides if g.role == "drill guide"]
    # On this curved axis the regenerated strut leaves the moved distal footplate along a different line
    # (measured), so the distal end gets a drill guide per size; the proximal strut is unchanged.
    assert strut_deviation_mm(nominal, plus2, "proximal", 25.0) < 0.05
    assert strut_deviation_mm(nominal, plus2, "distal", 25.0) > 0.05
    assert sorted(drills) == sorted([("proximal", "all sizes"), ("distal", "nominal"), ("distal", "+2 mm")])
    for g in guides:
        check = check_mesh(g.mesh)
        assert check.ok and check.n_components == 1, (g.name, check.problems)
        assert g.material == "PA12" and g.file_stem
    assert len({g.file_stem for g in guides}) == len(guides)


def test_straight_axis_shares_drill_guides_across_sizes():
    params, trs, nominal = build(straight_case)
    _, _, plus4 = build(straight_case, 4.0)
    gp = GuideParameters(labels=False, sleeve_length_mm=8.0)
    guides = guides_for_plan(nominal, {4.0: plus4}, params, trs, [SCREW_D] * 4, "L1", "L3", gp)
    drills = sorted((g.end, g.size_label) for g in guides if g.role == "drill guide")
    assert drills == [("distal", "all sizes"), ("proximal", "all sizes")]
    assert sum(g.role == "docking guide" for g in guides) == 4
    # The shared distal guide sits on the +4 implant as it does on the nominal one, moved with the footplate.
    distal = next(g for g in guides if g.role == "drill guide" and g.end == "distal")
    moved = to_manifold(distal.mesh).translate(tuple(plus4.distal_shift))
    assert (moved ^ to_manifold(plus4.mesh)).volume() < 1e-3
    d = distances(surface_samples(from_manifold(moved), 4000), plus4.distal_footplate)
    assert d.min() == pytest.approx(0.2, abs=0.05)


def short_case(half_gap):
    """Straight axis, endplates 2 x half_gap apart: a short strut like T6 -> T8 on the chest CT (18 mm)."""
    prox = Endplate([0, 0, half_gap], [0, 0, -1], [0, 1, 0], R_LR, R_AP, "T6")
    dist = Endplate([0, 0, -half_gap], [0, 0, 1], [0, 1, 0], R_LR, R_AP, "T8")
    return np.array([[0, 0, half_gap + 30.0], [0, 0, -half_gap - 30.0]]), prox, dist


def test_drill_sleeves_are_shortened_below_the_other_footplate():
    """Regression (issue 7, T6 -> T8 on the chest CT): a 15 mm sleeve on an 18 mm strut ran into the other
    footplate and the guide was refused at export as overlapping the implant. The sleeves now end short of the
    other footplate by the cap's seating travel; the guide is seated and lifted off without touching the implant."""
    params, trs, geom = build(lambda: short_case(9.0))
    mine = [t for t in trs if t.end == "proximal"]
    gp = GuideParameters()
    guide = drill_guide(geom, "proximal", mine, [SCREW_D] * 2, "nominal", gp, "T6")
    g, implant = to_manifold(guide.mesh), to_manifold(geom.mesh)
    assert (g ^ implant).volume() < 1e-3
    centre, n = region(geom, "proximal")
    travel = T + gp.fit_clearance_mm - gp.rim_relief_mm  # the rim clears the footplate after this lift
    for lift in np.linspace(0.0, travel + 0.4, 5):  # lowered over its footplate without touching the other one
        assert (g.translate(tuple(lift * n)) ^ implant).volume() < 1e-2, lift
    # Each sleeve still guides the drill: its bore measured on the mesh runs >= 3 mm beyond the cap (top = T + 2.2).
    shortened = [x for x in guide.notes if "shortened" in x]
    assert len(shortened) == 2, guide.notes
    top = ((guide.mesh.vertices - centre) @ n).max()
    assert T + 2.2 + 3.0 <= top <= 18.0 - T - T, top  # below the other footplate's free face by > T
    # The recorded sleeve lengths are the built ones: the top of the tilted sleeve is its length along the axis
    # above the cap (T + 2.2) plus the rim of its top disc raised by the tilt.
    assert [round(x, 1) for x in guide.sleeve_lengths_mm] == [round(x, 1) for x in guide.sleeve_lengths_mm[:1]] * 2
    cos_t, sin_t = np.cos(np.radians(10.0)), np.sin(np.radians(10.0))
    ro = (DRILL_D + gp.sleeve_clearance_mm) / 2 + gp.sleeve_wall_mm
    assert top == pytest.approx(T + 2.2 + guide.sleeve_lengths_mm[0] * cos_t + ro * sin_t, abs=0.05)
    assert [s["length_mm"] for s in guide.summary()["sleeves"]] == [round(x, 2) for x in guide.sleeve_lengths_mm]
    # Far apart, the sleeves keep their full length (the kyphotic case's distal guide is unchanged).
    _, trs_far, geom_far = build(straight_case)
    far = drill_guide(geom_far, "proximal", [t for t in trs_far if t.end == "proximal"], [SCREW_D] * 2, "nominal", gp)
    assert not [x for x in far.notes if "shortened" in x] and far.sleeve_lengths_mm == [gp.sleeve_length_mm] * 2
    centre_far, n_far = region(geom_far, "proximal")
    assert ((far.mesh.vertices - centre_far) @ n_far).max() > T + 2.2 + 15


def test_no_room_for_a_drill_sleeve_is_refused_with_a_fix():
    params, trs, geom = build(lambda: short_case(6.0))
    mine = [t for t in trs if t.end == "proximal"]
    with pytest.raises(PlanError) as e:
        drill_guide(geom, "proximal", mine, [SCREW_D] * 2, "nominal", GuideParameters(), "T6")
    assert "no room for the sleeve" in str(e.value) and "drill_guides" in e.value.fix


# ---- bad input ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "bad",
    [
        {"fit_clearance_mm": -0.1},
        {"sleeve_wall_mm": 0.3},
        {"handle_diameter_mm": 4.0},  # a 4 mm label cannot fit its flat
        {"label_depth_mm": 1.5},  # engraving would leave 0.5 mm of a 2 mm tab
        {"stub_length_mm": float("nan")},
        {"drill_diameters": {"3.5": 4.0}},  # drill wider than the screw
        {"drill_diameters": {}},
        {"emboss": "yes"},
    ],
)
def test_bad_guide_parameters_are_refused(bad):
    with pytest.raises(PlanError):
        GuideParameters(**bad).validate()


def test_bad_guide_inputs_are_refused(kyphotic):
    params, trs, nominal, _ = kyphotic
    mine = [t for t in trs if t.end == "proximal"]
    gp = GuideParameters()
    with pytest.raises(PlanError, match="drill diameter"):
        drill_guide(nominal, "proximal", mine, [6.0, 6.0], "nominal", gp)
    with pytest.raises(PlanError):
        drill_guide(nominal, "proximal", mine, [SCREW_D], "nominal", gp)  # one diameter for two screws
    with pytest.raises(PlanError):
        drill_guide(nominal, "middle", mine, [SCREW_D] * 2, "nominal", gp)
    prox = mine[0]
    sideways = Traj("sideways", "proximal", prox.entry, np.cross(prox.direction, [1.0, 0, 0]))
    with pytest.raises(PlanError, match="does not run into the bone"):
        drill_guide(nominal, "proximal", [sideways], [SCREW_D], "nominal", gp)
    centre, n = region(nominal, "proximal")
    outside = Traj("outside", "proximal", centre + T * n + np.array([30.0, 0, 0]), -n)
    with pytest.raises(PlanError, match="free face"):
        drill_guide(nominal, "proximal", [outside], [SCREW_D], "nominal", gp)
    # A screw hugging the strut (6 mm radius): the sleeve wall beside it would be too thin to print.
    lateral = np.cross(n, next(r for r in nominal.porous_regions if r.end == "proximal").anterior)
    hugging = Traj("hugging", "proximal", centre + T * n + 7.8 * lateral, -n)
    with pytest.raises(PlanError, match="close to the strut"):
        drill_guide(nominal, "proximal", [hugging], [SCREW_D], "nominal", gp)
    # A stub longer than the implant allows adapts: it stops 1 mm short of the other footplate.
    room = stub_room_mm(nominal, "proximal")
    assert 2.0 < room < 60.0
    long_stub = docking_guide(nominal, params, "proximal", "T12", "nominal", GuideParameters(stub_length_mm=60.0))
    fitted = docking_guide(nominal, params, "proximal", "T12", "nominal", GuideParameters(stub_length_mm=room))
    assert long_stub.mesh.volume() == pytest.approx(fitted.mesh.volume(), rel=1e-6)
    # An implant with no room for the shortest stub is refused before any part is built.
    axis = np.array([[0.0, 0.0, 10.0], [0.0, 0.0, -10.0]])
    short = build_implant(axis, Endplate([0, 0, 4.25], [0, 0, -1.0], [0, 1.0, 0], R_LR, R_AP),
                          Endplate([0, 0, -4.25], [0, 0, 1.0], [0, 1.0, 0], R_LR, R_AP), ImplantParameters())
    with pytest.raises(PlanError, match="docking guide needs a strut stub") as err:
        check_docking_room([short])
    assert "docking_guides" in err.value.fix
    with pytest.raises(PlanError, match="Unknown guide parameter"):
        GuideParameters.from_dict({"stub_mm": 3})
    gp2 = GuideParameters.from_dict(GuideParameters(drill_diameters={"3.5": 2.7}).as_dict())
    assert gp2.drill_for(3.5) == 2.7


def test_a_drill_guide_overlapping_the_implant_is_refused_naming_the_strut_tilt(kyphotic, monkeypatch):
    """The last check of a drill guide: it must not overlap the implant it is seated on. Seen on a real CT where the
    strut left its footplate 30 deg off the normal (a doubtful face accepted as found); the refusal names that tilt
    and fixes that exist, not "this is a bug". Forced here by a 2 mm bar of guide into the strut."""
    from PatientImplantPlannerLib.parts import guides as guides_module

    _, trs, nominal, _ = kyphotic
    mine = [t for t in trs if t.end == "proximal"]
    strut = nominal.strut_path[len(nominal.strut_path) // 2]
    real = guides_module.without_flat_shells

    def with_bar(manifold, speck):
        import manifold3d

        # A 2 mm bar from the guide's point nearest the strut's centre line into the strut: still one piece.
        vertices = from_manifold(manifold).vertices
        near = vertices[np.argmin(np.linalg.norm(vertices - strut, axis=1))]
        cube = manifold3d.Manifold.cube((2.0, 2.0, 2.0), True)
        bar = manifold3d.Manifold.batch_hull([cube.translate(tuple(near)), cube.translate(tuple(strut))])
        return real(manifold + bar, speck)

    monkeypatch.setattr(guides_module, "without_flat_shells", with_bar)
    with pytest.raises(Exception, match=r"overlaps the implant by [\d.]+ mm3, so it could not be seated \(the strut "
                                        r"leaves the proximal footplate \d+ deg off its normal\)") as err:
        drill_guide(nominal, "proximal", mine, [SCREW_D] * 2, "nominal", GuideParameters(), "T12")
    assert "--parts without drill_guides" in err.value.fix
