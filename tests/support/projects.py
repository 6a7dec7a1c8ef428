"""Label Studio projects of generated images, as the integration tests need them."""

from __future__ import annotations

import io

from label_studio_ale.synthetic import make_scene
from tests.support.label_studio import upload_images

LABEL_CONFIG = (
    '<View><Image name="image" value="$image"/><RectangleLabels name="label" toName="image">'
    '<Label value="bird"/><Label value="nest"/></RectangleLabels></View>'
)


def create_project(ls, seeds, title: str, label_config: str = LABEL_CONFIG, **scene_options) -> tuple[int, list[int]]:
    """A project with one uploaded PNG per seed (`make_scene(seed, **scene_options)`). -> (project id, task ids)."""
    project = ls.projects.create(title=title, label_config=label_config)
    files = []
    for seed in seeds:
        buffer = io.BytesIO()
        make_scene(seed, **scene_options).image.save(buffer, format="PNG")
        files.append((f"s{seed}.png", buffer.getvalue()))
    task_ids = upload_images(ls, project.id, files)
    if len(task_ids) != len(files):
        raise RuntimeError(f"uploaded {len(files)} images but LS made {len(task_ids)} tasks")
    return project.id, task_ids
