"""The admin page: what the loop is doing, for people rather than scripts (GET /ui, /ui/projects/<id>).

Server-rendered HTML, no build step and no script: per project, the model
versions with their COCO / VOC metrics and an SVG plot of them, the jobs,
the head of the served queue as thumbnails with their boxes drawn, what the
pre-annotations saved, the tasks annotators disagreed on most, and the
settings in force. Behind the same basic auth as every other route.
"""

from __future__ import annotations

import io
from dataclasses import fields

import numpy as np
from flask import Blueprint, Response, abort, render_template_string
from redis.exceptions import RedisError
from werkzeug.exceptions import HTTPException

from .ls_format import MAX_LS_ID, match_labels, parse_label_config, task_image_url
from .serving import ServingFilters, raw_output_key, shown_classes, shown_detections
from .settings import Settings, shown_setting
from .url_settings import without_password

#: Tasks of the served queue's head shown as thumbnails.
QUEUE_HEAD = 12
THUMBNAIL_SIDE = 160
#: Jobs listed per queue and status.
RECENT_JOBS = 10
#: Settings shown: every one in force but the secrets, which Settings keeps out of its repr (LABEL_STUDIO_API_KEY,
#: BASIC_AUTH_PASS, and REDIS_URL and DETECTION_STORE_URL, which carry passwords; `ale config` shows them masked).
#: LABEL_STUDIO_URL is shown with any credentials in it masked (`shown_setting`).
SHOWN_SETTINGS = tuple(spec.name for spec in fields(Settings) if spec.repr)
#: A project or task id of the routes: past it, no database id (and no SQLite integer) could be meant.
ID_CONVERTER = f"int(max={MAX_LS_ID})"


def admin_blueprint(settings, runtime) -> Blueprint:
    """The /ui routes, reading `runtime`'s stores, Redis and LS client."""
    page = Blueprint("admin", __name__)

    @page.get("/ui")
    def index():
        try:
            projects, unreachable = known_projects(settings, runtime), None
        except RedisError:
            projects, unreachable = known_projects(settings, None), redis_unreachable(settings)
        return render_template_string(INDEX, projects=projects, redis_note=unreachable, style=STYLE)

    @page.get(f"/ui/projects/<{ID_CONVERTER}:project>")
    def project_page(project: int):
        from .model_store import ModelStore
        from .savings import savings_by_model

        try:
            jobs, unreachable = job_rows(settings, runtime, project), None
        except RedisError:
            jobs, unreachable = None, redis_unreachable(settings)
        store = ModelStore(settings.model_dir, project)
        versions, (served, damaged) = store.versions(), store.readable_current()
        latest = versions[-1].manifest if versions else {}
        return render_template_string(
            PROJECT,
            project=project,
            versions=versions,
            served=served.name if served else None,
            damaged=damaged,
            plot=metrics_svg(versions),
            jobs=jobs,
            redis_note=unreachable,
            head=queue_head(runtime, project, queue_mask(runtime, project)),
            savings=savings_by_model(runtime.store, project),
            disagreements=latest.get("most_disagreement", []),
            settings=shown_settings(settings),
            fine_tune=fine_tune_summary,
            style=STYLE,
        )

    @page.get(f"/ui/projects/<{ID_CONVERTER}:project>/tasks/<{ID_CONVERTER}:task>/thumbnail.jpg")
    def thumbnail(project: int, task: int):
        return Response(task_thumbnail(runtime, project, task), mimetype="image/jpeg", headers={"Cache-Control": "max-age=300"})

    return page


def redis_unreachable(settings) -> str:
    """The admin page's note while Redis is down, naming where it was looked for (never the password)."""
    shown = without_password(settings.redis_url)
    where = shown.partition("://")[2].rpartition("@")[2] or shown  # the host, port and database
    return f"Redis at {where} is unreachable: jobs and connected projects are not shown"


def known_projects(settings, runtime) -> list[int]:
    """Projects with a model store folder, in SYNC_PROJECTS, or connected (/setup) to this adapter's backends
    (those only with a `runtime` whose Redis is given)."""
    from pathlib import Path

    from .jobs import projects_key

    found = set(settings.sync_projects)
    root = Path(settings.model_dir)
    if root.is_dir():
        found |= {int(p.name) for p in root.iterdir() if p.is_dir() and p.name.isascii() and p.name.isdigit()}  # "²" passes isdigit()
    if runtime is not None and runtime.redis is not None:
        found |= {int(p) for p in runtime.redis.smembers(projects_key(settings.adapter))}
    return sorted(found)


def job_rows(settings, runtime, project: int) -> list[dict] | None:
    """Recent jobs of the rq queues for `project`'s page: its own and the scheduled sync of every project (sync_all);
    None in embedded mode (jobs run in this process, GET /jobs/<id>)."""
    if runtime.redis is None:
        return None
    from .jobqueue import recent_jobs

    return recent_jobs(runtime.redis, settings.adapter, RECENT_JOBS, project=project)


def queue_mask(runtime, project: int) -> np.ndarray | None:
    """(C,) the classes the project's label config has a label for, of the model whose detections the served queue holds;
    None when that cannot be told (all are counted)."""
    queue = runtime.store.served_queue(project)
    try:
        config = parse_label_config(runtime.ls.project(project).label_config)
        return classes_mask(key_classes(runtime, project, queue.raw_key if queue else None), config)
    except Exception:  # the page still shows what the store knows
        return None


def key_classes(runtime, project: int, raw_key: str | None) -> tuple[str, ...] | None:
    """The classes of the model whose detections the store keeps under `raw_key` (the project's serving model when None):
    the serving or configured model, or a version of the project's model store; None when it is none of them.

    A queue is served until the next sync rewrites it, so its rows may be of a version with other classes than the one
    promoted since."""
    from .model_store import ModelStore

    def produced(version: str) -> bool:  # serving.raw_output_key: the version, then "@settings" where they are not the defaults
        return raw_key == version or raw_key.startswith(f"{version}@")

    adapter = runtime.adapter_for(project)
    if raw_key is None or produced(adapter.version):
        return tuple(adapter.classes)
    if produced(runtime.adapter.version):
        return tuple(runtime.adapter.classes)
    store = ModelStore(runtime.settings.model_dir, project)
    for version in store.versions():
        if produced(version.name):
            return tuple(version.classes)
    return None


def classes_mask(classes: tuple[str, ...] | None, config) -> np.ndarray | None:
    """(C,) the `classes` the label config has a label for; None where that cannot be told (no class has a label)."""
    try:
        return None if classes is None else shown_classes(match_labels(classes, config))
    except ValueError:  # LabelMismatchError: a version's classes the current config no longer has labels for
        return None


def fitting_mask(shown: np.ndarray | None, detections) -> np.ndarray:
    """`shown` where it fits `detections`' class count, else every class (rows of a model with another class count)."""
    if shown is None or np.shape(shown) != (detections.num_classes,):
        return np.ones(detections.num_classes, bool)
    return shown


def queue_head(runtime, project: int, shown: np.ndarray | None = None, limit: int = QUEUE_HEAD) -> list[dict]:
    """The first `limit` tasks of the served queue: rank, task, usefulness, LS score, boxes an annotator sees.

    shown: (C,) the classes shown of the queue's model (`queue_mask`); where it does not fit a row, all are counted."""
    queue = runtime.store.served_queue(project)
    if queue is None:
        return []
    served = runtime.store.served_tasks(project, limit)
    stored = runtime.store.get_many(project, queue.raw_key, served.task_ids.tolist())
    filters = ServingFilters.from_settings(runtime.settings)
    rows = []
    for rank, (task, usefulness, score) in enumerate(zip(served.task_ids.tolist(), served.usefulness.tolist(), served.scores.tolist()), 1):
        item = stored.get(task)
        ok = item is not None and item.detections is not None
        boxes = len(shown_detections(item.detections, fitting_mask(shown, item.detections), filters)) if ok else None
        rows.append({"rank": rank, "task": task, "usefulness": usefulness if np.isfinite(usefulness) else None, "score": score, "boxes": boxes})
    return rows


def task_thumbnail(runtime, project: int, task: int) -> bytes:
    """The task's image, THUMBNAIL_SIDE px, with the boxes an annotator is shown drawn on it."""
    from PIL import ImageDraw

    from .media import MediaFetcher

    try:
        config = parse_label_config(runtime.ls.project(project).label_config)
        found = runtime.ls.sdk.tasks.get(id=str(task))
        owner = getattr(found, "project", None)
        if owner is not None and int(owner) != project:
            abort(404)  # another project's task: not this page's to show
        image = MediaFetcher(runtime.settings, runtime.ls).fetch(task_image_url({"id": task, "data": found.data or {}}, config), task, project)
    except HTTPException:
        raise
    except Exception:  # a thumbnail that cannot be had (no such task, LS down, image unreadable) is a 404, not a broken page
        abort(404)
    queue = runtime.store.served_queue(project)
    key = queue.raw_key if queue else raw_output_key(runtime.adapter_for(project).version, runtime.settings)
    item = runtime.store.get_many(project, key, [task]).get(task)
    scale = THUMBNAIL_SIDE / max(image.size)
    thumb = image.convert("RGB").resize((max(1, round(image.width * scale)), max(1, round(image.height * scale))))
    if item is not None and item.detections is not None:
        try:
            classes = key_classes(runtime, project, key)
        except Exception:  # a damaged model store: the boxes are drawn for every class rather than no thumbnail
            classes = None
        mask = fitting_mask(classes_mask(classes, config), item.detections)
        shown = shown_detections(item.detections, mask, ServingFilters.from_settings(runtime.settings))
        draw = ImageDraw.Draw(thumb)
        for box in shown.xyxy * scale:
            draw.rectangle([float(v) for v in box], outline=(255, 215, 0), width=2)
    out = io.BytesIO()
    thumb.save(out, format="JPEG", quality=85)
    return out.getvalue()


def shown_settings(settings) -> list[tuple[str, object]]:
    """(name, value) of SHOWN_SETTINGS; an unset BASE_MODEL says what a first training starts from instead."""
    rows = [(name, shown_setting(name, getattr(settings, name))) for name in SHOWN_SETTINGS]
    if not settings.base_model:
        from .adapters import adapter_class
        from .errors import AdapterError

        try:
            fresh = getattr(adapter_class(settings), "fresh_model", None)
        except AdapterError:  # the page still renders; the adapter's own error is in the log
            fresh = None
        unset = f"unset: a first training starts from {fresh}" if fresh else "unset"
        rows = [(name, unset if name == "base_model" else value) for name, value in rows]
    return rows


def fine_tune_summary(manifest: dict) -> str:
    """How a version was fine-tuned, from its manifest: "600 steps, bf16, layers 0-9 kept"; epochs where no plan was recorded."""
    plan = manifest.get("plan") or {}
    if "steps" in plan:
        parts = [f"{plan['steps']} steps"]
    elif manifest.get("epochs"):
        parts = [f"{plan.get('epochs', manifest['epochs'])} epochs"]
    else:
        return ""
    if plan.get("precision"):
        parts.append(plan["precision"])
    if plan.get("freeze"):
        parts.append(f"layers 0-{plan['freeze'] - 1} kept")
    return ", ".join(parts)


def metrics_svg(versions, width: int = 520, height: int = 200) -> str:
    """An inline SVG line plot of mAP50 and COCO mAP per version ("" with fewer than one version)."""
    if not versions:
        return ""
    pad, n = 30, len(versions)
    step = (width - 2 * pad) / max(n - 1, 1)

    def points(key: str) -> str:
        return " ".join(f"{pad + i * step:.1f},{height - pad - v.metrics.get(key, 0.0) * (height - 2 * pad):.1f}" for i, v in enumerate(versions))

    lines = [
        f'<svg class="plot" viewBox="0 0 {width} {height}" width="{width}" height="{height}" role="img" aria-label="mAP per version">',
        f'<line x1="{pad}" y1="{height - pad}" x2="{width - pad}" y2="{height - pad}" stroke="#999"/>',
        f'<text x="4" y="{pad + 4}" font-size="10">1.0</text><text x="4" y="{height - pad}" font-size="10">0</text>',
        f'<polyline fill="none" stroke="#2a6fdb" stroke-width="2" points="{points("map50")}"/>',
        f'<polyline fill="none" stroke="#d9822b" stroke-width="2" points="{points("map")}"/>',
    ]
    for i, v in enumerate(versions):
        lines.append(f'<text x="{pad + i * step:.1f}" y="{height - 10}" font-size="10" text-anchor="middle">{v.name}</text>')
    lines.append(f'<text x="{width - pad}" y="14" font-size="11" text-anchor="end"><tspan fill="#2a6fdb">mAP50</tspan> <tspan fill="#d9822b">COCO mAP</tspan></text>')
    return "\n".join(lines + ["</svg>"])


STYLE = """body{font:14px system-ui,sans-serif;margin:1.5em;color:#222}table{border-collapse:collapse;margin:.5em 0 1.5em}
td,th{border-bottom:1px solid #ddd;padding:3px 10px;text-align:right}th{background:#f4f4f4}td.l,th.l{text-align:left}
.head{display:flex;flex-wrap:wrap;gap:10px}.head figure{margin:0;width:170px;font-size:12px}.head img{display:block;border:1px solid #ccc}"""

INDEX = """<!doctype html><html><head><meta charset="utf-8"><title>label-studio-ale</title><style>{{ style }}</style></head><body>
<h1>label-studio-ale</h1>
{% if redis_note %}<p id="redis" class="warn">{{ redis_note }}</p>{% endif %}
{% if projects %}<ul>{% for p in projects %}<li><a href="/ui/projects/{{ p }}">project {{ p }}</a></li>{% endfor %}</ul>
{% else %}<p>No project yet: connect one in Label Studio (Settings → Model).</p>{% endif %}
</body></html>"""

PROJECT = """<!doctype html><html><head><meta charset="utf-8"><title>project {{ project }} · label-studio-ale</title>
<style>{{ style }}</style></head><body>
<p><a href="/ui">all projects</a></p><h1>Project {{ project }}</h1>
<h2>Model versions</h2>
{% if damaged %}<p id="damaged" class="warn">The served version cannot be read: {{ damaged }}</p>{% endif %}
{% if versions %}
<table id="versions"><tr><th class="l">version</th><th>served</th><th>COCO mAP</th><th>mAP50</th><th>VOC07 AP50</th><th>VOC12 AP50</th><th>train</th><th>val</th><th class="l">fine-tune</th><th class="l">promotion</th></tr>
{% for v in versions %}<tr data-version="{{ v.name }}"><td class="l">{{ v.name }}</td><td>{{ "★" if v.name == served else "" }}</td>
<td class="map">{{ "%.3f"|format(v.metrics.get("map", 0)) }}</td><td class="map50">{{ "%.3f"|format(v.metrics.get("map50", 0)) }}</td>
<td>{{ "%.3f"|format(v.metrics.get("voc07_map50", 0)) }}</td><td>{{ "%.3f"|format(v.metrics.get("voc12_map50", 0)) }}</td>
<td>{{ v.manifest.get("train_images", "") }}</td><td>{{ v.manifest.get("val_images", "") }}</td><td class="l fine-tune">{{ fine_tune(v.manifest) }}</td>
<td class="l">{{ (v.manifest.get("promotion") or {}).get("reason", "") }}</td></tr>{% endfor %}</table>
{{ plot|safe }}
{% else %}<p>No trained version yet: press Start Training in Label Studio.</p>{% endif %}
<h2>Next in the queue</h2>
{% if head %}<div class="head" id="queue">{% for row in head %}<figure data-task="{{ row.task }}">
<img src="/ui/projects/{{ project }}/tasks/{{ row.task }}/thumbnail.jpg" alt="task {{ row.task }}" loading="lazy">
<figcaption>#{{ row.rank }} task <b class="task">{{ row.task }}</b><br>usefulness <span class="usefulness">{{ "%.4f"|format(row.usefulness) if row.usefulness is not none else "unusable" }}</span>
· score {{ "%.4f"|format(row.score) }} · <span class="boxes">{{ row.boxes if row.boxes is not none else "-" }}</span> boxes</figcaption></figure>{% endfor %}</div>
{% else %}<p>No queue served yet: the next sync writes one.</p>{% endif %}
<h2>Jobs</h2>
{% if redis_note %}<p id="redis" class="warn">{{ redis_note }}</p>
{% elif jobs is none %}<p>Jobs run inside this server (no REDIS_URL); GET /jobs/&lt;id&gt; reports one.</p>
{% elif jobs %}<p>This project's jobs, and the scheduled sync of every project.</p><table id="jobs"><tr><th class="l">queue</th><th class="l">status</th><th class="l">function</th><th class="l">progress / error</th><th class="l">job</th></tr>
{% for j in jobs %}<tr><td class="l">{{ j.queue }}</td><td class="l">{{ j.status }}</td><td class="l">{{ j.function.rsplit(".", 1)[-1] }}</td><td class="l">{{ j.detail }}</td><td class="l">{{ j.id }}</td></tr>{% endfor %}</table>
{% else %}<p>No recent job.</p>{% endif %}
<h2>What the pre-annotations saved</h2>
{% if savings %}<table id="savings"><tr><th class="l">pre-annotations of</th><th>annotations</th><th>accepted</th><th>moved</th><th>relabelled</th><th>deleted</th><th>added</th><th>kept</th><th>mean lead time (s)</th></tr>
{% for s in savings %}<tr><td class="l">{{ s.model }}</td><td>{{ s.annotations }}</td><td>{{ s.counts.accepted }}</td><td>{{ s.counts.moved }}</td><td>{{ s.counts.relabelled }}</td>
<td>{{ s.counts.deleted }}</td><td>{{ s.counts.added }}</td><td>{{ "%.0f%%"|format(100 * s.accepted_share) }}</td><td>{{ s.mean_lead_time if s.mean_lead_time is not none else "-" }}</td></tr>{% endfor %}</table>
{% else %}<p>No annotation recorded against a shown prediction yet.</p>{% endif %}
{% if disagreements %}<h2>Most disagreement between annotators (last training)</h2><table id="disagreements"><tr><th class="l">task</th><th>disagreements</th></tr>
{% for d in disagreements %}<tr><td class="l">{{ d.task }}</td><td>{{ d.disagreements }}</td></tr>{% endfor %}</table>{% endif %}
<h2>Settings in force</h2><table id="settings">{% for name, value in settings %}<tr><td class="l">{{ name.upper() }}</td><td class="l">{{ value }}</td></tr>{% endfor %}</table>
</body></html>"""
