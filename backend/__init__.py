"""label-studio-ale: an active-learning ML backend for Label Studio object detection."""

__version__ = "0.1.0"
