"""The fine-tuning network's gotcha guards: each test fails if its guard is removed."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

from classical.models.network import (
    N_GROUPS,
    base_of,
    build_network,
    check_learning_rate,
    discriminative_adam,
    layer_group,
    learning_rate_multipliers,
    learning_rate_schedule,
    parameter_counts,
    set_trainable,
)
from embedder import Backbone

TINY = Backbone(size=96, weights=None)


def images(n: int = 4, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, 96, 96, 3)).astype(np.uint8)


def test_parameter_counts_match_the_talk_for_1_0_224_with_5_classes() -> None:
    network = build_network(Backbone(size=224, weights=None), 5)
    assert parameter_counts(network) == (6_405, 2_257_984)  # base frozen: only the head trains
    set_trainable(network, groups=N_GROUPS)
    assert parameter_counts(network) == (2_230_277, 34_112)  # base trainable: BatchNorm statistics never are
    set_trainable(network, groups=0)
    assert parameter_counts(network) == (6_405, 2_257_984)


def test_batchnorm_statistics_do_not_move_when_unfrozen_layers_train() -> None:
    import keras

    network = build_network(TINY, 3, augment=False)
    set_trainable(network, groups=N_GROUPS)
    network.compile(optimizer=keras.optimizers.Adam(1e-3), loss="sparse_categorical_crossentropy")
    base = base_of(network)
    statistics = {v.path: v.numpy() for v in base.non_trainable_weights}
    assert statistics and all("moving" in path for path in statistics)
    kernel_before = base.get_layer("Conv1").kernel.numpy()
    network.fit(images(8), np.arange(8) % 3, epochs=1, batch_size=8, verbose=0)
    assert not np.array_equal(kernel_before, base.get_layer("Conv1").kernel.numpy())  # it did train
    for variable in base.non_trainable_weights:
        np.testing.assert_array_equal(variable.numpy(), statistics[variable.path], err_msg=variable.path)


def test_preprocessing_happens_once_and_matches_the_embedder() -> None:
    import keras

    network = build_network(TINY, 3, augment=True)
    pooled = keras.Model(network.input, network.get_layer("pool").output)
    batch = images()
    np.testing.assert_allclose(pooled(batch, training=False), TINY.model(batch), atol=1e-5)
    assert not np.allclose(pooled(batch, training=True), TINY.model(batch), atol=1e-3)  # augmentation in training only


def test_augmentation_works_on_raw_pixels_before_preprocessing() -> None:
    network = build_network(TINY, 3)
    augmentation = network.get_layer("augmentation")
    contrast = augmentation.layers[-1]
    assert contrast.value_range == (0, 255)
    names = [layer.name for layer in network.layers]
    assert names.index("augmentation") < names.index("base")


@pytest.mark.parametrize(
    ("name", "group"),
    [
        ("block_16_project", 1),
        ("Conv_1_bn", 1),
        ("block_13_expand", 2),
        ("block_9_add", 4),
        ("block_1_depthwise", 6),
        ("Conv1", 7),
        ("expanded_conv_project", 7),
        ("input_layer", 0),
    ],
)
def test_layer_groups(name: str, group: int) -> None:
    assert layer_group(name) == group


def test_unfreezing_by_groups_and_by_layers() -> None:
    network = build_network(TINY, 3)
    set_trainable(network, groups=1)
    trainable = {layer.name for layer in base_of(network).layers if layer.trainable and layer.weights}
    assert trainable and all(layer_group(name) == 1 for name in trainable)
    set_trainable(network, layers=5)
    assert [layer.trainable for layer in base_of(network).layers[-6:]] == [False] + [True] * 5


def test_discriminative_rates_really_differ_per_group() -> None:
    """Adam's first step moves each weight by about its learning rate: the moves must follow the multipliers."""
    network = build_network(TINY, 3, augment=False, dropout=0.0)
    set_trainable(network, groups=N_GROUPS)
    multipliers = learning_rate_multipliers(network, 0.5)
    network.compile(optimizer=discriminative_adam(1e-3, multipliers), loss="sparse_categorical_crossentropy")
    base = base_of(network)
    watched = {
        "head": network.get_layer("head").kernel,
        "group 1": base.get_layer("Conv_1").kernel,
        "group 3": base.get_layer("block_11_project").kernel,
        "group 7": base.get_layer("Conv1").kernel,
    }
    before = {name: v.numpy() for name, v in watched.items()}
    network.fit(images(8), np.arange(8) % 3, epochs=1, batch_size=8, verbose=0)
    expected = {"head": 1e-3, "group 1": 5e-4, "group 3": 1.25e-4, "group 7": 1e-3 * 0.5**7}
    for name, variable in watched.items():
        step = np.abs(variable.numpy() - before[name])
        typical = np.median(step[step > 0])
        assert typical == pytest.approx(expected[name], rel=0.1), name


def test_cosine_schedule_warms_up_then_decays() -> None:
    schedule = learning_rate_schedule(1e-5, "cosine", steps=100, warmup_steps=10)
    rates = [float(schedule(step)) for step in (0, 10, 55, 100)]
    assert rates[0] == pytest.approx(1e-6) and rates[1] == pytest.approx(1e-5)
    assert rates[1] > rates[2] > rates[3] and rates[3] == pytest.approx(1e-7, rel=0.05)
    assert learning_rate_schedule(1e-5, "plateau", steps=100, warmup_steps=10) == 1e-5


@pytest.mark.parametrize(
    ("rate", "unfrozen", "message"),
    [
        (1e-3, True, "head-training scale with base layers unfrozen"),
        (1e-6, False, "tiny for a new head"),
        (1e-5, True, None),
        (1e-3, False, None),
    ],
)
def test_learning_rate_warnings(rate: float, unfrozen: bool, message: str | None) -> None:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        check_learning_rate(rate, unfrozen=unfrozen)
    assert [str(w.message) for w in caught if message and message in str(w.message)] or (message is None and not caught)


def test_after_unfreezing_and_recompiling_exactly_the_unfrozen_groups_train() -> None:
    import keras

    network = build_network(TINY, 3, augment=False)
    base = base_of(network)
    network.compile(optimizer=keras.optimizers.Adam(1e-3), loss="sparse_categorical_crossentropy")
    network.fit(images(8), np.arange(8) % 3, epochs=1, batch_size=8, verbose=0)  # head only: compiled frozen
    set_trainable(network, groups=2)
    network.compile(optimizer=keras.optimizers.Adam(1e-3), loss="sparse_categorical_crossentropy")
    watched = ("Conv_1", "block_14_project", "block_11_project", "Conv1")
    before = {name: base.get_layer(name).kernel.numpy() for name in watched}
    network.fit(images(8), np.arange(8) % 3, epochs=1, batch_size=8, verbose=0)
    changed = {name: not np.array_equal(before[name], base.get_layer(name).kernel.numpy()) for name in watched}
    assert changed == {"Conv_1": True, "block_14_project": True, "block_11_project": False, "Conv1": False}
