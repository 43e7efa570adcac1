"""PostgreSQL URLs: which ones jobd takes, and how they are shown. A URL may carry a password;
whatever prints or logs one shows it through redact_url(), and an error text from the driver
through scrub()."""

from __future__ import annotations

from urllib.parse import parse_qsl, unquote, urlencode, urlsplit, urlunsplit

SCHEMES = ("postgresql", "postgres")
HIDDEN = "***"


def url_problem(url: str) -> str | None:
    """Why `url` is not a PostgreSQL URL jobd can use, or None. Never quotes the URL."""
    scheme, sep, _ = url.partition("://")
    if not sep or scheme.lower() not in SCHEMES:
        return "must start with postgresql:// or postgres://"
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018  (raises ValueError on a port that is not a number in range)
    except ValueError as exc:
        return f"is not a valid URL ({exc})"
    if parts.fragment:
        return "must not have a #fragment"
    return None


def _password(url: str) -> str | None:
    try:
        parts = urlsplit(url)
    except ValueError:
        return None
    secret = parts.password
    if secret is None:
        for key, value in parse_qsl(parts.query, keep_blank_values=True):
            if key == "password":
                secret = value
    return unquote(secret) if secret else None


def redact_url(url: str) -> str:
    """`url` with its password, in the user part or as a `password=` parameter, shown as ***."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return f"{url.partition('://')[0]}://{HIDDEN}"  # unparsable: show nothing that may be secret
    netloc = parts.netloc
    if parts.password is not None:
        userinfo, _, hostport = netloc.rpartition("@")
        netloc = f"{userinfo.partition(':')[0]}:{HIDDEN}@{hostport}"
    query = parts.query
    if query:
        pairs = parse_qsl(query, keep_blank_values=True)
        if any(key == "password" for key, _ in pairs):
            query = urlencode([(key, HIDDEN if key == "password" else value) for key, value in pairs], safe="*/")
    return urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))


def scrub(text: str, url: str) -> str:
    """A message (a driver's error, say) about `url`, with the URL and its password redacted."""
    text = text.replace(url, redact_url(url))
    secret = _password(url)
    return text.replace(secret, HIDDEN) if secret else text
