"""The Helm chart (charts/iron-proxy), tested with Helm's own code.

Helm's Go SDK (through helm-python-sdk's C ABI) lints and renders the chart;
kubernetes-validate checks every rendered manifest against the Kubernetes
OpenAPI schemas; the rendered iron-proxy.toml is checked by the real proxy
(`iron-proxy check`, then `iron-proxy run`) when the binaries are built.

Run with `.ci/chart`, or `pytest tests/chart` inside a venv holding
tests/chart/requirements.txt.
"""

from __future__ import annotations

import copy
import json
import os
import re
import shutil
import signal
import subprocess
import time
import urllib.request
from pathlib import Path

import helm_python as helm
import kubernetes_validate
import pytest
import yaml

try:
    import tomllib
except ImportError:  # Python < 3.11
    import tomli as tomllib

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "charts" / "iron-proxy"
RELEASE = "iron-proxy"
NAMESPACE = "iron-proxy"
# The oldest Kubernetes the chart supports (Chart.yaml kubeVersion) and the
# version Helm renders for by default.
KUBE_VERSIONS = ["1.30.0", "1.36.0"]

DEFAULTS = yaml.safe_load((CHART / "values.yaml").read_text())

# --- value sets --------------------------------------------------------------

# NetworkPolicy (both), ServiceMonitor, 3 replicas, more allow rules and
# credentials, other Secret names and keys, CA rotation in progress, a
# longer drain, extra roots, the agent example in another namespace.
FULL = {
    "replicaCount": 3,
    "ca": {
        "existingSecret": "corp-proxy-ca",
        "certKey": "tls.crt",
        "keyKey": "tls.key",
        "extraTrustKeys": ["next.crt"],
    },
    "credentials": {"existingSecret": "corp-agent-credentials"},
    "admin": {"existingSecret": "corp-proxy-admin", "tokenKey": "bearer"},
    "config": {
        "upstream": {
            "resolve": {"git.internal.example": "10.20.0.7"},
            "extra_roots": ["/etc/iron-proxy-roots/internal.pem"],
        },
        "limits": {"drain_timeout": "1m30s", "max_connections": 1000000},
        "allow": DEFAULTS["config"]["allow"]
        + [
            {"host": "git.internal.example", "ports": [8443]},
            {"host": "registry.npmjs.org", "ports": [443]},
            {"host": "*.pythonhosted.org"},
        ],
        "credential": DEFAULTS["config"]["credential"]
        + [
            {
                "name": "npm-token",
                "stub": "npm-token-stub",
                "hosts": ["registry.npmjs.org"],
                "headers": ["authorization"],
                "require": True,
            },
            {
                "name": "internal_git.pat",
                "stub": "internal-git-stub",
                "hosts": ["git.internal.example"],
                "allow_plaintext": False,
                "require": True,
            },
        ],
    },
    "extraVolumes": [{"name": "roots", "configMap": {"name": "internal-roots"}}],
    "extraVolumeMounts": [
        {"name": "roots", "mountPath": "/etc/iron-proxy-roots", "readOnly": True}
    ],
    "extraEnv": [{"name": "RUST_LOG", "value": "info,iron_proxy=debug"}],
    "metrics": {"serviceMonitor": {"enabled": True, "labels": {"release": "prometheus"}}},
    "networkPolicy": {
        "enabled": True,
        "agentNamespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "agents"}},
        "adminFrom": [
            {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}}
        ],
        "admitAgentsToAdmin": True,
        "extraEgressPorts": [{"port": 9418, "protocol": "TCP"}],
        "agentEgress": {"enabled": True, "namespace": "agents"},
    },
    "podDisruptionBudget": {"minAvailable": 2},
    "agentExample": {"enabled": True, "namespace": "agents"},
}

# Credentials on a writable emptyDir, no admin token, no roll on config
# change, no preStop sleep, an explicit grace period, the agent example
# taking its CA from a ConfigMap, the NetworkPolicy with its defaults.
WRITABLE = {
    "credentials": {"writable": {"enabled": True}},
    "admin": {"existingSecret": ""},
    "rollOnConfigChange": False,
    "preStopSleepSeconds": 0,
    "terminationGracePeriodSeconds": 40,
    "networkPolicy": {"enabled": True},
    "agentExample": {"enabled": True, "caConfigMap": "iron-proxy-ca-bundle"},
}

VALUE_SETS = {"default": {}, "full": FULL, "writable": WRITABLE}


def merged(values: dict) -> dict:
    """The values Helm would use (defaults coalesced with overrides)."""
    with helm.Chart.load(CHART) as chart:
        return chart.merge_values(values)


# --- rendering ---------------------------------------------------------------


class UniqueKeyLoader(yaml.SafeLoader):
    """YAML loader that refuses duplicate keys, as the API server does."""

    def construct_mapping(self, node, deep=False):
        seen = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"duplicate key {key!r}", key_node.start_mark
                )
            seen.add(key)
        return super().construct_mapping(node, deep)


def render(values: dict, namespace: str = NAMESPACE) -> dict[str, str]:
    with helm.Chart.load(CHART) as chart:
        return chart.render(values, name=RELEASE, namespace=namespace, is_install=True)


def manifests(values: dict) -> list[dict]:
    docs = []
    for path, text in render(values).items():
        if path.endswith("NOTES.txt"):
            continue
        for doc in yaml.load_all(text, Loader=UniqueKeyLoader):
            if doc:
                doc.setdefault("metadata", {}).setdefault("namespace", NAMESPACE)
                docs.append(doc)
    return docs


def one(docs: list[dict], kind: str, name: str | None = None) -> dict:
    found = [d for d in docs if d["kind"] == kind and (name is None or d["metadata"]["name"] == name)]
    assert len(found) == 1, f"expected one {kind} {name or ''}, found {len(found)}"
    return found[0]


def kinds(docs: list[dict]) -> list[str]:
    return sorted(d["kind"] for d in docs)


def proxy_deployment(docs: list[dict]) -> dict:
    return one(docs, "Deployment", RELEASE)


def proxy_container(docs: list[dict]) -> dict:
    (c,) = [c for c in proxy_deployment(docs)["spec"]["template"]["spec"]["containers"] if c["name"] == "iron-proxy"]
    return c


def rendered_toml(docs: list[dict]) -> str:
    return one(docs, "ConfigMap", RELEASE)["data"]["iron-proxy.toml"]


def seconds(duration: str) -> float:
    units = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400}
    return sum(int(n) * units[u] for n, u in re.findall(r"(\d+)\s*(ms|s|m|h|d)", duration))


@pytest.fixture(scope="module", params=list(VALUE_SETS), ids=list(VALUE_SETS))
def case(request):
    values = VALUE_SETS[request.param]
    return request.param, values, merged(values), manifests(values)


# --- Helm: lint and schema ---------------------------------------------------


@pytest.mark.parametrize("name", list(VALUE_SETS))
@pytest.mark.parametrize("kube", ["v" + v for v in KUBE_VERSIONS])
def test_helm_lint_passes(name, kube):
    report = helm.lint(CHART, VALUE_SETS[name], strict=True, namespace=NAMESPACE, kube_version=kube)
    assert report["errors"] == [], report
    serious = [m for m in report["messages"] if m["severity"] >= 2]
    assert serious == [], serious


@pytest.mark.parametrize(
    "bad, why",
    [
        # A real value has nowhere to go in values: the schema refuses it.
        ({"config": {"credential": [{"name": "x", "stub": "s", "hosts": ["a"], "value": "sk-real"}]}}, "value"),
        ({"config": {"credential": [{"name": "x", "stub": "s", "hosts": ["a"], "source": {"env": "X"}}]}}, "source"),
        # Keys the chart owns, or that do not exist (typos).
        ({"config": {"ca": {"generate_if_missing": True}}}, "generate_if_missing"),
        ({"config": {"limits": {"max_conections": 10}}}, "max_conections"),
        ({"config": {"listen": {"proxy": "0.0.0.0:1"}}}, "listen"),
        ({"replicacount": 2}, "replicacount"),
        # A credential name must be a usable Secret key.
        ({"config": {"credential": [{"name": "a/b", "stub": "s", "hosts": ["a"]}]}}, "name"),
        # A bare number is not a duration.
        ({"config": {"limits": {"drain_timeout": 30}}}, "drain_timeout"),
    ],
)
def test_values_schema_refuses(bad, why):
    with pytest.raises(helm.HelmValuesError) as e:
        render(bad)
    assert why in str(e.value)


def test_grace_period_below_the_drain_is_refused():
    with pytest.raises(helm.HelmRenderError, match="terminationGracePeriodSeconds"):
        render({"terminationGracePeriodSeconds": 30})
    with pytest.raises(helm.HelmRenderError, match="terminationGracePeriodSeconds"):
        render({"config": {"limits": {"drain_timeout": "2m"}}, "terminationGracePeriodSeconds": 100})


# --- Kubernetes schemas ------------------------------------------------------


@pytest.mark.parametrize("kube", KUBE_VERSIONS)
def test_every_manifest_validates_against_kubernetes(case, kube):
    _, _, _, docs = case
    assert docs
    for doc in docs:
        if doc["apiVersion"].startswith("monitoring.coreos.com/"):
            # A CRD: kubernetes-validate has no schema for it (checked below).
            continue
        kubernetes_validate.validate(doc, kube, strict=True)


def test_kinds_per_value_set():
    assert kinds(manifests({})) == sorted(
        ["ConfigMap", "Deployment", "PodDisruptionBudget", "Service", "Service", "ServiceAccount"]
    )
    assert kinds(manifests(FULL)) == sorted(
        [
            "ConfigMap",
            "Deployment",
            "Deployment",  # the agent example
            "NetworkPolicy",
            "NetworkPolicy",  # the agents' egress
            "PodDisruptionBudget",
            "Service",
            "Service",
            "ServiceAccount",
            "ServiceMonitor",
        ]
    )


def test_the_chart_creates_no_secret(case):
    _, _, _, docs = case
    assert "Secret" not in kinds(docs)
    for doc in docs:
        if doc["kind"] != "ConfigMap":
            assert "data" not in doc and "stringData" not in doc, doc["kind"]


# --- Deployment --------------------------------------------------------------


def test_container_runs_the_proxy_on_the_rendered_config(case):
    _, _, v, docs = case
    c = proxy_container(docs)
    assert c["image"] == f"{v['image']['repository']}:{v['image']['tag'] or '0.1.0'}"
    assert c["command"] == ["iron-proxy"]
    assert c["args"] == ["run", "--config", "/etc/iron-proxy/iron-proxy.toml", "--log-format", "json"]
    ports = {p["name"]: p["containerPort"] for p in c["ports"]}
    assert ports == {"proxy": 8080, "admin": 9090}
    cfg = tomllib.loads(rendered_toml(docs))
    assert cfg["listen"] == {"proxy": "0.0.0.0:8080", "admin": "0.0.0.0:9090"}


def test_secrets_are_mounted_under_the_names_from_values(case):
    name, _, v, docs = case
    pod = proxy_deployment(docs)["spec"]["template"]["spec"]
    volumes = {vol["name"]: vol for vol in pod["volumes"]}
    mounts = {m["mountPath"]: m for m in proxy_container(docs)["volumeMounts"]}

    assert volumes["config"]["configMap"]["name"] == RELEASE
    assert mounts["/etc/iron-proxy"]["name"] == "config" and mounts["/etc/iron-proxy"]["readOnly"]

    assert volumes["ca"]["secret"]["secretName"] == v["ca"]["existingSecret"]
    assert mounts["/etc/iron-proxy/ca"]["name"] == "ca" and mounts["/etc/iron-proxy/ca"]["readOnly"]

    creds = mounts["/etc/iron-proxy/credentials"]
    assert creds["name"] == "credentials"
    if v["credentials"]["writable"]["enabled"]:
        assert creds["readOnly"] is False
        assert "emptyDir" in volumes["credentials"]
        assert volumes["credentials-secret"]["secret"]["secretName"] == v["credentials"]["existingSecret"]
        # The proxy itself never sees the Secret, only the copy.
        assert all(m["name"] != "credentials-secret" for m in mounts.values())
    else:
        assert creds["readOnly"] is True
        assert volumes["credentials"]["secret"]["secretName"] == v["credentials"]["existingSecret"]
        assert "credentials-secret" not in volumes

    if v["admin"]["existingSecret"]:
        assert volumes["admin-token"]["secret"]["secretName"] == v["admin"]["existingSecret"]
        assert mounts["/etc/iron-proxy/admin"]["readOnly"]
    else:
        assert "admin-token" not in volumes and "/etc/iron-proxy/admin" not in mounts

    for vol in volumes.values():
        if "secret" in vol:
            assert vol["secret"]["defaultMode"] == 0o440
    # The group the Secret files are readable by is the proxy's.
    assert pod["securityContext"]["fsGroup"] == pod["securityContext"]["runAsGroup"]


def test_config_paths_match_the_mounts(case):
    _, _, v, docs = case
    cfg = tomllib.loads(rendered_toml(docs))
    assert cfg["ca"]["cert"] == f"/etc/iron-proxy/ca/{v['ca']['certKey']}"
    assert cfg["ca"]["key"] == f"/etc/iron-proxy/ca/{v['ca']['keyKey']}"
    assert cfg["ca"]["generate_if_missing"] is False
    assert cfg["ca"]["extra_trust"] == [f"/etc/iron-proxy/ca/{k}" for k in v["ca"]["extraTrustKeys"]]
    if v["admin"]["existingSecret"]:
        assert cfg["admin"] == {"token_file": f"/etc/iron-proxy/admin/{v['admin']['tokenKey']}"}
    else:
        assert "admin" not in cfg


def test_probes_hit_healthz_and_readyz_on_the_admin_port(case):
    _, _, _, docs = case
    c = proxy_container(docs)
    assert c["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "admin"}
    assert c["startupProbe"]["httpGet"] == {"path": "/healthz", "port": "admin"}
    assert c["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "admin"}


def test_security_context(case):
    _, _, _, docs = case
    pod = proxy_deployment(docs)["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] != 0
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    assert pod["automountServiceAccountToken"] is False
    for c in pod["containers"] + pod.get("initContainers", []):
        sc = c["securityContext"]
        assert sc["runAsNonRoot"] is True and sc["runAsUser"] != 0, c["name"]
        assert sc["readOnlyRootFilesystem"] is True, c["name"]
        assert sc["allowPrivilegeEscalation"] is False, c["name"]
        assert sc["capabilities"] == {"drop": ["ALL"]}, c["name"]
        assert sc["seccompProfile"] == {"type": "RuntimeDefault"}, c["name"]
        assert c["resources"]["requests"] and c["resources"]["limits"], c["name"]


def test_grace_period_exceeds_the_drain(case):
    _, values, v, docs = case
    pod = proxy_deployment(docs)["spec"]["template"]["spec"]
    drain = seconds(v["config"]["limits"]["drain_timeout"])
    pre_stop = v["preStopSleepSeconds"]
    grace = pod["terminationGracePeriodSeconds"]
    assert grace > drain + pre_stop
    if values.get("terminationGracePeriodSeconds"):
        assert grace == values["terminationGracePeriodSeconds"]
    lifecycle = proxy_container(docs).get("lifecycle")
    if pre_stop:
        assert lifecycle == {"preStop": {"sleep": {"seconds": pre_stop}}}
    else:
        assert lifecycle is None


def test_checksum_annotation_follows_the_config():
    def checksum(values):
        ann = proxy_deployment(manifests(values))["spec"]["template"]["metadata"].get("annotations", {})
        return ann.get("checksum/config")

    base = checksum({})
    assert re.fullmatch(r"[0-9a-f]{64}", base)
    assert checksum({"replicaCount": 2}) == base
    assert checksum({"config": {"limits": {"idle_timeout": "60s"}}}) != base
    assert checksum({"rollOnConfigChange": False}) is None


def test_replicas_strategy_and_pdb(case):
    _, _, v, docs = case
    dep = proxy_deployment(docs)
    assert dep["spec"]["replicas"] == v["replicaCount"]
    assert dep["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"] == 0
    pdb = one(docs, "PodDisruptionBudget")
    assert pdb["spec"]["selector"]["matchLabels"] == dep["spec"]["selector"]["matchLabels"]
    if v["podDisruptionBudget"].get("minAvailable") is not None:
        assert pdb["spec"] == {**pdb["spec"], "minAvailable": v["podDisruptionBudget"]["minAvailable"]}
        assert "maxUnavailable" not in pdb["spec"]
    else:
        assert pdb["spec"]["maxUnavailable"] == 1


def test_writable_credentials_are_seeded_by_an_init_container():
    docs = manifests(WRITABLE)
    pod = proxy_deployment(docs)["spec"]["template"]["spec"]
    (init,) = pod["initContainers"]
    mounts = {m["name"]: m for m in init["volumeMounts"]}
    assert mounts["credentials-secret"]["readOnly"] is True
    src, dst = mounts["credentials-secret"]["mountPath"], mounts["credentials"]["mountPath"]
    script = init["command"][-1]
    assert f"{src}/*" in script and f"cp -L" in script and f"{dst}/$n" in script
    # Real tokens stay off the node's disk, as they do in a Secret volume.
    assert {v["name"]: v for v in pod["volumes"]}["credentials"]["emptyDir"]["medium"] == "Memory"
    # Without the writable mode there is no init container at all.
    assert "initContainers" not in proxy_deployment(manifests({}))["spec"]["template"]["spec"]


def test_writable_init_script_copies_and_keeps_dotfiles_out(tmp_path):
    """Runs the rendered script with /secret and /credentials redirected."""
    docs = manifests(WRITABLE)
    (init,) = proxy_deployment(docs)["spec"]["template"]["spec"]["initContainers"]
    secret, creds = tmp_path / "secret", tmp_path / "credentials"
    data = secret / "..2026_11_21_data"
    data.mkdir(parents=True)
    creds.mkdir()
    for name in ("claude-oauth-access", "github-pat"):
        (data / name).write_text(f"value-of-{name}\n")
        (secret / name).symlink_to(f"..2026_11_21_data/{name}")
    (secret / "..data").symlink_to("..2026_11_21_data")
    script = init["command"][-1].replace("/secret", str(secret)).replace("/credentials", str(creds))
    subprocess.run(["sh", "-c", script], check=True)
    assert sorted(p.name for p in creds.iterdir()) == ["claude-oauth-access", "github-pat"]
    for p in creds.iterdir():
        assert not p.is_symlink() and p.stat().st_mode & 0o777 == 0o600
        assert p.read_text() == f"value-of-{p.name}\n"


# --- ConfigMap: metadata only ------------------------------------------------


CREDENTIAL_KEYS = {"name", "stub", "source", "hosts", "headers", "allow_plaintext", "require"}


def test_configmap_holds_no_secret_value(case):
    _, _, v, docs = case
    cm = one(docs, "ConfigMap", RELEASE)
    assert list(cm["data"]) == ["iron-proxy.toml"]
    cfg = tomllib.loads(cm["data"]["iron-proxy.toml"])
    assert [c["name"] for c in cfg["credential"]] == [c["name"] for c in v["config"]["credential"]]
    for cred in cfg["credential"]:
        assert set(cred) <= CREDENTIAL_KEYS, cred
        # Every real value is a file of the credentials Secret, named after
        # the credential: never inline, never an environment variable.
        assert cred["source"] == {"file": f"/etc/iron-proxy/credentials/{cred['name']}"}
    # Values carry stubs only: each stub is the one from values.
    stubs = {c["name"]: c["stub"] for c in v["config"]["credential"]}
    assert {c["name"]: c["stub"] for c in cfg["credential"]} == stubs
    # Nothing but paths under the mounts where a secret could be.
    if "admin" in cfg:
        assert set(cfg["admin"]) == {"token_file"}


def test_rendered_toml_carries_the_values(case):
    _, _, v, docs = case
    cfg = tomllib.loads(rendered_toml(docs))
    c = v["config"]
    assert cfg["allow"] == [{k: r[k] for k in ("host", "ports") if k in r} for r in c["allow"]]
    assert cfg["limits"] == c["limits"]
    assert cfg["reload"] == c["reload"]
    assert cfg["oauth_refresh"] == c["oauth_refresh"]
    upstream = {k: val for k, val in c["upstream"].items() if not (k == "resolve" and not val)}
    assert cfg["upstream"] == upstream
    assert cfg["ca"]["leaf_validity"] == c["ca"]["leaf_validity"]
    for want, got in zip(c["credential"], cfg["credential"]):
        for key in ("hosts", "headers", "allow_plaintext", "require"):
            assert got.get(key) == want.get(key), (want["name"], key)


def test_toml_strings_are_escaped():
    values = {
        "config": {
            "allow": [{"host": 'we"ird\\host', "ports": [443]}],
            "credential": [{"name": "c", "stub": 'st"ub\\<&>', "hosts": ['we"ird\\host']}],
            "oauth_refresh": [],
        }
    }
    cfg = tomllib.loads(rendered_toml(manifests(values)))
    assert cfg["allow"][0]["host"] == 'we"ird\\host'
    assert cfg["credential"][0]["stub"] == 'st"ub\\<&>'


# --- Services, ServiceMonitor, NetworkPolicy ---------------------------------


def test_services(case):
    _, _, v, docs = case
    selector = proxy_deployment(docs)["spec"]["selector"]["matchLabels"]
    proxy = one(docs, "Service", RELEASE)
    admin = one(docs, "Service", f"{RELEASE}-admin")
    assert proxy["spec"]["ports"] == [{"name": "proxy", "port": v["service"]["port"], "targetPort": "proxy", "protocol": "TCP"}]
    assert admin["spec"]["ports"] == [{"name": "admin", "port": v["adminService"]["port"], "targetPort": "admin", "protocol": "TCP"}]
    assert proxy["spec"]["selector"] == selector == admin["spec"]["selector"]
    pod_labels = proxy_deployment(docs)["spec"]["template"]["metadata"]["labels"]
    assert selector.items() <= pod_labels.items()


def test_service_monitor_scrapes_metrics_on_the_admin_service():
    docs = manifests(FULL)
    sm = one(docs, "ServiceMonitor")
    assert sm["apiVersion"] == "monitoring.coreos.com/v1"
    assert sm["metadata"]["labels"]["release"] == "prometheus"
    admin = one(docs, "Service", f"{RELEASE}-admin")
    proxy = one(docs, "Service", RELEASE)
    wanted = sm["spec"]["selector"]["matchLabels"]
    assert wanted.items() <= admin["metadata"]["labels"].items()
    assert not wanted.items() <= proxy["metadata"]["labels"].items()
    assert sm["spec"]["namespaceSelector"] == {"matchNames": [NAMESPACE]}
    (ep,) = sm["spec"]["endpoints"]
    assert ep["port"] in {p["name"] for p in admin["spec"]["ports"]}
    assert ep["path"] == "/metrics"
    assert set(sm["spec"]) == {"namespaceSelector", "selector", "endpoints"}
    assert set(ep) <= {"port", "path", "scheme", "interval", "scrapeTimeout"}
    assert "ServiceMonitor" not in kinds(manifests({}))


def ports_of(rule):
    return sorted((p["port"], p["protocol"]) for p in rule["ports"])


def test_network_policy_full():
    docs = manifests(FULL)
    np_ = one(docs, "NetworkPolicy", RELEASE)
    spec = np_["spec"]
    assert spec["podSelector"]["matchLabels"] == proxy_deployment(docs)["spec"]["selector"]["matchLabels"]
    assert spec["policyTypes"] == ["Ingress", "Egress"]
    agents = {
        "podSelector": {"matchLabels": {"iron-proxy.io/client": "true"}},
        "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "agents"}},
    }
    proxy_in, admin_in = spec["ingress"]
    assert proxy_in["from"] == [agents] and ports_of(proxy_in) == [(8080, "TCP")]
    assert admin_in["from"] == FULL["networkPolicy"]["adminFrom"] + [agents]
    assert ports_of(admin_in) == [(9090, "TCP")]
    dns, tcp = spec["egress"]
    assert ports_of(dns) == [(53, "TCP"), (53, "UDP")] and "to" not in dns
    # 443, the allow rules' ports (8443; 443 and 80 for a rule without
    # ports), and the extra port.
    assert ports_of(tcp) == [(80, "TCP"), (443, "TCP"), (8443, "TCP"), (9418, "TCP")]

    agents_np = one(docs, "NetworkPolicy", f"{RELEASE}-agents")
    assert agents_np["metadata"]["namespace"] == "agents"
    assert agents_np["spec"]["podSelector"] == DEFAULTS["networkPolicy"]["agentSelector"]
    assert agents_np["spec"]["policyTypes"] == ["Egress"]
    a_dns, a_proxy = agents_np["spec"]["egress"]
    assert ports_of(a_dns) == [(53, "TCP"), (53, "UDP")]
    (peer,) = a_proxy["to"]
    assert peer["podSelector"]["matchLabels"] == spec["podSelector"]["matchLabels"]
    assert peer["namespaceSelector"] == {"matchLabels": {"kubernetes.io/metadata.name": NAMESPACE}}
    assert ports_of(a_proxy) == [(8080, "TCP"), (9090, "TCP")]


def test_network_policy_defaults():
    docs = manifests(WRITABLE)
    (np_,) = [d for d in docs if d["kind"] == "NetworkPolicy"]
    spec = np_["spec"]
    (proxy_in,) = spec["ingress"]  # nobody is admitted to the admin port
    assert proxy_in["from"] == [{"podSelector": {"matchLabels": {"iron-proxy.io/client": "true"}}}]
    assert ports_of(proxy_in) == [(8080, "TCP")]
    dns, tcp = spec["egress"]
    assert ports_of(tcp) == [(443, "TCP")]
    assert not [d for d in manifests({}) if d["kind"] == "NetworkPolicy"]


# --- the agent example -------------------------------------------------------


def agent_deployment(docs):
    return one(docs, "Deployment", f"{RELEASE}-agent-example")


def test_agent_example_runs_iron_agent_setup_against_the_services():
    docs = manifests(FULL)
    dep = agent_deployment(docs)
    assert dep["metadata"]["namespace"] == "agents"
    pod = dep["spec"]["template"]["spec"]
    (init,) = pod["initContainers"]
    (agent,) = pod["containers"]
    assert init["image"] == agent["image"]
    args = init["command"]
    assert args[:2] == ["iron-agent", "setup"]
    flag = {args[i]: args[i + 1] for i in range(2, len(args), 2)}
    assert flag["--proxy"] == f"http://{RELEASE}.{NAMESPACE}:8080"
    assert flag["--ca-url"] == f"http://{RELEASE}-admin.{NAMESPACE}:9090/ca.pem"
    assert flag["--home"] == "/home/agent"
    stubs = {c["name"]: c["stub"] for c in FULL["config"]["credential"]}
    assert flag["--access-stub"] == stubs["claude-oauth-access"]
    assert flag["--refresh-stub"] == stubs["claude-oauth-refresh"]
    assert flag["--pat-stub"] == stubs["github-pat"]
    # The proxy and admin Services it names exist, on those ports.
    assert one(docs, "Service", RELEASE)["spec"]["ports"][0]["port"] == 8080
    assert one(docs, "Service", f"{RELEASE}-admin")["spec"]["ports"][0]["port"] == 9090
    # Both containers share the home the init container prepared.
    home = {v["name"] for v in pod["volumes"] if "emptyDir" in v}
    for c in (init, agent):
        assert any(m["name"] in home and m["mountPath"] == "/home/agent" for m in c["volumeMounts"])
    assert agent["command"][:2] == ["sh", "-c"]
    assert agent["command"][2].startswith(". /home/agent/.config/iron-agent/env && exec ")
    # Its pods carry the label the NetworkPolicy admits.
    labels = dep["spec"]["template"]["metadata"]["labels"]
    assert labels["iron-proxy.io/client"] == "true"
    # The proxy's own selector does not pick the agent's pods.
    proxy_sel = proxy_deployment(docs)["spec"]["selector"]["matchLabels"]
    assert not proxy_sel.items() <= labels.items()


def test_agent_example_with_the_ca_from_a_configmap():
    pod = agent_deployment(manifests(WRITABLE))["spec"]["template"]["spec"]
    (init,) = pod["initContainers"]
    assert "--ca-url" not in init["command"]
    i = init["command"].index("--ca-file")
    path = init["command"][i + 1]
    vols = {v["name"]: v for v in pod["volumes"]}
    (mount,) = [m for m in init["volumeMounts"] if path.startswith(m["mountPath"] + "/")]
    assert vols[mount["name"]]["configMap"]["name"] == "iron-proxy-ca-bundle"


def test_agent_example_refuses_an_unknown_credential():
    with pytest.raises(helm.HelmRenderError, match="agentExample.credentials.pat"):
        render({"agentExample": {"enabled": True, "credentials": {"pat": "nope"}}})


def test_notes_tell_how_to_verify():
    notes = render({})[f"{RELEASE}/templates/NOTES.txt"]
    for needle in [
        f"port-forward svc/{RELEASE}-admin 9090:9090",
        "/readyz",
        "/ca.pem",
        "iron-agent check",
        "iron-proxy check --config /etc/iron-proxy/iron-proxy.toml",
    ]:
        assert needle in notes, needle
    assert "kept the new value in memory only" in notes
    warned = render({"replicaCount": 2})[f"{RELEASE}/templates/NOTES.txt"]
    assert "single-use" in warned


# --- the real proxy ----------------------------------------------------------


def binary(name: str) -> Path | None:
    env = os.environ.get(f"{name.upper().replace('-', '_')}_BIN")
    candidates = [Path(env)] if env else [ROOT / "target" / "debug" / name, ROOT / "target" / "release" / name]
    for c in candidates:
        if c.is_file() and os.access(c, os.X_OK):
            return c
    return None


IRON_PROXY = binary("iron-proxy")
IRON_AGENT = binary("iron-agent")
needs_proxy = pytest.mark.skipif(
    IRON_PROXY is None,
    reason="target/debug/iron-proxy is not built (cargo build, or set IRON_PROXY_BIN): "
    "the rendered config is not checked by the real parser",
)


def materialize(toml_text: str, root: Path) -> Path:
    """Rewrites every absolute path under `root`, creates the files the
    config names (a fresh CA, placeholder credentials and token), and
    returns the rewritten config's path."""
    text = re.sub(r'"(/[^"]*)"', lambda m: json.dumps(str(root) + m.group(1)), toml_text)
    cfg = tomllib.loads(text)
    gen = root / "generated-ca"
    subprocess.run([IRON_PROXY, "ca", "init", "--out", gen], check=True, capture_output=True)

    def put(path: str, content: bytes) -> None:
        p = Path(path)
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(content)

    put(cfg["ca"]["cert"], (gen / "ca.crt").read_bytes())
    put(cfg["ca"]["key"], (gen / "ca.key").read_bytes())
    for i, extra in enumerate(cfg["ca"].get("extra_trust", []) + cfg.get("upstream", {}).get("extra_roots", [])):
        other = root / f"generated-ca-{i}"
        subprocess.run([IRON_PROXY, "ca", "init", "--out", other, "--name", f"other {i}"], check=True, capture_output=True)
        put(extra, (other / "ca.crt").read_bytes())
    for cred in cfg.get("credential", []):
        put(cred["source"]["file"], f"placeholder-real-{cred['name']}\n".encode())
    if "admin" in cfg:
        put(cfg["admin"]["token_file"], b"placeholder-admin-token\n")
    path = root / "etc" / "iron-proxy" / "iron-proxy.toml"
    put(str(path), text.encode())
    return path


@needs_proxy
def test_rendered_config_passes_iron_proxy_check(case, tmp_path):
    _, _, _, docs = case
    config = materialize(rendered_toml(docs), tmp_path)
    r = subprocess.run([IRON_PROXY, "check", "--config", config], capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr


@needs_proxy
def test_check_is_not_a_rubber_stamp(tmp_path):
    """A credential bound to a host no allow rule admits: check says so."""
    values = {"config": {"credential": DEFAULTS["config"]["credential"] + [
        {"name": "stray", "stub": "stray-stub", "hosts": ["not-allowed.example"]}
    ]}}
    config = materialize(rendered_toml(manifests(values)), tmp_path)
    r = subprocess.run([IRON_PROXY, "check", "--config", config], capture_output=True, text=True)
    assert r.returncode == 1
    assert "not-allowed.example" in r.stdout + r.stderr


def parser_keys() -> dict[str, set[str]]:
    """Every key the parser accepts, per table, read from its own errors."""
    probes = {
        "listen": "[listen]\nzzz = 1\n",
        "admin": "[admin]\nzzz = 1\n",
        "ca": "[ca]\nzzz = 1\n",
        "upstream": "[upstream]\nzzz = 1\n",
        "limits": "[limits]\nzzz = 1\n",
        "reload": "[reload]\nzzz = 1\n",
        "allow": "[[allow]]\nzzz = 1\n",
        "credential": "[[credential]]\nzzz = 1\n",
        "oauth_refresh": "[[oauth_refresh]]\nzzz = 1\n",
    }
    keys = {}
    with __import__("tempfile").TemporaryDirectory() as d:
        for table, text in probes.items():
            p = Path(d) / f"{table}.toml"
            p.write_text(text)
            r = subprocess.run([IRON_PROXY, "check", "--config", p], capture_output=True, text=True)
            line = next(l for l in (r.stdout + r.stderr).splitlines() if "unknown field `zzz`" in l)
            keys[table] = set(line.split("expected", 1)[1].split("`")[1::2])
    return keys


@needs_proxy
def test_values_schema_covers_every_parser_key():
    """config.* in values.schema.json + the keys the chart owns == the parser's keys."""
    schema = json.loads((CHART / "values.schema.json").read_text())["properties"]["config"]["properties"]
    owned = {
        "listen": {"proxy", "admin"},
        "admin": {"token_file"},
        "ca": {"cert", "key", "generate_if_missing", "extra_trust"},
        "credential": {"source"},
    }

    def props(node):
        node = node.get("items", node)
        return set(node["properties"])

    for table, keys in parser_keys().items():
        offered = props(schema[table]) if table in schema else set()
        assert offered | owned.get(table, set()) == keys, table
        assert not offered & owned.get(table, set()), table


def get(url: str, token: str | None = None) -> tuple[int, str]:
    req = urllib.request.Request(url)
    if token:
        req.add_header("Authorization", f"Bearer {token}")
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(req, timeout=5) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


@needs_proxy
def test_the_proxy_serves_the_probes_and_the_agent_example_matches_its_setup(tmp_path):
    """Runs `iron-proxy run` on the rendered config, probes it as the kubelet
    would, runs the agent example's `iron-agent setup` against it, and drains
    on SIGTERM."""
    docs = manifests(FULL)
    config = materialize(rendered_toml(docs), tmp_path / "proxy")
    text = config.read_text()
    text = re.sub(r'"0\.0\.0\.0:\d+"', '"127.0.0.1:0"', text)
    text = text.replace('drain_timeout = "1m30s"', 'drain_timeout = "5s"')
    config.write_text(text)
    log = tmp_path / "proxy.log"
    with open(log, "w") as err:
        proc = subprocess.Popen(
            [IRON_PROXY, "run", "--config", config, "--log-format", "json"],
            stdout=subprocess.DEVNULL,
            stderr=err,
        )
    try:
        deadline = time.monotonic() + 20
        listening = None
        while listening is None and time.monotonic() < deadline:
            assert proc.poll() is None, log.read_text()
            for line in log.read_text().splitlines():
                rec = json.loads(line)
                if rec.get("message") == "listening":
                    listening = rec
            time.sleep(0.05)
        assert listening, log.read_text()
        admin = f"http://{listening['admin']}"
        proxy = f"http://{listening['proxy']}"

        c = proxy_container(docs)
        for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
            status, body = get(admin + c[probe]["httpGet"]["path"])
            assert status == 200, (probe, status, body)
        assert get(admin + "/readyz")[1].startswith("ready")
        status, pem = get(admin + "/ca.pem")
        assert status == 200
        assert pem.count("BEGIN CERTIFICATE") == 1 + len(FULL["ca"]["extraTrustKeys"])

        token = Path(str(tmp_path / "proxy") + f"/etc/iron-proxy/admin/{FULL['admin']['tokenKey']}").read_text().strip()
        status, body = get(admin + "/v1/credentials", token)
        assert status == 200, body
        listed = json.loads(body)
        assert [c["name"] for c in listed] == [c["name"] for c in FULL["config"]["credential"]]
        assert "placeholder-real" not in body

        if IRON_AGENT is not None:
            agent = agent_deployment(docs)["spec"]["template"]["spec"]
            (init,) = agent["initContainers"]
            home = tmp_path / "home"
            rendered_proxy = f"http://{RELEASE}.{NAMESPACE}:8080"
            rendered_ca = f"http://{RELEASE}-admin.{NAMESPACE}:9090/ca.pem"
            args = [
                {rendered_proxy: proxy, rendered_ca: admin + "/ca.pem", "/home/agent": str(home)}.get(a, a)
                for a in init["command"][1:]
            ]
            r = subprocess.run([IRON_AGENT, *args], capture_output=True, text=True, env={**os.environ, "HOME": str(home)})
            assert r.returncode == 0, r.stdout + r.stderr
            exported = dict(
                re.fullmatch(r"export (\w+)='(.*)'", l).groups()
                for l in (home / ".config/iron-agent/env").read_text().splitlines()
                if l.startswith("export ")
            )
            (container,) = agent["containers"]
            pod_env = {
                e["name"]: e["value"].replace(rendered_proxy, proxy).replace("/home/agent", str(home))
                for e in container["env"]
            }
            assert pod_env.pop("HOME") == str(home)
            # The env the example sets is exactly what setup exports.
            assert pod_env == exported
            assert (home / ".claude/.credentials.json").exists()
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            code = proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            raise
    assert code == 0, log.read_text()


# --- docs/helm.md cannot drift from the chart --------------------------------

HELM_DOC = ROOT / "docs" / "helm.md"


def test_helm_doc_shows_the_config_the_chart_renders():
    text = HELM_DOC.read_text()
    blocks = re.findall(r"^```toml\n(.*?)^```", text, flags=re.S | re.M)
    assert len(blocks) == 1, "docs/helm.md should show exactly one TOML block: the default rendering"
    assert blocks[0].strip() == rendered_toml(manifests({})).strip()


# Values documented as a whole, not key by key.
FREEFORM = {
    "podSecurityContext",
    "securityContext",
    "resources",
    "livenessProbe",
    "readinessProbe",
    "startupProbe",
    "strategy",
    "networkPolicy.agentSelector",
}


def value_paths(tree: dict, prefix: str = ""):
    for key, val in tree.items():
        path = prefix + key
        if path == "config":  # docs/configuration.md
            continue
        if isinstance(val, dict) and val and path not in FREEFORM:
            yield from value_paths(val, path + ".")
        else:
            yield path


def test_helm_doc_documents_every_value():
    text = HELM_DOC.read_text()
    table = text.split("\n## Values\n", 1)[1].split("\n## ", 1)[0]
    documented = re.findall(r"^\| `([^`]+)` \|", table, flags=re.M)
    assert len(documented) == len(set(documented)), "a value is documented twice"
    assert set(documented) == set(value_paths(DEFAULTS))
