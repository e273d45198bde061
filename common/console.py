"""Terminal output for the CLI: one progress bar per stage and the end-of-run summary."""

from __future__ import annotations

from typing import Any

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
)
from rich.table import Table

STAGE_LABELS = {
    "search": "Searching",
    "download": "Downloading",
    "filter": "Checking quality",
    "embed": "Embedding (CLIP)",
    "dedup": "Removing duplicates",
    "cluster": "Clustering",
    "export": "Saving",
}


class RichProgress:
    """Implements common.pipeline.progress.Progress with rich bars (on stderr)."""

    def __init__(self, console: Console) -> None:
        self.console = console
        self.bars = Progress(
            TextColumn("{task.description:<22}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
            console=console, transient=False,
        )
        self.tasks: dict[str, TaskID] = {}

    def __enter__(self) -> RichProgress:
        self.bars.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.bars.stop()

    def start(self, stage: str, total: int | None = None) -> None:
        self.tasks[stage] = self.bars.add_task(STAGE_LABELS.get(stage, stage), total=total)

    def advance(self, stage: str, n: int = 1) -> None:
        self.bars.advance(self.tasks[stage], n)

    def finish(self, stage: str) -> None:
        task = self.tasks[stage]
        done = self.bars.tasks[self.bars.task_ids.index(task)].completed
        self.bars.update(task, total=done, completed=done)

    def log(self, message: str) -> None:
        self.bars.console.log(message)

    def cancelled(self) -> bool:
        return False


def print_summary(console: Console, report: dict[str, Any]) -> None:
    counts = report["counts"]
    console.print(
        f"candidates {counts['candidates']}  downloaded {counts['downloaded']}  "
        f"passed quality {counts['passed_quality']}  unique {counts['unique']}  kept {counts['kept']}"
    )
    if report["dropped"]:
        dropped = Table("dropped because", "images", title="Dropped", title_justify="left")
        for reason, n in report["dropped"].items():
            dropped.add_row(reason, str(n))
        console.print(dropped)
    if report["clusters"]:
        clusters = Table("cluster", "size", "query similarity", "cohesion", "score", "", title="Clusters", title_justify="left")
        for c in report["clusters"]:
            mark = "kept" if c["id"] == report["chosen_cluster"] else ""
            clusters.add_row(str(c["id"]), str(c["size"]), f"{c['query_similarity']:.3f}", f"{c['cohesion']:.3f}", f"{c['score']:.2f}", mark)
        console.print(clusters)
    console.print(f"Selection ({report['select']}): {report['selection_reason']}")
    if len(report.get("classes", [])) > 1:
        _print_classes(console, report)


def _print_classes(console: Console, report: dict[str, Any]) -> None:
    table = Table("class", "folder", "candidates", "unique", "kept", "splits", "chosen cluster",
                  title="Classes", title_justify="left")
    for c in report["classes"]:
        splits = " ".join(f"{name} {n}" for name, n in c["splits"].items())
        chosen = "none" if c["chosen_cluster"] is None else str(c["chosen_cluster"])
        table.add_row(c["label"], c["folder"], str(c["counts"]["candidates"]), str(c["counts"]["unique"]),
                      str(c["counts"]["kept"]), splits, chosen)
    console.print(table)
    for warning in report.get("warnings", []):
        console.print(f"[bold yellow]Warning:[/] {warning}")
