"""Request and response shapes of the REST API; the OpenAPI document is generated from them."""

from __future__ import annotations

import re
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from common.lifecycle import JobStatus, Stage
from common.names import MAX_OUTPUT, OUTPUT_NAME

SOURCES = ("naver", "naver-api", "naver-browser", "auto", "urls")
MAX_CLASSES = 50
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


class JobRequest(BaseModel):
    """A dataset to build. Only `query` (or `queries`) is required; every option is bounded."""

    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)

    query: str | None = Field(None, min_length=1, max_length=200, description="What the images should show, e.g. 고양이.")
    queries: list[str] | None = Field(None, min_length=1, max_length=MAX_CLASSES,
                                      description="Instead of `query`: several queries, one class each, in one "
                                      "dataset (<class>/img_0001.jpg, classes.json); a picture joins one class at most.")
    limit: int = Field(50, ge=1, le=1000, description="How many images to keep at most, per class.")
    split: list[float] | None = Field(None, min_length=2, max_length=3, description="train, val[, test] fractions "
                                      "adding up to 1, e.g. [0.8, 0.1, 0.1]: <split>/<class>/img_0001.jpg, "
                                      "look-alike pictures never in two splits.")
    seed: int = Field(0, ge=0, le=2**31 - 1, description="Seed of the split assignment.")
    balance: bool = Field(False, description="Cut every class to the smallest class's count.")
    like: list[str] | None = Field(None, max_length=8, description="URLs of example pictures of what to keep: "
                                   "the cluster choice also weighs how close each group is to them.")
    exclude: list[str] | None = Field(None, max_length=10, description="Negative prompts: groups, then single "
                                      "pictures, that match one better than the query are dropped (excluded).")
    output: str | None = Field(None, description="Output folder name under the data folder "
                               f"(letters, digits, . _ -; at most {MAX_OUTPUT}); default: <query>-<id>.",
                               json_schema_extra={"pattern": OUTPUT_NAME})
    source: Literal["naver", "naver-api", "naver-browser", "auto", "urls"] = Field(
        "naver", description="Where candidates come from; `urls` uses the `urls` list.")
    urls: list[str] | None = Field(None, max_length=1000, description="Image URLs, for source `urls`; with "
                                   "`queries`, each may be written label<TAB>URL to give it to one class.")
    select: Literal["query", "largest"] = Field(
        "query", description="Keep the cluster that best matches the query, or the largest one.")
    oversample: float | None = Field(None, ge=1.0, le=10.0, description="Candidates collected per image asked for.")
    eps: float | None = Field(None, ge=0.05, le=0.5, description="DBSCAN radius in cosine distance.")
    min_samples: int | None = Field(None, ge=2, le=50, description="DBSCAN core size.")
    min_side: int | None = Field(None, ge=32, le=4000, description="Smallest accepted shorter side, pixels.")
    min_sharpness: float | None = Field(None, ge=0, le=10000, description="Smallest accepted Laplacian variance.")
    near_duplicate_cosine: float | None = Field(None, ge=0.5, le=1.0,
                                                description="CLIP cosine from which two images are checked as copies (their pixels must agree).")

    @field_validator("query")
    @classmethod
    def _printable(cls, value: str | None) -> str | None:
        if value is not None and _CONTROL.search(value):
            raise ValueError("must not contain control characters")
        return value

    @field_validator("queries")
    @classmethod
    def _classes(cls, value: list[str] | None) -> list[str] | None:
        if value is None:
            return None
        value = [q.strip() for q in value]
        if any(not q or len(q) > 200 or _CONTROL.search(q) for q in value):
            raise ValueError("every query must be 1 to 200 printable characters")
        if len(set(value)) != len(value):
            raise ValueError("the same query is given twice; give each class once")
        return value

    @field_validator("like")
    @classmethod
    def _example_urls(cls, value: list[str] | None) -> list[str] | None:
        for url in value or []:
            if len(url) > 2000 or not re.fullmatch(r"https?://[^\s]+", url) or _CONTROL.search(url):
                raise ValueError(f"example pictures are given as http(s) URLs, not {url[:80]!r}")
        return value

    @field_validator("exclude")
    @classmethod
    def _negative_prompts(cls, value: list[str] | None) -> list[str] | None:
        value = [text.strip() for text in value] if value is not None else None
        if value is not None and any(not t or len(t) > 200 or _CONTROL.search(t) for t in value):
            raise ValueError("every negative prompt must be 1 to 200 printable characters")
        return value

    @field_validator("split")
    @classmethod
    def _fractions(cls, value: list[float] | None) -> list[float] | None:
        if value is not None and (any(not 0 <= f <= 1 for f in value) or value[0] <= 0 or abs(sum(value) - 1) > 1e-6):
            raise ValueError("give train, val[, test] fractions from 0 to 1 (train above 0) that add up to 1")
        return value

    @field_validator("output")
    @classmethod
    def _plain_name(cls, value: str | None) -> str | None:
        if value is not None and not re.fullmatch(OUTPUT_NAME, value):
            raise ValueError("use a plain folder name: letters, digits, '.', '_' or '-', starting with a "
                             f"letter or digit, at most {MAX_OUTPUT} characters (no '/' or '..')")
        return value

    @field_validator("urls")
    @classmethod
    def _http(cls, value: list[str] | None) -> list[str] | None:
        for url in value or []:
            label, _, address = url.rpartition("\t")
            if (len(url) > 2000 or not re.fullmatch(r"https?://[^\s]+", address) or _CONTROL.search(address)
                    or _CONTROL.search(label)):
                raise ValueError(f"not an http(s) URL or label<TAB>URL: {url[:80]!r}")
        return value

    @model_validator(mode="after")
    def _one_way_to_name_classes(self) -> JobRequest:
        if (self.query is None) == (self.queries is None):
            raise ValueError("give either `query` (one class) or `queries` (several), not both or neither")
        if self.like and len(self.labels) > 1:
            raise ValueError("`like` example pictures steer one class's choice and would pull every class towards "
                             "them; give them with a single query")
        return self

    @property
    def labels(self) -> list[str]:
        return self.queries or [self.query or ""]

    @model_validator(mode="after")
    def _urls_match_source(self) -> JobRequest:
        if self.source == "urls" and not self.urls:
            raise ValueError("source 'urls' needs a non-empty `urls` list")
        if self.source != "urls" and self.urls:
            raise ValueError("`urls` is only used with source 'urls'")
        return self

    def pipeline_options(self) -> dict[str, Any]:
        """The options a worker applies over its own settings (only those the user gave)."""
        names = ("select", "oversample", "eps", "min_samples", "min_side", "min_sharpness", "near_duplicate_cosine")
        options: dict[str, Any] = {n: getattr(self, n) for n in names if getattr(self, n) is not None}
        if self.queries or self.split or self.balance or self.like or self.exclude:
            options["dataset"] = {"queries": self.labels, "split": self.split, "seed": self.seed, "balance": self.balance,
                                  "like": self.like or [], "exclude": self.exclude or []}
        return {**options, "urls": self.urls} if self.urls else options


class RunRequest(JobRequest):
    """The original dashboard's submit body: `out_dir` names a folder under data/, as it sent it."""

    out_dir: str | None = Field(None, max_length=200, description="The original's output path, e.g. "
                                "data/naver_collected: like the original, each run gets a folder of its own, "
                                "here naver_collected-<first 8 characters of the job id> in the data folder.")


class ErrorOut(BaseModel):
    error: str = Field(description="A short code, e.g. not_found, validation_error.")
    detail: Any = Field(description="What went wrong and what to do; a list of field errors for 422.")


class Links(BaseModel):
    self: str
    log: str
    images: str
    manifest: str
    archive: str
    cancel: str


class StageProgress(BaseModel):
    candidates: int = Field(description="Candidate URLs found by the search.")
    fetched: int = Field(description="Candidates downloaded and checked so far (kept or dropped).")
    accepted: int = Field(description="Fetched images that passed the download and quality checks.")
    kept: int


class JobOut(BaseModel):
    id: str
    query: str = Field(description="The query, or the `queries` joined by ', '.")
    queries: list[str] = Field(description="The job's classes: its `queries`, or [query].")
    limit: int
    output: str
    out_dir: str = Field(description="The same as `output`: the original's name for it.")
    source: str
    options: dict[str, Any]
    status: JobStatus = Field(description="A job submitted through POST /api/run shows `running` until it is "
                              "final, as the original did; `stage` and `cancel_requested` tell the rest.")
    # True once the job will never change again (done, failed, cancelled): what clients poll on.
    final: bool
    stage: Stage | None
    count: int
    error: str | None
    cancel_requested: bool
    progress: StageProgress
    drop_counts: dict[str, int]
    stage_counts: dict[str, Any]
    fetch_chunks: dict[str, int]
    result: dict[str, Any]
    created_at: str | None
    started_at: str | None
    finished_at: str | None
    elapsed_s: float | None
    links: Links


class ClassProgress(BaseModel):
    label: str
    candidates: int
    fetched: int
    accepted: int
    kept: int


class JobDetail(JobOut):
    log: str = Field(description="The job's log so far (also at /log); the original's log page reads it here.")
    classes: list[ClassProgress] = Field(description="Progress per class, in `queries` order (one entry for a "
                                         "single query); `result.classes` has the clusters once done.")


class JobCreated(BaseModel):
    id: str
    status: str
    links: Links


class RunCreated(JobCreated):
    job_id: str = Field(description="The same as `id`: the field the original's page reads.")


class JobList(BaseModel):
    jobs: list[JobOut]
    page: int
    per_page: int
    total: int


class LogOut(BaseModel):
    id: str
    status: str
    log: str
    lines: list[str]


class ImageOut(BaseModel):
    file: str = Field(description="Relative to the dataset folder: img_0001.jpg, or <split>/<class>/img_0001.jpg.")
    label: str | None = Field(description="The image's class (its query) in a dataset of classes; null otherwise.")
    split: str | None = Field(description="train, val or test with a split; null otherwise.")
    url: str = Field(description="Where to fetch this image from the API.")
    manifest: dict[str, Any] = Field(description="The image's row of manifest.jsonl: source URL, scores, cluster.")


class ImageList(BaseModel):
    id: str
    count: int
    images: list[ImageOut]
    job_id: str = Field(description="The same as `id` (the original's field).")
    out_dir: str = Field(description="The job's output folder (the original's field).")
    files: list[str] = Field(description="The image file names alone, as the original listed them.")


class SearchHit(BaseModel):
    file: str | None = Field(description="The picture's file, relative to the dataset folder.")
    score: float = Field(description="Cosine similarity with the text or picture searched for.")
    url: str | None = Field(None, description="Where to fetch the picture from the API.")
    label: str | None = None
    split: str | None = None


class SearchResults(BaseModel):
    id: str
    hits: list[SearchHit] = Field(description="Best first.")


class Reason(BaseModel):
    stage: str = Field(description="download, quality, duplicates or selection")
    description: str


class ReasonList(BaseModel):
    reasons: dict[str, Reason] = Field(description="Drop reason code -> its stage and meaning; "
                                       "`http_<status>` stands for every HTTP error status.")


class Cleared(BaseModel):
    deleted: int


class Health(BaseModel):
    status: str
    postgres: str
    redis: str
