"""Redis URLs: what botrix takes, how it shows one without its secrets, and the parts it reads.

A bad URL is refused at start with one line that never shows a password (``redact_url``),
rather than failing at the first command, or quietly meaning something else (redis-py reads a
path it cannot parse as database 0, a port 0 as 6379).
"""

from __future__ import annotations

import contextlib
import ipaddress
import math
import os
import re
import socket
from collections.abc import Mapping
from urllib.parse import SplitResult, parse_qs, quote, unquote, urlsplit

from botrix.errors import ConfigError


def check_redis_url(text: str) -> str:
    """``text`` if it is a Redis URL botrix can use; a ValueError that never shows a password."""
    try:
        text.encode()
    except UnicodeEncodeError:  # bytes the environment could not decode: AUTH would fail on them
        raise ValueError("is not valid UTF-8 text: percent-encode any other byte (%FF)") from None
    shown = redact_url(text)
    try:
        parts = urlsplit(text)
    except ValueError:
        raise ValueError(f"is not a URL, got {shown!r}") from None
    if parts.scheme not in ("redis", "rediss", "unix") or "://" not in text:
        raise ValueError(f"must be a redis://, rediss:// or unix:// URL, got {shown!r}")
    if _garbled(text, parts):
        raise ValueError(
            f"looks like a password with an unencoded / ? # & or @ in it: percent-encode them "
            f"(%2F %3F %23 %26 %40), got {shown!r}"
        )
    if not (parts.hostname or parts.path):
        raise ValueError(f"names no host or socket, got {shown!r}")
    try:
        # A bad port raises here rather than at the first command; port 0 is no port, and
        # redis-py would quietly connect to 6379 instead.
        if parts.port == 0:
            raise ValueError
    except ValueError:
        # Not the parser's message: it quotes the text it took for the port. With an '@' further
        # on, that text may be a password with a / ? or # in it that the checks above missed.
        if "@" in text:
            shown = f"{parts.scheme}://***"
        raise ValueError(f"has a port that is not a number from 1 to 65535, got {shown!r}") from None
    _check_numbers(parts.query)
    # redis-py reads the path as a database (without its slashes) unless ?db= gives one, and
    # ignores a path it cannot read as a number: /1x would serve database 0.
    db = unquote(parts.path).replace("/", "")
    if parts.scheme != "unix" and _query_value(parts.query, "db") is None and db and not db.isdecimal():
        raise ValueError(f"has a path that is not a database number (/0, /1, ...), got {shown!r}")
    return text


#: redis-py's numeric URL parameters and the least each may be. It takes a NaN, a zero or a
#: negative timeout, which then fail every command as if Redis were away, for good.
_URL_NUMBERS = {
    "socket_timeout": (0.001, "seconds"),
    "socket_connect_timeout": (0.001, "seconds"),
    "timeout": (0.001, "seconds"),
    "health_check_interval": (0, "seconds"),
    "db": (0, ""),
    "max_connections": (1, ""),
    "socket_read_size": (1, "bytes"),
}


def _check_numbers(query: str) -> None:
    for key, (low, unit) in _URL_NUMBERS.items():
        text = _query_value(query, key)
        if text is None:
            continue
        try:
            value = float(text) if text.strip().isascii() else math.nan
        except ValueError:
            continue  # not a number at all: redis-py's own check says so (store.check_url)
        if not (math.isfinite(value) and value >= low):
            raise ValueError(f"has {key}={text}: must be a number of at least {low:g} {unit}".rstrip())


def check_host(text: str) -> str:
    """``text`` if it is an IP address or a host name the resolver would take; else a ValueError."""
    try:
        ipaddress.ip_address(text)
    except ValueError:
        try:  # what the resolver will be asked: a name it would refuse to encode is a bad value
            encoded = text.encode("idna")
        except UnicodeError:
            encoded = b""
        labels = encoded.rstrip(b".").split(b".")
        if (
            text
            and (
                not re.fullmatch(rb"[A-Za-z0-9_.-]{1,253}", encoded)  # "": every interface
                or any(label[:1] == b"-" or label[-1:] == b"-" for label in labels)
                # 999.1.1.1: no address, and no name (0 and 127.1 are addresses to the resolver)
                or (all(label.isdigit() for label in labels) and not _inet_aton(text))
            )
        ):
            raise ValueError(f"must be an IP address or a host name, got {redact_url(text)!r}") from None
    return text


def _inet_aton(text: str) -> bool:
    """Whether the resolver takes ``text`` as an IPv4 address in a short form (0, 127.1, 10.1)."""
    try:
        socket.inet_aton(text)
    except OSError:
        return False
    return True


def cluster_nodes(text: str) -> tuple[tuple[str, int], ...]:
    """``host:port,host:port``: more nodes to reach a Redis Cluster by, besides the URL's.

    The original daemon's REDIS_CLUSTER_NODES. An IPv6 address goes in brackets. An entry is
    never repeated with what precedes an ``@``: a URL pasted here may carry a password.
    """
    nodes = []
    for item in (i.strip() for i in text.split(",")):
        if not item:
            continue
        shown = re.sub(r"^.*@", "***@", item)[:100]
        host, colon, port = item.rpartition(":")
        if not colon or not port.isascii() or not port.isdigit() or not 0 < int(port) < 65536:
            raise ValueError(f"{shown!r} is not host:port with a port from 1 to 65535")
        bare = host[1:-1] if host.startswith("[") and host.endswith("]") else host
        version: int = 0
        with contextlib.suppress(ValueError):
            version = ipaddress.ip_address(bare).version
        # An IPv6 address goes in brackets, or its last group would pass for the port.
        try:
            if not bare or (bare != host) != (version == 6):
                raise ValueError
            check_host(bare)
        except ValueError:
            raise ValueError(f"{shown!r} does not start with a host name or an IP address") from None
        nodes.append((bare, int(port)))
    return tuple(nodes)


def _garbled(url: str, parts: SplitResult) -> bool:
    """Whether a password may have spilled out of its place, so that the parser misreads it.

    An unencoded / ? or # in the userinfo ends the host part early: an '@' then follows in the
    path, a query key or the fragment. An unencoded & or # in a ``password=`` query value cuts
    it short: a bare key (no '=') or a fragment follows. Redis URLs use neither fragments nor
    bare keys, nor an '@' in those places, so treating them all as a spilt password costs
    nothing.
    """
    after = url.partition("://")[2][len(parts.netloc) :]
    path = after.partition("?")[0].partition("#")[0]
    items = [item for item in parts.query.split("&") if item]
    return (
        "@" in path or "#" in url or any("=" not in item or "@" in item.partition("=")[0] for item in items)
    )


def redact_url(url: str) -> str:
    """The URL with any password (in the userinfo or a ``*password=`` parameter) as ``***``.

    A user part with no password is hidden too: redis-cli reads ``redis://secret@host`` as a
    password, and people paste such URLs.

    A URL whose password may have spilled out of its place (see ``_garbled``) is shown as
    ``scheme://***``, and text that is not a ``scheme://`` URL but holds an '@' as ``***``:
    never a secret, at the price of everything else. Past a ``*password=`` parameter the query
    is hidden too: an unencoded & in the password would show its end as another parameter.
    """
    try:
        if "://" not in url:
            return "***" if "@" in url else url  # not a URL (a typo of one may hold a password)
        parts = urlsplit(url)
        if _garbled(url, parts):
            return f"{parts.scheme}://***"
        netloc = parts.netloc
        if "@" in netloc:
            host = parts.hostname or ""
            if ":" in host:
                host = f"[{host}]"
            if parts.port:
                host = f"{host}:{parts.port}"
            # A user alone may be a password written where redis-cli takes one (redis://pw@h).
            user = f"{parts.username or ''}:" if parts.password is not None else ""
            netloc = f"{user}***@{host}"
        shown: list[str] = []
        for item in parts.query.split("&") if parts.query else []:
            key = item.partition("=")[0]
            if "password" in key.lower():
                shown.append(f"{key}=***")
                break
            shown.append(item)
        query = "&".join(shown)
        # Not urlunsplit: it drops the empty host of unix:///path.
        return f"{parts.scheme}://{netloc}{parts.path}" + (f"?{query}" if query else "")
    except ValueError:
        return "<unparseable url>"


#: The original daemon's Redis settings (its .env): a URL is built from them when none is given.
REDIS_PARTS = ("REDIS_HOST", "REDIS_PORT", "REDIS_PASSWORD")


def redis_url_from_parts(env: Mapping[str, str]) -> str | None:
    """``redis://[:password@]host:port/0`` from REDIS_HOST, REDIS_PORT and REDIS_PASSWORD.

    Only when one of them is set (then host localhost and port 6379 unless given); else None.
    """
    if not any(env.get(name) for name in REDIS_PARTS):
        return None
    host = env.get("REDIS_HOST") or "localhost"
    port = env.get("REDIS_PORT") or "6379"
    if not port.isascii() or not port.isdigit() or not 0 < int(port) < 65536:
        raise ConfigError(f"REDIS_PORT: must be a port number from 1 to 65535, got {redact_url(port)!r}")
    bare = host.removeprefix("[").removesuffix("]")
    try:
        if ipaddress.ip_address(bare).version == 6:
            host = f"[{bare}]"
    except ValueError:
        # Not an IP: a host name, and nothing else (an "@" or "/" would change what the URL
        # means: another host, a user, a path).
        if not re.fullmatch(r"[A-Za-z0-9_.-]{1,253}", host):
            raise ConfigError(
                f"REDIS_HOST: must be a host name or an IP address, got {redact_url(host)[:100]!r}"
            ) from None
    password = env.get("REDIS_PASSWORD")
    try:
        (password or "").encode()
    except UnicodeEncodeError:  # bytes the environment could not decode: AUTH would fail on them
        raise ConfigError("REDIS_PASSWORD: is not valid UTF-8 text (value not shown)") from None
    auth = f":{quote(password, safe='')}@" if password else ""
    return f"redis://{auth}{host}:{port}/0"


def check_cluster_url(url: str) -> None:
    """A ValueError for what redis-py's cluster client refuses only once the worker runs."""
    parts = urlsplit(url)
    if parts.scheme == "unix":
        raise ValueError("is a unix:// URL, and a Redis Cluster is reached over TCP")
    db = _query_value(parts.query, "db") or unquote(parts.path).replace("/", "") or "0"  # redis-py's way
    if not (db.isascii() and db.lstrip("+-").isdigit()) or int(db) != 0:
        raise ValueError(f"names database {db}, and a Redis Cluster has only database 0")


def check_tls_files(url: str) -> None:
    """A ValueError for a TLS file of the URL that cannot be read.

    redis-py reports it only at the first connect, as "No such file or directory" for the host.
    """
    query = urlsplit(url).query
    for name in ("ssl_ca_certs", "ssl_certfile", "ssl_keyfile", "ssl_ca_path"):
        path = _query_value(query, name)
        if path is not None and not os.access(path, os.R_OK):
            # A path is no secret, unless it is the end of a password whose unencoded ? took
            # it there (redis://u:pw?ssl_ca_certs=rest@host): then '@' is in it (redact_url).
            shown = "***" if "@" in path else repr(path)
            raise ValueError(f"{name} names {shown}, which cannot be read")


def _query_value(query: str, key: str) -> str | None:
    """The value of ``key`` in a URL's query as redis-py reads it (the first), or None."""
    values = parse_qs(query).get(key)
    return values[0] if values else None
