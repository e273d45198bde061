"""Which text encoder scores a query: CLIP's own text tower for English, a multilingual encoder
trained into the same image space for any other language.

CLIP's text tower learned from English captions: a Korean prompt lands near nothing in particular,
and `--select query` would fall back to cluster size. The multilingual encoders were distilled from
that tower on translated captions, so their vectors sit where CLIP puts the English.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np

from common.config import Settings
from common.pipeline.clip_input import ModelLoadError

if TYPE_CHECKING:
    from common.pipeline.embed import ClipEmbedder

AUTO, NONE = "auto", "none"
# Multilingual encoders trained into a CLIP model's image space, by the CLIP model they follow.
KNOWN_MULTILINGUAL = {
    "openai/clip-vit-base-patch32": "sentence-transformers/clip-ViT-B-32-multilingual-v1",
}


def is_english(query: str) -> bool:
    """Written in ASCII. Anything else (Korean, accented letters) goes to the multilingual
    encoder, which was trained on English too, so sending it an English query costs nothing."""
    return query.isascii()


def query_encoder(query: str, settings: Settings) -> str | None:
    """The sentence-transformers encoder that scores `query`, or None for CLIP's own text tower."""
    if settings.text_model == NONE:
        return None
    if settings.text_model != AUTO:
        return settings.text_model
    if is_english(query):
        return None
    chosen = settings.multilingual_text_model or KNOWN_MULTILINGUAL.get(settings.model)
    if chosen is None:
        raise ModelLoadError(
            f"the query {query!r} is not in English, and no multilingual text encoder is known for CLIP model "
            f"{settings.model!r}: set CVDB_MULTILINGUAL_TEXT_MODEL (or --text-model) to a sentence-transformers "
            "encoder trained into its image space, or pass --text-model none to score it with CLIP's own "
            "English text tower")
    return chosen


def prompt_vectors(embedder: ClipEmbedder, settings: Settings, texts: Sequence[str]) -> np.ndarray:
    """One unit vector per text, in the prompt template, each by the encoder its language needs."""
    if not texts:
        return np.zeros((0, embedder.dim), np.float32)
    return np.stack([embedder.embed_texts([settings.prompt.format(query=t)], query_encoder(t, settings))[0]
                     for t in texts])
