"""The Ray Data actor of the Ray engine: one loaded backbone, embedding blocks of images into shard files."""

from __future__ import annotations

import os
import socket
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from embedder.backbone import Backbone, keras_weights_filename
from embedder.cache import Batch
from embedder.errors import EmbedderError
from embedder.extraction.rows import Sorter
from embedder.extraction.shards import SHARD_SUFFIX, write_shard
from embedder.inputs import LoadedFile, decode_loaded, is_uri, load_and_encode, load_file, read_bytes
from embedder.runtimes import load_encoder


class BlockEmbedder:
    """Ray Data actor: one loaded backbone; each call embeds blocks of images into shard files."""

    def __init__(
        self,
        *,
        backbone: dict[str, Any],
        weights: Any,
        key: str,
        shard_folder: str,
        run: str,
        known: Any,
        runtime: str,
        batch_size: int,
        threads: int,
        max_pixels: int,
    ) -> None:
        import ray

        self._weights_folder = tempfile.TemporaryDirectory(prefix="embedder-weights-")
        spec = dict(backbone)
        if weights is not None:  # the driver's weights file travels through the object store
            spec["weights"] = self._materialize(spec, ray.get(weights))
        self.backbone = Backbone(**spec)
        if self.backbone.key != key:
            raise EmbedderError(
                f"worker {socket.gethostname()} built backbone {self.backbone.key}, the driver "
                f"{key}: install the same library versions on every node."
            )
        self.encoder = load_encoder(self.backbone, runtime, threads=threads)
        self.known, self.failed = ray.get(known)  # hashes already embedded; failed hash -> its Failure
        self.folder, self.run = Path(shard_folder), run
        self.batch_size, self.threads, self.max_pixels = batch_size, threads, max_pixels

    def _materialize(self, spec: dict[str, Any], data: bytes) -> str:
        """Write the weights to a private folder; "imagenet" stays "imagenet" through a private KERAS_HOME."""
        folder = Path(self._weights_folder.name)
        if spec["weights"] == "imagenet":
            (folder / "models").mkdir()
            (folder / "models" / keras_weights_filename(spec["alpha"], spec["size"], False)).write_bytes(data)
            os.environ["KERAS_HOME"] = str(folder)
            return "imagenet"
        path = folder / Path(spec["weights"]).name
        path.write_bytes(data)
        return str(path)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        out: dict[str, list] = {"block": [], "images": [], "seconds": [], "runtime": []}
        for block, paths, rels, labels in zip(batch["block"], batch["paths"], batch["rels"], batch["labels"]):
            started = time.perf_counter()
            shard = self.embed(list(paths), list(rels), list(labels))
            attrs = {
                "backbone_key": self.backbone.key,
                "run": self.run,
                "block": int(block),
                "host": socket.gethostname(),
                "pid": os.getpid(),
                "seconds": time.perf_counter() - started,
            }
            write_shard(self.folder / f"{self.run}-{int(block):06d}{SHARD_SUFFIX}", shard, attrs)
            out["block"].append(int(block))
            out["images"].append(len(rels))
            out["seconds"].append(attrs["seconds"])
            out["runtime"].append(self.encoder.runtime)
        return {name: np.array(values) for name, values in out.items()}

    def embed(self, paths: list[str], rels: list[str], labels: list[str]) -> Batch:
        """Read, hash, decode and embed one block; duplicates (in the cache or the block) become aliases."""
        sorter = Sorter(self.known, self.failed)

        def load(path: str) -> LoadedFile:
            if not is_uri(path):
                return load_file(
                    Path(path),
                    size=self.backbone.size,
                    resize=self.backbone.resize,
                    max_pixels=self.max_pixels,
                    skip=sorter.skip,
                )
            loaded = LoadedFile(Path(path))
            try:
                data = read_bytes(path)
            except OSError as exc:
                loaded.error = f"cannot read: {exc}"
                return loaded
            loaded.size = len(data)
            return decode_loaded(
                loaded,
                data,
                size=self.backbone.size,
                resize=self.backbone.resize,
                max_pixels=self.max_pixels,
                skip=sorter.skip,
            )

        shard = Batch(embeddings=np.empty((len(paths), self.backbone.dim), np.float32))
        items = list(zip(paths, rels, labels))
        for (_, rel, label), loaded, embedding in load_and_encode(
            items, lambda item: load(item[0]), self.encoder, batch_size=self.batch_size, workers=self.threads + 1
        ):
            sorter.add(shard, rel, label, loaded, embedding)
        shard.embeddings = shard.embeddings[: len(shard.rows)]
        return shard
