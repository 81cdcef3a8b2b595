"""The Helm chart, rendered by Helm's engine and validated against the Kubernetes,
KEDA and Prometheus Operator schemas; each flag of the operators' guide's command
changes the rendered manifests as docs/operations.md says."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import helm_python as helm
import pytest
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
import chart_tool as ct  # noqa: E402

GUIDE = list(ct.GUIDE_FLAGS)
ALERTS = ct.ROOT / "alerts" / "alerts_prometheus.yml"
CHART_ALERTS = ct.CHART / "files" / "alerts_prometheus.yml"
# The alerts of alerts/alerts_prometheus.yml (written on the alerts branch).
ALERT_NAMES = (
    "DLQIngressRateHigh", "ReprocessorPermanentFailures", "TranscriptionLatencyP95High",
    "EndToEndLatencyP95High", "QueueBacklogSustained", "VaultKeyRefreshFailures",
    "VaultTokenRenewFailures", "ApiErrorRateHigh", "CircuitBreakerOpen", "PublishFailures",
)


def without(flag: str) -> list[str]:
    return [f for f in GUIDE if f != flag]


def by_kind(manifests, kind):
    return [m for m in manifests if m["kind"] == kind]


def one(manifests, kind, name):
    found = [m for m in manifests if m["kind"] == kind and m["metadata"]["name"] == name]
    assert len(found) == 1, f"{kind} {name}: {len(found)} rendered"
    return found[0]


def envs(manifests):
    return {f"{w}/{c['name']}": ct.literal_env(c) for w, _, c in ct.containers(manifests)}


def mounts(container):
    return {m["name"]: m["mountPath"] for m in container.get("volumeMounts", [])}


ALL_OPTIONS = ["serviceMonitor.enabled=true", "vault.enabled=true", "fhir.enabled=true"]
if ALERTS.exists() and CHART_ALERTS.exists():
    ALL_OPTIONS.append("prometheusRule.enabled=true")


@pytest.mark.parametrize(
    "sets",
    [[], GUIDE, GUIDE + ALL_OPTIONS, ["keda.enabled=true", "networkPolicy.enabled=false", "podDisruptionBudget.enabled=false"]],
    ids=["defaults", "guide", "guide+all-options", "keda-minimal"],
)
def test_every_rendered_manifest_validates_against_its_schema(sets):
    manifests = ct.render(sets)
    assert manifests
    for manifest in manifests:
        ct.validate(manifest)


@pytest.mark.parametrize("sets", [[], GUIDE], ids=["defaults", "guide"])
def test_helm_lint_strict_finds_nothing_above_info(sets):
    report = helm.lint(str(ct.CHART), ct.values_from_sets(sets), strict=True, kube_version="v1.27.0")
    assert report["errors"] == []
    assert [m for m in report["messages"] if m["severity"] > 1] == []


def test_the_validator_rejects_what_kubernetes_and_keda_would():
    manifests = ct.render(GUIDE)
    api = one(manifests, "Deployment", "mmt-api")
    api["spec"]["template"]["spec"]["containers"][0]["readOnlyRootFilesystem"] = True  # wrong level
    with pytest.raises(AssertionError, match="readOnlyRootFilesystem"):
        ct.validate(api)
    scaled = one(manifests, "ScaledObject", "mmt-worker")
    scaled["spec"]["triggers"][0]["metadata"]["mode"] = "Length"
    with pytest.raises(AssertionError, match="Length"):
        ct.validate(scaled)


# --- the guide's command, flag by flag -------------------------------------------


def test_env_ENV_prod_reaches_every_pod():
    before, after = envs(ct.render(without("env.ENV=prod") + ["env.ENV=staging"])), envs(ct.render(GUIDE))
    assert set(after) >= {"mmt-api/api", "mmt-worker/worker", "mmt-retention/retention"}
    assert all(e["ENV"] == "staging" for e in before.values())
    assert all(e["ENV"] == "prod" for e in after.values()), after


def test_env_AUDIT_LOG_FILE_sets_the_folder_of_the_volume_and_a_chain_per_pod():
    manifests = ct.render(GUIDE)
    for name, _, container in ct.containers(manifests):
        assert mounts(container)["audit"] == "/app/logs", name
        assert ct.literal_env(container)["AUDIT_LOG_FILE"] == "/app/logs/audit-mmt-pod-0.log"
    moved = ct.render(without("env.AUDIT_LOG_FILE=/app/logs/audit.log") + ["env.AUDIT_LOG_FILE=/var/log/mmt/trail.jsonl"])
    for _, _, container in ct.containers(moved):
        assert mounts(container)["audit"] == "/var/log/mmt"
        assert ct.literal_env(container)["AUDIT_LOG_FILE"] == "/var/log/mmt/trail-mmt-pod-0.jsonl"
    shared = ct.render(GUIDE + ["auditLogs.perPod=false"])
    assert all(ct.literal_env(c)["AUDIT_LOG_FILE"] == "/app/logs/audit.log" for _, _, c in ct.containers(shared))
    with pytest.raises(helm.HelmError, match="absolute"):
        ct.render(without("env.AUDIT_LOG_FILE=/app/logs/audit.log") + ["env.AUDIT_LOG_FILE=audit.log"])


@pytest.mark.parametrize("flag", [
    "env.WORKER_POOL_OPTIMIZATION_ENABLED=true",
])
def test_env_switches_reach_every_pod_as_strings(flag):
    key = flag.split("=")[0].removeprefix("env.")
    assert all(key not in e for e in envs(ct.render(without(flag))).values())
    assert all(e[key] == "true" for e in envs(ct.render(GUIDE)).values())


@pytest.mark.parametrize("flag,host_key,block", [
    ("env.EXTERNAL_RABBITMQ_ENABLED=true", "EXTERNAL_RABBITMQ_HOST", "rabbitmq"),
    ("env.EXTERNAL_REDIS_ENABLED=true", "EXTERNAL_REDIS_HOST", "redis"),
])
def test_external_service_switches(flag, host_key, block):
    key = flag.split("=")[0].removeprefix("env.")
    # Without a host in values and without the flag: no external service.
    bare = envs(ct.render(without(flag) + [f"{block}.host="]))
    assert all(key not in e and host_key not in e for e in bare.values())
    # The flag turns it on with the chart's host (the pair `mmt check` requires).
    on = envs(ct.render(GUIDE))
    assert all(e[key] == "true" and e[host_key].endswith(".example.org:" + str(5671 if block == "rabbitmq" else 6380)) for e in on.values())
    # An operator's explicit false wins over the chart's derived true.
    off = envs(ct.render(without(flag) + [f"env.{key}=false"]))
    assert all(e[key] == "false" for e in off.values())


def test_keda_enabled_renders_a_scaled_object_on_the_queue_length():
    before = ct.render(without("keda.enabled=true"))
    assert not by_kind(before, "ScaledObject")
    assert one(before, "Deployment", "mmt-worker")["spec"]["replicas"] == 2
    after = ct.render(GUIDE + ["keda.minReplicas=2", "keda.maxReplicas=7", "keda.pollingInterval=11", "keda.cooldownPeriod=99"])
    scaled = one(after, "ScaledObject", "mmt-worker")["spec"]
    assert scaled["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": "mmt-worker"}
    assert (scaled["minReplicaCount"], scaled["maxReplicaCount"], scaled["pollingInterval"], scaled["cooldownPeriod"]) == (2, 7, 11, 99)
    assert scaled["fallback"] == {"failureThreshold": 3, "replicas": 2}
    trigger = scaled["triggers"][0]
    assert trigger["type"] == "rabbitmq"
    assert trigger["metadata"] == {"protocol": "amqp", "queueName": "mmt.jobs", "mode": "QueueLength", "value": "20"}
    auth = one(after, "TriggerAuthentication", trigger["authenticationRef"]["name"])
    assert auth["spec"]["secretTargetRef"] == [{"parameter": "host", "name": "mmt-secrets", "key": "RABBITMQ_AMQP_URL"}]
    # KEDA owns the replica count: the Deployment leaves it unset.
    assert "replicas" not in one(after, "Deployment", "mmt-worker")["spec"]
    with pytest.raises(helm.HelmError, match="minReplicas"):
        ct.render(GUIDE + ["keda.minReplicas=5", "keda.maxReplicas=2"])


def test_retention_schedule_sets_the_cron_job():
    assert one(ct.render(without("retention.schedule=0 2 * * *")), "CronJob", "mmt-retention")["spec"]["schedule"] == "30 3 * * *"
    cron = one(ct.render(GUIDE), "CronJob", "mmt-retention")["spec"]
    assert cron["schedule"] == "0 2 * * *"
    assert cron["concurrencyPolicy"] == "Forbid"
    container = cron["jobTemplate"]["spec"]["template"]["spec"]["containers"][0]
    assert container["args"][:2] == ["retention", "purge"]
    assert ct.literal_env(container)["RETENTION_DAYS"] == "30"
    with pytest.raises(helm.HelmError, match="schedule"):
        ct.render(without("retention.schedule=0 2 * * *") + ["retention.schedule=every night"])


def test_audit_logs_enabled_renders_the_claim_and_mounts_it_everywhere():
    before = ct.render(without("auditLogs.enabled=true") + ["env.ENV=staging"])
    assert not by_kind(before, "PersistentVolumeClaim")
    assert all("audit" not in mounts(c) for _, _, c in ct.containers(before))
    after = ct.render(GUIDE)
    claim = one(after, "PersistentVolumeClaim", "mmt-audit")
    assert claim["spec"]["accessModes"] == ["ReadWriteMany"]
    assert claim["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep"
    for name, pod, container in ct.containers(after):
        volumes = {v["name"]: v for v in pod["volumes"]}
        assert volumes["audit"]["persistentVolumeClaim"]["claimName"] == "mmt-audit", name
        assert "audit" in mounts(container)


def test_tls_enabled_mounts_the_secret_and_points_the_server_at_it():
    before = ct.render(without("tls.enabled=true") + ["env.ENV=staging"])
    assert all("SSL_CERT_FILE" not in e for e in envs(before).values())
    after = ct.render(GUIDE)
    for name, pod, container in ct.containers(after):
        volumes = {v["name"]: v for v in pod["volumes"]}
        assert volumes["tls"]["secret"]["secretName"] == "mmt-tls", name
        assert mounts(container)["tls"] == "/app/certs"
        assert next(m for m in container["volumeMounts"] if m["name"] == "tls")["readOnly"] is True
        env = ct.literal_env(container)
        assert (env["SSL_CERT_FILE"], env["SSL_KEY_FILE"], env["ENFORCE_TLS_IN_PRODUCTION"]) == ("/app/certs/tls.crt", "/app/certs/tls.key", "true")
    api = one(after, "Deployment", "mmt-api")["spec"]["template"]["spec"]["containers"][0]
    assert api["readinessProbe"]["httpGet"]["scheme"] == "HTTPS"


def test_prod_without_tls_fails_with_a_clear_message():
    with pytest.raises(helm.HelmError, match=r"env.ENV=prod requires tls.enabled=true"):
        ct.render(GUIDE + ["tls.enabled=false"])


def test_the_keyring_secret_is_mounted_read_only_and_named_by_mmt_encryption_keys():
    for name, pod, container in ct.containers(ct.render(GUIDE)):
        volumes = {v["name"]: v for v in pod["volumes"]}
        secret = volumes["keyring"]["secret"]
        # Group-readable (fsGroup) is what a non-root pod can read; mmt refuses other-readable.
        assert (secret["secretName"], secret["defaultMode"]) == ("mmt-keyring", 0o440), name
        mount = next(m for m in container["volumeMounts"] if m["name"] == "keyring")
        assert (mount["mountPath"], mount["readOnly"]) == ("/app/keys", True), name
        assert ct.literal_env(container)["MMT_ENCRYPTION_KEYS"] == "/app/keys/keyring.json", name
    off = ct.render(GUIDE + ["env.ENV=staging", "encryption.enabled=false"])
    assert all("MMT_ENCRYPTION_KEYS" not in e for e in envs(off).values())


def test_a_vault_transit_key_replaces_the_keyring():
    transit = GUIDE + [
        "encryption.enabled=false", "encryption.transitKey=mmt-records", "vault.enabled=true",
        "vault.databaseSecretPath=mmt/database",
    ]
    for name, pod, container in ct.containers(ct.render(transit)):
        env = ct.literal_env(container)
        assert (env["MMT_VAULT_TRANSIT_KEY"], env["MMT_VAULT_TRANSIT_MOUNT"]) == ("mmt-records", "transit"), name
        assert env["MMT_VAULT_DATABASE_SECRET_PATH"] == "mmt/database", name
        assert "MMT_ENCRYPTION_KEYS" not in env, name
        assert "keyring" not in {v["name"] for v in pod["volumes"]}, name
    with pytest.raises(helm.HelmError, match=r"choose one"):
        ct.render(GUIDE + ["encryption.transitKey=mmt-records", "vault.enabled=true"])
    with pytest.raises(helm.HelmError, match=r"needs vault.enabled=true"):
        ct.render(GUIDE + ["encryption.enabled=false", "encryption.transitKey=mmt-records"])


def test_prod_without_encryption_fails_with_a_clear_message():
    with pytest.raises(helm.HelmError, match=r"env.ENV=prod requires encryption.enabled=true"):
        ct.render(GUIDE + ["encryption.enabled=false"])


def test_prod_without_the_audit_volume_fails_with_a_clear_message():
    with pytest.raises(helm.HelmError, match=r"env.ENV=prod requires auditLogs.enabled=true"):
        ct.render(GUIDE + ["auditLogs.enabled=false"])


# --- the pods -----------------------------------------------------------------


def test_api_and_workers_run_the_documented_commands():
    manifests = ct.render(GUIDE)
    api = one(manifests, "Deployment", "mmt-api")["spec"]["template"]["spec"]["containers"][0]
    assert api["args"][:3] == ["serve", "--intake", "rabbitmq"]
    assert api["args"][api["args"].index("--listen") + 1] == "0.0.0.0:8080"
    worker = one(manifests, "Deployment", "mmt-worker")["spec"]["template"]["spec"]["containers"][0]
    assert worker["args"][:3] == ["run", "--source", "rabbitmq"]
    dlq = one(manifests, "CronJob", "mmt-dlq-reprocessor")["spec"]["jobTemplate"]["spec"]["template"]["spec"]["containers"][0]
    assert dlq["args"] == ["dlq", "reprocess", "--out", "/var/lib/mmt"]


def test_probes_hit_healthz_and_readyz():
    api = one(ct.render([]), "Deployment", "mmt-api")["spec"]["template"]["spec"]["containers"][0]
    assert api["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert api["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert api["readinessProbe"]["httpGet"]["scheme"] == "HTTP"


@pytest.mark.parametrize("sets", [[], GUIDE], ids=["defaults", "guide"])
def test_every_pod_and_container_is_restricted(sets):
    manifests = ct.render(sets + ["vault.enabled=true"])
    assert len(ct.containers(manifests)) == 4
    for name, pod, container in ct.containers(manifests):
        assert pod["securityContext"]["runAsNonRoot"] is True, name
        assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
        assert pod["automountServiceAccountToken"] is False
        sc = container["securityContext"]
        assert sc["runAsNonRoot"] is True and sc["runAsUser"] != 0, name
        assert sc["readOnlyRootFilesystem"] is True
        assert sc["allowPrivilegeEscalation"] is False
        assert sc["capabilities"] == {"drop": ["ALL"]}
        assert sc["seccompProfile"] == {"type": "RuntimeDefault"}
        # The read-only root filesystem needs writable scratch space.
        assert mounts(container)["tmp"] == "/tmp"


def _bytes(quantity: str) -> float:
    number, unit = re.fullmatch(r"([0-9.]+)([KMGT]i?)?", quantity).groups()
    scale = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "K": 1e3, "M": 1e6, "G": 1e9, None: 1}[unit]
    return float(number) * scale


def test_memory_is_sized_from_the_measured_rss():
    manifests = ct.render(GUIDE)
    api = one(manifests, "Deployment", "mmt-api")["spec"]["template"]["spec"]["containers"][0]["resources"]
    worker = one(manifests, "Deployment", "mmt-worker")["spec"]["template"]["spec"]["containers"][0]["resources"]
    # mmt serve under load: median 523 MiB, max 797 MiB.
    assert _bytes(api["requests"]["memory"]) >= 523 * 2**20
    assert _bytes(api["limits"]["memory"]) >= 797 * 2**20 * 1.2
    # mmt run, 2 workers, batch 8, long recordings: peak 441-644 MB.
    assert _bytes(worker["requests"]["memory"]) >= 644e6
    assert _bytes(worker["limits"]["memory"]) >= 644e6 * 1.5
    for name, _, container in ct.containers(manifests):
        assert {"requests", "limits"} <= set(container["resources"]), name


def test_network_policy_and_disruption_budgets():
    manifests = ct.render(GUIDE + ["vault.enabled=true"])
    internal = one(manifests, "NetworkPolicy", "mmt-internal")["spec"]
    assert internal["ingress"] == []
    ports = {p["port"] for rule in internal["egress"] for p in rule.get("ports", [])}
    assert ports == {53, 5671, 6380, 5432, 8200}
    api = one(manifests, "NetworkPolicy", "mmt-api")["spec"]
    assert api["ingress"][0]["ports"] == [{"port": 8080, "protocol": "TCP"}]
    assert one(manifests, "PodDisruptionBudget", "mmt-api")["spec"]["minAvailable"] == 1
    assert one(manifests, "PodDisruptionBudget", "mmt-worker")["spec"]["maxUnavailable"] == 1


def test_service_monitor_scrapes_the_api_metrics_over_tls():
    monitor = one(ct.render(GUIDE + ["serviceMonitor.enabled=true"]), "ServiceMonitor", "mmt-api")["spec"]
    assert monitor["endpoints"] == [{"port": "http", "path": "/metrics", "interval": "30s", "scheme": "https",
                                     "tlsConfig": {"serverName": "mmt-api.mmt.svc"}}]


@pytest.mark.parametrize("bad", ["keda.minReplicas=x", "bogus=1", "env.ENV=production", "auditLogs.size=lots", "api.resources.requests=null"])
def test_values_schema_refuses_bad_values(bad):
    with pytest.raises(helm.HelmValuesError):
        ct.render([bad])


def test_the_guide_path_helm_mmt_is_the_chart():
    link = ct.ROOT / "helm"
    assert link.is_symlink() and (link / "mmt" / "Chart.yaml").resolve() == (ct.CHART / "Chart.yaml").resolve()
    assert yaml.safe_load((link / "mmt" / "Chart.yaml").read_text())["name"] == "mmt"


# --- alerts and runbooks --------------------------------------------------------


def test_prometheus_rule_is_the_repository_alerts_file():
    if not ALERTS.exists():
        pytest.skip("alerts/alerts_prometheus.yml is absent (the alerts branch is not merged here): nothing to compare")
    assert CHART_ALERTS.exists(), "deploy/helm/mmt/files/alerts_prometheus.yml is missing: run `make chart-alerts` and commit it"
    assert CHART_ALERTS.read_bytes() == ALERTS.read_bytes(), (
        "the chart's copy of the alert rules differs from alerts/alerts_prometheus.yml: run `make chart-alerts` and commit it")
    rule = one(ct.render(GUIDE + ["prometheusRule.enabled=true"]), "PrometheusRule", "mmt")
    assert rule["spec"]["groups"] == yaml.safe_load(ALERTS.read_text())["groups"]
    ct.validate(rule)


def test_prometheus_rule_without_the_alerts_copy_fails_clearly():
    if CHART_ALERTS.exists():
        pytest.skip("the chart has its copy of the alert rules")
    with pytest.raises(helm.HelmError, match="make chart-alerts"):
        ct.render(["prometheusRule.enabled=true"])


def test_every_alert_has_a_runbook_entry():
    names = set(ALERT_NAMES)
    if ALERTS.exists():
        names |= {r["alert"] for g in yaml.safe_load(ALERTS.read_text())["groups"] for r in g.get("rules", []) if "alert" in r}
        # Each rule links to its runbook anchor in docs/operations.md.
    headings = re.findall(r"^### (\w+)$", (ct.ROOT / "docs" / "operations.md").read_text(), re.M)
    missing = sorted(names - set(headings))
    assert not missing, f"docs/operations.md has no runbook heading (### Name, anchor #name) for {missing}"


# --- production validation --------------------------------------------------------


def test_mmt_check_accepts_the_production_environment_of_every_pod():
    mmt = Path(os.environ.get("MMT_BIN", ct.ROOT / "target" / "release" / "mmt"))
    if not mmt.exists():
        pytest.skip(f"{mmt} is not built (make setup builds it; MMT_BIN names another)")
    results = ct.prod_check(mmt, GUIDE, ct.ROOT / "models" / "tiny.en", ct.default_ort_lib())
    assert len(results) == 4
    for name, code, output in results:
        assert code == 0, f"ENV=prod mmt check refused {name}:\n{output}"
        assert re.search(r"ENV=prod: 0 fatal", output), output
        # Every variable the chart sets is one MMT reads (no typo in a name).
        assert "is not a variable MMT reads" not in output, output


def test_the_chart_and_the_image_agree_on_paths_and_user():
    dockerfile = (ct.ROOT / "Dockerfile").read_text()
    runtime = dockerfile[dockerfile.rindex("\nFROM "):]
    assert re.search(r"^USER 10001:10001$", runtime, re.M), "the runtime stage must end as uid 10001"
    env = ct.literal_env(one(ct.render(GUIDE), "Deployment", "mmt-worker")["spec"]["template"]["spec"]["containers"][0])
    for name in ("MMT_MODEL_DIR", "ORT_DYLIB_PATH"):
        assert f"{name}={env[name]}" in runtime, name
    assert f"COPY --from=model /out/model {env['MMT_MODEL_DIR']}" in runtime
    assert f"COPY --from=model /out/libonnxruntime.so.1.31.1 {env['ORT_DYLIB_PATH']}" in runtime
    pod = one(ct.render(GUIDE), "Deployment", "mmt-api")["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsUser"] == 10001


def test_a_private_ca_can_be_mounted_for_the_broker():
    manifests = ct.render(GUIDE + [
        "extraVolumes[0].name=ca", "extraVolumes[0].configMap.name=hospital-ca",
        "extraVolumeMounts[0].name=ca", "extraVolumeMounts[0].mountPath=/etc/mmt/ca", "extraVolumeMounts[0].readOnly=true",
        "env.MMT_RABBITMQ_TLS_CA_FILE=/etc/mmt/ca/ca.crt",
    ])
    for name, pod, container in ct.containers(manifests):
        assert {"name": "ca", "configMap": {"name": "hospital-ca"}} in pod["volumes"], name
        assert mounts(container)["ca"] == "/etc/mmt/ca"
        assert ct.literal_env(container)["MMT_RABBITMQ_TLS_CA_FILE"] == "/etc/mmt/ca/ca.crt"
    for manifest in manifests:
        ct.validate(manifest)


def test_the_documented_command_carries_every_flag_tested_here():
    doc = (ct.ROOT / "docs" / "operations.md").read_text()
    command = re.search(r"helm upgrade --install mmt \./helm/mmt.*?(?=\n```)", doc, re.S).group(0)
    flags = []
    for line in command.replace("\\\n", "\n").splitlines():
        for part in line.split("--set ")[1:]:
            flags.append(part.strip().replace('"', ""))
    for flag in GUIDE:
        assert flag in flags, f"docs/operations.md's helm command lacks --set {flag}: {flags}"


def test_the_runtime_stage_installs_every_library_the_binary_and_onnx_runtime_link():
    """ldd of the binary and of libonnxruntime here (the same Debian release as the
    image's base): each library must come from a package of the runtime stage's
    apt-get line or from debian:bookworm-slim itself."""
    mmt = Path(os.environ.get("MMT_BIN", ct.ROOT / "target" / "release" / "mmt"))
    if not mmt.exists() or not ct.default_ort_lib().exists():
        pytest.skip("needs target/release/mmt and ONNX Runtime (make setup)")
    dockerfile = (ct.ROOT / "Dockerfile").read_text()
    runtime = dockerfile[dockerfile.rindex("\nFROM "):]
    installed = set(re.search(r"apt-get install -y --no-install-recommends ([^\\\n&]+)", runtime).group(1).split())
    in_slim_base = {"libc6", "libgcc-s1", "libstdc++6"}
    ldd = subprocess.run(["ldd", str(mmt), str(ct.default_ort_lib())], capture_output=True, text=True, check=True).stdout
    assert "not found" not in ldd, ldd
    for library in sorted(set(re.findall(r"=> (/\S+)", ldd))):
        owner = None
        for path in (library, os.path.realpath(library)):
            found = subprocess.run(["dpkg", "-S", path], capture_output=True, text=True)
            if found.returncode == 0:
                owner = found.stdout.split(":")[0]
                break
        assert owner, f"{library}: no Debian package owns it"
        assert owner in installed | in_slim_base, f"{library} comes from {owner}, which the runtime stage does not install"


def test_the_binary_accepts_every_command_line_the_chart_renders():
    mmt = Path(os.environ.get("MMT_BIN", ct.ROOT / "target" / "release" / "mmt"))
    if not mmt.exists():
        pytest.skip(f"{mmt} is not built (make setup builds it; MMT_BIN names another)")
    manifests = ct.render(GUIDE)
    checked = 0
    for name, _, container in ct.containers(manifests):
        # clap refuses an unknown subcommand or flag before it gets to --help.
        proc = subprocess.run([str(mmt), *container["args"], "--help"], capture_output=True, text=True, timeout=30)
        if proc.returncode != 0 and "unrecognized subcommand 'dlq'" in proc.stderr:
            print(f"SKIP {name}: this build has no `mmt dlq` (the DLQ reprocessor branch is not merged)")
            continue
        assert proc.returncode == 0, f"{name}: mmt {' '.join(container['args'])}: {proc.stderr}"
        checked += 1
    assert checked >= 3
