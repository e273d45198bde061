"""cvdb: build a clean image dataset from one search query, in one process (build) or as a service (serve)."""

from __future__ import annotations

import atexit
import contextlib
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, NoReturn, Optional, cast

import typer
from rich.console import Console

from common.names import slug

if TYPE_CHECKING:
    from common.pipeline.embed import ClipEmbedder

app = typer.Typer(help=__doc__, no_args_is_help=True, add_completion=False)
err = Console(stderr=True)

Opt = typer.Option


def make_settings(**overrides: Any) -> Any:
    """Environment (CVDB_*) first, then every CLI option the user actually gave."""
    from pydantic import ValidationError

    from common.config import Settings

    try:
        return Settings(**{k: v for k, v in overrides.items() if v is not None})
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
        fail(f"invalid setting: {problems}", code=2)


def fail(message: str, code: int = 1) -> NoReturn:
    err.print(f"[bold red]Error:[/] {message}")
    raise typer.Exit(code)


@app.command()
def build(
    queries: Annotated[Optional[list[str]], typer.Argument(help="What the images should show, e.g. \"red panda\" or \"고양이\". Several queries make one dataset with one class each: \"red panda\" raccoon fox. With a labelled --urls list they may be left out: its labels are the classes.", show_default=False)] = None,
    source: Annotated[Optional[str], Opt(help="Where candidates come from: naver, naver-api, naver-browser, auto (try them in order) or urls.")] = None,
    urls: Annotated[Optional[str], Opt(help="A file of image URLs, one per line, or - for stdin; implies --source urls. Lines written label<TAB>URL give each class its own URLs.")] = None,
    limit: Annotated[int, Opt(min=1, max=5000, help="How many images to keep at most, per class.")] = 50,
    balance: Annotated[bool, Opt(help="Cut every class to the smallest class's count.")] = False,
    split: Annotated[Optional[str], Opt(help="train,val[,test] fractions, e.g. 0.8,0.1,0.1: per class, seeded, and look-alike pictures never in two splits. Layout <out>/<split>/<class>/.")] = None,
    seed: Annotated[int, Opt(help="Seed of the --split assignment: the same seed gives the same splits.")] = 0,
    like: Annotated[Optional[list[str]], Opt("--like", help="An example picture (a file or an http(s) URL) of what to keep; repeatable. The cluster choice also weighs how close each group is to the examples, so a few good pictures pick the right group when the query is vague.")] = None,
    exclude: Annotated[Optional[list[str]], Opt("--exclude", help="A negative prompt, e.g. \"drawing\"; repeatable. Groups, then single pictures, that match it better than the query are dropped (excluded).")] = None,
    format: Annotated[str, Opt("--format", help="imagefolder (<class>/img_0001.jpg), webdataset (tar shards of jpg + cls + json) or hf (a Hugging Face datasets folder for load_from_disk).")] = "imagefolder",
    out: Annotated[Optional[Path], Opt(help="Output folder, inside the data folder (CVDB_DATA_ROOT). Default: <data>/<query> (the queries joined by -).")] = None,
    select: Annotated[Optional[str], Opt(help="Which cluster to keep: query (best match for the query text) or largest (the original rule).")] = None,
    model: Annotated[Optional[str], Opt(help="CLIP model: a Hugging Face name or a local folder saved with save_pretrained.")] = None,
    text_model: Annotated[Optional[str], Opt(help="What scores the query: auto (CLIP's own text tower for English, a multilingual encoder trained into CLIP's image space for any other language; the default), none (always CLIP's own), or a sentence-transformers encoder name or folder.")] = None,
    device: Annotated[Optional[str], Opt(help="auto (CUDA when present), cpu, cuda, cuda:1 ...")] = None,
    dtype: Annotated[Optional[str], Opt(help="CLIP's number format: auto (float16 on CUDA; bfloat16 on a CPU with native bfloat16, AVX512-BF16 or AMX, about twice as fast; float32 on other CPUs), float32, bfloat16, float16.")] = None,
    batch_size: Annotated[Optional[int], Opt(help="Images per CLIP batch.")] = None,
    oversample: Annotated[Optional[float], Opt(help="Collect this many times --limit candidates: filters drop many.")] = None,
    eps: Annotated[Optional[float], Opt(help="DBSCAN radius in cosine distance (0.18 as the original).")] = None,
    min_samples: Annotated[Optional[int], Opt(help="DBSCAN core size (3 as the original).")] = None,
    min_side: Annotated[Optional[int], Opt(help="Drop images whose shorter side is below this many pixels.")] = None,
    min_sharpness: Annotated[Optional[float], Opt(help="Drop images whose Laplacian variance (at 512 px) is below this.")] = None,
    near_duplicate_cosine: Annotated[Optional[float], Opt(help="CLIP cosine at or above which two images are checked as copies (their thumbnail pixels must agree).")] = None,
    class_margin: Annotated[Optional[float], Opt(help="Several classes: a picture two classes would keep joins the better match only if it leads by this much on the model's logit scale; otherwise neither keeps it (ambiguous_class).")] = None,
    allow_private_addresses: Annotated[Optional[bool], Opt("--allow-private-addresses", help="Allow downloads from private and loopback addresses (off: they are refused).")] = None,
    overwrite: Annotated[bool, Opt(help="Replace a dataset already in the output folder.")] = False,
) -> None:
    """Search, download, filter, embed, cluster and save a dataset: img_0001.jpg ... + manifest.jsonl + report.json.

    Several queries give one dataset of classes (<class>/img_0001.jpg, classes.json); a picture is kept in one class at most."""
    settings = make_settings(
        source=source, select=select, model=model, text_model=text_model, device=device, dtype=dtype, batch_size=batch_size,
        oversample=oversample, eps=eps, min_samples=min_samples, min_side=min_side, min_sharpness=min_sharpness,
        near_duplicate_cosine=near_duplicate_cosine, allow_private_addresses=allow_private_addresses,
        class_margin=class_margin,
    )
    from common.pipeline.sources.urls import UrlsSource

    listed = UrlsSource(urls) if urls is not None else None  # read once, also from standard input
    spec = dataset_spec(queries or [], listed, limit, balance, split, seed, format, like or [], exclude or [])
    out_dir = resolve_or_fail(out or settings.data_root / slug("-".join(spec.labels)), settings)
    run_build(spec, out_dir, settings, listed, overwrite)


def dataset_spec(queries: list[str], listed: Any, limit: int, balance: bool, split: str | None,
                 seed: int, format: str, like: list[str], exclude: list[str]) -> Any:
    """The classes and shape asked for, or a clear error; a labelled URL list names the classes itself."""
    from common.pipeline.classes import DatasetSpec, parse_split
    from common.pipeline.sources import SourceError
    from common.pipeline.sources.urls import labels_in

    labels = [q.strip() for q in queries]
    if not labels and listed is not None:
        try:
            labels = labels_in(listed.entries())
        except SourceError as exc:
            fail(str(exc), code=2)
    if not labels:
        fail("no query: say what the images should show, e.g. cvdb build \"red panda\" (or give a --urls list "
             "of label<TAB>URL lines)", code=2)
    if not all(labels):
        fail("a query is empty; say what the images should show", code=2)
    try:
        if any(not text.strip() for text in exclude):
            raise ValueError("an --exclude prompt is empty; say what the pictures must not show")
        return DatasetSpec(tuple(labels), limit, balance, parse_split(split) if split else None, seed, format,
                           tuple(t.strip() for t in exclude), tuple(like))
    except ValueError as exc:
        fail(str(exc), code=2)


def run_build(spec: Any, out_dir: Path, settings: Any, listed: Any, overwrite: bool) -> None:
    """Build `spec` (a DatasetSpec) into `out_dir`; `listed` is the --urls list (a UrlsSource) or None."""
    from common.console import RichProgress, print_summary
    from common.pipeline.clip_input import ModelLoadError
    from common.pipeline.examples import ExampleError, load_examples
    from common.pipeline.export import LOCAL_OWNER, MANIFEST, OutputError, release
    from common.pipeline.model_loader import LoadingEmbedder
    from common.pipeline.run_local import BuildError, candidate_budget
    from common.pipeline.run_local import build as build_dataset
    from common.pipeline.sources import SourceError, search_classes
    from common.pipeline.text_encoder import query_encoder

    try:
        # The model loads while the search and the first downloads run; the first batch waits for it.
        encoder = next((e for e in (query_encoder(label, settings) for label in spec.labels) if e), None)
        embedder = LoadingEmbedder(settings.model, settings.device, encoder, settings.dtype)
        err.print(f"Loading CLIP model {settings.model} in the background"
                  + (f", and the text encoder {encoder} for the query" if encoder else ""))
        examples = load_examples(spec.like, settings)  # a bad example fails before the search
        shown_labels = ", ".join(map(repr, spec.labels))
        with err.status(f"Searching {settings.source} for {shown_labels} ..."):
            found = search_classes(spec.labels, candidate_budget(spec.limit, settings), settings, listed=listed)
        for label, result in found.items():
            err.print(f"{len(result.candidates)} candidates from {result.served_by}"
                      + (f" for {label!r}" if len(found) > 1 else ""))
        infos = {label: {"served_by": r.served_by, "attempts": r.attempts} for label, r in found.items()}
        source = next(iter(infos.values())) if len(infos) == 1 else {"classes": infos}
        if overwrite and (out_dir / MANIFEST).exists():
            # The earlier dataset goes first thing in the build: not before the model is known to load.
            with err.status(f"Loading CLIP model {settings.model} ..."):
                embedder.loaded()
        with RichProgress(err) as progress:
            result = build_dataset(spec, {label: r.candidates for label, r in found.items()}, out_dir, settings,
                                   cast("ClipEmbedder", embedder), progress, overwrite, source, examples)
    except ModelLoadError as exc:
        # The model loads beside the build: a folder it claimed and left empty is given up again.
        with contextlib.suppress(OutputError, OSError):
            release(out_dir, LOCAL_OWNER)
        fail(str(exc))
    except (SourceError, OutputError, ExampleError) as exc:
        fail(str(exc))
    except BuildError as exc:
        print_summary(err, exc.report)
        fail(f"{exc} (details in {shown(out_dir / 'report.json')})")
    except KeyboardInterrupt:
        fail("interrupted; nothing was saved as complete", code=130)
    print_summary(err, result.report)
    typer.echo(f"Saved {result.kept} images to {shown(result.out_dir)}")


def shown(path: Path) -> Path:
    """A path as the user would type it: relative to the working folder when inside it."""
    try:
        return path.relative_to(Path.cwd())
    except ValueError:
        return path


@app.command("search")
def search_command(
    query: Annotated[str, typer.Argument(help="The search query.")],
    source: Annotated[Optional[str], Opt(help="naver, naver-api, naver-browser, auto or urls.")] = None,
    limit: Annotated[int, Opt(min=1, max=5000, help="How many candidates to list at most.")] = 50,
    urls: Annotated[Optional[str], Opt(help="A file of image URLs (or - for stdin); implies --source urls.")] = None,
) -> None:
    """Print what a source returns, one JSON line per candidate, without downloading anything."""
    import json

    from common.pipeline.sources import SourceError, search

    settings = make_settings(source=source)
    try:
        found = search(query, limit, settings, urls_file=urls)
    except SourceError as exc:
        fail(str(exc))
    for candidate in found.candidates:
        typer.echo(json.dumps(candidate.to_dict(), ensure_ascii=False))
    err.print(f"{len(found.candidates)} candidates from {found.served_by}")
    for attempt in found.attempts:
        if attempt["outcome"] != "ok":
            err.print(f"  {attempt['source']}: {attempt['outcome']}: {attempt['error']}")


@app.command()
def find(
    folder: Annotated[Path, typer.Argument(help="A dataset folder cvdb build (or the service) wrote.", show_default=False)],
    text: Annotated[Optional[str], typer.Argument(help="What to look for, e.g. \"a red panda on a branch\".", show_default=False)] = None,
    like: Annotated[Optional[list[str]], Opt("--like", help="An example picture (a file or an http(s) URL); repeatable. With text too, both count.")] = None,
    top: Annotated[int, Opt(min=1, max=100000, help="How many pictures to list.")] = 10,
    model: Annotated[Optional[str], Opt(help="The CLIP model the dataset was built with (default: CVDB_MODEL).")] = None,
    text_model: Annotated[Optional[str], Opt(help="auto, none or a sentence-transformers encoder, as for build.")] = None,
    device: Annotated[Optional[str], Opt(help="auto, cpu, cuda ...")] = None,
    dtype: Annotated[Optional[str], Opt(help="CLIP's number format: auto, float32, bfloat16, float16 (see cvdb build --help).")] = None,
) -> None:
    """Search a built dataset by text or by example pictures: one JSON line {file, score} per picture, best first."""
    import json

    from common.pipeline.clip_input import ModelLoadError
    from common.pipeline.embed import ClipEmbedder
    from common.pipeline.examples import ExampleError, load_examples
    from common.pipeline.find import (
        FindError,
        check_model,
        load_index,
        rank,
        search_vectors,
    )

    settings = make_settings(model=model, text_model=text_model, device=device, dtype=dtype)
    text = (text or "").strip()
    if not text and not like:
        fail("say what to look for: a text, --like PICTURE, or both", code=2)
    try:
        index = load_index(folder)
        check_model(index, settings.model)
        examples = load_examples(like or [], settings)
        with err.status(f"Loading CLIP model {settings.model} ..."):
            embedder = ClipEmbedder(settings.model, settings.device, settings.dtype)
        query = search_vectors(embedder, settings, text, examples)
    except (FindError, ExampleError, ModelLoadError) as exc:
        fail(str(exc))
    for hit in rank(index, query, top):
        typer.echo(json.dumps(hit, ensure_ascii=False))


@app.command()
def demo(
    out: Annotated[Optional[Path], Opt(help="Output folder, inside the data folder. Default: <data>/demo-sunflower.")] = None,
    cache: Annotated[Path, Opt(help="Where the tiny demo model is trained once and kept.")] = Path(".cache/cvdb"),
    select: Annotated[Optional[str], Opt(help="query (default) or largest, to see the original rule pick the bigger off-topic group.")] = None,
    limit: Annotated[int, Opt(min=1, help="How many images to keep at most.")] = 50,
) -> None:
    """See the whole flow offline: generated search results served on 127.0.0.1, a tiny CLIP, a dataset."""
    from common.devkit.demo import QUERY, serve_demo_results, tiny_model_settings
    from common.devkit.tiny_clip import ensure_tiny_clip

    with err.status("Loading the tiny demo CLIP (the first run trains it on synthetic pictures: a few minutes) ..."):
        model_dir = ensure_tiny_clip(cache)
    with serve_demo_results() as demo_search:
        settings = make_settings(source="naver", select=select, **tiny_model_settings(model_dir),
                                 **demo_search.naver_settings)
        out_dir = resolve_or_fail(out or settings.data_root / f"demo-{slug(QUERY)}", settings)
        err.print(f"A fake Naver on 127.0.0.1 serves {len(demo_search.scenario.urls)} generated results; query {QUERY!r}")
        from common.pipeline.classes import DatasetSpec

        run_build(DatasetSpec((QUERY,), limit), out_dir, settings, None, overwrite=True)


@app.command()
def serve(
    cpu_workers: Annotated[int, Opt(min=1, max=64, help="CPU worker processes (search, download, filter).")] = 2,
    concurrency: Annotated[int, Opt(min=1, max=64, help="Tasks each CPU worker runs at once (prefork children).")] = 2,
    host: Annotated[str, Opt(help="Address the API listens on; 0.0.0.0 exposes it to the network.")] = "127.0.0.1",
    port: Annotated[int, Opt(min=1, max=65535, help="API port.")] = 8000,
    flower: Annotated[bool, Opt(help="Run Flower (monitoring; set FLOWER_BASIC_AUTH=user:password).")] = True,
    flower_port: Annotated[int, Opt(min=1, max=65535, help="Flower's port.")] = 5555,
    beat: Annotated[bool, Opt(help="Run the scheduler that fails jobs whose worker died.")] = True,
    demo: Annotated[bool, Opt("--demo", help="Offline: serve generated search results on 127.0.0.1 as Naver and use the tiny demo CLIP (search for 'sunflower').")] = False,
) -> None:
    """Run the service on this machine: API + CPU workers + GPU worker + beat + Flower (compose.yaml without Docker).

    Needs Postgres (CVDB_DATABASE_URL) and Redis (CVDB_REDIS_URL); the database schema is migrated first.
    """
    from contextlib import ExitStack

    from common import serve as launcher

    settings = make_settings()
    try:
        launcher.preflight(settings)
        launcher.migrate(sys.stdout)
    except launcher.ServeError as exc:
        fail(str(exc))
    processes = launcher.plan(cpu_workers, concurrency, f"{host}:{port}", flower, beat, flower_port)
    with ExitStack() as stack:
        if demo:
            stack.enter_context(_demo_environment())
        err.print(f"Starting {', '.join(p.name for p in processes)}; the API is on http://{host}:{port}/ (Ctrl-C stops all)")
        code = launcher.run(processes)
    raise typer.Exit(code)


@contextmanager
def _demo_environment() -> Iterator[None]:
    """The demo's fake Naver and tiny CLIP, handed to the service's processes as CVDB_* settings."""
    from common.devkit.demo import QUERY, serve_demo_results, tiny_model_settings
    from common.devkit.tiny_clip import ensure_tiny_clip

    with err.status("Loading the tiny demo CLIP (the first run trains it on synthetic pictures: a few minutes) ..."):
        model_dir = ensure_tiny_clip(Path(".cache/cvdb").resolve())
    with serve_demo_results() as demo_search:
        values = {**tiny_model_settings(model_dir), **demo_search.naver_settings}
        os.environ.update({f"CVDB_{k.upper()}": str(v) for k, v in values.items() if v is not None})
        err.print(f"Demo: a fake Naver on 127.0.0.1 serves generated pictures; submit the query {QUERY!r}")
        yield


def resolve_or_fail(out: Path, settings: Any) -> Path:
    from common.pipeline.export import OutputError, resolve_output

    try:
        return resolve_output(out, settings.data_root)
    except OutputError as exc:
        fail(str(exc), code=2)


def main() -> None:  # pragma: no cover - console entry point
    """Run the command, then leave without the interpreter's teardown once torch is loaded: freeing
    torch's and transformers' modules one by one takes about a second after the work is done.
    Exit handlers (the decode pool's closing among them) still run and the output is flushed; every
    command has finished its own threads and written its files before it returns."""
    try:
        app()
        code = 0
    except SystemExit as exc:
        code = exit_status(exc.code)
    if "torch" not in sys.modules:
        sys.exit(code)
    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(OSError, ValueError):
            stream.flush()
    os._exit(code)


def exit_status(code: object) -> int:
    """The status SystemExit(code) gives: None is 0, a number itself, anything else is printed and 1."""
    if code is None or isinstance(code, int):
        return code or 0
    print(code, file=sys.stderr)
    return 1


if __name__ == "__main__":  # pragma: no cover
    main()
