"""Command-line entry points: the only place that reads argv and the environment.

Empty on purpose: ``botrix-worker`` imports this package before its entry point
(``start.py``) can keep a stop signal, so nothing may be imported here.
"""
