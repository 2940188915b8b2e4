"""``python -m botrix``: the admin CLI; ``python -m botrix worker ...`` runs the daemon."""

import sys

if sys.argv[1:2] == ["worker"]:
    # Straight to the worker's entry point, which notes a stop before its heavy imports
    # (botrix/cli/start.py); the admin CLI's own would come first.
    from botrix.cli.start import worker

    worker(sys.argv[2:])
else:
    from botrix.cli.admin import main

    main()
