"""The only code that talks to Label Studio, through `label-studio-sdk` (its reads of images: `ls_media.MediaReads`).

The SDK handles both key kinds: a personal access token (a JWT refresh token,
exchanged for short-lived access tokens) and a legacy `Token` key.
"""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass
from typing import Iterator
from urllib.parse import urlsplit

from .ls_media import MediaReads
from .ls_refusals import LabelStudioError, listing_failed, listing_refused, refusal_message, refusals  # noqa: F401 (importable from here)
from .ls_tokens import TOKEN_REFRESH_MARGIN, refresh_tokens_early  # noqa: F401 (TOKEN_REFRESH_MARGIN: importable from here)

DEFAULT_TIMEOUT = 30.0
DELETE_TIMEOUT = 900.0
IMPORT_TIMEOUT = 600.0
TASK_PAGE_SIZE = 1000
#: Task ids a listing of chosen tasks names in one request: its query travels in the URL, which a proxy in front of
#: LS (nginx: 8 KB a request line by default) refuses past a few thousand ids.
SELECTED_IDS_PER_REQUEST = 500
#: Project ids a listing of chosen projects names in one request, and the page it asks for: LS's default page of
#: projects, under its largest (100), so each request is answered in one page.
PROJECT_IDS_PER_REQUEST = 30
UNCERTAINTY_SAMPLING = "Uncertainty sampling"
#: Requests in flight at once when predictions are created one by one.
CREATE_THREADS = 4
#: For requests that create something: the SDK retries a 5xx or a dropped connection, and LS may have
#: committed what the first try created (a bulk import commits before its counters, which can fail).
ONCE = {"max_retries": 0}
#: Tasks with at least one submitted annotation (LS's `only_annotated` parameter is read by nothing in 1.23).
ANNOTATED_FILTER = {"filter": "filter:tasks:total_annotations", "operator": "greater", "type": "Number", "value": 0}
#: The annotation fields the listings read. `include` filters each listed annotation's fields too (LS hands the request
#: on to the annotations' serializer), so these are named along with the task's; predictions come whole.
ANNOTATION_FIELDS = "result,ground_truth,was_cancelled,completed_by,created_at,updated_at,lead_time,parent_prediction,task"


@dataclass(frozen=True)
class ProjectInfo:
    id: int
    label_config: str
    model_version: str
    sampling: str


@dataclass(frozen=True)
class TaskRef:
    id: int
    data: dict


@dataclass(frozen=True)
class TaskAnnotations:
    """A task's annotations (skipped ones too) and predictions, as the SDK's Annotation and Prediction objects."""

    id: int
    annotations: list
    predictions: list


class LabelStudioClient(MediaReads):
    """A thin wrapper over `label_studio_sdk.LabelStudio` for the calls the backend makes (images: `MediaReads`)."""

    def __init__(self, url: str, api_key: str, timeout: float = DEFAULT_TIMEOUT):
        if not api_key:
            raise ValueError(
                "LABEL_STUDIO_API_KEY is empty: create a personal access token in Label Studio "
                "(Account & Settings -> Personal Access Token) and set LABEL_STUDIO_API_KEY"
            )
        self.url = url.rstrip("/")
        split = urlsplit(self.url)
        self.netloc = split.netloc.lower()
        self.sdk = sdk_client(self.url, api_key, timeout)

    def project(self, project_id: int) -> ProjectInfo:
        with refusals(self, project_id):
            p = self.sdk.projects.get(id=project_id)
        return ProjectInfo(p.id, p.label_config or "", p.model_version or "", p.sampling or "")

    def project_ids(self, among: list[int]) -> set[int]:
        """Which of `among` Label Studio lists as projects of this key's user (LS lists those of the user's active
        organization): a listing of just those projects, PROJECT_IDS_PER_REQUEST a request.

        Raises LabelStudioError when LS refuses or cannot answer the listing: nothing can be said of any of them then.
        """
        from label_studio_sdk.core.api_error import ApiError

        wanted = sorted({int(p) for p in among})
        found: set[int] = set()
        for start in range(0, len(wanted), PROJECT_IDS_PER_REQUEST):
            part = ",".join(str(p) for p in wanted[start : start + PROJECT_IDS_PER_REQUEST])
            page, seen = 1, 0
            while True:
                try:
                    pager = self.sdk.projects.list(ids=part, page=page, page_size=PROJECT_IDS_PER_REQUEST)
                except ApiError as exc:
                    raise LabelStudioError(listing_refused(exc, self.url)) from exc
                except Exception as exc:  # transport errors; a token refresh answered by something else than LS
                    raise LabelStudioError(listing_failed(f"{type(exc).__name__}: {exc}", self.url)) from exc
                items = list(pager.items or [])
                found.update(int(project.id) for project in items)
                seen += len(items)
                # LS's `count`, not a short page, ends it; and no page past the last is asked for (LS answers it 404)
                if not items or seen >= int(getattr(pager.response, "count", 0) or 0):
                    break
                page += 1
        return found & set(wanted)

    def unlabeled_tasks(self, project_id: int, after_id: int | None = None) -> Iterator[TaskRef]:
        """Every task of the project nobody has labelled yet (LS's is_labeled), page by page, in id order.

        after_id: only tasks with a greater id (task ids only grow: the tasks created since that one).
        Paged by id (`_tasks_by_id`): a task deleted meanwhile shifts no other out of the listing. One shifted out would
        lie below the served queue's last task, after which every later listing of new tasks starts: it would stay
        out of the queue until the next full rewrite.
        """
        # `include` spares LS computing fields nobody reads: 3x faster on 10,000 tasks.
        tasks = self._tasks_by_id(project_id, [], after=int(after_id or 0), fields="task_only", include="id,data,is_labeled")
        for task in tasks:
            if not task.is_labeled:
                yield TaskRef(task.id, dict(task.data or {}))

    def labelled_tasks(self, project_id: int) -> Iterator[TaskRef]:
        """Every task somebody has labelled (LS's is_labeled), page by page, with just its data."""
        for task in self._tasks_by_id(project_id, [ANNOTATED_FILTER], fields="task_only", include="id,data,is_labeled"):
            if task.is_labeled:
                yield TaskRef(task.id, dict(task.data or {}))

    def unlabeled_tasks_among(self, project_id: int, task_ids: list[int]) -> Iterator[TaskRef]:
        """Those of `task_ids` nobody has labelled yet, with their data: one listing of just those tasks."""
        for task in self._tasks_among(project_id, task_ids, "id,data,is_labeled"):
            if not task.is_labeled:
                yield TaskRef(task.id, dict(task.data or {}))

    def unlabeled_among(self, project_id: int, task_ids: list[int]) -> set[int]:
        """Which of `task_ids` nobody has labelled yet: one listing of just those tasks."""
        return {task_id for task_id, labelled in self.label_states(project_id, task_ids).items() if not labelled}

    def label_states(self, project_id: int, task_ids: list[int]) -> dict[int, bool]:
        """{task id: whether it is labelled} for those of `task_ids` that still exist: one listing of just those tasks."""
        return {task.id: bool(task.is_labeled) for task in self._tasks_among(project_id, task_ids, "id,is_labeled")}

    def _tasks_among(self, project_id: int, task_ids: list[int], include: str, fields: str = "task_only") -> Iterator:
        """The tasks of `task_ids` that still exist, with the fields `include` names: one listing of just those tasks
        (SELECTED_IDS_PER_REQUEST ids a request)."""
        wanted = sorted({int(t) for t in task_ids})
        for start in range(0, len(wanted), SELECTED_IDS_PER_REQUEST):
            part = wanted[start : start + SELECTED_IDS_PER_REQUEST]
            query, included = json.dumps({"selectedItems": {"all": False, "included": part}}), set(part)
            for task in self._tasks(project_id, fields=fields, include=include, query=query):
                if task.id in included:
                    yield task

    def set_prediction_scores(self, project_id: int, model_version: str, scores: dict[int, float]) -> int:
        """Give the `model_version` prediction of each task a new score. -> predictions updated.

        One listing of the tasks' predictions, then one PATCH each. Raises before
        any PATCH when a task has no prediction of `model_version` (deleted in LS).
        """
        if not scores:
            return 0
        found: dict[int, list[int]] = {}
        for task in self._tasks_among(project_id, list(scores), "id,predictions", fields="all"):
            for prediction in map(functools.partial(_sdk_object, "Prediction"), task.predictions or []):
                if prediction.model_version == model_version:
                    found.setdefault(int(task.id), []).append(int(prediction.id))
        missing = sorted({int(t) for t in scores} - set(found))
        if missing:
            raise LabelStudioError(
                f"{len(missing)} of the {len(scores)} tasks to re-score in project {project_id} have no prediction of version "
                f"{model_version} in Label Studio (tasks {missing[:10]}; deleted there meanwhile): no score was changed; "
                "the next sync writes the whole queue again"
            )
        updated = 0
        for task_id, score in scores.items():
            for prediction_id in found[int(task_id)]:
                self.sdk.predictions.update(id=prediction_id, score=float(score))
                updated += 1
        return updated

    def annotated_tasks(self, project_id: int) -> Iterator[tuple[TaskRef, list[dict]]]:
        """Tasks with at least one submitted (not skipped) annotation, with each annotator's latest one.

        Only tasks with an annotation are listed (ANNOTATED_FILTER), paged by id.
        One annotation per annotator (`completed_by`), as {"result": [...],
        "ground_truth": bool}: several when the project asks for more than one
        annotation per task.
        """
        include = f"id,data,annotations,{ANNOTATION_FIELDS}"
        for task in self._tasks_by_id(project_id, [ANNOTATED_FILTER], fields="all", include=include):
            latest: dict = {}
            for annotation in task.annotations or []:
                if annotation.get("was_cancelled"):
                    continue
                who = annotation.get("completed_by")
                who = who.get("id") if isinstance(who, dict) else who
                key = (annotation.get("updated_at") or "", annotation.get("id") or 0)
                if who not in latest or key > latest[who][0]:
                    kept = {"result": list(annotation.get("result") or []), "ground_truth": bool(annotation.get("ground_truth"))}
                    latest[who] = (key, kept)
            if latest:
                yield TaskRef(task.id, dict(task.data or {})), [kept for _, kept in sorted(latest.values(), key=lambda v: v[0])]

    def task_annotations(self, project_id: int, task_ids: list[int] | None = None) -> Iterator[TaskAnnotations]:
        """Tasks with all their annotations (skipped ones too) and predictions, as the SDK's Annotation and Prediction.

        task_ids None: every task with a submitted annotation, paged by id; else those of `task_ids` that still exist.
        One listing, TASK_PAGE_SIZE tasks a request, not two requests a task.
        """
        include = f"id,annotations,predictions,{ANNOTATION_FIELDS}"
        if task_ids is None:
            tasks = self._tasks_by_id(project_id, [ANNOTATED_FILTER], fields="all", include=include)
        else:
            tasks = self._tasks_among(project_id, task_ids, include, fields="all")
        for task in tasks:
            yield TaskAnnotations(
                int(task.id), [_sdk_object("Annotation", a) for a in task.annotations or []],
                [_sdk_object("Prediction", p) for p in task.predictions or []],
            )

    def _tasks_by_id(self, project_id: int, filters: list[dict], after: int = 0, **params) -> Iterator:
        """A project's tasks that pass `filters`, in id order, each page those above the last id seen (from `after`).

        Paged by id, not by page number: a task deleted, annotated or un-annotated
        meanwhile shifts no other out of the listing (nor one in twice).
        """
        first = True
        while True:
            above = {"filter": "filter:tasks:id", "operator": "greater", "type": "Number", "value": after}
            query = json.dumps({"filters": {"conjunction": "and", "items": [*filters, above]}, "ordering": ["tasks:id"]})
            with refusals(self, project_id, missing=first):  # a sync, or `ale savings --recompute`, asks LS this first
                pager = self.sdk.tasks.list(project=project_id, page=1, page_size=TASK_PAGE_SIZE, resolve_uri=False, query=query, **params)
            first = False
            items = list(pager.items or [])
            yield from items
            # LS's `total` (of the tasks above `after`), not a short page, ends it: LS may cap a page below TASK_PAGE_SIZE
            # (TASK_API_PAGE_SIZE_MAX), and a short page taken for the last would leave the rest out
            if not items or len(items) >= pager.response.total:
                return
            after = max(int(task.id) for task in items)

    def _tasks(self, project_id: int, **params) -> Iterator:
        """A project's tasks, page by page, stopping at LS's `total`, with their data as stored.

        The SDK's pager asks for one page past the last, which LS answers with
        a logged "NotFound: Invalid page" traceback on every listing. LS would
        rewrite a bucket URI (s3://...) into a link on its own HOST, which need
        not be the address this backend reaches it at: `media` resolves the
        URI itself, as it does for /predict.
        """
        page, seen = 1, 0
        while True:
            with refusals(self, project_id, missing=page == 1):
                pager = self.sdk.tasks.list(project=project_id, page=page, page_size=TASK_PAGE_SIZE, resolve_uri=False, **params)
            items = pager.items or []
            yield from items
            seen += len(items)
            if not items or seen >= pager.response.total:
                return
            page += 1

    def import_predictions(self, project_id: int, items: list[dict]) -> int:
        """Bulk-create predictions; raises unless LS created every item (it drops invalid ones silently)."""
        response = self.sdk.projects.import_predictions(id=project_id, request=items, request_options=ONCE | {"timeout_in_seconds": IMPORT_TIMEOUT})
        created = int(getattr(response, "created", 0) or 0)
        if created != len(items):
            raise LabelStudioError(
                f"Label Studio created {created} of {len(items)} predictions in project {project_id}; "
                "items with a label missing from the config or a score outside [0, 1] are dropped"
            )
        return created

    def create_predictions(self, project_id: int, items: list[dict], threads: int = CREATE_THREADS) -> int:
        """Create predictions one request each, keeping fields the bulk import drops (`cluster`). -> created.

        Raises on the first refusal; what was created stays, under its version (the caller discards a partial version).
        """
        from concurrent.futures import ThreadPoolExecutor

        def create(item: dict) -> None:
            self.sdk.predictions.create(project=project_id, **item, request_options=ONCE)

        with ThreadPoolExecutor(max_workers=max(1, threads)) as pool:
            for _ in pool.map(create, items):
                pass
        return len(items)

    def switch_queue(self, project_id: int, model_version: str) -> None:
        """Serve tasks by ascending score of the predictions of `model_version`: one PATCH."""
        self.sdk.projects.update(id=project_id, model_version=model_version, sampling=UNCERTAINTY_SAMPLING)

    def model_versions(self, project_id: int) -> dict[str, int]:
        """Prediction model versions of a project -> number of predictions each."""
        response = self._http().request(f"api/projects/{project_id}/model-versions/", method="GET")
        self._check(response, "list model versions")
        return {str(k): int(v) for k, v in response.json().items()}

    def delete_model_version(self, project_id: int, model_version: str) -> int:
        response = self._http().request(
            f"api/projects/{project_id}/model-versions/",
            method="DELETE",
            json={"model_version": model_version},
            # LS deletes predictions one by one: ~10,000 take minutes on SQLite.
            request_options={"timeout_in_seconds": DELETE_TIMEOUT},
        )
        self._check(response, f"delete model version {model_version}")
        return int(response.json().get("deleted_predictions", 0))

    # Project setup (`ale demo`): what a person does in LS's UI.

    def create_project(self, title: str, label_config: str) -> int:
        return int(self.sdk.projects.create(title=title, label_config=label_config).id)

    def upload_images(self, project_id: int, files: list[tuple[str, bytes]]) -> list[int]:
        """Upload PNG files (LS's Import dialog). -> the new task ids, in file order."""
        return upload_images(self.sdk, project_id, files)

    def annotate(self, task_id: int, result: list[dict]) -> None:
        self.sdk.annotations.create(id=task_id, result=result, was_cancelled=False)

    def connect_backend(self, project_id: int, url: str, title: str) -> int:
        """Add an ML backend to a project (Settings -> Model -> Connect model). -> its id."""
        return int(self.sdk.ml.create(project=project_id, url=url, title=title).id)

    def start_training(self, backend_id: int) -> None:
        """Press "Start Training" on a connected ML backend."""
        self.sdk.ml.train(id=backend_id)

    def next_task(self, project_id: int) -> int | None:
        """The task LS gives this user next (the labelling stream), or None when nothing is left."""
        response = self._http().request(f"api/projects/{project_id}/next/", method="GET")
        if response.status_code == 404:
            return None
        self._check(response, "get the next task")
        return int(response.json()["id"])

    def _http(self):
        # The SDK has no call for model-versions; its authenticated client reaches the route.
        return self.sdk._client_wrapper.httpx_client

    @staticmethod
    def _check(response, action: str) -> None:
        if response.status_code >= 300:
            raise LabelStudioError(f"Label Studio could not {action}: {response.status_code} {response.text[:300]}")


def _sdk_object(type_name: str, item):
    """A listed annotation or prediction as the SDK's own type (`label_studio_sdk.types`), its dates parsed."""
    from label_studio_sdk import types
    from label_studio_sdk.core.unchecked_base_model import construct_type

    return construct_type(type_=getattr(types, type_name), object_=item if isinstance(item, dict) else item.dict())


def sdk_client(url: str, api_key: str, timeout: float = DEFAULT_TIMEOUT):
    """A `label_studio_sdk.LabelStudio` that replaces its access tokens before they expire."""
    from label_studio_sdk import LabelStudio

    # api_key is passed explicitly: the SDK otherwise falls back to an
    # environment variable read at its import time.
    sdk = LabelStudio(base_url=url, api_key=api_key, timeout=timeout)
    refresh_tokens_early(sdk)
    return sdk


#: LS refuses an import of more files than DATA_UPLOAD_MAX_NUMBER_FILES (100 by default) in one request.
UPLOAD_CHUNK_FILES = 50


def upload_images(sdk, project_id: int, files: list[tuple[str, bytes]]) -> list[int]:
    """Upload image files into a project with an SDK client, UPLOAD_CHUNK_FILES per request. -> the new task ids."""
    http = sdk._client_wrapper.httpx_client  # the SDK's authenticated client; the SDK has no upload helper
    task_ids: list[int] = []
    for start in range(0, len(files), UPLOAD_CHUNK_FILES):
        chunk = files[start : start + UPLOAD_CHUNK_FILES]
        response = http.request(
            f"api/projects/{project_id}/import",
            method="POST",
            params={"return_task_ids": "true"},
            files={f"file{i}": (name, data, "image/png") for i, (name, data) in enumerate(chunk)},
            force_multipart=True,
            request_options=ONCE | {"timeout_in_seconds": IMPORT_TIMEOUT},
        )
        if response.status_code != 201:
            raise LabelStudioError(f"Label Studio refused the upload: {response.status_code} {response.text[:500]}")
        task_ids += list(response.json()["task_ids"])
    return task_ids
