"""The pores' tile (parts/gyrocell.py): copies of one meshed tile of gyroid periods make one closed mesh of the void,
its surface within the chordal bound, and a tile kept on disk reads back the same."""

import numpy as np

from PatientImplantPlannerLib.core.mesh import TriMesh, closed_edges
from PatientImplantPlannerLib.parts import gyrocell, gyroid
from PatientImplantPlannerLib.parts.lattice import LatticeParameters


def _tile(tmp_path, monkeypatch):
    monkeypatch.setenv(gyrocell.CACHE_ENV, str(tmp_path))
    gyrocell._cell_cached.cache_clear()
    params = LatticeParameters()
    return params, gyrocell.cell_mesh(params.cell_size_mm(), params.calibration().level, "gyroid")


def test_copies_of_the_tile_are_one_closed_mesh_of_the_void_within_the_bound(tmp_path, monkeypatch):
    params, tile = _tile(tmp_path, monkeypatch)
    cell, level = params.cell_size_mm(), params.calibration().level
    assert closed_edges(tile.faces, len(tile.vertices))
    surface = TriMesh(tile.vertices, tile.faces[:tile.n_surface])
    assert gyroid.triangle_errors(surface, cell, level).max() <= gyroid.MESH_TOLERANCE_MM
    # An L-shaped set of tiles (not a box): still closed, and its volume is the void's share of it.
    tiles = np.array([[i, j, k] for i in range(3) for j in range(2) for k in range(2) if not (i == 2 and j == 1)])
    block = gyrocell.tiled_pores(tile, tiles)
    assert closed_edges(block.faces, len(block.vertices))
    void = block.volume() / (len(tiles) * np.prod(tile.cell))
    assert abs(void - params.porosity) <= 0.02
    # Seam vertices are shared: no two vertices of the block at the same place.
    _, counts = np.unique(np.round(block.vertices, 9), axis=0, return_counts=True)
    assert counts.max() == 1


def test_a_tile_on_disk_reads_back_the_same(tmp_path, monkeypatch):
    _, made = _tile(tmp_path, monkeypatch)
    files = list(tmp_path.glob("gyroid-tile-*.npz"))
    assert len(files) == 1
    gyrocell._cell_cached.cache_clear()  # only the disk is left
    _, read = _tile(tmp_path, monkeypatch)
    assert read is not made
    for name in ("vertices", "faces", "rep", "off", "cell", "origin"):
        assert np.array_equal(getattr(read, name), getattr(made, name))
    assert all(np.array_equal(read.caps[a][i], made.caps[a][i]) for a in range(3) for i in range(2))
    gyrocell._cell_cached.cache_clear()


def test_the_disk_keeps_the_most_recently_used_tiles(tmp_path, monkeypatch):
    import os

    _, made = _tile(tmp_path, monkeypatch)
    (used,) = tmp_path.glob("gyroid-tile-*.npz")
    for i in range(5):  # older tiles of other settings (or of an older mesher); one of them is not a tile
        stale = tmp_path / f"gyroid-tile-old{i}.npz"
        stale.write_bytes(b"x")
        os.utime(stale, (1000.0 + i, 1000.0 + i))
    (tmp_path / "notes.txt").write_text("kept", encoding="utf-8")
    os.utime(used, (500.0, 500.0))  # the oldest on disk ...
    gyrocell._cell_cached.cache_clear()
    _tile(tmp_path, monkeypatch)  # ... until it is read again
    assert used.stat().st_mtime > 2000.0
    gyrocell._evict(tmp_path, keep=3)
    left = sorted(p.name for p in tmp_path.iterdir())
    assert left == sorted([used.name, "gyroid-tile-old4.npz", "gyroid-tile-old3.npz", "notes.txt"])
    gyrocell._cell_cached.cache_clear()
