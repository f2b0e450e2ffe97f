"""The bytes of a model file: one zip of metadata, the model in a format that runs no code on load, and digests.

    NAME.model (zip)
      metadata.json   what the model may be applied to (backbone key, class names, ...) and "payload"
      model.skops     a scikit-learn estimator, read by skops.io with an explicit list of trusted types
      model.keras     or a Keras network in Keras' native format, read in safe mode
      sha256.json     {member: sha256} of the members above

Reading checks every member's digest before parsing it, so a damaged file is an error naming it,
never a wrong prediction. Model files of earlier releases are joblib pickles: they are read only when
the caller trusts them (`trust_pickle`), because unpickling can run any code the file holds.
"""

from __future__ import annotations

import hashlib
import json
import tempfile
import zipfile
from pathlib import Path
from typing import Any

from classical.errors import ModelFileError

MANIFEST = "sha256.json"
METADATA = "metadata.json"
SKOPS_PAYLOAD = "model.skops"
KERAS_PAYLOAD = "model.keras"
PICKLE_MAGIC = b"\x80"  # a pickle of protocol 2 or more: what joblib wrote
# types a model of the zoo holds beyond skops' defaults (scikit-learn estimators, numpy, scipy); all are data
TRUSTED_TYPES = [
    "classical.models.dense.DenseHead",
    "sklearn.calibration._CalibratedClassifier",
    "sklearn.calibration._SigmoidCalibration",
    "sklearn.model_selection._split.StratifiedKFold",
    "sklearn.tree._tree.Tree",
]


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def is_keras_model(model: Any) -> bool:
    """A Keras network (saved natively), as opposed to a scikit-learn estimator (saved with skops)."""
    return any(cls.__module__.split(".")[0] == "keras" for cls in type(model).__mro__)


def encode_payload(model: Any) -> tuple[str, bytes]:
    """The member name and bytes of the model: skops for estimators, the Keras native format for networks."""
    if is_keras_model(model):
        with tempfile.TemporaryDirectory(prefix="model-") as folder:
            path = Path(folder) / KERAS_PAYLOAD
            model.save(path)
            return KERAS_PAYLOAD, path.read_bytes()
    import skops.io as sio

    data = sio.dumps(model, compression=zipfile.ZIP_DEFLATED)
    untrusted = sorted(set(sio.get_untrusted_types(data=data)) - set(TRUSTED_TYPES))
    if untrusted:  # refuse now what loading would refuse later
        raise ModelFileError(
            f"the model holds types a model file does not trust: {', '.join(untrusted)}; "
            "add them to classical.modelfiles.format.TRUSTED_TYPES if they are plain data."
        )
    return SKOPS_PAYLOAD, data


def write_archive(target: Path, metadata: dict[str, Any], payload: tuple[str, bytes]) -> None:
    """Write the zip of metadata, payload and their digests to `target`."""
    members = {METADATA: json.dumps({**metadata, "payload": payload[0]}, indent=1).encode(), payload[0]: payload[1]}
    manifest = json.dumps({name: sha256(data) for name, data in members.items()}, indent=1).encode()
    with zipfile.ZipFile(target, "w", compression=zipfile.ZIP_STORED) as archive:
        for name, data in {**members, MANIFEST: manifest}.items():
            archive.writestr(name, data)


def is_archive(path: Path) -> bool:
    return zipfile.is_zipfile(path)


def is_pickle(path: Path) -> bool:
    with open(path, "rb") as handle:
        return handle.read(1) == PICKLE_MAGIC


def read_archive(path: Path) -> tuple[dict[str, Any], Any]:
    """The metadata and the model of a model file, after checking every member against its digest."""
    members = _checked_members(path)
    try:
        metadata = json.loads(members[METADATA])
    except (KeyError, ValueError) as exc:
        raise ModelFileError(
            f"'{path}' is not a bottleneck-lab model file ({METADATA} is missing or unreadable)."
        ) from exc
    payload = metadata.get("payload")
    if payload not in (SKOPS_PAYLOAD, KERAS_PAYLOAD) or payload not in members:
        raise ModelFileError(
            f"model file '{path}' has no model of a known format (payload {payload!r}); "
            "re-run the sweep or fine-tuning that made it."
        )
    decode = _decode_skops if payload == SKOPS_PAYLOAD else _decode_keras
    return metadata, decode(path, members[payload])


def read_pickle(path: Path) -> Any:
    """The record of a model file of an earlier release (a joblib pickle): only for files the caller trusts."""
    import joblib

    try:
        return joblib.load(path)
    except Exception as exc:  # unpickling fails in many ways
        raise ModelFileError(f"'{path}' is not a readable model file ({exc}).") from exc


def _checked_members(path: Path) -> dict[str, bytes]:
    try:
        with zipfile.ZipFile(path) as archive:
            members = {name: archive.read(name) for name in archive.namelist()}
    except (zipfile.BadZipFile, OSError, EOFError, ValueError) as exc:  # zip checks each member's CRC-32 too
        raise ModelFileError(f"model file '{path}' is damaged ({exc}); restore it, or re-run what made it.") from exc
    if MANIFEST not in members:
        hint = " (a bare Keras file: fine-tuning now writes NAME.model)" if "config.json" in members else ""
        raise ModelFileError(f"'{path}' is a zip file but not a bottleneck-lab model file{hint}.")
    try:
        recorded = json.loads(members.pop(MANIFEST))
    except ValueError as exc:
        raise ModelFileError(f"model file '{path}' is damaged (its {MANIFEST} is unreadable); restore it.") from exc
    if not isinstance(recorded, dict) or set(recorded) != set(members):
        raise ModelFileError(
            f"model file '{path}' is damaged: its members {sorted(members)} are not the ones its "
            f"{MANIFEST} lists; restore it, or re-run what made it."
        )
    for name, data in members.items():
        if sha256(data) != recorded[name]:
            raise ModelFileError(
                f"model file '{path}' is damaged: {name} has sha256 {sha256(data)[:12]}..., "
                f"recorded {str(recorded[name])[:12]}...; restore it, or re-run what made it."
            )
    return members


def _decode_skops(path: Path, data: bytes) -> Any:
    import skops.io as sio

    try:
        untrusted = sorted(set(sio.get_untrusted_types(data=data)) - set(TRUSTED_TYPES))
        if untrusted:
            raise ModelFileError(
                f"model file '{path}' holds types that are not trusted: {', '.join(untrusted)}; "
                "it was not written by this project's sweep, so it is not loaded."
            )
        return sio.loads(data, trusted=TRUSTED_TYPES)
    except ModelFileError:
        raise
    except Exception as exc:  # skops refuses malformed schemas in many ways
        raise ModelFileError(f"model file '{path}' holds an unreadable scikit-learn model ({exc}).") from exc


def _decode_keras(path: Path, data: bytes) -> Any:
    import keras

    import classical.models.network  # noqa: F401 - registers the network's own layer (InferenceMode) with Keras

    with tempfile.TemporaryDirectory(prefix="model-") as folder:
        network = Path(folder) / KERAS_PAYLOAD
        network.write_bytes(data)
        try:
            return keras.saving.load_model(network, compile=False, safe_mode=True)
        except Exception as exc:  # safe mode refuses code (lambda layers); Keras fails in many other ways
            raise ModelFileError(
                f"model file '{path}' holds a Keras network that cannot be loaded safely ({exc})."
            ) from exc
