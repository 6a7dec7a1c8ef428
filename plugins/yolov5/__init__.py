"""YOLOv5 adapter on ultralytics (its anchor-free YOLOv5u family).

Entry point `yolov5` in the `label_studio_ale.adapters` group.
"""

from .adapter import YoloV5Adapter
from .checkpoints import checkpoint_classes, grow_head
from .training import train_yolo

__all__ = ["YoloV5Adapter", "checkpoint_classes", "grow_head", "train_yolo"]
