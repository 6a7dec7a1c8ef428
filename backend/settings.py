"""Configuration, read from the environment in exactly one place: `Settings.from_env`.

Everything else receives a `Settings` instance as an argument.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Mapping

from .errors import ConfigError

DEFAULT_LABEL_STUDIO_URL = "http://localhost:8080"
DEFAULT_MODEL_DIR = "./models"
DEFAULT_ADAPTER = "yolov5"
DEFAULT_MODEL_WEIGHTS = "yolov5n.yaml"
DEFAULT_SCORE_THRESHOLD = 0.25
DEFAULT_NMS_METRIC = "iou"
DEFAULT_NMS_THRESHOLD = 0.5
DEFAULT_MAX_TAGS_PER_PIXEL = 0  # 0 disables the filter
DEFAULT_IMAGE_SIZE = 640
DEFAULT_PREDICT_BATCH_SIZE = 8
DEFAULT_MAX_IMAGE_PIXELS = 40_000_000  # ~ a 7,300 x 5,500 camera-trap frame
DEFAULT_MAX_IMAGE_BYTES = 50 * 1024 * 1024
DEFAULT_FETCH_TIMEOUT = 10.0
DEFAULT_MAX_DETECTIONS = 300

NMS_METRICS = ("iou", "iomin")


@dataclass(frozen=True)
class Settings:
    """Every knob of the backend. Field docs are the README's configuration table."""

    label_studio_url: str = DEFAULT_LABEL_STUDIO_URL
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
    allowed_media_hosts: tuple[str, ...] = ()
    basic_auth_user: str = ""
    basic_auth_password: str = field(default="", repr=False)
    log_level: str = "INFO"

    def __post_init__(self) -> None:
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
        ):
            if value <= 0:
                raise ConfigError(name, f"must be a positive number, got {value}")
        if self.max_tags_per_pixel < 0:
            raise ConfigError("MAX_TAGS_PER_PIXEL", f"must be 0 (off) or a positive count, got {self.max_tags_per_pixel}")
        if self.fetch_timeout <= 0:
            raise ConfigError("FETCH_TIMEOUT", f"must be a positive number of seconds, got {self.fetch_timeout}")
        if bool(self.basic_auth_user) != bool(self.basic_auth_password):
            raise ConfigError("BASIC_AUTH_USER", "set both BASIC_AUTH_USER and BASIC_AUTH_PASS, or neither")
        if not self.label_studio_url.startswith(("http://", "https://")):
            raise ConfigError("LABEL_STUDIO_URL", f"must start with http:// or https://, got {self.label_studio_url!r}")

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

    def replace(self, **changes) -> "Settings":
        current = {f.name: getattr(self, f.name) for f in fields(self)}
        current.update(changes)
        return Settings(**current)


def _csv(raw: str) -> tuple[str, ...]:
    return tuple(part.strip() for part in raw.split(",") if part.strip())


def _hosts(raw: str) -> tuple[str, ...]:
    return tuple(host.lower() for host in _csv(raw))


#: Environment variable -> (Settings attribute, parser).
ENV_VARS = {
    "LABEL_STUDIO_URL": ("label_studio_url", lambda raw: raw.rstrip("/")),
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
    "ALLOWED_MEDIA_HOSTS": ("allowed_media_hosts", _hosts),
    "BASIC_AUTH_USER": ("basic_auth_user", str),
    "BASIC_AUTH_PASS": ("basic_auth_password", str),
    "LOG_LEVEL": ("log_level", str.upper),
}
