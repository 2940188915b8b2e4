"""A handlers module that tunes the cyclic garbage collector itself (``--app tests.gc_app``).

The worker sets its own thresholds before it imports the handler modules, so this one's must
be the ones in force. Kept out of tests.handlers, which every test worker loads.
"""

from __future__ import annotations

import gc

THRESHOLDS = (1234, 5, 6)

gc.set_threshold(*THRESHOLDS)
