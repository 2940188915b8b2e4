"""Print the HTTP status of a GET (and the body to stderr); used by scripts/image-test.sh.

    python3 scripts/image/http-get.py URL [BODY_FILE]

Prints ``000`` when nothing answers. Standard library only, so it runs with any python3.
"""

from __future__ import annotations

import sys
import urllib.error
import urllib.request


def main() -> int:
    """Fetch ``sys.argv[1]``; print the status; write the body to ``sys.argv[2]`` if given."""
    url = sys.argv[1]
    body = b""
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            status = response.status
            body = response.read()
    except urllib.error.HTTPError as exc:
        status = exc.code
        body = exc.read()
    except (OSError, ValueError):
        status = 0
    if len(sys.argv) > 2:
        with open(sys.argv[2], "wb") as out:
            out.write(body)
    print(f"{status:03d}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
