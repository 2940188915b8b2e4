"""``python -m botrix``: the admin CLI; ``python -m botrix worker ...`` runs the daemon."""

from botrix.cli.admin import main

main()
