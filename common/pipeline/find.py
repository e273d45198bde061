"""Search inside a built dataset: its embeddings.npy ranked against a text or example pictures."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from common.config import Settings
from common.pipeline import export
from common.pipeline.examples import example_vectors
from common.pipeline.report import portable
from common.pipeline.text_encoder import prompt_vectors

if TYPE_CHECKING:
    from common.pipeline.embed import ClipEmbedder


class FindError(Exception):
    """The folder cannot be searched; the message says why and what to do."""


@dataclass(frozen=True)
class DatasetIndex:
    rows: list[dict[str, Any]]  # manifest rows
    vectors: np.ndarray  # float32 unit vectors, one per row
    model: str  # the model the vectors came from, as report.json names it


def load_index(out_dir: Path) -> DatasetIndex:
    """A finished dataset's manifest, embeddings and model name; FindError when one is missing."""
    rows = export.manifest_rows(out_dir)
    embeddings, report = out_dir / export.EMBEDDINGS, out_dir / export.REPORT
    if not rows:
        raise FindError(f"{out_dir} holds no finished dataset (no {export.MANIFEST}); build one with cvdb build")
    if not export.regular_file(embeddings) or not export.regular_file(report):
        raise FindError(f"{out_dir} has no {export.EMBEDDINGS}; it was built by an older version: build it again")
    vectors = np.load(embeddings, allow_pickle=False).astype(np.float32)
    if vectors.ndim != 2 or len(vectors) != len(rows):
        raise FindError(f"{export.EMBEDDINGS} in {out_dir} has {len(vectors)} rows for {len(rows)} manifest rows; "
                        "build the dataset again")
    model = json.loads(report.read_text(encoding="utf-8")).get("embeddings", {}).get("model", "")
    return DatasetIndex(rows, vectors, str(model))


def check_model(index: DatasetIndex, model: str) -> None:
    """Vectors of two models do not compare: the search must embed with the dataset's own."""
    if portable(model, local_folder=True) != index.model:
        raise FindError(f"this dataset was embedded with {index.model!r}, not {model!r}; search it with the same "
                        f"model (--model / CVDB_MODEL)")


def search_vectors(embedder: ClipEmbedder, settings: Settings, text: str | None, pictures: Sequence[bytes]) -> np.ndarray:
    """What to rank against: one unit vector for the text and one for the pictures' mean, so the text
    and the pictures weigh the same however many pictures there are (clean JPEGs: examples.py)."""
    parts = [example_vectors(pictures, embedder)] if pictures else []
    if text:
        parts.append(prompt_vectors(embedder, settings, [text]))
    means = [p.mean(axis=0) for p in parts]
    return np.stack([m / (np.linalg.norm(m) or 1.0) for m in means])


def rank(index: DatasetIndex, query: np.ndarray, top: int) -> list[dict[str, Any]]:
    """The `top` rows closest to `query` (one unit vector, or several averaged), best first."""
    target = query.reshape(-1, index.vectors.shape[1]).mean(axis=0)
    target /= np.linalg.norm(target) or 1.0
    scores = index.vectors @ target
    order = sorted(range(len(scores)), key=lambda i: (-scores[i], i))[:top]
    return [{"file": index.rows[i].get("file"), "score": round(float(scores[i]), 4),
             **{k: index.rows[i][k] for k in ("label", "split", "key", "hf_split", "hf_row") if k in index.rows[i]}}
            for i in order]
