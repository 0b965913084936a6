"""Building blocks of the phantoms: the phantom voxel grid (RAS box to [k, j, i] slices), signed-distance shapes with a
soft edge painted in HU, and writing a volume as NIfTI."""

import os

import numpy as np


def write_image(array, ijk_to_ras, path) -> str:
    import SimpleITK as sitk

    path = os.path.abspath(path)
    spacing = np.linalg.norm(ijk_to_ras[:3, :3], axis=0)
    ras_to_lps = np.diag([-1.0, -1.0, 1.0])
    direction = ras_to_lps @ ijk_to_ras[:3, :3] / spacing
    image = sitk.GetImageFromArray(np.ascontiguousarray(array))
    image.SetSpacing([float(s) for s in spacing])
    image.SetOrigin([float(x) for x in ras_to_lps @ ijk_to_ras[:3, 3]])
    image.SetDirection([float(x) for x in direction.ravel()])
    folder, base = os.path.split(path)
    tmp = os.path.join(folder, ".tmp-" + base)
    sitk.WriteImage(image, tmp, True)
    os.replace(tmp, path)
    return path


def sd_ellipse(x, y, a, b):
    """Signed distance to an axis-aligned ellipse (negative inside), first order in the implicit function."""
    g = np.sqrt((x / a) ** 2 + (y / b) ** 2)
    grad = np.sqrt((x / (a * a)) ** 2 + (y / (b * b)) ** 2)
    d = (g - 1.0) * g / np.maximum(grad, 1e-9)
    return np.where(g < 0.5, np.float32(-0.5 * min(a, b)), d)


def sd_range(x, lo, hi):
    """Signed distance to the slab lo <= x <= hi."""
    return np.abs(x - 0.5 * (lo + hi)) - 0.5 * (hi - lo)


def cover(d, width):
    """Fraction of a voxel covered by the inside of a surface at signed distance d from its centre."""
    return np.clip(0.5 - d / width, 0.0, 1.0)


def paint(values, d, hu, width):
    f = cover(d, width)
    values += f * (np.float32(hu) - values)


def dense_polyline(vertices, step=0.5) -> np.ndarray:
    """Polyline through all ``vertices`` (kept exactly) with points at most ``step`` apart."""
    pts = [vertices[0]]
    for a, b in zip(vertices[:-1], vertices[1:]):
        n = max(int(np.ceil(np.linalg.norm(b - a) / step)), 1)
        t = np.arange(1, n + 1)[:, None] / n
        pts.extend(a + t * (b - a))
    return np.array(pts)


class PhantomGrid:
    def __init__(self, lo, hi, spacing):
        self.spacing = np.asarray(spacing, dtype=float)
        self.lo = np.asarray(lo, dtype=float)
        n = np.ceil((np.asarray(hi) - self.lo) / self.spacing).astype(int) + 1
        self.ni, self.nj, self.nk = (int(x) for x in n)
        di, dj, dk = self.spacing
        # i runs from the right edge leftwards, j from the front backwards, k upwards.
        # Left-right symmetric about the middle of the requested range (x = 0, the spine): mirroring the voxels
        # left-right is then exactly mirroring the anatomy.
        x_mid = 0.5 * (self.lo[0] + float(hi[0]))
        self.origin = np.array([x_mid + 0.5 * (self.ni - 1) * di, self.lo[1] + (self.nj - 1) * dj, self.lo[2]])
        self.ijk_to_ras = np.array(
            [[-di, 0, 0, self.origin[0]], [0, -dj, 0, self.origin[1]], [0, 0, dk, self.origin[2]], [0, 0, 0, 1.0]]
        )
        self.x = (self.origin[0] - di * np.arange(self.ni)).astype(np.float32)
        self.y = (self.origin[1] - dj * np.arange(self.nj)).astype(np.float32)
        self.z = (self.origin[2] + dk * np.arange(self.nk)).astype(np.float32)

    @property
    def shape(self):
        return self.nk, self.nj, self.ni

    def box(self, points_ras, pad_mm: float):
        """Index slices (k, j, i) of the voxels within the bounding box of points, grown by pad_mm, clipped."""
        p = np.asarray(points_ras, dtype=float)
        lo, hi = p.min(axis=0) - pad_mm, p.max(axis=0) + pad_mm
        di, dj, dk = self.spacing
        i0, i1 = (self.origin[0] - hi[0]) / di, (self.origin[0] - lo[0]) / di
        j0, j1 = (self.origin[1] - hi[1]) / dj, (self.origin[1] - lo[1]) / dj
        k0, k1 = (lo[2] - self.origin[2]) / dk, (hi[2] - self.origin[2]) / dk

        def sl(a, b, n):
            return slice(int(np.clip(np.floor(a), 0, n)), int(np.clip(np.ceil(b) + 1, 0, n)))

        return sl(k0, k1, self.nk), sl(j0, j1, self.nj), sl(i0, i1, self.ni)

    def yz(self, ks, js):
        """(k, j) arrays of y and z for a sub-box."""
        return np.broadcast_to(self.y[js][None, :], (len(self.z[ks]), len(self.y[js]))), self.z[ks][:, None]
