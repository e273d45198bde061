"""The CLIP model (and the query's text encoder, then the clustering library) loading in a thread
while the search and the first downloads run.

Importing torch and transformers and loading the weights take seconds; nothing before the first
batch needs them. CLIP's input numbers are read from the model's JSON at once (no torch), so
downloads, checks and CLIP's input making start without waiting for the model.
"""

from __future__ import annotations

import contextlib
import threading
from typing import TYPE_CHECKING, Any

from common.pipeline.clip_input import read_clip_input

if TYPE_CHECKING:
    from common.pipeline.embed import ClipEmbedder


class LoadingEmbedder:
    """Stands in for a ClipEmbedder from the moment it is made; any use beyond `clip_input`
    waits for the model (and raises its ModelLoadError, if loading failed)."""

    def __init__(self, model: str, device: str = "auto", text_encoder: str | None = None, dtype: str = "auto") -> None:
        self.clip_input = read_clip_input(model)  # a wrong model name fails here, before the search
        self._args, self._text_encoder = (model, device, dtype), text_encoder
        self._done = threading.Event()
        self._embedder: ClipEmbedder | None = None
        self._error: BaseException | None = None
        # A daemon: a build that fails first (no candidates) exits without waiting for the model.
        threading.Thread(target=self._load, name="clip-load", daemon=True).start()

    def _load(self) -> None:
        try:
            from common.pipeline.embed import ClipEmbedder

            embedder = ClipEmbedder(*self._args)
            if self._text_encoder is not None:  # the query's encoder, if not CLIP's own: loaded here too
                embedder.text_encoder(self._text_encoder)
            self._embedder = embedder
        except BaseException as exc:  # handed to whoever waits for the model
            self._error = exc
        finally:
            self._done.set()
        # Clustering comes after the overlapped pass, alone on one core: its library (a second and
        # more to import) is better imported now. A failure is left to the import where it is used.
        with contextlib.suppress(Exception):
            import sklearn.cluster  # noqa: F401

    def ready(self) -> bool:
        """Whether using the model would start at once (loaded, or failed to)."""
        return self._done.is_set()

    def loaded(self) -> ClipEmbedder:
        self._done.wait()
        if self._error is not None:
            raise self._error
        assert self._embedder is not None
        return self._embedder

    def __getattr__(self, name: str) -> Any:
        return getattr(self.loaded(), name)
