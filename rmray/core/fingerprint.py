"""Which model weights scored a reward: a short fingerprint of a model folder, and of an ensemble.

The same fingerprint names a model in ``rmray score``'s Parquet metadata and in every answer of
``rmray serve`` (``model_version``), so a reward can be traced to the weights that gave it -- across a
swap of the served models, or between the RL loop's rewards and an offline scoring run.
"""

from __future__ import annotations

import glob
import hashlib
import os

_SAMPLES, _SAMPLE_BYTES = 16, 1 << 16
SHORT = 12  # hex digits of a fingerprint in a model_version


def model_fingerprint(model_dir: str) -> str:
    """SHA-256 over the scoring spec, ``config.json`` and, per weights file, its size and 16 evenly spaced
    64 KiB samples: two trainings of one architecture differ in every sample, and a 15 GB model is
    fingerprinted in milliseconds instead of the seconds a whole-file hash takes."""
    digest = hashlib.sha256()
    for name in ("rmray_scoring.json", "config.json"):
        path = os.path.join(model_dir, name)
        if os.path.exists(path):
            digest.update(name.encode() + open(path, "rb").read())
    for path in sorted(glob.glob(os.path.join(model_dir, "*.safetensors"))):
        size = os.path.getsize(path)
        digest.update(f"{os.path.basename(path)}:{size}".encode())
        with open(path, "rb") as f:
            for k in range(_SAMPLES):
                f.seek(size * k // _SAMPLES)
                digest.update(f.read(_SAMPLE_BYTES))
    return digest.hexdigest()


def models_version(fingerprints: list[str], ensemble: str | None = None) -> str:
    """``model_version`` of the models that score together: each model's fingerprint cut to 12 hex digits,
    joined by ``+`` in serving order, and for an ensemble the rule that combines them
    (``3f2a...+9c1d...:normalized``). One model's version is the start of its Parquet fingerprint."""
    version = "+".join(f[:SHORT] for f in fingerprints)
    return f"{version}:{ensemble}" if len(fingerprints) > 1 and ensemble else version
