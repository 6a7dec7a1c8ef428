"""TensorFlow Object Detection API adapter: serves exported SavedModels, fine-tunes a keras-hub RetinaNet.

Entry point `tfod` in the `label_studio_ale.adapters` group. TensorFlow and
torch must never share a process (it crashes), so this package imports
TensorFlow only, and only when the adapter is built.
"""

from .adapter import TfodAdapter, read_label_map

__all__ = ["TfodAdapter", "read_label_map"]
