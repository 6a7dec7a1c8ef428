"""Access tokens of a personal access token replaced before they expire, in `label-studio-sdk`'s client."""

from __future__ import annotations

import functools
from datetime import datetime, timedelta, timezone

#: An access token this close to its expiry is replaced before a request: the
#: SDK refreshes only once a token has expired, so one sent in its last moments
#: reaches Label Studio expired and the request is refused with 401.
TOKEN_REFRESH_MARGIN = timedelta(seconds=30)


def refresh_tokens_early(sdk, margin: timedelta = TOKEN_REFRESH_MARGIN) -> None:
    """Make an SDK client replace its access token `margin` before the token expires.

    The SDK builds the Authorization header for every request from its tokens
    client's `api_key`, which refreshes only an expired token; this wraps that
    property of the one tokens client so that a token about to expire counts as
    expired. A legacy `Token` key is left as it is.
    """
    tokens = sdk._client_wrapper._tokens_client
    if tokens._use_legacy_token or isinstance(tokens, _EarlyRefresh):
        return
    tokens.__class__ = _early_refresh_class(type(tokens))
    tokens._refresh_margin = margin


@functools.cache
def _early_refresh_class(tokens_class: type) -> type:
    return type("EarlyRefresh" + tokens_class.__name__, (_EarlyRefresh, tokens_class), {})


class _EarlyRefresh:
    """Mixed into the SDK's tokens client (`refresh_tokens_early`)."""

    _refresh_margin: timedelta

    @property
    def api_key(self) -> str:
        expires = self._access_token_expiration
        if self._access_token and expires is not None and expires - datetime.now(timezone.utc) < self._refresh_margin:
            with self._token_refresh_lock:
                if self._access_token_expiration == expires:  # not refreshed meanwhile by another thread
                    self._access_token = None
        return super().api_key
