"""The `embedder` command line, through Typer's test runner."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import photo
from PIL import Image
from typer.testing import CliRunner

from embedder import open_cache
from embedder.cli import app

runner = CliRunner()
TINY = ["--size", "96", "--weights", "none", "--no-progress"]


def run(*args: str) -> tuple[int, str]:
    result = runner.invoke(app, [str(a) for a in args])
    return result.exit_code, result.output


def test_extract_then_rerun_then_info(dataset: Path, tmp_path: Path) -> None:
    out = tmp_path / "c.h5"
    code, output = run("extract", dataset, "--out", out, *TINY)
    assert code == 0 and "12 embedded" in output and "0 failed" in output and "images/s" in output
    code, output = run("extract", dataset, "--out", out, *TINY)
    assert code == 0 and "0 embedded" in output and "12 cached" in output
    code, output = run("info", out)
    assert code == 0 and "mobilenet_v2-1.0-96-random-" in output and "blue 4, green 4, red 4" in output
    code, output = run("info", out, "--format", "json")
    described = json.loads(output)
    assert described["schema_version"] == 1 and described["backbones"][0]["rows"] == 12
    assert described["backbones"][0]["classes"] == {"blue": 4, "green": 4, "red": 4}


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["extract", "{tmp}/missing", "--out", "{tmp}/c.h5", *TINY], "does not exist"),
        (["extract", "{data}", "--out", "{tmp}", *TINY], "is a directory"),
        (["extract", "{data}", "--out", "{tmp}/c.h5", "--alpha", "0.6", *TINY], "alpha must be one of"),
        (["extract", "{data}", "--out", "{tmp}/c.h5", "--weights", "{tmp}/w.h5", "--no-progress"], "weights file"),
        (["info", "{tmp}/none.h5"], "does not exist"),
        (["extract", "{data}", "--out", "{tmp}/c.h5", "--runtime", "gpu", *TINY], "Received: runtime='gpu'"),
    ],
    ids=["missing-source", "out-is-dir", "bad-alpha", "missing-weights", "missing-cache", "bad-runtime"],
)
def test_bad_input_exits_2_with_the_reason(dataset: Path, tmp_path: Path, args: list[str], message: str) -> None:
    code, output = run(*(a.format(tmp=tmp_path, data=dataset) for a in args))
    assert code == 2 and "error:" in output and message in output


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"path,label\nred/red_000.jpg,red\nred/red_001\x00.jpg,red\n", "list.csv' line 3: contains a NUL byte"),
        (b"path,label\nred/red_000.jpg,r\xf6d\n", "list.csv' line 2: byte 0xf6 is not UTF-8 text"),
    ],
    ids=["nul-byte", "latin-1"],
)
def test_a_list_that_is_not_utf8_text_names_the_file_and_line(
    dataset: Path, tmp_path: Path, content: bytes, message: str
) -> None:
    (dataset / "list.csv").write_bytes(content)
    result = runner.invoke(app, ["extract", str(dataset / "list.csv"), "--out", str(tmp_path / "c.h5"), *TINY])
    assert result.exit_code == 2 and isinstance(result.exception, SystemExit)  # an answer, not a crash
    assert result.output.count("\n") == 1 and result.output.startswith("error: list '") and message in result.output
    assert "Traceback" not in result.output and not (tmp_path / "c.h5").exists()


def test_a_folder_link_loop_gives_one_row_per_image_and_says_what_it_skipped(tmp_path: Path) -> None:
    photo((200, 0, 0), seed=1).save(tmp_path / "x.jpg")
    (tmp_path / "a").mkdir()
    photo((0, 200, 0), seed=2).save(tmp_path / "a/y.jpg")
    (tmp_path / "a/cycle").symlink_to("..")
    code, output = run("extract", tmp_path, "--out", tmp_path / "c.h5", *TINY)
    assert code == 0 and "images    2: 2 embedded" in output
    assert "skipped   a/cycle: a link to '.', a folder already listed; not followed" in output
    with open_cache(tmp_path / "c.h5") as cache:
        assert sorted(cache.backbone().paths) == ["a/y.jpg", "x.jpg"]


def test_a_larger_max_pixels_and_retry_failed_re_attempt_recorded_failures(tmp_path: Path) -> None:
    source, out = tmp_path / "photos", tmp_path / "c.h5"
    source.mkdir()
    photo((200, 0, 0), seed=1).save(source / "small.jpg")
    Image.new("L", (2000, 2000), 100).save(source / "big.png")
    (source / "broken.jpg").write_bytes(b"not a picture")
    code, output = run("extract", source, "--out", out, "--max-pixels", "1000000", *TINY)
    assert code == 0 and "2 failed" in output and "failed    big.png: image is 2000x2000 = 4 Mpx" in output
    code, output = run("extract", source, "--out", out, "--max-pixels", "1000000", *TINY)
    assert code == 0 and "0 embedded" in output and "retried" not in output
    code, output = run("extract", source, "--out", out, "--max-pixels", "8000000", *TINY)
    assert (
        code == 0
        and "1 embedded" in output
        and (
            "retried   1 recorded failure(s) (1 because --max-pixels was raised "
            "from 1000000 to 8000000): 1 now in the cache, 0 failed again"
        )
        in output
    )
    code, output = run("extract", source, "--out", out, "--max-pixels", "8000000", "--retry-failed", *TINY)
    assert (
        code == 0
        and ("retried   1 recorded failure(s) (1 because --retry-failed was given): 0 now in the cache, 1 failed again")
        in output
        and "failed    broken.jpg: not an image" in output
    )


@pytest.mark.real_data
def test_predict_top_k_text_and_json(keras_home: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from conftest import IMAGENET_LABELS, IMAGENET_PHOTOS

    monkeypatch.setenv("KERAS_HOME", str(keras_home))
    monkeypatch.setenv("EMBEDDER_IMAGENET_LABELS", str(IMAGENET_LABELS))
    code, output = run("predict", IMAGENET_PHOTOS / "parrot.jpg", "--top", "3")
    assert code == 0 and output.startswith(f"{IMAGENET_PHOTOS / 'parrot.jpg'}: macaw 0.")
    (tmp_path / "broken.jpg").write_text("no")
    code, output = run(
        "predict", IMAGENET_PHOTOS / "bird.bmp", tmp_path / "broken.jpg", "--top", "2", "--format", "json"
    )
    lines = [json.loads(line) for line in output.strip().splitlines()]
    assert code == 1  # one image failed
    assert lines[0]["path"].endswith("bird.bmp") and next(c["name"] for c in lines[0]["top"]) == "chickadee"
    assert set(lines[0]["top"][0]) == {"index", "name", "prob"} and len(lines[0]["top"]) == 2
    assert lines[1] == {
        "path": str(tmp_path / "broken.jpg"),
        "error": "not an image: the content is not a format Pillow can decode",
    }
