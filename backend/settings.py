"""Configuration, read from the environment in exactly one place: `Settings.from_env`.

Everything else receives a `Settings` instance as an argument.
"""

from __future__ import annotations

import logging
import math
import os
import re
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Mapping

from .errors import ConfigError
from .url_settings import (  # noqa: F401 (without_password and the schemes are imported from here too)
    DETECTION_STORE_SCHEMES,
    REDIS_SCHEMES,
    URL_SETTINGS,
    check_detection_store_url,
    check_label_studio_url,
    check_redis_url,
    shown_setting,
    without_password,
)
from .tiling import DEFAULT_TILE_ABOVE, DEFAULT_TILE_MERGE_METRIC, DEFAULT_TILE_MERGE_THRESHOLD, DEFAULT_TILE_OVERLAP, TileSettings

DEFAULT_LABEL_STUDIO_URL = "http://localhost:8080"
DEFAULT_MODEL_DIR = "./models"
DEFAULT_ADAPTER = "yolov5"
DEFAULT_MODEL_WEIGHTS = "yolov5n.yaml"
DEFAULT_SCORE_THRESHOLD = 0.25
DEFAULT_NMS_METRIC = "iou"
DEFAULT_NMS_THRESHOLD = 0.5
#: What DEVICE may name: the yolov5 adapter hands it to torch.device, which refuses a bare GPU index.
TORCH_DEVICE = re.compile(r"cpu|mps|cuda(:\d+)?")
DEFAULT_MAX_TAGS_PER_PIXEL = 0  # 0 disables the filter
DEFAULT_IMAGE_SIZE = 640
DEFAULT_PREDICT_BATCH_SIZE = 8
# A 61 MP full-frame camera (9,504 x 6,336) fits; a 200 MP file is refused
# before its pixels are decoded. Below Pillow's own 89 MP bomb guard.
DEFAULT_MAX_IMAGE_PIXELS = 80_000_000
DEFAULT_MAX_IMAGE_BYTES = 50 * 1024 * 1024
DEFAULT_FETCH_TIMEOUT = 10.0
#: /predict bodies above this are refused (413): LS's Retrieve Predictions sends every selected task, with its predictions,
#: in one request, about 10 KB a task, so the default admits about 6,000 tasks; the body is parsed whole in memory. What
#: one request predicts is bounded by time instead (predictor.PREDICT_DEADLINE_SECONDS): the sync predicts the rest.
DEFAULT_MAX_REQUEST_BYTES = 64 * 1024 * 1024
DEFAULT_MAX_DETECTIONS = 300
# Decoded pixels one prediction step holds at most (RGB: 3 bytes each, so
# ~300 MB): two 45 MP frames, eight 12 MP ones, or 64 small ones (PREDICT_CHUNK
# caps the count). Tiles are batched within a frame, so large frames lose nothing.
DEFAULT_PREDICT_CHUNK_PIXELS = 100_000_000

#: 0: tiles are the model's input size (IMAGE_SIZE).
DEFAULT_TILE_SIZE = 0
#: Share of a tile's side that a cut box must keep to stay a training box.
DEFAULT_TILE_MIN_VISIBLE = 0.5
#: Training keeps tiles without any box up to this share of the tiles with boxes.
DEFAULT_TILE_EMPTY_SHARE = 0.2

DEFAULT_POLICY = "ale-entropy-sum"
#: With a "+cost" policy: an image's annotation cost besides its boxes, in boxes (policy_suffixes.CostAwarePolicy).
DEFAULT_COST_PER_IMAGE = 2.0
#: With a "+diverse" or "+coreset" policy: the candidate pool k-center chooses a batch from, in batches (ranking.diversify).
DEFAULT_DIVERSITY_POOL = 4
#: With a "+novelty" policy: the exponent of the novelty factor (policy_suffixes.NoveltyMix).
DEFAULT_NOVELTY_WEIGHT = 1.0
#: Embedding clusters written into each prediction's `cluster` for LS's own sampling; 0: none (prediction_clusters).
DEFAULT_LS_CLUSTERS = 0
DEFAULT_SYNC_INTERVAL = 300  # seconds between scheduled priority syncs
DEFAULT_SYNC_BATCH_SIZE = 50
# Predictions per LS import request. LS 1.23 recounts every task of the project
# after each import request, so few large requests are far faster than many
# small ones (10,000 predictions: 9 s in one request, 62 s in chunks of 500).
DEFAULT_IMPORT_CHUNK_SIZE = 10_000
# Tasks per pool-prediction job when a sync fans its predictions out over the
# predict workers (Redis only): small enough that two workers share a few
# hundred new images, large enough that a job's model load is amortised.
DEFAULT_PREDICT_JOB_TASKS = 256

#: Empty: the adapter's own fresh model (yolov5: yolov5n.yaml, tfod: retinanet).
DEFAULT_BASE_MODEL = ""
#: 0: the training recipe decides (yolov5 small-data: by the number of labelled images; tfod: TFOD_EPOCHS).
DEFAULT_TRAIN_EPOCHS = 0
DEFAULT_TRAIN_BATCH = 16
#: yolov5: small-data (measured for tens to hundreds of labelled images) or ultralytics' own defaults.
TRAIN_RECIPES = ("small-data", "ultralytics")
#: yolov5: auto (bfloat16 on a CPU that computes it natively, float32 elsewhere), fp32 or bf16.
TRAIN_PRECISIONS = ("auto", "fp32", "bf16")
PROMOTION_POLICIES = ("if-not-worse", "always")
#: `if-not-worse` compares versions only on at least this many validation images;
#: below it a new version is promoted (and the reason says so): a handful of
#: images cannot tell two models apart.
DEFAULT_PROMOTION_MIN_IMAGES = 10

NMS_METRICS = ("iou", "iomin")


@dataclass(frozen=True)
class Settings:
    """Every knob of the backend. Field docs are the README's configuration table."""

    label_studio_url: str = DEFAULT_LABEL_STUDIO_URL
    #: Label Studio's public URL, which it writes into task data (its own LABEL_STUDIO_HOST); "": as label_studio_url
    label_studio_host: str = ""
    label_studio_api_key: str = field(default="", repr=False)
    model_dir: Path = Path(DEFAULT_MODEL_DIR)
    adapter: str = DEFAULT_ADAPTER
    model_weights: str = DEFAULT_MODEL_WEIGHTS
    model_classes: tuple[str, ...] = ()
    device: str = "cpu"
    image_size: int = DEFAULT_IMAGE_SIZE
    predict_batch_size: int = DEFAULT_PREDICT_BATCH_SIZE
    score_threshold: float = DEFAULT_SCORE_THRESHOLD
    nms_metric: str = DEFAULT_NMS_METRIC
    nms_threshold: float = DEFAULT_NMS_THRESHOLD
    max_tags_per_pixel: int = DEFAULT_MAX_TAGS_PER_PIXEL
    max_detections: int = DEFAULT_MAX_DETECTIONS
    max_image_pixels: int = DEFAULT_MAX_IMAGE_PIXELS
    max_image_bytes: int = DEFAULT_MAX_IMAGE_BYTES
    fetch_timeout: float = DEFAULT_FETCH_TIMEOUT
    max_request_bytes: int = DEFAULT_MAX_REQUEST_BYTES
    predict_chunk_pixels: int = DEFAULT_PREDICT_CHUNK_PIXELS
    tile_size: int = DEFAULT_TILE_SIZE
    tile_overlap: float = DEFAULT_TILE_OVERLAP
    tile_above: int = DEFAULT_TILE_ABOVE
    tile_merge_metric: str = DEFAULT_TILE_MERGE_METRIC
    tile_merge_threshold: float = DEFAULT_TILE_MERGE_THRESHOLD
    tile_min_visible: float = DEFAULT_TILE_MIN_VISIBLE
    tile_empty_share: float = DEFAULT_TILE_EMPTY_SHARE
    allowed_media_hosts: tuple[str, ...] = ()
    basic_auth_user: str = ""
    basic_auth_password: str = field(default="", repr=False)
    log_level: str = "INFO"
    redis_url: str = field(default="", repr=False)
    policy: str = DEFAULT_POLICY
    policy_seed: int = 0
    cost_per_image: float = DEFAULT_COST_PER_IMAGE
    diversity_pool: int = DEFAULT_DIVERSITY_POOL
    novelty_weight: float = DEFAULT_NOVELTY_WEIGHT
    ls_clusters: int = DEFAULT_LS_CLUSTERS
    sync_interval: int = DEFAULT_SYNC_INTERVAL
    sync_projects: tuple[int, ...] = ()
    sync_batch_size: int = DEFAULT_SYNC_BATCH_SIZE
    exploration_fraction: float = 0.0
    empty_quota: float = 0.0
    class_balance: tuple[tuple[str, float], ...] = ()
    duplicate_distance: int = -1
    import_chunk_size: int = DEFAULT_IMPORT_CHUNK_SIZE
    predict_job_tasks: int = DEFAULT_PREDICT_JOB_TASKS
    detection_store_url: str = field(default="", repr=False)
    base_model: str = DEFAULT_BASE_MODEL
    train_epochs: int = DEFAULT_TRAIN_EPOCHS
    train_batch: int = DEFAULT_TRAIN_BATCH
    train_recipe: str = TRAIN_RECIPES[0]
    #: 0: the small-data recipe's own minimum (600 optimizer steps)
    train_min_steps: int = 0
    #: 0: as train_min_steps; N: the fewest steps of a fine-tune that continues the current version with its classes
    train_continue_steps: int = 0
    train_precision: str = TRAIN_PRECISIONS[0]
    #: 0: every layer trains; N: the model's first N layers keep their weights (yolov5: 10 is the backbone)
    train_freeze: int = 0
    promotion: str = PROMOTION_POLICIES[0]
    promotion_min_images: int = DEFAULT_PROMOTION_MIN_IMAGES
    auto_train_after: int = 0
    allow_downloads: bool = False

    def __post_init__(self) -> None:
        for spec in fields(self):
            value = getattr(self, spec.name)
            if isinstance(value, float) and not math.isfinite(value):
                raise ConfigError(_env_name(spec.name), f"must be a finite number, got {value}")
        if self.nms_metric not in NMS_METRICS:
            raise ConfigError("NMS_METRIC", f"must be one of {', '.join(NMS_METRICS)}, got {self.nms_metric!r}")
        for name, value in (("SCORE_THRESHOLD", self.score_threshold), ("NMS_THRESHOLD", self.nms_threshold)):
            if not 0.0 <= value <= 1.0:
                raise ConfigError(name, f"must be between 0 and 1, got {value}")
        for name, value in (
            ("IMAGE_SIZE", self.image_size),
            ("PREDICT_BATCH_SIZE", self.predict_batch_size),
            ("MAX_DETECTIONS", self.max_detections),
            ("MAX_IMAGE_PIXELS", self.max_image_pixels),
            ("MAX_IMAGE_BYTES", self.max_image_bytes),
            ("PREDICT_CHUNK_PIXELS", self.predict_chunk_pixels),
            ("MAX_REQUEST_BYTES", self.max_request_bytes),
        ):
            if value <= 0:
                raise ConfigError(name, f"must be a positive number, got {value}")
        for name, value in (("EXPLORATION_FRACTION", self.exploration_fraction), ("EMPTY_QUOTA", self.empty_quota)):
            if not 0.0 <= value <= 1.0:
                raise ConfigError(name, f"must be a fraction between 0 and 1, got {value}")
        for name, value in (
            ("SYNC_INTERVAL", self.sync_interval),
            ("SYNC_BATCH_SIZE", self.sync_batch_size),
            ("IMPORT_CHUNK_SIZE", self.import_chunk_size),
            ("PREDICT_JOB_TASKS", self.predict_job_tasks),
        ):
            if value <= 0:
                raise ConfigError(name, f"must be a positive number, got {value}")
        if self.tile_size < 0:
            raise ConfigError("TILE_SIZE", f"must be 0 (the model's IMAGE_SIZE) or a number of pixels, got {self.tile_size}")
        if self.tile_above < 0:
            raise ConfigError("TILE_ABOVE", f"must be 0 (never tile) or a longer side in pixels, got {self.tile_above}")
        if not 0.0 <= self.tile_overlap < 1.0:
            raise ConfigError("TILE_OVERLAP", f"must be a share of the tile in [0, 1), e.g. 0.2, got {self.tile_overlap}")
        if self.tile_merge_metric not in NMS_METRICS:
            raise ConfigError("TILE_MERGE_METRIC", f"must be one of {', '.join(NMS_METRICS)}, got {self.tile_merge_metric!r}")
        for name, value in (
            ("TILE_MERGE_THRESHOLD", self.tile_merge_threshold),
            ("TILE_MIN_VISIBLE", self.tile_min_visible),
        ):
            if not 0.0 <= value <= 1.0:
                raise ConfigError(name, f"must be between 0 and 1, got {value}")
        if self.tile_empty_share < 0:
            raise ConfigError("TILE_EMPTY_SHARE", f"must be 0 or a positive share, got {self.tile_empty_share}")
        if self.promotion not in PROMOTION_POLICIES:
            raise ConfigError("PROMOTION", f"must be one of {', '.join(PROMOTION_POLICIES)}, got {self.promotion!r}")
        if not self.cost_per_image > 0:
            raise ConfigError("COST_PER_IMAGE", f"must be a positive number of boxes (an image's cost besides its boxes), got {self.cost_per_image}")
        if self.diversity_pool < 2:
            raise ConfigError("DIVERSITY_POOL", f"must be 2 or more batches of candidates to choose a diverse batch from, got {self.diversity_pool}")
        if not self.novelty_weight >= 0:
            raise ConfigError("NOVELTY_WEIGHT", f"must be 0 (uncertainty alone) or a positive exponent, got {self.novelty_weight}")
        if self.ls_clusters < 0:
            raise ConfigError("LS_CLUSTERS", f"must be 0 (no clusters) or a number of clusters, got {self.ls_clusters}")
        if self.train_batch <= 0:
            raise ConfigError("TRAIN_BATCH", f"must be a positive number, got {self.train_batch}")
        if self.train_epochs < 0:
            raise ConfigError("TRAIN_EPOCHS", f"must be 0 (the recipe decides) or a number of epochs, got {self.train_epochs}")
        if self.train_min_steps < 0:
            raise ConfigError("TRAIN_MIN_STEPS", f"must be 0 (the recipe decides) or a number of optimizer steps, got {self.train_min_steps}")
        if self.train_continue_steps < 0:
            raise ConfigError("TRAIN_CONTINUE_STEPS", f"must be 0 (as TRAIN_MIN_STEPS) or a number of optimizer steps, got {self.train_continue_steps}")
        if self.train_recipe not in TRAIN_RECIPES:
            raise ConfigError("TRAIN_RECIPE", f"must be one of {', '.join(TRAIN_RECIPES)}, got {self.train_recipe!r}")
        if self.train_precision not in TRAIN_PRECISIONS:
            raise ConfigError("TRAIN_PRECISION", f"must be one of {', '.join(TRAIN_PRECISIONS)}, got {self.train_precision!r}")
        if self.train_freeze < 0:
            raise ConfigError("TRAIN_FREEZE", f"must be 0 (every layer trains) or a number of leading layers to keep, e.g. 10 for YOLOv5's backbone, got {self.train_freeze}")
        if self.promotion_min_images < 1:
            raise ConfigError("PROMOTION_MIN_IMAGES", f"must be a positive number of validation images, got {self.promotion_min_images}")
        if self.auto_train_after < 0:
            raise ConfigError("AUTO_TRAIN_AFTER", f"must be 0 (off) or a number of new annotations, got {self.auto_train_after}")
        if self.duplicate_distance < -1 or self.duplicate_distance > 64:
            raise ConfigError("DUPLICATE_DISTANCE", f"must be -1 (off) or 0..64 bits, got {self.duplicate_distance}")
        if not all(math.isfinite(share) and share >= 0 for _, share in self.class_balance):
            raise ConfigError("CLASS_BALANCE", "shares must be finite and non-negative, e.g. bird=0.7,nest=0.3")
        if self.class_balance and not sum(share for _, share in self.class_balance) > 0:
            raise ConfigError("CLASS_BALANCE", "at least one share must be positive, e.g. bird=0.7,nest=0.3")
        if self.policy_seed < 0:
            raise ConfigError("POLICY_SEED", f"must be 0 or a positive integer, got {self.policy_seed}")
        if self.log_level.upper() not in logging.getLevelNamesMapping():
            raise ConfigError("LOG_LEVEL", f"must be one of DEBUG, INFO, WARNING, ERROR, CRITICAL, got {self.log_level!r}")
        if self.redis_url:
            check_redis_url(self.redis_url)
        if self.detection_store_url:
            check_detection_store_url(self.detection_store_url)
        if not all(project > 0 for project in self.sync_projects):
            raise ConfigError(
                "SYNC_PROJECTS",
                f"must be Label Studio project ids (positive numbers, as in the project's URL), e.g. 1,4, got {','.join(map(str, self.sync_projects))}",
            )
        for host in self.allowed_media_hosts:
            if not _is_host_name(host):
                raise ConfigError(
                    "ALLOWED_MEDIA_HOSTS",
                    f"{host!r} is not a host name: give host names or IP addresses only, without scheme, port or path "
                    "(e.g. img.example.com)",
                )
        if self.max_tags_per_pixel < 0:
            raise ConfigError("MAX_TAGS_PER_PIXEL", f"must be 0 (off) or a positive count, got {self.max_tags_per_pixel}")
        if self.fetch_timeout <= 0:
            raise ConfigError("FETCH_TIMEOUT", f"must be a positive number of seconds, got {self.fetch_timeout}")
        if bool(self.basic_auth_user) != bool(self.basic_auth_password):
            raise ConfigError("BASIC_AUTH_USER", "set both BASIC_AUTH_USER and BASIC_AUTH_PASS, or neither")
        if not TORCH_DEVICE.fullmatch(self.device):
            hint = f"; a GPU's index is written cuda:{self.device}" if self.device.isdigit() else ""
            raise ConfigError("DEVICE", f"must be a torch device: cpu, cuda, cuda:N or mps, got {self.device!r}{hint}")
        check_label_studio_url(self.label_studio_url)
        if self.label_studio_host:
            check_label_studio_url(self.label_studio_host, "LABEL_STUDIO_HOST")

    def __repr__(self) -> str:
        # LABEL_STUDIO_URL is shown (the admin page lists it) but may carry a proxy's credentials: masked like the others
        shown = (f"{spec.name}={shown_setting(spec.name, getattr(self, spec.name))!r}" for spec in fields(self) if spec.repr)
        return f"Settings({', '.join(shown)})"

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> "Settings":
        """Build settings from environment variables (names in `ENV_VARS`)."""
        env = os.environ if environ is None else environ
        values: dict[str, object] = {}
        for name, (attr, parse) in ENV_VARS.items():
            raw = env.get(name)
            if raw is None or raw.strip() == "":
                continue
            try:
                values[attr] = parse(raw.strip())
            except ValueError as exc:
                raise ConfigError(name, f"cannot parse {raw!r}: {exc}") from None
        return cls(**values)

    def tiles(self) -> TileSettings | None:
        """How large images are tiled; None when TILE_ABOVE=0 (never)."""
        if self.tile_above == 0:
            return None
        return TileSettings(
            self.tile_size or self.image_size, self.tile_overlap, self.tile_above, self.tile_merge_metric, self.tile_merge_threshold
        )

    def replace(self, **changes) -> "Settings":
        current = {f.name: getattr(self, f.name) for f in fields(self)}
        current.update(changes)
        return Settings(**current)


def _bool(raw: str) -> bool:
    value = raw.strip().lower()
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("0", "false", "no", "off"):
        return False
    raise ValueError("expected true or false")


def _csv(raw: str) -> tuple[str, ...]:
    return tuple(part.strip() for part in raw.split(",") if part.strip())


def _ints(raw: str) -> tuple[int, ...]:
    return tuple(int(part) for part in _csv(raw))


def _shares(raw: str) -> tuple[tuple[str, float], ...]:
    """"bird=0.7,nest=0.3" -> (("bird", 0.7), ("nest", 0.3))"""
    pairs = []
    for part in _csv(raw):
        name, sep, share = part.partition("=")
        if not sep or not name.strip():
            raise ValueError(f"expected label=share pairs like bird=0.7, got {part!r}")
        pairs.append((name.strip(), float(share)))
    return tuple(pairs)


def _is_host_name(host: str) -> bool:
    """A host name or an IP address, as urllib reads it from a URL."""
    import ipaddress

    try:
        ipaddress.ip_address(host)
        return True
    except ValueError:
        return bool(host) and not any(c in host for c in ":/?#@[] ")


def _env_name(attr: str) -> str:
    """The environment variable of a Settings attribute (the attribute's name, upper-cased, where none maps to it)."""
    return next((name for name, (a, _) in ENV_VARS.items() if a == attr), attr.upper())


def _hosts(raw: str) -> tuple[str, ...]:
    return tuple(host.lower() for host in _csv(raw))


#: Environment variable -> (Settings attribute, parser).
ENV_VARS = {
    "LABEL_STUDIO_URL": ("label_studio_url", lambda raw: raw.rstrip("/")),
    "LABEL_STUDIO_HOST": ("label_studio_host", lambda raw: raw.rstrip("/")),
    "LABEL_STUDIO_API_KEY": ("label_studio_api_key", str),
    "MODEL_DIR": ("model_dir", Path),
    "ADAPTER": ("adapter", str),
    "MODEL_WEIGHTS": ("model_weights", str),
    "MODEL_CLASSES": ("model_classes", _csv),
    "DEVICE": ("device", str),
    "IMAGE_SIZE": ("image_size", int),
    "PREDICT_BATCH_SIZE": ("predict_batch_size", int),
    "SCORE_THRESHOLD": ("score_threshold", float),
    "NMS_METRIC": ("nms_metric", str.lower),
    "NMS_THRESHOLD": ("nms_threshold", float),
    "MAX_TAGS_PER_PIXEL": ("max_tags_per_pixel", int),
    "MAX_DETECTIONS": ("max_detections", int),
    "MAX_IMAGE_PIXELS": ("max_image_pixels", int),
    "MAX_IMAGE_BYTES": ("max_image_bytes", int),
    "FETCH_TIMEOUT": ("fetch_timeout", float),
    "MAX_REQUEST_BYTES": ("max_request_bytes", int),
    "PREDICT_CHUNK_PIXELS": ("predict_chunk_pixels", int),
    "TILE_SIZE": ("tile_size", int),
    "TILE_OVERLAP": ("tile_overlap", float),
    "TILE_ABOVE": ("tile_above", int),
    "TILE_MERGE_METRIC": ("tile_merge_metric", str.lower),
    "TILE_MERGE_THRESHOLD": ("tile_merge_threshold", float),
    "TILE_MIN_VISIBLE": ("tile_min_visible", float),
    "TILE_EMPTY_SHARE": ("tile_empty_share", float),
    "ALLOWED_MEDIA_HOSTS": ("allowed_media_hosts", _hosts),
    "BASIC_AUTH_USER": ("basic_auth_user", str),
    "BASIC_AUTH_PASS": ("basic_auth_password", str),
    "LOG_LEVEL": ("log_level", str.upper),
    "REDIS_URL": ("redis_url", str),
    "POLICY": ("policy", str),
    "POLICY_SEED": ("policy_seed", int),
    "COST_PER_IMAGE": ("cost_per_image", float),
    "DIVERSITY_POOL": ("diversity_pool", int),
    "NOVELTY_WEIGHT": ("novelty_weight", float),
    "LS_CLUSTERS": ("ls_clusters", int),
    "SYNC_INTERVAL": ("sync_interval", int),
    "SYNC_PROJECTS": ("sync_projects", _ints),
    "SYNC_BATCH_SIZE": ("sync_batch_size", int),
    "EXPLORATION_FRACTION": ("exploration_fraction", float),
    "EMPTY_QUOTA": ("empty_quota", float),
    "CLASS_BALANCE": ("class_balance", _shares),
    "DUPLICATE_DISTANCE": ("duplicate_distance", int),
    "IMPORT_CHUNK_SIZE": ("import_chunk_size", int),
    "PREDICT_JOB_TASKS": ("predict_job_tasks", int),
    "DETECTION_STORE_URL": ("detection_store_url", str),
    "BASE_MODEL": ("base_model", str),
    "TRAIN_EPOCHS": ("train_epochs", int),
    "TRAIN_BATCH": ("train_batch", int),
    "TRAIN_RECIPE": ("train_recipe", str.lower),
    "TRAIN_MIN_STEPS": ("train_min_steps", int),
    "TRAIN_CONTINUE_STEPS": ("train_continue_steps", int),
    "TRAIN_PRECISION": ("train_precision", str.lower),
    "TRAIN_FREEZE": ("train_freeze", int),
    "PROMOTION": ("promotion", str.lower),
    "PROMOTION_MIN_IMAGES": ("promotion_min_images", int),
    "AUTO_TRAIN_AFTER": ("auto_train_after", int),
    "ALLOW_DOWNLOADS": ("allow_downloads", _bool),
}
