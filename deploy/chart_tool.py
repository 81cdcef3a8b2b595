"""Renders and validates the Helm chart offline, and checks its production environment.

Rendering uses Helm's own engine (Helm v4's Go SDK, through the `helm-python-sdk`
wheel's libhelm_c), with `--set` parsed by Helm's strvals parser and merged flag
by flag as `helm --set a --set b` does; values.schema.json is enforced first, as
`helm install` does.

Validation: built-in kinds against the Kubernetes OpenAPI schemas bundled in
`kubernetes-validate` (strict: unknown fields are errors), for the oldest and the
newest Kubernetes the chart supports; KEDA and Prometheus Operator kinds against
the JSON schemas in deploy/tests/schemas/ (written from their CRDs, since no CRD
can be fetched at test time).

    python deploy/chart_tool.py render [--set K=V ...]      # print the manifests
    python deploy/chart_tool.py validate [--set K=V ...]    # render and validate
    python deploy/chart_tool.py prod-check --mmt target/release/mmt [--set K=V ...]
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import helm_python as helm
import jsonschema
import kubernetes_validate
import yaml

ROOT = Path(__file__).resolve().parent.parent
CHART = ROOT / "deploy" / "helm" / "mmt"
SCHEMAS = ROOT / "deploy" / "tests" / "schemas"
# The chart's kubeVersion floor and the newest schemas kubernetes-validate bundles.
KUBE_VERSIONS = ("1.27.0", "1.37.0")
RELEASE, NAMESPACE = "mmt", "mmt"

# The operators' guide's command (docs/operations.md, "Deploy"), flag by flag.
GUIDE_FLAGS = (
    "env.ENV=prod",
    "env.AUDIT_LOG_FILE=/app/logs/audit.log",
    "env.WORKER_POOL_OPTIMIZATION_ENABLED=true",
    "env.EXTERNAL_RABBITMQ_ENABLED=true",
    "env.EXTERNAL_REDIS_ENABLED=true",
    "keda.enabled=true",
    "retention.schedule=0 2 * * *",
    "auditLogs.enabled=true",
    "tls.enabled=true",
)

CRD_SCHEMAS = {
    ("keda.sh/v1alpha1", "ScaledObject"): "scaledobject-keda-v1alpha1.json",
    ("keda.sh/v1alpha1", "TriggerAuthentication"): "triggerauthentication-keda-v1alpha1.json",
    ("monitoring.coreos.com/v1", "PrometheusRule"): "prometheusrule-monitoring-v1.json",
    ("monitoring.coreos.com/v1", "ServiceMonitor"): "servicemonitor-monitoring-v1.json",
}


def _merge_value(base: Any, over: Any) -> Any:
    if isinstance(base, dict) and isinstance(over, dict):
        return _deep_merge(base, over)
    if isinstance(base, list) and isinstance(over, list):
        # `--set a[0].x=1 --set a[0].y=2` fills one element, as Helm's strvals
        # does when it parses every flag into the same map: by index.
        merged = copy.deepcopy(base) + [None] * max(0, len(over) - len(base))
        for index, item in enumerate(over):
            if item is not None:
                merged[index] = _merge_value(merged[index], item) if merged[index] is not None else copy.deepcopy(item)
        return merged
    return copy.deepcopy(over)


def _deep_merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(base)
    for key, value in over.items():
        out[key] = _merge_value(out[key], value) if key in out else copy.deepcopy(value)
    return out


def values_from_sets(sets: list[str] | tuple[str, ...]) -> dict[str, Any]:
    """The values of `--set s1 --set s2 ...`: each flag parsed by Helm, later flags win."""
    values: dict[str, Any] = {}
    for expression in sets:
        values = _deep_merge(values, helm.parse_set_string(expression))
    return values


def render(sets: list[str] | tuple[str, ...] = ()) -> list[dict[str, Any]]:
    """Every manifest the chart renders for these `--set` flags, as parsed YAML.

    Raises helm_python.HelmError (its message is Helm's) when the values break
    values.schema.json or a template calls `fail`.
    """
    chart = helm.Chart.load(str(CHART))
    values = values_from_sets(sets)
    chart.validate_schema(values)
    rendered = chart.render(values, name=RELEASE, namespace=NAMESPACE, is_install=True)
    manifests = []
    for path in sorted(rendered):
        if not path.endswith((".yaml", ".yml")):
            continue  # NOTES.txt
        for doc in yaml.safe_load_all(rendered[path]):
            if doc:
                manifests.append(doc)
    return manifests


def validate(manifest: dict[str, Any]) -> None:
    """Validates one manifest against its schema; raises with the kind and the reason."""
    key = (manifest.get("apiVersion"), manifest.get("kind"))
    name = f"{key[1]} {manifest.get('metadata', {}).get('name')}"
    if key in CRD_SCHEMAS:
        schema = json.loads((SCHEMAS / CRD_SCHEMAS[key]).read_text())
        try:
            jsonschema.Draft202012Validator(schema).validate(manifest)
        except jsonschema.ValidationError as err:
            raise AssertionError(f"{name}: {err.message} at {list(err.absolute_path)}") from err
        return
    for version in KUBE_VERSIONS:
        try:
            kubernetes_validate.validate(manifest, version, strict=True)
        except kubernetes_validate.ValidationError as err:
            raise AssertionError(f"{name} (Kubernetes {version}): {err.message}") from err


def containers(manifests: list[dict[str, Any]]) -> list[tuple[str, dict[str, Any], dict[str, Any]]]:
    """(workload name, pod spec, container) for every container of every workload."""
    out = []
    for m in manifests:
        spec = m.get("spec", {})
        pod = None
        if m["kind"] in ("Deployment", "StatefulSet", "DaemonSet", "Job"):
            pod = spec["template"]["spec"]
        elif m["kind"] == "CronJob":
            pod = spec["jobTemplate"]["spec"]["template"]["spec"]
        if pod is not None:
            for c in pod.get("containers", []) + pod.get("initContainers", []):
                out.append((m["metadata"]["name"], pod, c))
    return out


def literal_env(container: dict[str, Any]) -> dict[str, str]:
    """The container's literal env values, with $(VAR) references expanded as the kubelet does."""
    env: dict[str, str] = {}
    for entry in container.get("env", []):
        if "value" in entry:
            env[entry["name"]] = re.sub(
                r"\$\(([A-Za-z_][A-Za-z0-9_]*)\)",
                lambda m: env.get(m.group(1), m.group(0)),
                entry["value"],
            )
        elif entry.get("valueFrom", {}).get("fieldRef", {}).get("fieldPath") == "metadata.name":
            env[entry["name"]] = f"{RELEASE}-pod-0"
    return env


# Stand-ins for the Secret's keys in the production check: the shapes prod
# requires (a PostgreSQL URL with verified TLS, a 32+ character JWT secret).
SECRET_STANDINS = {
    "DATABASE_URL": "postgres://mmt:stand-in@db.example.org:5432/mmt?sslmode=verify-full",
    "INTERNAL_JWT_SECRET": "stand-in-jwt-secret-0123456789abcdef",
    "MMT_RABBITMQ_PASSWORD": "stand-in",
}


def container_key_file(env: dict[str, str], mount_path: str) -> str:
    """The keyring's file name under its mount, from MMT_ENCRYPTION_KEYS."""
    return env.get("MMT_ENCRYPTION_KEYS", f"{mount_path}/keyring.json")[len(mount_path) + 1 :]


def _keyring(mmt: Path, path: Path) -> None:
    """A keyring made by `mmt keys rotate`, as an operator makes the Secret's."""
    subprocess.run(
        [str(mmt), "keys", "rotate"],
        env={"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "MMT_ENCRYPTION_KEYS": str(path)},
        check=True,
        capture_output=True,
        timeout=60,
    )


def prod_check(mmt: Path, sets: list[str] | tuple[str, ...], model_dir: Path, ort_lib: Path) -> list[tuple[str, int, str]]:
    """Runs `mmt check` with the environment of every rendered container.

    The image's paths are mapped onto this machine: the TLS Secret onto a
    self-signed certificate made here, the audit volume onto a temporary folder,
    the model and ONNX Runtime onto the local ones; Secret references get
    stand-ins of the shape production requires. Returns (container, exit code,
    output) per container.
    """
    results = []
    with tempfile.TemporaryDirectory(prefix="mmt-prod-check-") as tmp:
        tmp_path = Path(tmp)
        manifests = render(sets)
        for workload, pod, container in containers(manifests):
            env = literal_env(container)
            mounts = {m["mountPath"]: m["name"] for m in container.get("volumeMounts", [])}
            remap = {"/opt/mmt/model": str(model_dir), "/opt/mmt/lib/libonnxruntime.so.1.31.1": str(ort_lib)}
            for mount_path, volume in mounts.items():
                local = tmp_path / workload / volume
                local.mkdir(parents=True, exist_ok=True)
                if volume == "tls":
                    _self_signed(local)
                if volume == "keyring":
                    _keyring(mmt, local / container_key_file(env, mount_path))
                remap[mount_path] = str(local)
            for name, value in list(env.items()):
                for image_path, local in sorted(remap.items(), key=lambda kv: -len(kv[0])):
                    if value == image_path or value.startswith(image_path + "/"):
                        env[name] = local + value[len(image_path):]
                        break
            for entry in container.get("env", []):
                if "secretKeyRef" in entry.get("valueFrom", {}):
                    env[entry["name"]] = SECRET_STANDINS.get(entry["name"], "stand-in")
            proc = subprocess.run(
                [str(mmt), "check"],
                env={"PATH": os.environ.get("PATH", "/usr/bin:/bin"), **env},
                capture_output=True,
                text=True,
                timeout=60,
            )
            results.append((f"{workload}/{container['name']}", proc.returncode, proc.stdout + proc.stderr))
    return results


def default_ort_lib() -> Path:
    """ONNX Runtime's library in the repository's virtualenv (scripts/setup.sh), else in this Python's."""
    name = "onnxruntime/capi/libonnxruntime.so.1.31.1"
    for prefix in (ROOT / ".venv", Path(sys.prefix)):
        found = sorted(prefix.glob(f"lib/python3*/site-packages/{name}"))
        if found:
            return found[-1]
    return ROOT / ".venv" / "lib" / "python3.11" / "site-packages" / name


def _self_signed(folder: Path) -> None:
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=mmt-api",
         "-keyout", str(folder / "tls.key"), "-out", str(folder / "tls.crt")],
        check=True,
        capture_output=True,
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("command", choices=["render", "validate", "prod-check"])
    parser.add_argument("--set", action="append", default=[], dest="sets", metavar="KEY=VALUE")
    parser.add_argument("--guide", action="store_true", help="prepend the operators' guide's --set flags")
    parser.add_argument("--mmt", type=Path, default=ROOT / "target" / "release" / "mmt")
    parser.add_argument("--model-dir", type=Path, default=ROOT / "models" / "tiny.en")
    parser.add_argument("--ort-lib", type=Path, default=default_ort_lib())
    args = parser.parse_args()
    sets = (list(GUIDE_FLAGS) if args.guide else []) + args.sets
    if args.command == "render":
        print(yaml.safe_dump_all(render(sets), sort_keys=False), end="")
        return 0
    if args.command == "validate":
        manifests = render(sets)
        for manifest in manifests:
            validate(manifest)
        print(f"{len(manifests)} manifests valid")
        return 0
    failed = 0
    for name, code, output in prod_check(args.mmt, sets, args.model_dir, args.ort_lib):
        print(f"== ENV=prod mmt check in {name}: exit {code}")
        print(output, end="")
        failed += code != 0
    return 1 if failed else 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except helm.HelmError as err:
        print(f"helm: {err}", file=sys.stderr)
        sys.exit(1)
