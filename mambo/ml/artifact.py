"""The model artifact of the ``ml_signal`` strategy: a folder written by :func:`save_artifact` and read
back, checked, by :func:`load_artifact`.

Layout::

    model.txt       the LightGBM booster in LightGBM's own text format
    manifest.json   what the model reads and how it was made (see below)

The manifest names the artifact format and its version, the feature recipes (the model's columns,
in order) and the indicator specs they read, the label (horizon, threshold), the training window,
the walk-forward folds and their out-of-sample figures, the training parameters and seed, the
SHA-256 of the candles trained on, the library versions, the SHA-256 of ``model.txt`` and the
``content_hash``: the SHA-256 of the canonical JSON of everything else in the manifest. Training the
same data with the same settings and seed gives the same hash (no wall-clock time goes in).

Why this format: LightGBM's text model is data that LightGBM parses; loading it runs no code from
the file. A pickle (joblib) executes whatever the file says when loaded, so a model shared or
downloaded would be a way in; skops makes scikit-learn pickles safe to load but would be one more
dependency, and LightGBM needs neither.

:func:`load_artifact` refuses, with :class:`ModelArtifactError` saying what to do, an artifact of
another format or format version, one written by another major version of LightGBM, and one whose
files no longer match their hashes (edited, truncated, mixed from two trainings).
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mambo.core.features import FeatureSet

if TYPE_CHECKING:
    import lightgbm

__all__ = [
    "FORMAT",
    "FORMAT_VERSION",
    "MANIFEST",
    "MODEL_FILE",
    "ModelArtifact",
    "ModelArtifactError",
    "check_output",
    "content_hash",
    "library_versions",
    "lightgbm_names",
    "load_artifact",
    "read_manifest",
    "save_artifact",
]

#: What the manifest's ``format`` says.
FORMAT = "mambo.ml_signal"
#: The one format version this Mambo reads and writes.
FORMAT_VERSION = 1
MANIFEST = "manifest.json"
MODEL_FILE = "model.txt"
_UNHASHED = frozenset(("content_hash",))


class ModelArtifactError(ValueError):
    """A model artifact cannot be used as it is; the message says why and what to do."""


@dataclass(frozen=True)
class ModelArtifact:
    """A loaded, checked artifact: its booster, the feature set it reads, and its manifest."""

    path: Path
    manifest: dict[str, Any]
    features: FeatureSet
    booster: lightgbm.Booster

    @property
    def content_hash(self) -> str:
        return str(self.manifest["content_hash"])


def library_versions() -> dict[str, str]:
    """The versions that shape a model's bytes and its predictions."""
    import lightgbm
    import numpy

    import mambo

    return {
        "lightgbm": lightgbm.__version__,
        "numpy": numpy.__version__,
        "python": platform.python_version(),
        "mambo": mambo.__version__,
    }


def lightgbm_names(features: FeatureSet) -> list[str]:
    """The column names the booster carries: the recipes with ``:`` (which LightGBM refuses) as ``__``."""
    return [f.replace(":", "__") for f in features.features]


def content_hash(manifest: dict[str, Any]) -> str:
    """SHA-256 of the canonical JSON of the manifest without its ``content_hash``."""
    body = {k: v for k, v in manifest.items() if k not in _UNHASHED}
    text = json.dumps(body, sort_keys=True, separators=(",", ":"), allow_nan=False)
    return hashlib.sha256(text.encode()).hexdigest()


def save_artifact(path: str | Path, model_text: str, features: FeatureSet, meta: dict[str, Any]) -> str:
    """Write the artifact folder ``path`` (created if missing; the files of an artifact already there
    are replaced; see :func:`check_output`) and return its content hash. ``meta`` adds the label, training
    window, folds, parameters... to the manifest; it must be JSON without NaN."""
    folder = Path(path)
    if folder.exists() and not folder.is_dir():
        raise ModelArtifactError(f"{folder} is a file; give a folder for the model artifact")
    folder.mkdir(parents=True, exist_ok=True)
    data = model_text.encode()
    manifest: dict[str, Any] = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "features": list(features.features),
        "indicators": list(features.indicators),
        **meta,
        "libraries": library_versions(),
        "model_file": MODEL_FILE,
        "model_sha256": hashlib.sha256(data).hexdigest(),
    }
    manifest["content_hash"] = content_hash(manifest)
    # the model first, the manifest last: a manifest names a complete model
    _write(folder / MODEL_FILE, data)
    _write(
        folder / MANIFEST, (json.dumps(manifest, indent=2, sort_keys=True, allow_nan=False) + "\n").encode()
    )
    return str(manifest["content_hash"])


def check_output(path: str | Path) -> None:
    """ModelArtifactError unless ``path`` can take a new artifact: missing, an empty folder, or an
    artifact (which is replaced)."""
    folder = Path(path)
    if folder.exists() and not folder.is_dir():
        raise ModelArtifactError(f"{folder} is a file; give a folder for the model artifact")
    if folder.is_dir() and any(folder.iterdir()) and not (folder / MANIFEST).exists():
        raise ModelArtifactError(
            f"{folder} is a non-empty folder that holds no model artifact; give a new or empty one"
        )


def _write(path: Path, data: bytes) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def read_manifest(path: str | Path) -> dict[str, Any]:
    """The manifest of the artifact at ``path``, its format and version checked."""
    folder = Path(path)
    file = folder / MANIFEST
    if not file.is_file():
        what = "no such folder" if not folder.exists() else f"no {MANIFEST} in it"
        raise ModelArtifactError(f"model {folder}: {what}; train one with mambo train --out {folder}")
    try:
        manifest = json.loads(file.read_text())
    except (OSError, ValueError) as e:
        raise ModelArtifactError(f"model {folder}: {MANIFEST} is not readable JSON: {e}") from e
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise ModelArtifactError(f"model {folder}: {MANIFEST} is not a {FORMAT} manifest")
    version = manifest.get("format_version")
    if version != FORMAT_VERSION:
        raise ModelArtifactError(
            f"model {folder}: artifact format version {version!r}, but this Mambo reads version "
            f"{FORMAT_VERSION}; retrain it with this Mambo's mambo train"
        )
    return manifest


def load_artifact(path: str | Path) -> ModelArtifact:
    """Read and check the artifact at ``path`` (see the module docstring for what is refused)."""
    import lightgbm

    folder = Path(path)
    manifest = read_manifest(folder)
    trained_with = str(manifest.get("libraries", {}).get("lightgbm", "?"))
    if trained_with.split(".")[0] != lightgbm.__version__.split(".")[0]:
        raise ModelArtifactError(
            f"model {folder}: trained with LightGBM {trained_with}, this is LightGBM {lightgbm.__version__} "
            "(another major version); retrain it, or install the LightGBM it was trained with"
        )
    if manifest.get("content_hash") != content_hash(manifest):
        raise ModelArtifactError(f"model {folder}: {MANIFEST} does not match its content_hash (edited?)")
    try:
        data = (folder / MODEL_FILE).read_bytes()
    except OSError as e:
        raise ModelArtifactError(f"model {folder}: cannot read {MODEL_FILE}: {e}") from e
    if hashlib.sha256(data).hexdigest() != manifest.get("model_sha256"):
        raise ModelArtifactError(
            f"model {folder}: {MODEL_FILE} does not match the manifest's model_sha256 (replaced or damaged)"
        )
    try:
        features = FeatureSet(manifest["features"], manifest["indicators"])
    except (KeyError, TypeError, ValueError) as e:
        raise ModelArtifactError(f"model {folder}: bad feature list in {MANIFEST}: {e}") from e
    try:
        booster = lightgbm.Booster(model_str=data.decode())
    except (lightgbm.basic.LightGBMError, UnicodeDecodeError) as e:
        raise ModelArtifactError(f"model {folder}: LightGBM cannot read {MODEL_FILE}: {e}") from e
    if booster.feature_name() != lightgbm_names(features):
        raise ModelArtifactError(f"model {folder}: the booster's columns are not the manifest's features")
    return ModelArtifact(folder, manifest, features, booster)
