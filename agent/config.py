"""One typed, frozen settings object, read once at the entry point from a YAML file and the environment.

Environment variables override the file: ``SLICE_AGENT_<SECTION>__<FIELD>``, for example
``SLICE_AGENT_AUDIT__GAMMA=5`` or ``SLICE_AGENT_EMBED__SPEC=open_clip:ViT-B-32@/models/vit.pt``.
The core never reads the environment; it receives these objects.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, model_validator
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from agent.errors import ConfigError

__all__ = [
    "AuditSettings",
    "EmbedSettings",
    "EventSettings",
    "ExporterSettings",
    "ImageSettings",
    "MllpSettings",
    "PacsSettings",
    "Settings",
    "StreamSettings",
    "SummarySettings",
    "WarnSettings",
    "load_settings",
]

Modality = Literal["image", "report", "metadata"]


class AuditSettings(BaseModel):
    """How slices are found, tested and explained."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    slicer: Literal["error_aware", "errors_only"] = "error_aware"
    n_slices: int = Field(5, ge=1, le=5, description="slices reported at most (metric labels allow 1..5)")
    n_components: int = Field(25, ge=1, description="mixture components of the error-aware slicer, at most")
    gamma: float = Field(10.0, ge=0, description="weight of the label and prediction terms")
    reg_covar: float = Field(1e-6, gt=0, description="variance floor of the mixture components")
    pca_components: int = Field(128, ge=1, description="PCA dimensions at most")
    cases_per_dimension: int = Field(10, ge=1, description="a window of n cases keeps n / this dimensions")
    cases_per_component: int = Field(
        30, ge=1, description="a fitting fold of n cases gets n / this components"
    )
    beta: float = Field(
        0.1, gt=0, le=1, description="membership threshold, relative to a case's most probable component"
    )
    alpha: float = Field(0.05, gt=0, lt=1, description="family-wise significance level")
    n_splits: int = Field(2, ge=2, description="cross-fitting folds for the held-out test")
    spaces: tuple[Literal["fused", "modalities", "scores", "terms", "neighbours"], ...] = Field(
        ("fused", "modalities", "terms", "neighbours"),
        min_length=1,
        description="where slices are sought: the fused embedding, each modality's own, the report"
        " and header terms, (neighbours) where errors are dense among each modality's nearest"
        " neighbours, and (scores) an error score in each modality's own; one Bonferroni"
        " factor covers every space",
    )
    min_slice_size: int = Field(10, ge=1, description="smaller slices are neither tested nor exported")
    permutations: int = Field(
        500,
        ge=0,
        le=100_000,
        description="term rules and neighbour scans are chosen and tested on the whole window, their"
        " p-values calibrated by this many within-class permutations of the errors (max-T); 0: term"
        " rules are cross-fitted like the other spaces and no neighbour scan runs",
    )
    top_tokens: int = Field(5, ge=1, le=20)
    token_min_df: int = Field(3, ge=1, description="a token must occur in this many studies")
    max_report_chars: int = Field(20_000, ge=100, description="longer reports are dead-lettered")
    seed: int = 0
    blas_threads: int = Field(
        1,
        ge=1,
        description="BLAS and OpenMP threads of a refit's numerical part (fuse, slices); one leaves"
        " a core of a small sidecar to the embedder and the event loop",
    )


class EmbedSettings(BaseModel):
    """Which embedding model runs, where, and where its cache lives."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    spec: str = Field("default", description="'default' or 'open_clip:NAME[@CHECKPOINT]'")
    device: str = "cpu"
    batch_size: int = Field(32, ge=1)
    cache_path: Path | None = Field(
        None, description="SQLite embedding cache; unset: the agent's store (run), memory (audit)"
    )
    image_size: int = Field(224, ge=32)
    allow_random_weights: bool = Field(
        False, description="let open_clip:NAME run without a checkpoint (random weights; tests only)"
    )
    threads: int | None = Field(
        1,
        ge=1,
        description="torch threads of the embedder (torch.set_num_threads); null leaves torch's default",
    )
    batch_threads: int | None = Field(
        None,
        ge=1,
        description="torch threads of the embedder in a batch audit (slice-agent audit), where nothing"
        " else runs; null: one per core",
    )
    text_int8: bool = Field(
        False,
        description="run the default embedder's text tower in int8 on CPU (dynamic quantisation):"
        " about 1.5x less CPU per text, but the slices' members move (docs/benchmarks.md)",
    )
    runtime: Literal["onnx", "torch"] = Field(
        "onnx",
        description="run the default embedder's float32 networks in ONNX Runtime on CPU (the same"
        " vectors to float rounding; text starts about 10 s sooner, images about 7x faster) or in torch",
    )
    graph_dir: Path | None = Field(
        None,
        description="where the exported ONNX graphs are kept; unset: $XDG_CACHE_HOME/slice-agent/graphs",
    )


class ImageSettings(BaseModel):
    """Where image files may be read from, and how much one image may cost."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    roots: tuple[Path, ...] = Field(
        (), description="folders image paths must resolve under; none configured refuses every path"
    )
    max_file_bytes: int = Field(256 * 2**20, ge=1024, description="larger image files are refused")
    max_pixel_bits: int = Field(
        2**30, ge=1, description="rows x columns x frames x samples x bits allocated, at most"
    )
    time_limit_seconds: float = Field(10.0, gt=0, description="one image's read and decode, at most")


class EventSettings(BaseModel):
    """Size limits of one input message and of its fields."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    max_message_bytes: int = Field(2**20, ge=1024, description="larger messages are refused unparsed")
    max_depth: int = Field(8, ge=2, description="nesting of objects and arrays, at most")
    max_id_chars: int = Field(256, ge=16, description="event_id, study_uid, model, model_version, image_uid")
    max_label_chars: int = Field(128, ge=1, description="a class label (prediction or label)")
    max_image_chars: int = Field(4096, ge=64, description="the image path or URI")
    max_metadata_keys: int = Field(64, ge=1)
    max_metadata_key_chars: int = Field(64, ge=8)
    max_metadata_value_chars: int = Field(1024, ge=8, description="one metadata value, as JSON text")


class StreamSettings(BaseModel):
    """Where the streaming agent reads, what it keeps, and when it refits."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    bootstrap_servers: str = "127.0.0.1:9092"
    group_id: str = "slice-agent"
    inference_topic: str = "inference-events"
    label_topic: str = "label-events"
    report_topic: str = "report-events"
    dead_letter_topic: str = "slice-agent-dead-letter"
    partitions: int = Field(4, ge=1, description="partition count used when the agent creates topics")
    store_path: Path = Field(Path("slice-agent.sqlite"), description="durable state (SQLite, one worker)")
    store_url: str | None = Field(
        None,
        description="shared state for a group of workers: postgresql+psycopg://USER@HOST:PORT/DB"
        " (the password from PGPASSWORD or ~/.pgpass); replaces store_path",
    )
    naive_timestamps: Literal["utc", "reject"] = Field(
        "utc", description="an event time without a zone is read as UTC, or rejected (wrong_type)"
    )
    keep_refits: int = Field(50, ge=1, description="refits (reports, slice history) kept per model and class")
    keep_vectors: int = Field(200_000, ge=100, description="embedding vectors kept in the store's cache")
    refit_lease_seconds: float = Field(
        60.0, gt=0, description="a refit's lease; another worker takes the model over this long after a crash"
    )
    maintenance_interval_seconds: float = Field(
        1.0, ge=0, description="expire and prune windows at most this often (a replay does it every batch)"
    )
    embed_on_arrival: bool = Field(
        True, description="embed each event when it arrives (off: refits embed what they need)"
    )
    embed_claim_seconds: float = Field(
        120.0, gt=0, description="rows a worker took to embed are retried by others after this long"
    )
    reports_dir: Path = Field(Path("slice-reports"), description="slice reports written after each refit")
    label_delay_seconds: float = Field(14 * 24 * 3600, gt=0, description="how long an inference waits")
    window_size: int = Field(5000, ge=10, description="labeled samples kept per (model, target class)")
    window_max_age_seconds: float = Field(90 * 24 * 3600, gt=0)
    refit_every_labels: int = Field(200, ge=1)
    refit_every_seconds: float = Field(600.0, gt=0)
    emerging_refits: int = Field(3, ge=1, description="consecutive significant refits before 'emerging'")
    target_classes: dict[str, list[str | int]] = Field(
        default_factory=dict,
        description="per model, the classes to audit; default: the least frequent of those with"
        " audit.min_slice_size labeled samples or more",
    )
    classes: dict[str, list[str | int]] = Field(
        default_factory=dict, description="per model, its known classes; default: those it predicts"
    )
    max_future_seconds: float = Field(
        7 * 24 * 3600,
        ge=0,
        description="events further ahead of the clock are dead-lettered (future_event), not applied",
    )
    batch_size: int = Field(100, ge=1, description="messages applied to the store per transaction")
    batch_seconds: float = Field(1.0, gt=0, description="longest wait to fill a batch")
    refit_min_samples: int = Field(50, ge=2, description="no refit on a smaller window")
    warm_refits: bool = Field(
        True,
        description="each refit starts from the last one's PCA basis and mixtures; cases keep their"
        " fold across refits (a hash of the study id)",
    )
    basis_refresh_refits: int = Field(
        10, ge=1, description="refits one PCA basis serves at most before it is fitted again"
    )
    basis_max_drift: float = Field(
        0.05,
        ge=0,
        lt=1,
        description="relative loss of captured variance on a new window that makes a refit fit its"
        " basis again",
    )
    remember_projections: bool = Field(
        True,
        description="a worker keeps each target's last window projected on its basis in memory"
        " (about 0.5 KiB a case and space at 128 dimensions: the fused space and each modality's)"
        " so that a warm refit projects only new or changed cases",
    )
    resolve_refits: int = Field(2, ge=1, description="refits without an emerging slice before 'resolved'")
    track_min_overlap: float = Field(
        0.5, gt=0, le=1, description="member overlap |A&B|/min(|A|,|B|) that makes two refits' slices one"
    )
    track_max_distance: float = Field(
        0.05, ge=0, le=2, description="centroid cosine distance that matches a slice whose members left"
    )
    drift_delta: float = Field(0.002, gt=0, lt=1, description="ADWIN confidence of the error-rate drift")
    dead_letter_path: Path = Field(
        Path("slice-agent-dead-letter.jsonl"), description="dead letters in replay mode (JSONL)"
    )
    create_topics: bool = Field(True, description="create the topics with `partitions` at start")
    session_timeout_seconds: float = Field(6.0, gt=0)
    heartbeat_interval_seconds: float = Field(2.0, gt=0)
    rebalance_timeout_seconds: float = Field(20.0, gt=0)
    request_timeout_seconds: float = Field(30.0, gt=0)
    log_check_seconds: float = Field(
        15.0,
        gt=0,
        description="how often the agent checks that each partition's log is still the one it read"
        " (a recreated topic, a lost log); also after every assignment",
    )


class ExporterSettings(BaseModel):
    """The Prometheus exporter served by the agent."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    enabled: bool = True
    host: str = "127.0.0.1"
    port: int = Field(9464, ge=0, le=65535)
    min_slice_size: int = Field(10, ge=1, description="smaller slices are not exported")
    max_series_keys: int = Field(
        50, ge=1, description="(model, target class) pairs exported at most; keeps label sets bounded"
    )
    push_job: str = Field("slice_agent_audit", description="Pushgateway job name of batch audits")
    p_value_threshold: float = Field(
        0.05, gt=0, lt=1, description="an emerging slice alerts when its p-value is below this"
    )
    error_rate_drift_threshold: float = Field(
        0.05,
        gt=0,
        lt=1,
        description="drift alerts when the window error ratio exceeds its 7-day mean by this",
    )
    dead_letter_threshold: float = Field(
        0.05, gt=0, le=1, description="a dead-letter spike: this fraction of consumed events dead-lettered"
    )
    refit_stale_seconds: float = Field(
        3600.0, gt=0, description="stalled: labels keep arriving but no refit completed for this long"
    )
    label_backlog_threshold: int = Field(
        10_000, ge=1, description="label backlog alerts when more studies than this wait for a label"
    )
    max_models: int = Field(
        20, ge=1, description="models with series at most: configured ones always, others first come"
    )
    models: tuple[str, ...] = Field(
        (), description="models always exported, whatever else comes in (they take no max_models slot)"
    )
    consumer_lag_threshold: int = Field(
        50_000, ge=1, description="consumer lag alerts when a topic lags by more messages than this"
    )
    unembedded_age_threshold_seconds: float = Field(
        1800.0, gt=0, description="the embedder counts as stuck when a sample waits longer than this"
    )
    unsent_dead_letters_threshold: int = Field(
        1000, ge=1, description="the dead-letter outbox alerts when more letters than this are unsent"
    )
    estimated_error_threshold: float = Field(
        0.3, gt=0, lt=1, description="alert: a slice's estimated error ratio (lower bound) above this"
    )
    label_coverage_threshold: float = Field(
        0.5, gt=0, le=1, description="alert on estimates only while label coverage is below this"
    )


class WarnSettings(BaseModel):
    """The early warning from unlabeled traffic: live assignment to the known slices, the share
    test per time bucket, and the error estimated from calibrated scores (:mod:`agent.warn`)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    enabled: bool = Field(True, description="describe each refit's slices and assign new inferences")
    bucket_seconds: float = Field(86_400.0, gt=0, description="time bucket of the share test (event time)")
    alpha: float = Field(
        0.001,
        gt=0,
        lt=1,
        description="false-alarm rate of the share test per bucket and (model, target class), "
        "Bonferroni over the slices",
    )
    min_bucket_cases: int = Field(30, ge=1, description="a bucket with fewer assigned cases is not tested")
    min_calibration_labels: int = Field(
        100, ge=10, description="labeled window cases a slice needs for a calibration of its own"
    )
    horizon_seconds: float = Field(
        14 * 86_400.0, gt=0, description="recent inferences (event time) the estimates cover"
    )
    confidence: float = Field(0.95, gt=0, lt=1, description="level of the estimate's interval")


class PacsSettings(BaseModel):
    """The PACS that images are fetched from over DICOMweb (WADO-RS), by UID only.

    The base URL and credentials come from here alone: a URL inside an event is never followed.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    base_url: str | None = Field(
        None, description="DICOMweb root, e.g. https://pacs.example/dicom-web; none: no fetch by UID"
    )
    username: str | None = Field(None, description="HTTP basic authentication user")
    password: SecretStr | None = Field(None, description="its password (prefer password_file)")
    password_file: Path | None = Field(None, description="a file holding the password (a mounted secret)")
    ca_bundle: Path | None = Field(None, description="CA certificates for https; default: the system's")
    connect_timeout_seconds: float = Field(5.0, gt=0)
    read_timeout_seconds: float = Field(30.0, gt=0, description="longest wait for the next bytes")
    fetch_time_limit_seconds: float = Field(60.0, gt=0, description="one instance's download, at most")
    retry_initial_seconds: float = Field(5.0, gt=0, description="first wait after a failed fetch")
    retry_multiplier: float = Field(2.0, ge=1.0, description="each further wait is this much longer")
    retry_max_seconds: float = Field(600.0, gt=0, description="longest wait between two tries")
    give_up_after_seconds: float = Field(
        24 * 3600.0, gt=0, description="the image modality of a sample is given up after this long"
    )

    @model_validator(mode="after")
    def _check(self) -> PacsSettings:
        if self.base_url is not None and not re.match(r"^https?://[^\s/?#]+", self.base_url):
            raise ValueError(f"pacs.base_url: expected an http(s) URL, got {self.base_url!r}")
        if self.password is not None and self.password_file is not None:
            raise ValueError("pacs: set password or password_file, not both")
        if self.retry_max_seconds < self.retry_initial_seconds:
            raise ValueError("pacs: expected retry_max_seconds >= retry_initial_seconds")
        return self


class MllpSettings(BaseModel):
    """The MLLP listener for HL7 v2 ORU^R01 reports (``slice-agent mllp``)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    host: str = Field("127.0.0.1", description="address to listen on; loopback unless the network is trusted")
    port: int = Field(2575, ge=0, le=65535, description="0 picks a free port")
    max_message_bytes: int = Field(1 << 20, ge=1024, description="a longer frame is refused (AR)")
    idle_timeout_seconds: float = Field(300.0, gt=0, description="a silent connection is closed after this")
    publish_timeout_seconds: float = Field(
        30.0, gt=0, description="wait this long for the broker to take the events before an AR"
    )
    accessions_path: Path | None = Field(
        None, description="CSV of accession_number,study_instance_uid (reports keyed by accession)"
    )


class SummarySettings(BaseModel):
    """The weekly drift summary."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    out_dir: Path = Path("summaries")
    drift_alpha: float = Field(
        0.01, gt=0, lt=1, description="embedding drift threshold: this quantile of the permutation null"
    )
    drift_permutations: int = Field(200, ge=20, description="permutations behind the drift threshold")
    drift_max_samples: int = Field(300, ge=10, description="embeddings per week compared at most")
    embedding_samples: int = Field(
        300,
        ge=0,
        description="embeddings the agent keeps per model, modality and ISO week (a uniform sample of the "
        "week's studies) for the embedding drift; 0 keeps none",
    )
    embedding_weeks: int = Field(8, ge=2, description="weeks of embedding samples kept")
    drift_every_seconds: float = Field(
        1800.0, gt=0, description="how often the agent recomputes its embedding drift gauges"
    )
    drift_min_samples: int = Field(
        30, ge=5, description="a week with fewer embeddings of a modality is not compared by the agent"
    )
    thumbnails: bool = Field(
        False,
        description="show slice members' thumbnails (each checked for burned-in text on its pixels first)",
    )
    examples_per_slice: int = Field(3, ge=0, le=10, description="member thumbnails per slice")
    thumbnail_size: int = Field(96, ge=16, le=256)
    seed: int = 0


class Settings(BaseSettings):
    """Everything the agent can be told."""

    model_config = SettingsConfigDict(
        frozen=True, extra="forbid", env_prefix="SLICE_AGENT_", env_nested_delimiter="__"
    )

    audit: AuditSettings = AuditSettings()
    embed: EmbedSettings = EmbedSettings()
    stream: StreamSettings = StreamSettings()
    exporter: ExporterSettings = ExporterSettings()
    summary: SummarySettings = SummarySettings()
    images: ImageSettings = ImageSettings()
    events: EventSettings = EventSettings()
    pacs: PacsSettings = PacsSettings()
    mllp: MllpSettings = MllpSettings()
    warn: WarnSettings = WarnSettings()
    modalities: tuple[Modality, ...] | None = Field(
        None, description="modalities to fuse; by default those the stream carries"
    )

    @model_validator(mode="after")
    def _check(self) -> Settings:
        if self.modalities is not None and not self.modalities:
            raise ValueError("modalities must name at least one of image, report, metadata")
        return self

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # Environment first: it overrides what the file (passed as init values) says.
        return env_settings, init_settings


def load_settings(path: str | Path | None = None, *, overrides: Mapping[str, Any] | None = None) -> Settings:
    """Build the settings from an optional YAML file, the environment, and explicit overrides.

    ``overrides`` (from command-line flags) win over both, as a nested mapping such as
    ``{"audit": {"gamma": 5}}``.
    """
    data: dict[str, Any] = {}
    if path is not None:
        try:
            loaded = yaml.safe_load(Path(path).read_text(encoding="utf-8")) or {}
        except (OSError, yaml.YAMLError) as err:
            raise ConfigError(f"cannot read settings file {path}: {err}") from err
        if not isinstance(loaded, dict):
            raise ConfigError(f"expected a mapping at the top of {path}, got {type(loaded).__name__}")
        data = loaded
    try:
        base = Settings(**data)
        if not overrides:
            return base
        merged = base.model_dump()
        for section, values in overrides.items():
            if isinstance(values, Mapping):
                merged[section] = {**merged.get(section, {}), **values}
            else:
                merged[section] = values
        return Settings.model_validate(merged)
    except ValidationError as err:
        raise ConfigError(f"invalid settings: {err}") from err
