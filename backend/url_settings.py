"""The settings that are URLs (LABEL_STUDIO_URL, LABEL_STUDIO_HOST, REDIS_URL, DETECTION_STORE_URL): how they are checked, and how
logs, errors, `ale config` and the admin page show them (every password masked).

The mask does not trust a URL parser: libpq takes a raw '#' or '?' in a password,
and urllib (and redis-py, which uses it) read either as the end of the host, so
a parser would hand the rest of the password over as a path, query or fragment.
"""

from __future__ import annotations

import re
from urllib.parse import unquote_plus

from .errors import ConfigError

#: What redis-py's Redis.from_url accepts.
REDIS_SCHEMES = ("redis://", "rediss://", "unix://")
#: What detection_store.open_detection_store accepts besides empty (SQLite in MODEL_DIR).
DETECTION_STORE_SCHEMES = ("sqlite:///", "postgresql://", "postgres://")
#: Settings attributes that are URLs and may carry credentials: shown only through `without_password`.
URL_SETTINGS = ("label_studio_url", "label_studio_host", "redis_url", "detection_store_url")
#: Shown in place of a URL (or of its part after the scheme) that cannot be read: no part of it is safe to show.
UNREADABLE = "(unreadable URL)"

_SCHEME = re.compile(r"[A-Za-z][A-Za-z0-9+.\-]*")
# A user name that is certainly no password fragment: none of the characters that end a parser's host.
_USER = re.compile(r"[A-Za-z0-9._~%+\-]*")
# Where a URL points (host, port, several for libpq): nothing a key=value string or a sentence would hold.
_HOST = re.compile(r"[^\s/?#@=&'\"<>\\]*")
# A query parameter's name, after a '?' or '&' (found anywhere: a '?' in a password starts no real query).
_PARAM = re.compile(r"[?&]([^=&?#]*)=")
_SECRET_NAMES = ("password", "passwd", "pwd", "secret", "token", "key")


def without_password(url: str) -> str:
    """`url` as logs, errors and pages may show it: credentials and secret query values as ***.

    Everything between `scheme://` and the last '@' is masked but a user name
    before a ':' (a password may hold '#', '?', '/' or '@'), and so is the
    value of every `...password=` (or secret, token, key) query parameter.
    A URL whose host cannot be read shows its scheme only.
    """
    if not url:
        return url
    scheme, sep, rest = url.partition("://")
    if not (sep and _SCHEME.fullmatch(scheme)):
        prefix, rest = "", url
    else:
        prefix = f"{scheme}://"
    hidden = [False] * len(rest)
    at = rest.rfind("@")
    if at >= 0:
        user, colon, _ = rest[:at].partition(":")
        kept = len(user) + len(colon) if _USER.fullmatch(user) else 0
        hidden[kept:at] = [True] * (at - kept)
    for found in _PARAM.finditer(rest):
        name = unquote_plus(found.group(1)).strip().lower()
        end = rest.find("&", found.end())
        end = len(rest) if end < 0 else end
        if name.endswith(_SECRET_NAMES) and end > found.end():
            hidden[found.end() : end] = [True] * (end - found.end())
    host = re.split(r"[/?#]", rest[at + 1 :], maxsplit=1)[0]
    if not any(hidden[at + 1 : at + 1 + len(host)]) and not _HOST.fullmatch(host):
        return prefix + UNREADABLE
    shown, previous = [], False
    for char, masked in zip(rest, hidden):
        if not masked:
            shown.append(char)
        elif not previous:
            shown.append("***")
        previous = masked
    return prefix + "".join(shown)


def shown_setting(name: str, value):
    """A Settings attribute's value as pages and `ale config` show it: URL settings through `without_password`."""
    return without_password(value) if name in URL_SETTINGS and isinstance(value, str) else value


def check_redis_url(url: str) -> None:
    """REDIS_URL as redis-py reads it: a scheme it takes, a numeric port, a numeric database (path or ?db=), else ConfigError."""
    from urllib.parse import parse_qs, unquote

    example = "e.g. redis://localhost:6379/0 or redis://:password@host:6379/0"
    shown = without_password(url)
    _check_password_characters("REDIS_URL", url, "/?#", "redis-py", shown)
    parts = _split_url("REDIS_URL", url, REDIS_SCHEMES, example, shown)
    databases = parse_qs(parts.query).get("db", [])
    if parts.scheme != "unix" and not databases:  # redis-py reads the path as the database only without ?db=
        databases = [unquote(parts.path).replace("/", "")]
    for database in databases:
        if database and not (database.isascii() and database.isdigit()):
            raise ConfigError(
                "REDIS_URL",
                f"the database must be a number (redis-py would use database 0 instead), {example}, got {database!r} in {shown!r}",
            )


def check_label_studio_url(url: str, variable: str = "LABEL_STUDIO_URL") -> None:
    """LABEL_STUDIO_URL (or LABEL_STUDIO_HOST, named by `variable`): http(s)://host[:port][/path], else ConfigError."""
    example = "e.g. http://localhost:8080 or https://label-studio.example.com"
    shown = without_password(url)
    _check_password_characters(variable, url, "/?#", "the HTTP client", shown)
    parts = _split_url(variable, url, ("http://", "https://"), example, shown)
    if not parts.hostname or any(c.isspace() for c in parts.hostname):
        raise ConfigError(variable, f"must name a host after the scheme, {example}, got {shown!r}")


def check_detection_store_url(url: str) -> None:
    """DETECTION_STORE_URL with a scheme detection_store.open_detection_store takes, else ConfigError (at start, not first use)."""
    if not url.startswith(DETECTION_STORE_SCHEMES) or url == "sqlite:///":
        raise ConfigError(
            "DETECTION_STORE_URL",
            "must be empty (SQLite in MODEL_DIR), sqlite:///<path> (sqlite:////abs/path for an absolute one) "
            f"or postgresql://user:password@host:5432/database, got {without_password(url)!r}",
        )
    if not url.startswith("sqlite:///"):  # libpq ends the credentials at the first '/' or '@'
        _check_password_characters("DETECTION_STORE_URL", url, "/@", "libpq", without_password(url))


def _check_password_characters(variable: str, url: str, ends: str, reader: str, shown: str) -> None:
    """Refuse credentials holding a character that `reader` takes for the end of the user part (it would read part
    of the password as the host)."""
    credentials = url.partition("://")[2].rpartition("@")[0]
    found = sorted({c for c in credentials if c in ends})
    if found:
        raise ConfigError(
            variable,
            f"{reader} ends the user part at {' or '.join(map(repr, found))}, so it would read part of the password as the host: "
            "percent-encode those characters of the password (/ as %2F, ? as %3F, # as %23, @ as %40; an '@' in a query "
            f"parameter too), got {shown!r}",
        )


def _split_url(variable: str, url: str, schemes: tuple[str, ...], example: str, shown: str):
    """`url` split (urllib's SplitResult) once its scheme is one of `schemes` and its port a number, else ConfigError.

    shown: the URL as an error may show it (its password masked).
    """
    from urllib.parse import urlsplit

    if not url.startswith(schemes):
        raise ConfigError(variable, f"must start with {' or '.join(schemes)}, {example}, got {shown!r}")
    try:
        parts = urlsplit(url)
        _ = parts.port  # reading it checks it: ValueError for a port that is no number or out of range
    except ValueError as exc:
        raise ConfigError(variable, f"cannot be read as a URL ({_without_url(str(exc), url)}): write it as {example}, got {shown!r}") from None
    return parts


def _without_url(message: str, url: str) -> str:
    """A parser's message without the pieces of `url` it quotes where the URL has credentials (urllib quotes the port
    it could not read, which is then part of the password)."""
    return re.sub(r"'[^']*'", "'…'", message) if "@" in url else message
