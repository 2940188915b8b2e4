"""``botrix-worker``: the daemon."""

from __future__ import annotations

import gc
import os
import sys
from collections.abc import Sequence

import uvloop

from botrix.app import ServeError, Worker
from botrix.cli import Parser, fail, hide_secrets_in_title
from botrix.config import OPTIONS, Settings, resolve
from botrix.errors import ConfigError, HandlerLoadError
from botrix.logs import configure
from botrix.notify import SystemdNotifier
from botrix.registry import default_registry, load_apps

PROG = "botrix-worker"


def build_parser() -> Parser:
    """Every option of the option table, as a flag; ``--help`` lists the env vars too."""
    parser = Parser(
        prog=PROG,
        description="Run botrix jobs from Redis. Every flag can also be set by environment.",
    )
    for option in OPTIONS:
        default = f"default {option.default}" if option.default is not None else "no default"
        parser.add_argument(
            option.flag,
            dest=option.name,
            action="append" if option.repeatable else "store",
            metavar=option.metavar,
            help=f"{option.help} [env {' or '.join(option.envs)}; {default}]",
        )
    return parser


def parse_settings(argv: Sequence[str], env: dict[str, str]) -> Settings:
    """Settings from argv and environment; bad values exit 2 with one line."""
    args = build_parser().parse_args(argv)
    try:
        settings = resolve(vars(args), env)
    except ConfigError as exc:
        fail(PROG, str(exc))
    if not settings.app:
        fail(PROG, "no handler module: pass --app MODULE (or set BOTRIX_APP)")
    return settings


def main(argv: Sequence[str] | None = None) -> None:
    """Entry point of ``botrix-worker``."""
    hide_secrets_in_title()
    settings = parse_settings(sys.argv[1:] if argv is None else argv, dict(os.environ))
    configure(settings.log_level, settings.log_format)
    # Handler modules are imported from the working directory too, as `python -m` would.
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        registry = load_apps(settings.app, default_registry)
    except HandlerLoadError as exc:
        fail(PROG, str(exc))

    # Everything imported so far lives as long as the process: freezing it keeps the cyclic
    # GC from rescanning ~50 MB of modules on every full collection (pauses of several ms).
    gc.freeze()

    async def serve() -> None:
        worker = Worker(settings, registry, SystemdNotifier.from_environ(unset=True))
        worker.install_signal_handlers()
        await worker.run()

    try:
        uvloop.run(serve())
    except* ServeError as group:
        fail(PROG, str(group.exceptions[0]), 1)


if __name__ == "__main__":
    main()
