"""What to tell a user when Label Studio refuses or fails a request: the key, the project, the listing of projects."""

from __future__ import annotations

from contextlib import contextmanager

from .errors import AleError
from .url_settings import without_password


class LabelStudioError(AleError):
    """Label Studio refused or failed a request the backend needs."""

    status = 502


@contextmanager
def refusals(client, project_id: int, missing: bool = True):
    """The SDK's ApiError for a refused key or an unknown project, as a LabelStudioError saying what to fix.

    client: the LabelStudioClient asking; its `url` names LS in the message.
    missing: a 404 means the project is unknown (the project's first request; a later page's 404 is another matter).
    """
    from label_studio_sdk.core.api_error import ApiError

    try:
        yield
    except ApiError as exc:
        refusal = refusal_message(exc, project_id, client.url, missing)
        if refusal is None:
            raise
        raise LabelStudioError(refusal) from exc


def refusal_message(exc, project_id: int, url: str, missing: bool = True) -> str | None:
    """What to tell a user about an SDK ApiError that refused the key (401, 403) or found no project (404); None for another."""
    status, said = getattr(exc, "status_code", None), ls_said(exc)
    if status == 401:
        return f"Label Studio refused LABEL_STUDIO_API_KEY (401): use a personal access token or legacy token from Account & Settings{said}"
    if status == 403:
        return (
            f"Label Studio refused LABEL_STUDIO_API_KEY (403) for project {project_id}: use a personal access token or legacy "
            f"token from Account & Settings of a user who can open the project{said}"
        )
    if status == 404 and missing:
        return f"project {project_id} not found in Label Studio at {without_password(url)}: check --project / the project id"
    return None


def listing_refused(exc, url: str) -> str:
    """What to tell a user about an SDK ApiError answering the listing of projects."""
    status, said = getattr(exc, "status_code", None), ls_said(exc)
    if status in (401, 403):
        return (
            f"Label Studio refused LABEL_STUDIO_API_KEY ({status}) when listing its projects: use a personal access token "
            f"or legacy token from Account & Settings{said}"
        )
    if status == 404:
        return (
            f"{without_password(url)}/api/projects/ answered 404: LABEL_STUDIO_URL must be the address Label Studio's pages are at "
            f"(behind a reverse proxy, with the path it serves Label Studio under){said}"
        )
    return listing_failed(f"it answered {status}{said}", url)


def listing_failed(what: str, url: str) -> str:
    return (
        f"Label Studio at {without_password(url)} could not list its projects ({what[:300]}): check that "
        "LABEL_STUDIO_URL is the address Label Studio's pages are at, and that Label Studio is up"
    )


def ls_said(exc) -> str:
    """ " (Label Studio said: ...)" of an SDK ApiError's body (its `detail` where it has one), "" when it said nothing."""
    body = getattr(exc, "body", None)
    said = body.get("detail") if isinstance(body, dict) else body
    return f" (Label Studio said: {str(said)[:200]})" if said else ""
