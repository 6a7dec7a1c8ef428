"""Which model classes a project's labels are, across versions: the rows a grown head keeps, and whether a version
has seen every label.

A label config names each label by its value or alias (`names`) and may let
it stand for other model classes (`predicted_values`, lower-cased in `aliases`);
serving matches classes to labels this way, and training keeps the rows it matches.
"""

from __future__ import annotations

from .model_store import ModelVersion


def continues_labels(current: ModelVersion, trained_labels: list[str], columns: dict[str, str] | None = None) -> bool:
    """True when `current` was trained on boxes of every label in `trained_labels`.

    A head row that has never seen a box of its label (a label added to the
    config, or a new class before its first boxes) must be learnt: that
    fine-tune takes the recipe's full steps, not TRAIN_CONTINUE_STEPS. A
    version stored before the manifest recorded its labels counts as not.
    `columns` puts its classes under the labels they are now (renamed labels).
    """
    known = current.manifest.get("trained_labels")
    if known is None:
        return False
    known = {columns.get(name) for name in known} if columns is not None else set(known)
    return set(trained_labels) <= known


def class_labels(known, classes: list[str], aliases: dict[str, str] | None = None, names: dict[str, str] | None = None) -> dict[str, str]:
    """{model class: the label it means}, as serving matches them: by a label's own names (`names`: its value
    or alias) exactly, then lower-cased through `aliases` (own names, then predicted_values). Others left out."""
    names = names or {label: label for label in classes}
    aliases = aliases or {label.lower(): label for label in classes}
    found = {}
    for name in known:
        label = names.get(name) or aliases.get(str(name).lower())
        if label in classes:
            found[name] = label
    return found


def inherited_rows(known, classes: list[str], aliases: dict[str, str] | None = None, names: dict[str, str] | None = None) -> dict[str, str]:
    """{label: model class whose classifier row it starts from} (`class_labels` inverted).

    A class named exactly as one of the label's own names wins (the row it was trained as); then the
    first model class that means it (its order in the checkpoint).
    """
    names = names or {label: label for label in classes}
    found = class_labels(known, classes, aliases, names)
    rows: dict[str, str] = {}
    for name, label in sorted(found.items(), key=lambda item: item[0] not in names):  # stable: own names first
        rows.setdefault(label, name)
    return rows


def grow_note(report: dict, rows: dict[str, str]) -> str:
    """What a grown head kept, for the manifest's "base": ", Kittiwake from bird" per label started from another's row."""
    kept = report.get("kept_rows", rows)
    note = "".join(f", {label} from {old}" for label, old in kept.items() if label != old)
    if report.get("fresh_class_branch"):
        note += ", classification branch fresh (sized for another class count)"
    return note
