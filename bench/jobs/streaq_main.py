"""Run the streaq worker as ``streaq run jobs_streaq:worker`` does, but logging at WARNING.

streaq's CLI hard-codes INFO, which writes a line per task; every system in the benchmark runs
at WARNING so that none pays for per-job log lines.
"""

from __future__ import annotations

import logging.config

from jobs_streaq import worker
from streaq.utils import default_log_config


def main() -> None:
    """Configure streaq's own log format at WARNING and run the worker until signalled."""
    config = default_log_config(worker.tz, False)
    config["handlers"]["streaq.standard"]["level"] = "WARNING"
    config["loggers"]["streaq"]["level"] = "WARNING"
    logging.config.dictConfig(config)
    worker.run_sync()


if __name__ == "__main__":
    main()
