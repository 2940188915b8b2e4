"""Command-line entry points: the only place that reads argv and the environment."""

from __future__ import annotations

import argparse
import sys
from typing import NoReturn


class Parser(argparse.ArgumentParser):
    """An argument parser whose errors are one line and exit code 2."""

    def error(self, message: str) -> NoReturn:
        """Print ``prog: error: message`` alone and exit 2 (no usage block)."""
        sys.stderr.write(f"{self.prog}: error: {message}\n")
        raise SystemExit(2)


def fail(prog: str, message: str, code: int = 2) -> NoReturn:
    """Report a problem as one line and exit."""
    sys.stderr.write(f"{prog}: error: {message}\n")
    raise SystemExit(code)
