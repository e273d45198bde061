"""One settings object: every knob of the pipeline, read from `CVDB_*` environment variables."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

SelectMode = Literal["query", "largest"]
Dtype = Literal["auto", "float32", "bfloat16", "float16"]


# Secrets and deployment addresses never go into a dataset's report.json.
_NOT_IN_REPORTS = {"naver_client_id", "naver_client_secret", "database_url", "redis_url", "api_tokens",
                   "allowed_hosts", "original_dashboard_dir"}


class Settings(BaseSettings):
    """Defaults are what a user on the real internet wants; tests override base URLs and models."""

    model_config = SettingsConfigDict(env_prefix="CVDB_", extra="ignore")

    # Where datasets go; an output folder may never resolve outside it.
    data_root: Path = Path("data")

    # Candidates: collect more than asked for, since filters and clustering drop many.
    oversample: float = Field(3.0, ge=1.0, le=20.0)
    max_candidates: int = Field(5000, ge=1)

    # Download (aiohttp): concurrency, timeouts, caps, retries, network safety.
    concurrency: int = Field(64, ge=1, le=1024)
    per_host_concurrency: int = Field(8, ge=1, le=256)
    connect_timeout_s: float = Field(5.0, gt=0)
    read_timeout_s: float = Field(10.0, gt=0)
    total_timeout_s: float = Field(30.0, gt=0)
    max_bytes: int = Field(20 * 1024 * 1024, ge=1024)
    max_redirects: int = Field(3, ge=0, le=20)
    retries: int = Field(2, ge=0, le=10)
    retry_backoff_s: float = Field(0.5, ge=0)
    max_retry_after_s: float = Field(30.0, ge=0)
    allow_private_addresses: bool = False
    allowed_ports: tuple[int, ...] = (80, 443, 8080, 8443, 8000)
    honour_robots_tag: bool = True
    user_agent: str = "cv-dataset-builder/0.1 (image dataset research tool; honours X-Robots-Tag noai)"

    # Decode limits, applied from the header before any pixel is decoded.
    max_pixels: int = Field(40_000_000, ge=1)
    max_side: int = Field(12_000, ge=1)
    # Scans a JPEG may have (real progressive files have ~10): each is a pass over every block.
    max_jpeg_scans: int = Field(100, ge=1)
    # One image's decode and checks run in a decode worker process, killed past this budget.
    decode_timeout_s: float = Field(10.0, gt=0)

    # Quality checks (each drops an image below/above its threshold).
    min_side: int = Field(300, ge=1)
    max_aspect_ratio: float = Field(3.0, ge=1.0)
    min_sharpness: float = Field(100.0, ge=0)
    sharpness_side: int = Field(512, ge=32)
    dark_p99: float = Field(0.32, ge=0, le=1)
    light_p5: float = Field(0.95, ge=0, le=1)
    min_entropy: float = Field(3.0, ge=0, le=8)

    # Duplicates.
    phash_distance: int = Field(10, ge=0, le=64)
    pixel_confirm_correlation: float = Field(0.90, ge=-1, le=1)
    pixel_confirm_colour_difference: float = Field(10.0, ge=0, le=255)
    near_duplicate_cosine: float = Field(0.94, ge=0, le=1)

    # CLIP.
    model: str = "openai/clip-vit-base-patch32"
    # Which text encoder scores the query: "auto" (CLIP's own text tower for an English query, the
    # multilingual encoder for any other), "none" (always CLIP's own), or a sentence-transformers
    # encoder trained into the CLIP model's image space (a hub name or a local folder).
    text_model: str = Field("auto", min_length=1)
    # The encoder "auto" uses for non-English queries; unset: the one known for `model`.
    multilingual_text_model: str | None = None
    device: str = "auto"
    # CLIP's number format: "auto" is float16 on CUDA, bfloat16 on a CPU with native bfloat16
    # (AVX512-BF16 or AMX: about twice as fast as float32, cosine to it > 0.9999), float32 on others.
    dtype: Dtype = "auto"
    batch_size: int = Field(32, ge=1, le=4096)
    # The service's GPU worker embeds whole jobs: larger batches on CUDA (unset: 256 there,
    # batch_size on a CPU).
    gpu_batch_size: int | None = Field(None, ge=1, le=4096)
    prompt: str = "a photo of {query}"

    # Clustering and selection.
    eps: float = Field(0.18, gt=0, lt=2)
    min_samples: int = Field(3, ge=1)
    select: SelectMode = "query"
    # Several classes: a picture two classes would keep joins the one whose text it matches best,
    # unless the two best differ by less than this on the model's logit scale (then neither).
    class_margin: float = Field(1.0, ge=0)

    # Export.
    jpeg_quality: int = Field(95, ge=1, le=100)

    # Sources: every base URL is a setting so tests can point at a fake Naver on 127.0.0.1.
    source: str = "naver"
    source_order: tuple[str, ...] = ("naver", "naver-api", "naver-browser")
    naver_search_url: str = "https://search.naver.com/search.naver"
    naver_xhr_url: str = "https://s.search.naver.com/p/c/image/search.naver"
    naver_api_url: str = "https://openapi.naver.com/v1/search/image"
    naver_client_id: str | None = None
    naver_client_secret: str | None = None
    naver_page_delay_s: float = Field(1.0, ge=0)
    chromium_path: str = "/usr/bin/chromium"
    chromedriver_path: str = "/usr/bin/chromedriver"

    # Decode/quality threads in the local runner.
    decode_workers: int = Field(2, ge=1, le=64)

    # The service: where its state and queues live, how jobs are cut up and bounded.
    database_url: str = "postgresql+psycopg2://postgres@127.0.0.1:5432/cvdb"
    redis_url: str = "redis://127.0.0.1:6379/0"
    fetch_chunk_size: int = Field(50, ge=1, le=5000)
    max_job_limit: int = Field(1000, ge=1)
    # Jobs queued or running at once; more submissions get 429 until some finish.
    max_active_jobs: int = Field(50, ge=1)
    # Bearer tokens the API accepts, comma separated; none means the API is open.
    api_tokens: str = ""
    # Host names the API answers to (a guard against DNS rebinding), comma separated, ports ignored;
    # `*` allows any. Empty: these defaults; `cvdb serve` adds the address it binds.
    allowed_hosts: str = "localhost,127.0.0.1,::1"
    # A folder served under /static/ as it is: the original tool's dashboard/static, so its page
    # runs against this API at /static/index.html. Unset: /static/ serves nothing.
    original_dashboard_dir: Path | None = None
    # The sweep (every sweep_every_s) re-sends the current step of a running job that has shown
    # no progress for stall_resend_s (its task was lost with a worker), and fails the job after
    # stall_timeout_s without progress.
    sweep_every_s: float = Field(30.0, gt=0)
    stall_resend_s: float = Field(180.0, gt=0)
    stall_timeout_s: float = Field(900.0, gt=0)
    # How often a fetch chunk may be started before its URLs are given up (a crashing image).
    max_chunk_attempts: int = Field(3, ge=1, le=20)
    # A task whose database or broker goes away (a restart) retries for this long before it fails.
    db_retry_s: float = Field(90.0, ge=0)
    publish_retry_s: float = Field(90.0, ge=0)
    # An embed or select step that runs longer is stopped (its pool process killed if it must be)
    # and the sweep sends it again; a step that keeps hanging fails the job at stall_timeout_s.
    gpu_task_time_limit_s: float = Field(900.0, gt=0)

    def thresholds(self) -> dict[str, object]:
        """Everything that decides what is kept, for report.json (no secrets, no service addresses)."""
        return self.model_dump(mode="json", exclude=_NOT_IN_REPORTS)
