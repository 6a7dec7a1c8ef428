"""Whether a newly trained version replaces the served one (`PROMOTION`), and the record a train job publishes."""

from __future__ import annotations

from .settings import Settings


def evaluation_record(version: str, metrics: dict, promoted: bool, reason: str) -> dict:
    """What a train job publishes once its version is evaluated: the stored figures, not the trainer's own."""
    return {
        "version": version,
        "map50": metrics["map50"],
        "map": metrics["map"],
        "images": metrics["images"],
        "boxes": metrics["boxes"],
        "promoted": promoted,
        "reason": reason,
        "source": "the backend's evaluation of the stored version (pycocotools), as /versions shows it",
    }


def promotion_decision(
    settings: Settings, metrics: dict, current, baseline: dict | None, classes: list[str], *,
    compared: dict | None = None, shared: list[str] | None = None, by_hand: str = "",
) -> tuple[bool, str]:
    """Whether a new version with `metrics` replaces `current` (evaluated as `baseline` on the same images). -> (promote, why).

    With labels added since `current`, both are compared on the labels it knows (`shared`), the new version's
    figures there being `compared`. A version that cannot be compared with a current one is kept stored, not
    served; `by_hand`, the command that serves it, goes into the reason of every version not promoted.
    """
    compared = compared or metrics
    size = f"{compared['images']} validation images ({compared['boxes']} boxes)"
    added = [label for label in classes if shared and label not in shared]
    on = f" of the labels both know ({', '.join(shared or [])})" if added else ""
    anyway = f"; `{by_hand}` serves it anyway" if by_hand else ""
    if settings.promotion == "always":
        return True, "PROMOTION=always"
    if current is None:
        return True, "the project's first version"
    if baseline is None:
        return True, (
            f"none of {current.name}'s classes ({', '.join(current.classes)}) is a label now ({', '.join(classes)}): it cannot "
            "serve this label config, so promoted without a comparison"
        )
    if metrics["images"] < settings.promotion_min_images:
        return True, (
            f"only {size}, fewer than PROMOTION_MIN_IMAGES={settings.promotion_min_images}: too few to compare on, so promoted "
            "without the if-not-worse check; annotate more images to turn it on"
        )
    if not compared["boxes"]:
        # AP is undefined without a box to find: 0.000 >= 0.000 would pass whatever each version predicts there
        return False, f"{size}{on}: without a box, mAP cannot compare the versions, so {current.name} keeps serving{anyway}"
    if compared["map50"] >= baseline["map50"]:
        why = f"mAP50 {compared['map50']:.3f} >= {current.name}'s {baseline['map50']:.3f} on the same {size}{on}"
        return True, why + (f"; labels added: {', '.join(added)}" if added else "")
    worse = f"mAP50 {compared['map50']:.3f} < {current.name}'s {baseline['map50']:.3f} on the same {size}{on}: {current.name} keeps serving"
    if added and by_hand:
        return False, f"{worse}; `{by_hand}` serves it anyway, with the labels it adds ({', '.join(added)})"
    return False, worse + anyway
