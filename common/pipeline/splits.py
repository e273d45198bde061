"""Train/val/test assignment without leaks: look-alike pictures travel together, seeded and reproducible.

Exact and confirmed copies are already gone; what is left that could still leak are pictures
that propose a copy (CLIP cosine at the near-copy threshold, or a pHash within its distance) but
that the pixels did not confirm: the same subject re-shot, re-cropped or re-coloured. Such a group
goes to one split as a whole.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

import numpy as np

from common.names import SPLITS
from common.pipeline.dedup import look_alike_groups

__all__ = ["SPLITS", "assign_splits", "look_alike_groups"]


def assign_splits(
    classes: Sequence[int], groups: Sequence[int], keys: Sequence[str], fractions: Sequence[float], seed: int
) -> list[str]:
    """A split name per picture.

    `classes[i]` is picture i's class, `groups[i]` its look-alike group and `keys[i]` a stable id
    (its source sha256). Groups are taken in a seeded order and each goes to the split furthest
    below its target share for the classes of its members, so every class gets close to the
    fractions and no group is cut.
    """
    names = SPLITS[: len(fractions)]
    members: dict[int, list[int]] = {}
    for i, group in enumerate(groups):
        members.setdefault(group, []).append(i)
    total = np.bincount(np.asarray(classes, dtype=int), minlength=max(classes, default=-1) + 1)
    target = np.outer(total, np.asarray(fractions, dtype=float))  # class x split
    assigned = np.zeros_like(target)
    order = sorted(members.values(), key=lambda ms: _draw(seed, min(keys[m] for m in ms)))
    split_of: list[str] = [""] * len(classes)
    for group_members in order:
        deficit = sum(target[classes[m]] - assigned[classes[m]] for m in group_members)
        chosen = int(np.argmax(deficit))  # ties go to the earlier split: train, then val
        for m in group_members:
            assigned[classes[m], chosen] += 1
            split_of[m] = names[chosen]
    return split_of


def _draw(seed: int, key: str) -> str:
    return hashlib.sha256(f"{seed}\0{key}".encode()).hexdigest()

