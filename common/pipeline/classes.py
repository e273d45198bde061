"""Several classes in one dataset: what the user asked for, and which class a contested picture joins.

Each class keeps its own cluster, chosen as for a single query. A picture (with its copies) that
two classes would keep goes to the class whose text it matches best on the model's logit scale,
or to none when the best two are nearly equal.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from common.names import SPLITS, class_folders

FORMATS = ("imagefolder", "webdataset", "hf")


@dataclass(frozen=True)
class ClassSpec:
    label: str  # the query as the user gave it
    folder: str  # its folder name in the dataset
    index: int


@dataclass(frozen=True)
class DatasetSpec:
    """The shape of the dataset asked for; one label, no split, imagefolder: today's flat folder."""

    labels: tuple[str, ...]
    limit: int
    balance: bool = False
    split: tuple[float, ...] | None = None
    seed: int = 0
    format: str = "imagefolder"
    exclude: tuple[str, ...] = ()  # negative prompts: what the pictures must not show
    like: tuple[str, ...] = ()  # example pictures (files or URLs) that steer the cluster choice
    classes: tuple[ClassSpec, ...] = field(init=False)

    def __post_init__(self) -> None:
        if not self.labels or any(not label.strip() for label in self.labels):
            raise ValueError("every class needs a non-empty query")
        if len(set(self.labels)) != len(self.labels):
            raise ValueError("the same query was given twice; give each class once")
        if self.like and len(self.labels) > 1:
            raise ValueError("example pictures (--like) steer one class's choice, and would pull every class "
                             "towards them; give them with a single query")
        if self.format not in FORMATS:
            raise ValueError(f"unknown format {self.format!r}; use one of {', '.join(FORMATS)}")
        folders = class_folders(list(self.labels))
        specs = tuple(ClassSpec(label, folder, i) for i, (label, folder) in enumerate(zip(self.labels, folders)))
        object.__setattr__(self, "classes", specs)

    @property
    def flat(self) -> bool:
        """The single-query folder of img_NNNN.jpg files, exactly as one query has always been written."""
        return len(self.labels) == 1 and self.split is None and self.format == "imagefolder"


def parse_split(text: str) -> tuple[float, ...]:
    """"0.8,0.1,0.1" -> train/val/test fractions (two numbers: train/val); they must add up to 1."""
    try:
        parts = tuple(float(p) for p in text.split(","))
    except ValueError:
        raise ValueError(f"--split takes two or three numbers like 0.8,0.1,0.1, not {text!r}") from None
    if not 2 <= len(parts) <= len(SPLITS) or any(not 0 <= p <= 1 for p in parts) or parts[0] <= 0:
        raise ValueError(f"--split takes two or three fractions from 0 to 1 (train first, above 0), not {text!r}")
    if abs(sum(parts) - 1) > 1e-6:
        raise ValueError(f"the --split fractions must add up to 1; {text} adds up to {sum(parts):g}")
    return parts


@dataclass(frozen=True)
class Contest:
    """A picture more than one class would keep: who gets it, or why nobody does."""

    winner: int | None  # class index; None when ambiguous
    best: int
    runner_up: int
    logits: tuple[float, float]  # logit_scale x cosine with the two best classes' texts


def settle(claims: dict[int, list[int]], sims: np.ndarray, logit_scale: float, margin: float) -> dict[int, Contest]:
    """Pictures claimed by two or more classes -> the contest's outcome.

    `claims` maps a picture (a row of `sims`) to the classes whose chosen cluster holds it;
    `sims[row, class]` is its cosine with that class's text.
    """
    settled: dict[int, Contest] = {}
    for row, classes in claims.items():
        if len(classes) < 2:
            continue
        ranked = sorted(classes, key=lambda c: (-sims[row, c], c))
        best, second = ranked[0], ranked[1]
        top, next_ = logit_scale * float(sims[row, best]), logit_scale * float(sims[row, second])
        winner = best if top - next_ >= margin else None
        settled[row] = Contest(winner, best, second, (round(top, 3), round(next_, 3)))
    return settled


def balanced_cap(kept_per_class: Sequence[int]) -> int:
    """--balance: every class is cut to the smallest class's count."""
    return min(kept_per_class) if kept_per_class else 0
