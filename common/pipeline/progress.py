"""How the pipeline reports progress and learns it should stop, whoever runs it (CLI or worker)."""

from __future__ import annotations

from typing import Protocol


class Cancelled(Exception):
    """The run was asked to stop; nothing half-written is left looking complete."""


class Progress(Protocol):
    def start(self, stage: str, total: int | None = None) -> None: ...

    def advance(self, stage: str, n: int = 1) -> None: ...

    def finish(self, stage: str) -> None: ...

    def log(self, message: str) -> None: ...

    def cancelled(self) -> bool: ...


class SilentProgress:
    """For library callers and tests that do not watch progress."""

    def start(self, stage: str, total: int | None = None) -> None:
        pass

    def advance(self, stage: str, n: int = 1) -> None:
        pass

    def finish(self, stage: str) -> None:
        pass

    def log(self, message: str) -> None:
        pass

    def cancelled(self) -> bool:
        return False
