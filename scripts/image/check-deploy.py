"""Cross-checks of the deployment files that no schema sees (run by ``make lint-ops``).

    python scripts/image/check-deploy.py

Every YAML file must parse, and the numbers that must agree do: each stop grace period (systemd
``TimeoutStopSec``, compose ``stop_grace_period``, Kubernetes ``terminationGracePeriodSeconds``,
the image test's ``podman stop -t``) stays above the shutdown timeout it wraps; probes point at
/live and /ready; selectors match the pod labels; KEDA watches the pending list of a queue the
workers serve; Redis runs with ``noeviction``; the Grafana dashboard and the alert rules ask
only for metrics a worker exposes (read from botrix's own registry). Needs PyYAML and botrix.
Prints one line per problem.
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[2]
K8S = ROOT / "deploy" / "kubernetes"
problems: list[str] = []


def check(ok: bool, message: str) -> None:
    """Record ``message`` as a problem unless ``ok``."""
    if not ok:
        problems.append(message)


def load_all(path: Path) -> list[Any]:
    """Every YAML document of ``path`` (none when it does not parse)."""
    try:
        return [doc for doc in yaml.safe_load_all(path.read_text()) if doc is not None]
    except yaml.YAMLError as exc:
        problems.append(f"{path.relative_to(ROOT)}: not valid YAML: {exc}")
        return []


def seconds(text: str) -> float:
    """Parse a duration such as ``40``, ``40s``, ``1m30s`` or ``1min 30s``."""
    units = {"": 1, "s": 1, "sec": 1, "m": 60, "min": 60, "h": 3600}
    parts = re.findall(r"(\d+(?:\.\d+)?)\s*([a-z]*)", text.strip())
    if not parts:
        raise ValueError(f"not a duration: {text!r}")
    return sum(float(n) * units[u] for n, u in parts)


def systemd_unit() -> None:
    """The unit's stop timeout wraps the shutdown timeout it sets."""
    unit = (ROOT / "systemd" / "botrix-worker@.service").read_text()
    values = dict(re.findall(r"^(\w+)=(.*)$", unit, flags=re.M))
    env = dict(re.findall(r"^Environment=(\w+)=(\S*)$", unit, flags=re.M))
    shutdown = float(env.get("BOTRIX_SHUTDOWN_TIMEOUT", "25"))
    check(
        seconds(values["TimeoutStopSec"]) > shutdown + 5,
        f"systemd: TimeoutStopSec={values['TimeoutStopSec']} not above "
        f"BOTRIX_SHUTDOWN_TIMEOUT={shutdown} + 5 s",
    )
    check(values.get("Type") == "notify", "systemd: Type is not notify")
    check(values.get("KillSignal") == "SIGTERM", "systemd: KillSignal is not SIGTERM")
    example = (ROOT / "systemd" / "worker.env.example").read_text()
    for name in ("WORKER_ID", "BOTRIX_HTTP_PORT"):
        check(
            re.search(rf"^{name}=", example, flags=re.M) is None,
            f"worker.env.example sets {name}: it would override every instance's own",
        )


def compose() -> None:
    """Redis persistence and eviction policy; worker grace periods."""
    (doc,) = load_all(ROOT / "compose.yaml") or [{}]
    services = doc.get("services", {})
    redis_cmd = " ".join(services.get("redis", {}).get("command", []))
    check("--maxmemory-policy noeviction" in redis_cmd, "compose: Redis lacks noeviction")
    check("--appendonly yes" in redis_cmd, "compose: Redis lacks AOF (--appendonly yes)")
    worker = services.get("worker", {})
    check(bool(worker), "compose: no 'worker' service")
    check(worker.get("deploy", {}).get("replicas", 1) >= 2, "compose: fewer than two worker replicas")
    env = worker.get("environment", {})
    shutdown = float(env.get("BOTRIX_SHUTDOWN_TIMEOUT", 25))
    check(
        seconds(worker.get("stop_grace_period", "10s")) > shutdown + 5,
        "compose: worker stop_grace_period not above its shutdown timeout + 5 s",
    )
    check(
        worker.get("build", {}).get("dockerfile") == "Containerfile",
        "compose: worker is not built from the Containerfile",
    )
    # `--scale worker=N` must give N distinct workers: no shared id, no fixed host port.
    check(
        "WORKER_ID" not in env and "BOTRIX_WORKER_ID" not in env, "compose: replicas would share a WORKER_ID"
    )
    for port in worker.get("ports", []):
        # "8080" or "IP::8080" publish on a free host port; "8081:8080" and "IP:8081:8080" fix one.
        parts = str(port).split(":")
        check(len(parts) == 1 or parts[-2] == "", f"compose: worker port {port!r} fixes a host port")
    prom = load_all(ROOT / "deploy" / "prometheus" / "prometheus.yml")
    names = {
        (name, sd.get("port"))
        for doc in prom
        for job in doc.get("scrape_configs", [])
        if job.get("job_name") == "botrix"
        for sd in job.get("dns_sd_configs", [])
        for name in sd.get("names", [])
    }
    port = int(env.get("BOTRIX_HTTP_PORT", 8080))
    check(("worker", port) in names, f"prometheus.yml does not discover the worker replicas on port {port}")


def kubernetes() -> None:
    """Probes, grace period, selectors and the KEDA trigger agree with each other."""
    docs = {
        (doc["kind"], doc["metadata"]["name"]): doc
        for path in sorted(K8S.glob("*.yaml"))
        for doc in load_all(path)
        if doc.get("kind") != "Kustomization"
    }
    kustomization = load_all(K8S / "kustomization.yaml")[0]
    for resource in kustomization["resources"]:
        check((K8S / resource).is_file(), f"kustomization lists a missing file: {resource}")
    listed = {p.name for p in K8S.glob("*.yaml")} - {"kustomization.yaml"}
    check(listed <= set(kustomization["resources"]), "kustomization misses a manifest")

    deployment = docs[("Deployment", "botrix-worker")]
    config = docs[("ConfigMap", "botrix-worker")]["data"]
    pod = deployment["spec"]["template"]
    labels = pod["metadata"]["labels"]
    spec = pod["spec"]
    (container,) = spec["containers"]
    shutdown = float(config["BOTRIX_SHUTDOWN_TIMEOUT"])
    check(
        spec["terminationGracePeriodSeconds"] > shutdown + 5,
        "kubernetes: terminationGracePeriodSeconds not above BOTRIX_SHUTDOWN_TIMEOUT + 5 s",
    )
    check(container["livenessProbe"]["httpGet"]["path"] == "/live", "liveness is not /live")
    check(container["readinessProbe"]["httpGet"]["path"] == "/ready", "readiness is not /ready")
    port = str(container["ports"][0]["containerPort"])
    check(port == config["BOTRIX_HTTP_PORT"], "container port differs from BOTRIX_HTTP_PORT")
    annotations = pod["metadata"]["annotations"]
    check(annotations.get("prometheus.io/port") == port, "prometheus.io/port is not the port")
    check(annotations.get("prometheus.io/path") == "/metrics", "prometheus.io/path not /metrics")

    def selects(selector: dict[str, Any]) -> bool:
        return all(labels.get(k) == v for k, v in selector["matchLabels"].items())

    check(selects(deployment["spec"]["selector"]), "Deployment selector misses its pods")
    check(
        selects(docs[("PodDisruptionBudget", "botrix-worker")]["spec"]["selector"]),
        "PodDisruptionBudget selector misses the pods",
    )
    podmonitor = docs[("PodMonitor", "botrix-worker")]["spec"]
    check(selects(podmonitor["selector"]), "PodMonitor selector misses the pods")
    port_name = container["ports"][0]["name"]
    check(
        all(e["port"] == port_name for e in podmonitor["podMetricsEndpoints"]),
        "PodMonitor scrapes another port",
    )

    scaled = docs[("ScaledObject", "botrix-worker")]["spec"]
    check(
        scaled["scaleTargetRef"]["name"] == deployment["metadata"]["name"],
        "ScaledObject targets another Deployment",
    )
    check(
        scaled.get("minReplicaCount", 0) >= 1,
        "ScaledObject minReplicaCount < 1: scheduled jobs and retries need a worker",
    )
    queues = config["BOTRIX_QUEUES"].split(",")
    for trigger in scaled["triggers"]:
        name = trigger["metadata"]["listName"]
        check(
            name in {f"botrix:{{{q}}}:pending" for q in queues},
            f"KEDA watches {name}, not the pending list of a served queue",
        )
        auth = trigger["authenticationRef"]["name"]
        check(("TriggerAuthentication", auth) in docs, f"no TriggerAuthentication {auth}")


def image_test() -> None:
    """``podman stop -t`` in the image test stays above the shutdown timeout it sets."""
    script = (ROOT / "scripts" / "image-test.sh").read_text()
    grace = re.search(r"^grace=(\d+)", script, flags=re.M)
    shutdown = re.search(r"BOTRIX_SHUTDOWN_TIMEOUT=(\d+)", script)
    check(
        bool(grace and shutdown and int(grace[1]) > int(shutdown[1]) + 5),
        "image-test.sh: grace not above BOTRIX_SHUTDOWN_TIMEOUT + 5 s",
    )


def metric_names() -> set[str]:
    """Every sample name a worker exposes: its registry's families and their suffixes."""
    from botrix.health import WorkerState
    from botrix.metrics import Metrics

    registry = Metrics(WorkerState("check", ("default",), 1), [], "0").registry
    suffixes = ("", "_total", "_created", "_bucket", "_sum", "_count")
    return {family.name + suffix for family in registry.collect() for suffix in suffixes}


def queries() -> None:
    """The dashboard and the alert rules ask only for metrics a worker exposes.

    A typo in a name is no error to Prometheus or Grafana: the panel stays empty, the alert
    never fires. And the dashboard's datasource is the one Compose provisions.
    """
    known = metric_names() | {"up"}
    dashboard = json.loads((ROOT / "deploy" / "grafana" / "dashboards" / "botrix.json").read_text())
    (datasources,) = load_all(ROOT / "deploy" / "grafana" / "provisioning" / "datasources" / "prometheus.yml")
    uids = {d["uid"] for d in datasources["datasources"]}
    exprs = []
    for panel in dashboard["panels"]:
        check(panel["datasource"]["uid"] in uids, f"dashboard panel {panel['title']!r}: unknown datasource")
        exprs += [(f"dashboard panel {panel['title']!r}", t["expr"]) for t in panel["targets"]]
    (rules,) = load_all(ROOT / "deploy" / "prometheus" / "alerts.yml")
    exprs += [(f"alert {r['alert']}", r["expr"]) for g in rules["groups"] for r in g["rules"]]
    for where, expr in exprs:
        # Metric names: identifiers not followed by "(" (functions) or inside a label matcher.
        stripped = re.sub(r"\{[^}]*\}|\bby \([^)]*\)|\bon \([^)]*\)|\[[^]]*\]", " ", expr)
        for name in re.findall(r"\b((?:botrix|process|python)_[a-z_]+)\b(?!\s*\()", stripped):
            check(name in known, f"{where}: no worker exposes {name}")


def main() -> int:
    """Run every check; print the problems; exit 1 when there is any."""
    for part in (systemd_unit, compose, kubernetes, image_test, queries):
        try:
            part()
        except (KeyError, ValueError, TypeError, IndexError) as exc:
            problems.append(f"{part.__name__}: missing or malformed field: {exc!r}")
    for problem in problems:
        print(f"check-deploy: {problem}")
    if not problems:
        print("check-deploy: systemd, compose, prometheus, grafana and kubernetes files agree")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
