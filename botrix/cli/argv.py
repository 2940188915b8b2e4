"""The command line's shared parts: a parser whose errors are one line, and its secrets hidden."""

from __future__ import annotations

import argparse
import re
import sys
from typing import Any, NoReturn

import setproctitle

from botrix.redis_url import redact_url


class Parser(argparse.ArgumentParser):
    """An argument parser whose errors are one line and exit code 2.

    Flags are taken whole, never abbreviated: ``--admin`` for ``--admin-token`` would carry a
    secret past the process title's redaction, which knows the flags by their full names.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("allow_abbrev", False)
        super().__init__(*args, **kwargs)
        _PARSERS.append(self)

    def parse_known_args(self, args: Any = None, namespace: Any = None) -> Any:
        """Parse, remembering the words for :meth:`error` to hide any secret among them."""
        _WORDS.append(list(sys.argv[1:] if args is None else args))
        return super().parse_known_args(args, namespace)

    def error(self, message: str) -> NoReturn:
        """Print ``prog: error: message`` alone and exit 2 (no usage block)."""
        message = hide_secrets(message)
        head, colon, rest = message.partition("unrecognized arguments: ")
        if colon:
            # A mistyped flag's value may be a secret (--admin-tokn SECRET): values are hidden.
            words = rest.split(" ")
            hidden = [_hide_value(w, words[i - 1] if i else "") for i, w in enumerate(words)]
            message = head + colon + " ".join(hidden)
        sys.stderr.write(f"{self.prog}: error: {message}\n")
        raise SystemExit(2)


#: Every parser of the process (a CLI's and its subcommands'), and the words each was given.
_PARSERS: list[Parser] = []
_WORDS: list[list[str]] = []


def hide_secrets(message: str) -> str:
    """``message`` on one line, with every command-line word that may hold a secret hidden.

    argparse and our checks quote a bad value ("invalid choice: 'redis://u:pw@h'", a URL typed
    where the command was due), and ``--flag=VALUE`` or ``-aVALUE`` as the value alone.
    """
    for word in sorted(_secret_words(), key=len, reverse=True):
        shown = _redact_arg(word)
        if shown == word:
            if "://" in word or _REDIS_ISH.match(word):
                continue  # a URL that holds no secret
            shown = "***"
        for form, replacement in ((repr(word), repr(shown)), (repr(word)[:60], "'***"), (word, shown)):
            message = message.replace(form, replacement)
    return " ".join(message.splitlines())


def _secret_words() -> set[str]:
    """The command-line words (and values of ``--flag=VALUE``, ``-aVALUE``) that may be secrets.

    URLs, credentials, passwords, and whatever follows a flag no parser knows (``-a PASSWORD``,
    as redis-cli takes it). Not shorter than 4 characters: a lone '@' is no secret.
    """
    known = {flag for parser in _PARSERS for flag in parser._option_string_actions}
    found = set()
    for words in _WORDS:
        for i, word in enumerate(words):
            name, eq, value = word.partition("=") if word.startswith("-") else ("", "", word)
            if not eq and word.startswith("-") and not word.startswith("--") and len(word) > 2:
                name, value = word[:2], word[2:]
            before = words[i - 1] if i else ""
            unknown = name and name not in known
            after_unknown = (
                re.match(r"-[A-Za-z-]", before) is not None  # a flag, not a value like -1
                and "=" not in before
                and before not in known
                and word not in known
            )
            for part in {word, value}:
                if len(part) >= 4 and (_secret_like(part) or (part == value and unknown) or after_unknown):
                    found.add(part)
    return found


def _secret_like(word: str) -> bool:
    """Whether a command-line word may carry a secret: a URL, credentials, a password."""
    return "@" in word or "://" in word or "password" in word.lower() or bool(_REDIS_ISH.match(word))


def _hide_value(word: str, before: str) -> str:
    """An unknown argument as an error may show it: a flag's name, never its value."""
    if word.startswith("--") and "=" in word:
        return word.partition("=")[0] + "=***"
    if not word.startswith("-") and before.startswith("-") and "=" not in before:
        return "***"
    return _redact_arg(word)


def fail(prog: str, message: str, code: int = 2) -> NoReturn:
    """Report a problem as one line, no secret of the command line in it, and exit."""
    sys.stderr.write(f"{prog}: error: {hide_secrets(message)}\n")
    raise SystemExit(code)


#: A typo of a Redis URL (redis:/..., redis:u:pw@...), which may hold a password.
_REDIS_ISH = re.compile(r"(redis|rediss|unix):")


def _redact_arg(arg: str) -> str:
    flag, eq, value = arg.partition("=") if arg.startswith("--") else ("", "", arg)  # --redis-url=URL
    # A URL, or a typo of a Redis one (redis:/..., redis:u:pw@...), which may hold a password.
    if "://" not in value and not _REDIS_ISH.match(value):
        return arg
    return f"{flag}{eq}{redact_url(value)}"


def hide_secrets_in_title() -> None:
    """Show the command line with every password in it redacted (``ps``, ``/proc/<pid>/cmdline``)."""
    shown = [_redact_arg(arg) for arg in sys.argv]
    for i, arg in enumerate(sys.argv):
        if arg == "--admin-token" and i + 1 < len(shown):
            shown[i + 1] = "***"
        elif arg.startswith("--admin-token="):
            shown[i] = "--admin-token=***"
    if shown != sys.argv:
        setproctitle.setproctitle(" ".join(shown))
