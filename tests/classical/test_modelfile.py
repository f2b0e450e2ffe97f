"""Model files: every kind round-trips, loading never runs code from the file, and damage is refused."""

from __future__ import annotations

import json
import os
import pickle
import zipfile
from collections.abc import Callable
from pathlib import Path

import joblib
import numpy as np
import pytest
from sklearn.calibration import CalibratedClassifierCV
from sklearn.ensemble import RandomForestClassifier
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import StratifiedKFold
from sklearn.neighbors import KNeighborsClassifier
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import Normalizer, StandardScaler
from sklearn.svm import SVC, LinearSVC

from classical import DenseHead, ModelFileError, load_model
from classical.modelfiles.format import write_archive
from classical.modelfiles.saved import save_model

RNG = np.random.default_rng(0)
X = RNG.normal(size=(60, 4)).astype(np.float32)
Y = np.array(["a", "b", "c"] * 20)
X[Y == "b"] += 2
METADATA = {
    "name": "m",
    "kind": "classical",
    "backbone_key": "mobilenet_v2-test",
    "class_names": ["a", "b", "c"],
    "dim": 4,
    "backbone": {"alpha": 1.0, "size": 96, "weights": "none", "pooling": "avg", "resize": "crop"},
}


def dense_head() -> DenseHead:
    """A fitted DenseHead without training it (its state is plain numpy)."""
    head = DenseHead()
    head.classes_, head.n_features_in_ = np.array(["a", "b", "c"]), 4
    head.coef_, head.intercept_ = RNG.normal(size=(4, 3)).astype(np.float32), np.zeros(3, np.float32)
    return head


def calibrated(classifier: object) -> Pipeline:  # as classical.search.selection calibrates the SVMs
    splitter = StratifiedKFold(3, shuffle=True, random_state=0)
    return Pipeline(
        [
            ("scale", StandardScaler()),
            ("clf", CalibratedClassifierCV(classifier, method="sigmoid", cv=splitter, ensemble=False)),
        ]
    )


KINDS: dict[str, Callable[[], object]] = {
    "lr": lambda: Pipeline([("scale", StandardScaler()), ("clf", LogisticRegression())]).fit(X, Y),
    "svm-linear": lambda: calibrated(LinearSVC()).fit(X, Y),
    "svm-rbf": lambda: calibrated(SVC()).fit(X, Y),
    "rf": lambda: Pipeline([("clf", RandomForestClassifier(n_estimators=5, random_state=0))]).fit(X, Y),
    "knn": lambda: Pipeline([("normalize", Normalizer()), ("clf", KNeighborsClassifier(3, metric="cosine"))]).fit(X, Y),
    "dense": dense_head,
}


@pytest.mark.parametrize("kind", list(KINDS))
def test_every_model_kind_round_trips_exactly(tmp_path: Path, kind: str) -> None:
    model = KINDS[kind]()
    save_model(tmp_path / f"{kind}.model", model, METADATA)
    saved = load_model(tmp_path / kind)  # runs/NAME/MODEL means MODEL.model
    assert saved.path == tmp_path / f"{kind}.model" and saved.metadata["format"] == 2
    np.testing.assert_array_equal(saved.predict_proba(X, backbone_key="mobilenet_v2-test"), model.predict_proba(X))
    with zipfile.ZipFile(saved.path) as archive:
        assert sorted(archive.namelist()) == ["metadata.json", "model.skops", "sha256.json"]


class RunsCode:
    """A crafted pickle: unpickling it runs a shell command that creates the marker file."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple:
        return os.system, (f"touch '{self.marker}'",)


@pytest.mark.parametrize("name", ["lr.joblib", "lr.model"], ids=["old-name", "new-name"])
def test_crafted_pickle_is_refused_without_running(tmp_path: Path, name: str) -> None:
    control = tmp_path / "control"
    pickle.loads(pickle.dumps(RunsCode(control)))  # the payload really runs code when unpickled...
    assert control.exists()
    marker = tmp_path / "marker"
    joblib.dump({"format": 1, "model": RunsCode(marker), "metadata": METADATA}, tmp_path / name)
    with pytest.raises(ModelFileError, match=rf"'{tmp_path / name}' is a pickle .* Pass --trust-pickle"):
        load_model(tmp_path / name)
    assert not marker.exists()  # ...but loading the model file did not run it


def test_untrusted_types_in_a_skops_payload_are_refused(tmp_path: Path) -> None:
    import skops.io as sio
    from sklearn.preprocessing import FunctionTransformer

    crafted = FunctionTransformer(func=os.system, kw_args={"command": f"touch '{tmp_path / 'marker'}'"})
    write_archive(tmp_path / "m.model", METADATA, ("model.skops", sio.dumps(crafted)))  # valid digests: a forgery
    with pytest.raises(ModelFileError, match=r"holds types that are not trusted: .*system"):
        load_model(tmp_path / "m.model")
    assert not (tmp_path / "marker").exists()


def flip_bytes(path: Path, count: int, *, start: int, end: int) -> None:
    data = bytearray(path.read_bytes())
    for position in np.random.default_rng(1).choice(np.arange(start, end), size=count, replace=False):
        data[position] ^= 0xFF
    path.write_bytes(bytes(data))


def test_flipped_bytes_are_refused_naming_the_file(tmp_path: Path) -> None:
    path = tmp_path / "lr.model"
    save_model(path, KINDS["lr"](), METADATA)
    size = path.stat().st_size
    flip_bytes(path, 100, start=size // 4, end=size // 2)  # inside the model's bytes, as the 100 flips
    with pytest.raises(ModelFileError, match=rf"model file '{path}' is damaged"):
        load_model(path)


@pytest.mark.parametrize("member", ["model.skops", "metadata.json"])
def test_a_part_rewritten_without_its_digest_is_refused(tmp_path: Path, member: str) -> None:
    path = tmp_path / "lr.model"
    save_model(path, KINDS["lr"](), METADATA)
    with zipfile.ZipFile(path) as archive:
        members = {name: archive.read(name) for name in archive.namelist()}
    if member == "metadata.json":  # e.g. two classes swapped: wrong answers, valid JSON
        record = json.loads(members[member])
        record["class_names"] = ["b", "a", "c"]
        members[member] = json.dumps(record).encode()
    else:
        members[member] = members[member].replace(b"\x00\x00", b"\x00\x01", 1)
    with zipfile.ZipFile(path, "w") as archive:  # fresh CRCs: only the recorded sha256 can tell
        for name, data in members.items():
            archive.writestr(name, data)
    with pytest.raises(ModelFileError, match=rf"'{path}' is damaged: {member} has sha256 .*, recorded"):
        load_model(path)


def test_trust_pickle_reads_a_file_of_an_earlier_release(tmp_path: Path) -> None:
    model = KINDS["lr"]()
    joblib.dump(
        {"format": 1, "model": model, "metadata": METADATA}, tmp_path / "lr.joblib"
    )  # as releases before 2 wrote
    with pytest.raises(ModelFileError, match="--trust-pickle"):
        load_model(tmp_path / "lr")
    saved = load_model(tmp_path / "lr", trust_pickle=True)
    np.testing.assert_array_equal(saved.predict_proba(X, backbone_key="mobilenet_v2-test"), model.predict_proba(X))


def tiny_network(lambda_layer: bool = False):
    import keras

    inputs = keras.Input((96, 96, 3), dtype="uint8")
    x = keras.layers.Rescaling(1 / 255)(inputs)
    if lambda_layer:
        x = keras.layers.Lambda(lambda t: t * 2)(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    return keras.Model(inputs, keras.layers.Dense(3, activation="softmax")(x))


def test_a_network_round_trips_in_keras_format_and_takes_pixels(tmp_path: Path) -> None:
    network = tiny_network()
    metadata = {**{k: v for k, v in METADATA.items() if k != "dim"}, "input": "pixels", "kind": "neural"}
    save_model(tmp_path / "finetune-a.model", network, metadata)
    saved = load_model(tmp_path / "finetune-a.model")
    images = RNG.integers(0, 256, size=(4, 96, 96, 3), dtype=np.uint8)
    assert saved.takes_pixels and "keras" in saved.metadata["versions"]
    np.testing.assert_allclose(
        saved.predict_proba(images, backbone_key="mobilenet_v2-test"), network.predict(images, verbose=0), atol=1e-6
    )
    with pytest.raises(ModelFileError, match=r"expects uint8 images of shape \(n, 96, 96, 3\)"):
        saved.predict_proba(images[:, :64], backbone_key="mobilenet_v2-test")


def test_a_network_with_code_in_it_is_refused(tmp_path: Path) -> None:
    metadata = {**METADATA, "input": "pixels"}
    save_model(tmp_path / "lambda.model", tiny_network(lambda_layer=True), metadata)
    with pytest.raises(
        ModelFileError,
        match=rf"'{tmp_path / 'lambda.model'}' holds a Keras network that cannot be "
        "loaded safely",
    ):
        load_model(tmp_path / "lambda.model")


def test_a_fine_tuned_network_loads_in_a_fresh_process(tmp_path: Path) -> None:
    """The network's own layer (InferenceMode) is registered by loading, not by having fine-tuned first."""
    import subprocess
    import sys

    import keras

    from classical.models.network import InferenceMode

    inputs = keras.Input((96, 96, 3))
    inner = keras.Sequential([keras.Input((96, 96, 3)), keras.layers.GlobalAveragePooling2D()])
    network = keras.Model(inputs, keras.layers.Dense(3, activation="softmax")(InferenceMode(inner)(inputs)))
    save_model(tmp_path / "finetune-a.model", network, {**METADATA, "input": "pixels"})
    code = (
        "import numpy as np; from classical import load_model; "
        f"m = load_model({str(tmp_path / 'finetune-a.model')!r}); "
        "print(m.predict_proba(np.zeros((1, 96, 96, 3), np.uint8), backbone_key='mobilenet_v2-test').shape)"
    )
    done = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"},
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip().splitlines()[-1] == "(1, 3)"
