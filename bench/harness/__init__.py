"""The benchmark harness: throwaway Redis servers, worker processes, probes, scenarios, reports.

Entry point: ``bench/run.py``. Adapters (``harness.adapters``) know how to start each system's
worker and how to enqueue into it; ``produce.py`` runs an adapter's producer in the system's
own virtualenv.
"""
