"""TriMesh verification, STL round trips and atomic writes."""

import os

import numpy as np
import pytest

from PatientImplantPlannerLib.core import mesh as M
from PatientImplantPlannerLib.core.errors import GeometryError, OutputExistsError


def _cylinder(r=3.0, h=10.0, n=64):
    import manifold3d as m3d

    return M.from_manifold(m3d.Manifold.cylinder(h, r, r, n))


def test_check_mesh_accepts_closed_solid_and_measures_volume():
    c = _cylinder()
    result = M.check_mesh(c)
    assert result.ok, result.problems
    # A 64-gon prism: area = n/2 r^2 sin(2pi/n).
    expected = 64 / 2 * 9.0 * np.sin(2 * np.pi / 64) * 10.0
    assert result.volume_mm3 == pytest.approx(expected, rel=1e-6)  # manifold3d stores float32 vertices
    assert result.n_components == 1


def test_check_mesh_detects_hole_flip_and_nonmanifold():
    c = _cylinder()
    open_mesh = M.TriMesh(c.vertices, c.faces[1:])
    assert not M.check_mesh(open_mesh).watertight
    inverted = M.TriMesh(c.vertices, c.faces[:, ::-1])
    assert not M.check_mesh(inverted).outward_normals
    doubled = M.TriMesh(c.vertices, np.vstack([c.faces, c.faces[:1]]))
    assert not M.check_mesh(doubled).manifold
    with pytest.raises(GeometryError, match="failed verification"):
        M.require_valid(open_mesh, "test part")


def test_stl_round_trip_lps_and_ras(tmp_path):
    c = _cylinder().transformed(np.array([[1, 0, 0, 5.0], [0, 1, 0, -7.0], [0, 0, 1, 3.0], [0, 0, 0, 1]]))
    for cs in ("LPS", "RAS"):
        path = tmp_path / f"part_{cs}.stl"
        M.write_stl(c, str(path), cs)
        assert os.path.getsize(path) == 84 + 50 * c.n_triangles  # binary, not ASCII
        back = M.read_stl(str(path), cs)
        assert M.check_mesh(back).ok
        assert back.volume() == pytest.approx(c.volume(), rel=1e-5)
        np.testing.assert_allclose(back.bounds(), c.bounds(), atol=1e-4)
    raw = M.read_stl(str(tmp_path / "part_LPS.stl"), "RAS")  # read without conversion: x and y mirrored
    np.testing.assert_allclose(raw.bounds()[0][:2], -c.bounds()[1][:2], atol=1e-4)


def test_write_refuses_existing_file_and_leaves_it_intact(tmp_path):
    path = tmp_path / "part.stl"
    path.write_bytes(b"precious")
    with pytest.raises(OutputExistsError, match="already exists"):
        M.write_stl(_cylinder(), str(path))
    assert path.read_bytes() == b"precious"
    assert [p.name for p in tmp_path.iterdir()] == ["part.stl"]  # no temporary left behind
    M.write_stl(_cylinder(), str(path), overwrite=True)
    assert path.stat().st_size > 84


def test_decimate_keeps_closed_solid():
    import manifold3d as m3d

    sphere = M.from_manifold(m3d.Manifold.sphere(10.0, 256))
    small = M.decimate(sphere, 3000)
    assert small.n_triangles <= 3100
    assert M.check_mesh(small).ok
    assert small.volume() == pytest.approx(sphere.volume(), rel=0.02)


def test_manifold_round_trip_and_boolean():
    a = _cylinder(r=5.0, h=10.0)
    b = _cylinder(r=2.0, h=30.0).transformed(np.array([[1, 0, 0, 0], [0, 1, 0, 0], [0, 0, 1, -10.0], [0, 0, 0, 1]]))
    holed = M.from_manifold(M.to_manifold(a) - M.to_manifold(b))
    assert M.check_mesh(holed).ok
    assert holed.volume() == pytest.approx(a.volume() - b.volume() * 10.0 / 30.0, rel=1e-6)


def test_file_safe_separates_touching_surfaces_so_the_file_stays_manifold(tmp_path):
    import manifold3d as m3d

    # Two cubes touching along one edge: manifold by index (distinct vertices), but triangle soup welded by
    # position has four triangles on that edge.
    a = m3d.Manifold.cube([10, 10, 10])
    b = m3d.Manifold.cube([10, 10, 10]).translate([10, 10, 0])
    touching = M.from_manifold(a + b)
    assert M.check_mesh(touching).ok
    M.write_stl(touching, str(tmp_path / "raw.stl"))
    assert not M.check_mesh(M.read_stl(str(tmp_path / "raw.stl"))).manifold
    safe = M.file_safe(touching)
    M.write_stl(safe, str(tmp_path / "safe.stl"))
    back = M.check_mesh(M.read_stl(str(tmp_path / "safe.stl")))
    assert back.ok, back.problems
    assert back.volume_mm3 == pytest.approx(2000.0, rel=1e-4)


def test_degenerate_triangles_are_counted_and_file_safe_removes_them():
    import manifold3d as m3d

    cube = M.from_manifold(m3d.Manifold.cube([10, 10, 10]))
    f = cube.faces
    a, b, c = f[0]
    twin = next(i for i, row in enumerate(f) if i != 0 and a in row and b in row)
    o = next(x for x in f[twin] if x not in (a, b))
    # Edge (a, b) split at its midpoint p in both of its faces, plus a zero-area fin (p, a, b) / (p, b, a) on it.
    p = len(cube.vertices)
    vertices = np.vstack([cube.vertices, (cube.vertices[a] + cube.vertices[b]) / 2])
    rest = np.delete(f, [0, twin], axis=0)
    faces = np.vstack([rest, [[a, p, c], [p, b, c], [b, p, o], [p, a, o], [p, a, b], [p, b, a]]])
    check = M.check_mesh(M.TriMesh(vertices, faces))
    assert check.n_degenerate == 2
    safe = M.file_safe(M.TriMesh(vertices, faces))
    assert M.check_mesh(safe).ok and M.check_mesh(safe).n_degenerate == 0
    assert safe.volume() == pytest.approx(1000.0, rel=1e-6)


def test_read_stl_welds_exactly_equal_positions_only(tmp_path):
    c = _cylinder()
    M.write_stl(c, str(tmp_path / "c.stl"), "RAS")
    back = M.read_stl(str(tmp_path / "c.stl"), "RAS")
    assert len(back.vertices) == len(c.vertices) and back.n_triangles == c.n_triangles
    np.testing.assert_array_equal(np.sort(back.vertices.astype(np.float32), axis=0),
                                  np.sort(c.vertices.astype(np.float32), axis=0))


def test_specks_and_flat_shells_are_dropped_but_a_real_loose_piece_is_kept():
    """A boolean can cut off a speck where a bore grazes an edge (measured: a 4-triangle tetrahedron of 3e-5 mm3 on a
    drill guide, which then 'fell apart into 2 pieces'); a loose piece a printer would make must still count."""
    from PatientImplantPlannerLib.core.mesh import SPECK_MM3, require_manifold3d, without_flat_shells

    m3d = require_manifold3d()
    body = m3d.Manifold.cube((10.0, 10.0, 10.0))
    speck = m3d.Manifold.tetrahedron().scale((0.02, 0.02, 0.02)).translate((20.0, 0.0, 0.0))
    assert 1e-6 < speck.volume() < SPECK_MM3
    both = m3d.Manifold.compose([body, speck])
    assert len(both.decompose()) == 2
    cleaned = without_flat_shells(both, SPECK_MM3)
    assert len(cleaned.decompose()) == 1 and cleaned.volume() == pytest.approx(1000.0)
    assert len(without_flat_shells(both).decompose()) == 2  # the default keeps anything with volume
    loose = m3d.Manifold.compose([body, m3d.Manifold.cube((1.0, 1.0, 1.0)).translate((20.0, 0.0, 0.0))])
    assert len(without_flat_shells(loose, SPECK_MM3).decompose()) == 2
