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
    return project.id, add_images(ls, project.id, seeds, **scene_options)


def add_images(ls, project: int, seeds, **scene_options) -> list[int]:
    """Upload one generated PNG per seed into `project`. -> the new task ids, in seed order."""
    files = []
    for seed in seeds:
        buffer = io.BytesIO()
        make_scene(seed, **scene_options).image.save(buffer, format="PNG")
        files.append((f"s{seed}.png", buffer.getvalue()))
    task_ids = upload_images(ls, project, files)
    if len(task_ids) != len(files):
        raise RuntimeError(f"uploaded {len(files)} images but LS made {len(task_ids)} tasks")
    return task_ids


def create_split_project(ls, title: str, n_train: int, n_val: int, first_seed: int, *, spare: int = 0, **scene_options):
    """A project with at least `n_train` training and `n_val` validation tasks (by the training split),
    and at least `spare` tasks beyond those.

    Which task lands in validation depends on its id, so images are uploaded
    until both counts are reached. -> (project id, train task ids, val task ids, {task id: Scene}).
    """
    from label_studio_ale.training_set import is_validation

    seeds = list(range(first_seed, first_seed + n_train + n_val))
    project, task_ids = create_project(ls, seeds, title, **scene_options)
    scenes = {task: make_scene(seed, **scene_options) for task, seed in zip(task_ids, seeds)}
    next_seed = seeds[-1] + 1
    for _ in range(50):
        val = [t for t in scenes if is_validation(t)]
        train = [t for t in scenes if not is_validation(t)]
        if len(train) >= n_train and len(val) >= n_val and len(scenes) >= n_train + n_val + spare:
            return project, train[:n_train], val[:n_val], scenes
        batch = list(range(next_seed, next_seed + 10))
        next_seed += 10
        files = []
        for seed in batch:
            buffer = io.BytesIO()
            make_scene(seed, **scene_options).image.save(buffer, format="PNG")
            files.append((f"s{seed}.png", buffer.getvalue()))
        scenes.update({task: make_scene(seed, **scene_options) for task, seed in zip(upload_images(ls, project, files), batch)})
    raise RuntimeError("could not reach the wanted training/validation split")


def annotate(ls, task_id, scene, cancelled=False, names=("bird", "nest")):
    """Submit `scene`'s boxes as the annotation of `task_id` (or a skip, with `cancelled`)."""
    from label_studio_ale.ls_format import rectangle_result

    result = [rectangle_result(box, names[label], scene.image.size, "label", "image") for box, label in zip(scene.xyxy, scene.labels)]
    ls.annotations.create(id=task_id, result=[] if cancelled else result, was_cancelled=cancelled)


def next_task(ls, project: int) -> int:
    """The task LS gives this user next ("Label All Tasks")."""
    response = ls._client_wrapper.httpx_client.request(f"api/projects/{project}/next/", method="GET")
    if response.status_code != 200:
        raise AssertionError(f"LS gave no next task: {response.status_code} {response.text[:300]}")
    return response.json()["id"]


def submit_box(ls, task_id: int) -> None:
    """Submit an annotation of one bird box on a 128 px image."""
    region = {
        "from_name": "label",
        "to_name": "image",
        "type": "rectanglelabels",
        "original_width": 128,
        "original_height": 128,
        "value": {"x": 10, "y": 10, "width": 20, "height": 20, "rotation": 0, "rectanglelabels": ["bird"]},
    }
    ls.annotations.create(id=task_id, result=[region], lead_time=1.0)
