#!/usr/bin/env python3
"""Offline checks of rendered Kubernetes manifests (helm template output or
kubectl kustomize output). Run with target/tools/venv/bin/python (PyYAML,
kubernetes-validate, jsonschema); scripts/check-chart.sh drives it.

  validate FILE...              strict Kubernetes 1.33 schemas, our own schemas
                                for the CRDs we emit, names, restricted pod
                                security, and cross-references between objects
  check-config --bin BIN [--loadtest LT] FILE
                                every presenced container's args and env through
                                `BIN --check-config`, with its ConfigMaps and
                                Secrets written at their mount paths under a
                                temporary root; with LT, the presence-loadtest
                                test pods' flags and settings too
  nats-config --nats-server NS FILE...
                                the bundled NATS's rendered config (nats.conf
                                with nats-auth.conf, TLS) through `NS -t`, its
                                env and mounted files materialised as for
                                check-config
  monitoring FILE MONITORING_DIR
                                every rule file and dashboard of the directory
                                is in the render, unchanged, and nothing else
  pod-spec FILE OUTDIR          the first presenced container and the loadtest
                                test pod of a render, resolved, for podman
                                (scripts/image-test.sh)
  split-k8s ALL CLUSTER OUTDIR  k8s/ from two renders: identical objects into
                                base/, the rest into overlays/<mode>/

No kube-apiserver exists here: what a server-side admission (defaulting,
webhooks, quota, immutable fields) would say is not checked.
"""

import argparse
import base64
import os
import re
import subprocess
import sys
import tempfile

import yaml

KUBE_VERSION = "1.33.0"
# CRD groups we emit and check with our own schemas below; any other kind
# without a Kubernetes schema is an error (a typo such as apps/v1beta1).
ALLOWED_CRD_GROUPS = {"monitoring.coreos.com", "keda.sh"}
SERVER_COMPONENTS = {"all", "edge", "compositor", "notifier"}


def load_docs(path):
    with open(path) as f:
        text = f.read()
    docs = []
    for d in yaml.safe_load_all(text):
        if d is None:
            continue
        if d.get("kind") == "List":
            docs.extend(d.get("items") or [])
        else:
            docs.append(d)
    return docs


def ident(d):
    return "%s/%s" % (d.get("kind"), (d.get("metadata") or {}).get("name"))


# --- our schemas for the CRDs (the fields their controllers require) -------

STR_MAP = {"type": "object", "additionalProperties": {"type": "string"}}
DURATION = {"type": "string", "pattern": r"^(0|(([0-9]+)y)?(([0-9]+)w)?(([0-9]+)d)?(([0-9]+)h)?(([0-9]+)m)?(([0-9]+)s)?(([0-9]+)ms)?)$"}
LABEL_SELECTOR = {
    "type": "object",
    "additionalProperties": False,
    "properties": {
        "matchLabels": STR_MAP,
        "matchExpressions": {"type": "array", "items": {
            "type": "object", "required": ["key", "operator"], "additionalProperties": False,
            "properties": {"key": {"type": "string"}, "operator": {"enum": ["In", "NotIn", "Exists", "DoesNotExist"]},
                           "values": {"type": "array", "items": {"type": "string"}}}}},
    },
}
RELABEL = {
    "type": "object", "additionalProperties": False,
    "properties": {
        "action": {"enum": ["replace", "Replace", "keep", "Keep", "drop", "Drop", "hashmod", "HashMod",
                            "labelmap", "LabelMap", "labeldrop", "LabelDrop", "labelkeep", "LabelKeep",
                            "lowercase", "Lowercase", "uppercase", "Uppercase", "keepequal", "KeepEqual",
                            "dropequal", "DropEqual"]},
        "sourceLabels": {"type": "array", "items": {"type": "string", "pattern": r"^[a-zA-Z_][a-zA-Z0-9_]*$"}},
        "separator": {"type": "string"}, "targetLabel": {"type": "string"}, "regex": {"type": "string"},
        "modulus": {"type": "integer"}, "replacement": {"type": "string"},
    },
}
METADATA = {"type": "object", "required": ["name"], "properties": {
    "name": {"type": "string"}, "labels": STR_MAP, "annotations": STR_MAP}}


def crd(spec_properties, spec_required):
    return {
        "type": "object", "required": ["apiVersion", "kind", "metadata", "spec"],
        "properties": {"metadata": METADATA, "spec": {
            "type": "object", "additionalProperties": False,
            "required": spec_required, "properties": spec_properties}},
    }


POD_METRICS_ENDPOINT = {
    "type": "object", "additionalProperties": False,
    "anyOf": [{"required": ["port"]}, {"required": ["portNumber"]}, {"required": ["targetPort"]}],
    "properties": {
        "port": {"type": "string"}, "portNumber": {"type": "integer"}, "targetPort": {},
        "path": {"type": "string", "pattern": "^/"}, "scheme": {"enum": ["http", "https"]},
        "interval": DURATION, "scrapeTimeout": DURATION, "honorLabels": {"type": "boolean"},
        "relabelings": {"type": "array", "items": RELABEL},
        "metricRelabelings": {"type": "array", "items": RELABEL},
    },
}
RULE = {
    "type": "object", "additionalProperties": False, "required": ["expr"],
    "oneOf": [{"required": ["alert"]}, {"required": ["record"]}],
    "properties": {
        "alert": {"type": "string", "minLength": 1},
        "record": {"type": "string", "minLength": 1},
        "expr": {"anyOf": [{"type": "string", "minLength": 1}, {"type": "integer"}]},
        "for": DURATION, "keep_firing_for": DURATION,
        "labels": STR_MAP, "annotations": STR_MAP,
    },
}
RULE_GROUP = {
    "type": "object", "additionalProperties": False, "required": ["name", "rules"],
    "properties": {
        "name": {"type": "string", "minLength": 1}, "interval": DURATION,
        "query_offset": DURATION, "limit": {"type": "integer"},
        "partial_response_strategy": {"type": "string"}, "labels": STR_MAP,
        "rules": {"type": "array", "items": RULE},
    },
}
TRIGGER = {
    "type": "object", "required": ["type", "metadata"], "additionalProperties": False,
    "properties": {
        "type": {"type": "string"}, "name": {"type": "string"},
        "useCachedMetrics": {"type": "boolean"},
        "metricType": {"enum": ["AverageValue", "Value", "Utilization"]},
        # KEDA reads trigger metadata as map[string]string.
        "metadata": STR_MAP,
        "authenticationRef": {"type": "object", "required": ["name"]},
    },
}
CRD_SCHEMAS = {
    ("monitoring.coreos.com/v1", "PodMonitor"): crd({
        "selector": LABEL_SELECTOR,
        "namespaceSelector": {"type": "object"},
        "jobLabel": {"type": "string"},
        "podTargetLabels": {"type": "array", "items": {"type": "string"}},
        "podMetricsEndpoints": {"type": "array", "minItems": 1, "items": POD_METRICS_ENDPOINT},
    }, ["selector", "podMetricsEndpoints"]),
    ("monitoring.coreos.com/v1", "PrometheusRule"): crd({
        "groups": {"type": "array", "items": RULE_GROUP},
    }, ["groups"]),
    ("keda.sh/v1alpha1", "ScaledObject"): crd({
        "scaleTargetRef": {"type": "object", "required": ["name"], "additionalProperties": False,
                           "properties": {"name": {"type": "string"}, "kind": {"type": "string"},
                                          "apiVersion": {"type": "string"},
                                          "envSourceContainerName": {"type": "string"}}},
        "minReplicaCount": {"type": "integer", "minimum": 0},
        "maxReplicaCount": {"type": "integer", "minimum": 1},
        "idleReplicaCount": {"type": "integer", "minimum": 0},
        "pollingInterval": {"type": "integer", "minimum": 1},
        "cooldownPeriod": {"type": "integer", "minimum": 0},
        "initialCooldownPeriod": {"type": "integer", "minimum": 0},
        "fallback": {"type": "object"}, "advanced": {"type": "object"},
        "triggers": {"type": "array", "minItems": 1, "items": TRIGGER},
    }, ["scaleTargetRef", "triggers"]),
}
# What the nats-jetstream scaler needs in its metadata.
KEDA_TRIGGER_REQUIRED = {"nats-jetstream": ["natsServerMonitoringEndpoint", "account", "stream", "consumer"]}

DNS1123_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
DNS1035_LABEL = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")
LABEL_VALUE = re.compile(r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$")


def pod_spec_of(d):
    kind = d.get("kind")
    spec = d.get("spec") or {}
    if kind == "Pod":
        return d.get("metadata") or {}, spec
    if kind in ("Deployment", "DaemonSet", "StatefulSet", "ReplicaSet", "Job"):
        t = spec.get("template") or {}
        return t.get("metadata") or {}, t.get("spec") or {}
    if kind == "CronJob":
        t = ((spec.get("jobTemplate") or {}).get("spec") or {}).get("template") or {}
        return t.get("metadata") or {}, t.get("spec") or {}
    return None, None


def example_pod_name(d):
    """A pod name as long as the controller would make it (the --node-id)."""
    name = d["metadata"]["name"]
    return {
        "Deployment": name + "-5d9c8f7b6d-x2x4z",  # 10-char pod-template-hash, 5-char suffix
        "DaemonSet": name + "-x2x4z",
        "StatefulSet": name + "-0",
        "Job": name + "-x2x4z",
    }.get(d["kind"], name)


def is_presenced(container):
    cmd = container.get("command") or []
    image = container.get("image", "")
    repo = image.split("@")[0]
    if ":" in repo.rsplit("/", 1)[-1]:
        repo = repo[:repo.rfind(":")]
    if cmd:
        return os.path.basename(cmd[0]) == "presenced"
    return container.get("name") == "presenced" or os.path.basename(repo) == "presence"


def matches(selector, labels):
    for k, v in (selector.get("matchLabels") or {}).items():
        if labels.get(k) != v:
            return False
    for e in selector.get("matchExpressions") or []:
        val = labels.get(e["key"])
        op = e["operator"]
        if op == "In" and val not in e.get("values", []):
            return False
        if op == "NotIn" and val in e.get("values", []):
            return False
        if op == "Exists" and val is None:
            return False
        if op == "DoesNotExist" and val is not None:
            return False
    return True


# --- validate -----------------------------------------------------------------

def validate(paths, allow_host_network):
    import jsonschema
    import kubernetes_validate
    from kubernetes_validate.utils import SchemaNotFoundError

    errors = []
    notes = []
    for path in paths:
        docs = load_docs(path)
        if not docs:
            errors.append("%s: no objects rendered" % path)
        seen = set()
        for d in docs:
            where = "%s: %s" % (os.path.basename(path), ident(d))
            if not isinstance(d, dict) or "apiVersion" not in d or "kind" not in d:
                errors.append("%s: not a Kubernetes object" % where)
                continue
            key = (d["apiVersion"].split("/")[0] if "/" in d["apiVersion"] else "", d["kind"],
                   (d.get("metadata") or {}).get("name"))
            if key in seen:
                errors.append("%s: rendered twice" % where)
            seen.add(key)
            group = d["apiVersion"].rsplit("/", 1)[0] if "/" in d["apiVersion"] else ""
            try:
                kubernetes_validate.validate(d, KUBE_VERSION, strict=True)
            except SchemaNotFoundError:
                if group not in ALLOWED_CRD_GROUPS:
                    errors.append("%s: no Kubernetes %s schema for %s (unknown kind or apiVersion)"
                                  % (where, KUBE_VERSION, d["apiVersion"]))
                    continue
                schema = CRD_SCHEMAS.get((d["apiVersion"], d["kind"]))
                if schema is None:
                    errors.append("%s: %s/%s is on the CRD allow-list but the check has no schema for it"
                                  % (where, d["apiVersion"], d["kind"]))
                    continue
                for e in sorted(jsonschema.Draft202012Validator(schema).iter_errors(d), key=str):
                    errors.append("%s: %s at %s" % (where, e.message, "/".join(map(str, e.absolute_path))))
                if d["kind"] == "ScaledObject":
                    for t in (d.get("spec") or {}).get("triggers") or []:
                        for k in KEDA_TRIGGER_REQUIRED.get(t.get("type"), []):
                            if not (t.get("metadata") or {}).get(k):
                                errors.append("%s: trigger %s lacks metadata.%s" % (where, t.get("type"), k))
            except kubernetes_validate.ValidationError as e:
                errors.append("%s: %s at %s" % (where, e.message, "/".join(map(str, e.path))))
            errors.extend(check_names(where, d))
            e, n = check_pod_security(where, d, allow_host_network)
            errors.extend(e)
            notes.extend(n)
        errors.extend(check_references(os.path.basename(path), docs))
    for n in notes:
        print("  note: " + n)
    return errors


def check_names(where, d):
    errs = []
    meta = d.get("metadata") or {}
    name = meta.get("name") or ""
    if not name:
        errs.append("%s: no metadata.name" % where)
        return errs
    if len(name) > 253 or not DNS1123_SUBDOMAIN.match(name):
        errs.append("%s: name %r is not a DNS-1123 subdomain" % (where, name))
    if d["kind"] == "Service" and (len(name) > 63 or not DNS1035_LABEL.match(name)):
        errs.append("%s: a Service name must be a DNS-1035 label of at most 63 characters" % where)
    if d["kind"] in ("StatefulSet", "Deployment", "DaemonSet") and len(name) > 52:
        errs.append("%s: name longer than 52 characters (pod names, controller-revision-hash label)" % where)
    labels = dict(meta.get("labels") or {})
    pmeta, _ = pod_spec_of(d)
    if pmeta:
        labels.update(pmeta.get("labels") or {})
    for k, v in labels.items():
        if not isinstance(v, str) or len(v) > 63 or not LABEL_VALUE.match(v):
            errs.append("%s: label %s=%r is not a valid label value" % (where, k, v))
    return errs


def check_pod_security(where, d, allow_host_network):
    """Pod Security Standard "restricted", plus a read-only root file system.
    hostNetwork is tolerated only for the components listed in
    allow_host_network (the edge DaemonSet mode), and reported."""
    errs, notes = [], []
    pmeta, spec = pod_spec_of(d)
    if spec is None:
        return errs, notes
    component = (pmeta.get("labels") or {}).get("app.kubernetes.io/component")
    psc = spec.get("securityContext") or {}
    for flag in ("hostPID", "hostIPC"):
        if spec.get(flag):
            errs.append("%s: %s" % (where, flag))
    if spec.get("hostNetwork"):
        if component in allow_host_network:
            notes.append("%s: hostNetwork (allowed for %s; violates Pod Security baseline)" % (where, component))
        else:
            errs.append("%s: hostNetwork" % where)
    for v in spec.get("volumes") or []:
        if "hostPath" in v:
            errs.append("%s: hostPath volume %s" % (where, v.get("name")))
    if psc.get("runAsUser") == 0:
        errs.append("%s: pod runAsUser 0" % where)
    pod_seccomp = (psc.get("seccompProfile") or {}).get("type")
    for c in (spec.get("initContainers") or []) + (spec.get("containers") or []):
        cw = "%s container %s" % (where, c.get("name"))
        sc = c.get("securityContext") or {}
        if not (sc.get("runAsNonRoot", psc.get("runAsNonRoot")) is True):
            errs.append("%s: runAsNonRoot is not true" % cw)
        if sc.get("runAsUser", psc.get("runAsUser")) == 0:
            errs.append("%s: runAsUser 0" % cw)
        if sc.get("allowPrivilegeEscalation") is not False:
            errs.append("%s: allowPrivilegeEscalation is not false" % cw)
        if sc.get("privileged"):
            errs.append("%s: privileged" % cw)
        caps = sc.get("capabilities") or {}
        if "ALL" not in (caps.get("drop") or []):
            errs.append("%s: capabilities do not drop ALL" % cw)
        if [a for a in caps.get("add") or [] if a != "NET_BIND_SERVICE"]:
            errs.append("%s: adds capabilities %s" % (cw, caps.get("add")))
        if (sc.get("seccompProfile") or {}).get("type", pod_seccomp) not in ("RuntimeDefault", "Localhost"):
            errs.append("%s: seccompProfile is not RuntimeDefault" % cw)
        if sc.get("readOnlyRootFilesystem") is not True:
            errs.append("%s: readOnlyRootFilesystem is not true" % cw)
        for p in c.get("ports") or []:
            if p.get("hostPort") and not spec.get("hostNetwork"):
                errs.append("%s: hostPort %s" % (cw, p.get("hostPort")))
        if not (c.get("resources") or {}).get("requests"):
            errs.append("%s: no resource requests" % cw)
    return errs, notes


def check_references(name, docs):
    """Objects that name other objects of the same render: selectors that
    select something, scale targets that exist, ports that exist, and the
    lame-duck timings of every presenced container."""
    errs = []
    pods = []  # (doc, pod metadata, pod spec)
    for d in docs:
        pmeta, spec = pod_spec_of(d)
        if spec is not None:
            pods.append((d, pmeta, spec))
    by_kind = {}
    for d in docs:
        by_kind.setdefault(d["kind"], {})[d["metadata"]["name"]] = d

    def selected(selector, exclude_tests=True):
        out = []
        for d, pmeta, spec in pods:
            labels = pmeta.get("labels") or {}
            if exclude_tests and (d["metadata"].get("annotations") or {}).get("helm.sh/hook"):
                continue
            if matches(selector, labels):
                out.append((d, pmeta, spec))
        return out

    for d in docs:
        where = "%s: %s" % (name, ident(d))
        spec = d.get("spec") or {}
        kind = d["kind"]
        if kind in ("Deployment", "DaemonSet", "StatefulSet"):
            labels = ((spec.get("template") or {}).get("metadata") or {}).get("labels") or {}
            if not matches(spec.get("selector") or {}, labels):
                errs.append("%s: selector does not match its own pod template" % where)
        if kind == "Service" and spec.get("selector"):
            targets = selected({"matchLabels": spec["selector"]})
            if not targets:
                errs.append("%s: selects no pod" % where)
            for p in spec.get("ports") or []:
                tp = p.get("targetPort", p.get("port"))
                proto = p.get("protocol", "TCP")
                for t, _, tspec in targets:
                    found = any((cp.get("name") == tp or cp.get("containerPort") == tp) and cp.get("protocol", "TCP") == proto
                                for c in tspec.get("containers") or [] for cp in c.get("ports") or [])
                    if not found:
                        errs.append("%s: port %s/%s has no container port in %s" % (where, tp, proto, ident(t)))
            if spec.get("type") in ("LoadBalancer", "NodePort") and any(
                    p.get("name", "").startswith("sip") for p in spec.get("ports") or []):
                if spec.get("externalTrafficPolicy") != "Local":
                    print("  note: %s: externalTrafficPolicy %s: phones' addresses are SNATed"
                          % (where, spec.get("externalTrafficPolicy", "Cluster")))
        if kind == "PodDisruptionBudget":
            if not selected(spec.get("selector") or {}):
                errs.append("%s: selects no pod" % where)
        if kind == "HorizontalPodAutoscaler" or kind == "ScaledObject":
            ref = spec.get("scaleTargetRef") or {}
            if ref.get("name") not in by_kind.get(ref.get("kind", "Deployment"), {}):
                errs.append("%s: scale target %s/%s is not rendered" % (where, ref.get("kind"), ref.get("name")))
            else:
                target = by_kind[ref.get("kind", "Deployment")][ref["name"]]
                if "replicas" in (target.get("spec") or {}):
                    errs.append("%s: %s sets spec.replicas, which fights the autoscaler on every upgrade"
                                % (where, ident(target)))
        if kind == "PodMonitor":
            chosen = selected(spec.get("selector") or {})
            if not chosen:
                errs.append("%s: selects no pod" % where)
            for ep in spec.get("podMetricsEndpoints") or []:
                for t, _, tspec in chosen:
                    if not any(cp.get("name") == ep.get("port") for c in tspec.get("containers") or []
                               for cp in c.get("ports") or []):
                        errs.append("%s: %s has no port named %s" % (where, ident(t), ep.get("port")))
                if not any(r.get("targetLabel") == "role" for r in ep.get("relabelings") or []):
                    errs.append("%s: no relabeling to the `role` label the dashboards use" % where)
        if kind == "NetworkPolicy":
            if not selected(spec.get("podSelector") or {}):
                errs.append("%s: selects no pod" % where)

    errs.extend(check_nats_users(name, docs, pods))

    # Every presenced container: probes on its HTTP port, a grace period
    # above preStop sleep + --drain-seconds.
    for d, pmeta, spec in pods:
        for c in spec.get("containers") or []:
            if not is_presenced(c):
                continue
            where = "%s: %s container %s" % (name, ident(d), c.get("name"))
            args = c.get("args") or []
            argmap = {}
            for a in args:
                if a.startswith("--") and "=" in a:
                    k, v = a[2:].split("=", 1)
                    argmap[k] = v
            drain = int(argmap.get("drain-seconds", "0"))
            pre = ((((c.get("lifecycle") or {}).get("preStop") or {}).get("sleep") or {}).get("seconds") or 0)
            grace = spec.get("terminationGracePeriodSeconds", 30)
            if grace <= drain + pre:
                errs.append("%s: terminationGracePeriodSeconds %s <= preStop sleep %s + --drain-seconds %s"
                            % (where, grace, pre, drain))
            http_port = int(argmap.get("http-listen", "127.0.0.1:9090").rsplit(":", 1)[1])
            ports = {p.get("name"): p.get("containerPort") for p in c.get("ports") or []}
            if ports.get("http") != http_port:
                errs.append("%s: container port http %s is not --http-listen's %s" % (where, ports.get("http"), http_port))
            for probe, path in (("livenessProbe", "/healthz"), ("readinessProbe", "/readyz")):
                g = (c.get(probe) or {}).get("httpGet") or {}
                if g.get("path") != path or g.get("port") not in ("http", http_port):
                    errs.append("%s: %s is not GET %s on the HTTP port" % (where, probe, path))
            if "sip-listen" in argmap:
                sip_port = int(argmap["sip-listen"].rsplit(":", 1)[1])
                for proto in ("UDP", "TCP"):
                    if not any(p.get("containerPort") == sip_port and p.get("protocol", "TCP") == proto
                               for p in c.get("ports") or []):
                        errs.append("%s: no %s container port %s" % (where, proto, sip_port))
    return errs


NATS_USERS = ("edge", "compositor", "notifier", "api", "presence")


def secret_refs(spec, c):
    """(Secret name, key, where) of every Secret key a container reads:
    mounted items (secret and projected volumes) and env secretKeyRefs."""
    volumes = {v["name"]: v for v in spec.get("volumes") or []}
    out = []
    for m in c.get("volumeMounts") or []:
        v = volumes.get(m["name"]) or {}
        sources = [{"secret": dict(v["secret"], name=v["secret"].get("secretName"))}] if "secret" in v else \
            (v.get("projected") or {}).get("sources") or []
        for src in sources:
            sec = src.get("secret")
            if not sec:
                continue
            for it in sec.get("items") or [{"key": None, "path": None}]:
                out.append((sec["name"], it["key"], m["mountPath"] + "/" + str(it["path"])))
    for e in c.get("env") or []:
        r = ((e.get("valueFrom") or {}).get("secretKeyRef"))
        if r:
            out.append((r["name"], r["key"], "env " + e["name"]))
    return out


def check_nats_users(name, docs, pods):
    """Per-role NATS users (files/nats-auth.conf): each presenced container
    logs in as its own role's user (--nats-user, or --nats-creds <user>.creds)
    and can read no other role's password or credentials; a
    checksum/nats-auth annotation is the checksum of the passwords Secret the
    pod reads."""
    errs = []
    secrets = {d["metadata"]["name"]: d for d in docs if d["kind"] == "Secret"}
    import hashlib
    import json
    for d, pmeta, spec in pods:
        component = (pmeta.get("labels") or {}).get("app.kubernetes.io/component")
        for c in spec.get("containers") or []:
            where = "%s: %s container %s" % (name, ident(d), c.get("name"))
            refs = secret_refs(spec, c)
            if is_presenced(c) and component in SERVER_COMPONENTS:
                user = "presence" if component == "all" else component
                args = dict(a[2:].split("=", 1) for a in c.get("args") or [] if a.startswith("--") and "=" in a)
                if "nats-user" in args and args["nats-user"] != user:
                    errs.append("%s: --nats-user=%s, but a %s pod is NATS user %s" % (where, args["nats-user"], component, user))
                if "nats-creds" in args and os.path.basename(args["nats-creds"]) != user + ".creds":
                    errs.append("%s: --nats-creds=%s is not %s.creds" % (where, args["nats-creds"], user))
                pw = args.get("nats-password-file")
                if pw and not any(r[2] == pw and r[1] == user for r in refs):
                    errs.append("%s: --nats-password-file %s is not the key %s of a Secret" % (where, pw, user))
                for sec, key, at in refs:
                    other = key.rsplit(".creds", 1)[0] if key else None
                    if other in NATS_USERS and other != user:
                        errs.append("%s: reads NATS user %s's %s (Secret %s key %s at %s)"
                                    % (where, other, "credentials" if key.endswith(".creds") else "password", sec, key, at))
            want = ((pmeta.get("annotations") or {}).get("checksum/nats-auth"))
            if want:
                used = {sec for sec, key, _ in refs if key in NATS_USERS and sec in secrets}
                if not used:
                    errs.append("%s: checksum/nats-auth, but it reads no rendered NATS passwords Secret" % where)
                for sec in used:
                    data = secrets[sec].get("data") or {}
                    got = hashlib.sha256(json.dumps(data, sort_keys=True, separators=(",", ":")).encode()).hexdigest()
                    if got != want:
                        errs.append("%s: checksum/nats-auth is not the checksum of Secret %s's passwords" % (where, sec))
    return errs


# --- check-config -------------------------------------------------------------

# Keys of Secrets and ConfigMaps the render refers to but does not contain
# (existingSecret values; k8s/'s secretGenerator files): stand-ins that pass
# presenced's own checks, so that everything else in the args is checked.
STAND_INS = {
    "users.txt": "checker@example.com:checker-password\n",
    "users": "checker@example.com:checker-password\n",
    "admin-token": "stand-in-admin-token-0123456789",
    "nonce-secret": "stand-in-nonce-secret-0123456789",
    "policy.txt": "",
    "lists.txt": "sip:checker-list@example.com sip:checker@example.com\n",
    "tokens.txt": "checker stand-in-api-token-0123456789 read\n",
    "api-tokens": "checker stand-in-api-token-0123456789 read\n",
    "directory.csv": "aor,display_name,department,title,phone\nsip:checker@example.com,Checker,QA,,\n",
    # A throwaway self-signed certificate (CN stand-in.invalid, P-256, made
    # for this check only) for a kubernetes.io/tls Secret the render names.
    "tls.crt": """-----BEGIN CERTIFICATE-----
MIIBjTCCATOgAwIBAgIUQeNwzf2dVLqzQzAC+YnAMwDw87wwCgYIKoZIzj0EAwIw
GzEZMBcGA1UEAwwQc3RhbmQtaW4uaW52YWxpZDAgFw0yNjEyMDQwOTEzMDBaGA8y
MTI2MTExMDA5MTMwMFowGzEZMBcGA1UEAwwQc3RhbmQtaW4uaW52YWxpZDBZMBMG
ByqGSM49AgEGCCqGSM49AwEHA0IABJ/Xx7b/4y6i9VtbM63LHII+xml/UcRNIKZh
64FE1OF21Ex9d+VIKiyNC6P26bGDgViZW1TitTNcvMhRCrITgEyjUzBRMB0GA1Ud
DgQWBBTkAL5dZYgczau2ayj8B4T7toWjQzAfBgNVHSMEGDAWgBTkAL5dZYgczau2
ayj8B4T7toWjQzAPBgNVHRMBAf8EBTADAQH/MAoGCCqGSM49BAMCA0gAMEUCIG9g
hHZsdemDaCi3iQnozRc1ku8GWX1xf9W8KhIYuc/7AiEAgK2UhDKVNBS2NfAkGGTh
7OxPvTahq0n3dlDtbL6A1IY=
-----END CERTIFICATE-----
""",
    "tls.key": """-----BEGIN PRIVATE KEY-----
MIGHAgEAMBMGByqGSM49AgEGCCqGSM49AwEHBG0wawIBAQQgKEzD+0fqyn59crot
sfjPebPTV9v0Wx33QditYHE1WMGhRANCAASf18e2/+MuovVbWzOtyxyCPsZpf1HE
TSCmYeuBRNThdtRMfXflSCosjQuj9umxg4FYmVtU4rUzXLzIUQqyE4BM
-----END PRIVATE KEY-----
""",
}


def expand(value, env):
    """Kubernetes $(VAR) expansion ($$ escapes; unknown names stay)."""
    def sub(m):
        if m.group(0) == "$$":
            return "$"
        return env.get(m.group(1), m.group(0))
    return re.sub(r"\$\$|\$\(([A-Za-z_][A-Za-z0-9_.-]*)\)", sub, value)


class Objects:
    def __init__(self, docs):
        self.secrets = {}
        self.configmaps = {}
        self.stand_ins = []
        for d in docs:
            n = d["metadata"]["name"]
            if d["kind"] == "Secret":
                data = {k: base64.b64decode(v).decode() for k, v in (d.get("data") or {}).items()}
                data.update(d.get("stringData") or {})
                self.secrets[n] = data
            elif d["kind"] == "ConfigMap":
                self.configmaps[n] = dict(d.get("data") or {})

    def get(self, kind, name, key, optional=False):
        store = self.secrets if kind == "Secret" else self.configmaps
        if name in store:
            if key in store[name]:
                return store[name][key]
            if optional:
                return None
            raise KeyError("%s %s has no key %s" % (kind, name, key))
        value = STAND_INS.get(key)
        if value is None and re.search(r"(^|[.-])(ca|crt|pem|cert)$", key):
            value = STAND_INS["tls.crt"]  # CA certificates (ca.crt, ca.pem, …): PEM
        if value is None:
            value = "stand-in-%s-0123456789" % re.sub(r"[^A-Za-z0-9]", "", key)
        self.stand_ins.append("%s %s/%s" % (kind, name, key))
        return value

    def keys(self, kind, name):
        store = self.secrets if kind == "Secret" else self.configmaps
        return list(store.get(name, {}).keys())


def field_ref(path, d):
    return {
        "metadata.name": example_pod_name(d),
        "metadata.namespace": "presence",
        "spec.nodeName": "node-1",
        "status.hostIP": "127.0.0.1",
        "status.podIP": "127.0.0.1",
        "spec.serviceAccountName": "presence",
    }[path]


def is_loadtest(container):
    cmd = container.get("command") or []
    return bool(cmd) and os.path.basename(cmd[0]) == "presence-loadtest"


def loadtest_argv(argv, root):
    """presence-loadtest validates its flags and settings and exits when it
    is only asked to write a users file: the test pod's args without the
    target (nothing to reach here), plus --write-users (which wants a
    password)."""
    out = [a for a in argv if not a.startswith("--target")]
    if not any(a.startswith("--password") for a in out):
        out.append("--password=check")
    return out + ["--write-users=%s/loadtest-users.txt" % root]


USERS_LINE = re.compile(r"^[^#\s:@]+@[^:\s]+:.+$")


def test_users_missing(objs, written):
    """Lines (user@domain:password) the load generator wrote for the test
    that no rendered users file holds. Nothing to say when the users file is
    not rendered (an existing Secret)."""
    files = [set(v.splitlines()) for data in objs.secrets.values() for v in data.values()
             if any(USERS_LINE.match(l) for l in v.splitlines())]
    if not files:
        return []
    with open(written) as f:
        want = [l for l in f.read().splitlines() if l]
    return [l.split(":", 1)[0] for l in want if not any(l in f for f in files)]


def pod_containers(paths):
    """Every container of every object with a pod in the renders at
    `paths`: (path, the render's objects, the object, its pod spec, the
    container)."""
    for path in paths:
        docs = load_docs(path)
        objs = Objects(docs)
        for d in docs:
            _, spec = pod_spec_of(d)
            if spec is None:
                continue
            for c in spec.get("containers") or []:
                yield path, objs, d, spec, c


def check_config(bin_path, paths, loadtest=None):
    errors = []
    checked = 0
    renders = {}
    for path, objs, d, spec, c in pod_containers(paths):
        renders[path] = objs
        if is_presenced(c):
            program, how = bin_path, "--check-config"
        elif is_loadtest(c) and loadtest:
            program, how = loadtest, "loadtest flags"
        else:
            continue
        checked += 1
        label = "%s: %s container %s" % (os.path.basename(path), ident(d), c["name"])
        with tempfile.TemporaryDirectory(prefix="presence-check-") as root:
            try:
                argv, env = materialise(root, d, spec, c, objs)
            except Exception as e:  # a reference that cannot be resolved
                errors.append("%s: %s" % (label, e))
                continue
            if program == bin_path:
                argv = argv + ["--check-config"]
            else:
                argv = loadtest_argv(argv, root)
            run_env = {"PATH": "/usr/bin:/bin", "HOME": root}
            run_env.update(env)
            p = subprocess.run([program] + argv, env=run_env, cwd=root,
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=60)
            out = p.stdout.strip().replace(root, "")
            if p.returncode == 0 and program != bin_path:
                missing = test_users_missing(objs, os.path.join(root, "loadtest-users.txt"))
                if missing:
                    errors.append("%s: the test's users are not in the users file the chart renders: %s"
                                  % (label, ", ".join(missing[:5])))
            if p.returncode == 0:
                print("  ok   %s\n       %s" % (label, out))
            else:
                print("  FAIL %s (%s)\n       %s" % (label, how, out.replace("\n", "\n       ")))
                errors.append("%s: %s exited %d" % (label, how, p.returncode))
    for path, objs in renders.items():
        if objs.stand_ins:
            print("  (%s: not rendered, stand-ins used: %s)" % (os.path.basename(path), ", ".join(sorted(set(objs.stand_ins)))))
    if checked == 0:
        errors.append("no presenced container found")
    return errors


def check_nats_config(nats_server, paths):
    """Every bundled NATS container (a StatefulSet's container `nats`):
    `nats-server -t` on its rendered config, with its ConfigMap and Secret
    files written under a temporary root (the paths inside them rewritten
    there too) and its env resolved: an include that is missing, a password
    variable the env lacks, a TLS file that is not there all fail."""
    errors = []
    checked = 0
    for path, objs, d, spec, c in pod_containers(paths):
        if d["kind"] != "StatefulSet" or c.get("name") != "nats":
            continue
        checked += 1
        label = "%s: %s container %s" % (os.path.basename(path), ident(d), c["name"])
        with tempfile.TemporaryDirectory(prefix="presence-check-") as root:
            try:
                mounts = []
                argv, env = materialise(root, d, spec, c, objs, mounts_out=mounts)
            except Exception as e:
                errors.append("%s: %s" % (label, e))
                continue
            for top, _, files in os.walk(root):
                for fn in files:
                    f = os.path.join(top, fn)
                    with open(f) as fh:
                        text = fh.read()
                    for local, mp in sorted(mounts, key=lambda m: len(m[1]), reverse=True):
                        text = re.sub(r"(^|[\s:\"'])" + re.escape(mp) + r"(?=[/\s\"']|$)",
                                      lambda m: m.group(1) + local, text, flags=re.M)
                    with open(f, "w") as fh:
                        fh.write(text)
            run_env = {"PATH": "/usr/bin:/bin", "HOME": root}
            run_env.update(env)
            p = subprocess.run([nats_server, "-t"] + argv, env=run_env, cwd=root,
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=60)
            out = p.stdout.strip().replace(root, "")
            users = sorted(e for e in env if e.startswith("PRESENCE_NATS_"))
            if p.returncode == 0:
                print("  ok   %s\n       %s; env %s" % (label, out, ", ".join(users) or "(no passwords)"))
            else:
                print("  FAIL %s (nats-server -t)\n       %s" % (label, out.replace("\n", "\n       ")))
                errors.append("%s: nats-server -t exited %d" % (label, p.returncode))
    if checked == 0:
        print("  (no bundled NATS in these renders)")
    return errors


def materialise(root, d, spec, c, objs, rewrite_paths=True, mounts_out=None):
    """Write the container's volumes under root, resolve its env, and rewrite
    the args and env values that name a mount path (unless rewrite_paths is
    false: the files are then bind-mounted at their paths, see pod_spec)."""
    volumes = {v["name"]: v for v in spec.get("volumes") or []}
    # A StatefulSet's volumeClaimTemplates: an empty directory here.
    for t in (d.get("spec") or {}).get("volumeClaimTemplates") or []:
        volumes.setdefault(t["metadata"]["name"], {"name": t["metadata"]["name"], "emptyDir": {}})
    mounts = []
    for m in c.get("volumeMounts") or []:
        v = volumes[m["name"]]
        target = root + m["mountPath"]
        files = {}

        def add_source(kind, src, name):
            items = src.get("items") or [{"key": k, "path": k} for k in objs.keys(kind, name)]
            for it in items:
                value = objs.get(kind, name, it["key"], optional=src.get("optional", False))
                if value is not None:
                    if it["path"] in files:
                        raise ValueError("volume %s: two sources write %s" % (v["name"], it["path"]))
                    files[it["path"]] = value

        if "secret" in v or "configMap" in v:
            kind = "Secret" if "secret" in v else "ConfigMap"
            src = v.get("secret") or v.get("configMap")
            add_source(kind, src, src.get("secretName") or src.get("name"))
        elif "projected" in v:
            # Several Secrets' and ConfigMaps' keys in one directory.
            for source in v["projected"].get("sources") or []:
                if "secret" in source:
                    add_source("Secret", source["secret"], source["secret"]["name"])
                elif "configMap" in source:
                    add_source("ConfigMap", source["configMap"], source["configMap"]["name"])
                else:
                    raise ValueError("volume %s: projected source %s not handled by the check"
                                     % (v["name"], list(source)))
        elif "emptyDir" in v:
            pass
        else:
            raise ValueError("volume %s: kind not handled by the check" % v["name"])
        if m.get("subPath"):
            content = files.get(m["subPath"])
            if content is None:
                raise ValueError("subPath %s of volume %s is empty" % (m["subPath"], v["name"]))
            os.makedirs(os.path.dirname(target), exist_ok=True)
            with open(target, "w") as f:
                f.write(content)
        else:
            os.makedirs(target, exist_ok=True)
            for p, content in files.items():
                os.makedirs(os.path.dirname(os.path.join(target, p)), exist_ok=True)
                with open(os.path.join(target, p), "w") as f:
                    f.write(content)
        mounts.append(m["mountPath"])

    if mounts_out is not None:
        mounts_out.extend((root + mp, mp) for mp in mounts)

    def rewrite(s):
        if not rewrite_paths:
            return s
        for mp in sorted(mounts, key=len, reverse=True):
            s = re.sub(r"(^|[=,:\s])" + re.escape(mp), lambda m: m.group(1) + root + mp, s)
        return s

    env = {}
    for ef in c.get("envFrom") or []:
        if "secretRef" in ef:
            n = ef["secretRef"]["name"]
            for k in objs.keys("Secret", n):
                env[ef.get("prefix", "") + k] = objs.get("Secret", n, k)
        if "configMapRef" in ef:
            n = ef["configMapRef"]["name"]
            for k in objs.keys("ConfigMap", n):
                env[ef.get("prefix", "") + k] = objs.get("ConfigMap", n, k)
    for e in c.get("env") or []:
        if "value" in e:
            env[e["name"]] = rewrite(expand(e["value"], env))
        elif "valueFrom" in e:
            vf = e["valueFrom"]
            if "secretKeyRef" in vf:
                r = vf["secretKeyRef"]
                val = objs.get("Secret", r["name"], r["key"], r.get("optional", False))
            elif "configMapKeyRef" in vf:
                r = vf["configMapKeyRef"]
                val = objs.get("ConfigMap", r["name"], r["key"], r.get("optional", False))
            elif "fieldRef" in vf:
                val = field_ref(vf["fieldRef"]["fieldPath"], d)
            else:
                raise ValueError("env %s: valueFrom %s not handled by the check" % (e["name"], list(vf)))
            if val is not None:
                env[e["name"]] = val
        else:
            env[e["name"]] = ""
    argv = [rewrite(expand(a, env)) for a in (c.get("command") or [])[1:] + (c.get("args") or [])]
    return argv, env


# --- monitoring -----------------------------------------------------------------

def check_monitoring(path, mondir):
    """The PrometheusRules and dashboard ConfigMaps of a render are exactly
    the rule files and dashboards of mondir ("no copies": fed from the files)."""
    import glob
    import json
    errors = []
    docs = load_docs(path)
    rules = {(d["metadata"].get("annotations") or {}).get("presence/source"): d
             for d in docs if d["kind"] == "PrometheusRule"}
    boards = {(d["metadata"].get("annotations") or {}).get("presence/source"): d
              for d in docs if d["kind"] == "ConfigMap" and (d["metadata"].get("labels") or {}).get("grafana_dashboard")}
    want_rules = {}
    for f in sorted(glob.glob(os.path.join(mondir, "alerts", "*.yaml"))):
        with open(f) as fh:
            content = yaml.safe_load(fh)
        if isinstance(content, dict) and "groups" in content:
            want_rules["monitoring/alerts/" + os.path.basename(f)] = content
    for src, content in want_rules.items():
        if src not in rules:
            errors.append("%s: no PrometheusRule from %s" % (path, src))
        elif rules[src]["spec"] != content:
            errors.append("%s: the PrometheusRule from %s differs from the file" % (path, src))
    for src in set(rules) - set(want_rules):
        errors.append("%s: PrometheusRule from %s, which is not a rule file of %s" % (path, src, mondir))
    want_boards = {}
    for f in sorted(glob.glob(os.path.join(mondir, "dashboards", "*.json"))):
        with open(f) as fh:
            want_boards["monitoring/dashboards/" + os.path.basename(f)] = json.load(fh)
    for src, content in want_boards.items():
        d = boards.get(src)
        if d is None:
            errors.append("%s: no dashboard ConfigMap from %s" % (path, src))
            continue
        if d["metadata"]["labels"].get("grafana_dashboard") != "1":
            errors.append("%s: %s is not labelled grafana_dashboard: \"1\"" % (path, ident(d)))
        data = d.get("data") or {}
        key = os.path.basename(src)
        if key not in data or json.loads(data[key]) != content:
            errors.append("%s: %s does not hold %s unchanged" % (path, ident(d), src))
    for src in set(boards) - set(want_boards):
        errors.append("%s: dashboard ConfigMap from %s, which is not in %s" % (path, src, mondir))
    if not errors:
        print("  ok   %s: %d rule files, %d dashboards from %s" % (os.path.basename(path), len(want_rules), len(want_boards), mondir))
    return errors


# --- pod-spec -------------------------------------------------------------------

def pod_spec(path, outdir):
    """For scripts/image-test.sh: the first presenced container of a render
    and its presence-loadtest test pod, resolved: args, env, and the files of
    their volumes written under outdir (to be bind-mounted at their mount
    paths, mode 0440, group 65534 as fsGroup and defaultMode make them)."""
    import json
    docs = load_docs(path)
    objs = Objects(docs)
    out = {}
    for d in docs:
        _, spec = pod_spec_of(d)
        if spec is None:
            continue
        for c in spec.get("containers") or []:
            role = "server" if is_presenced(c) else "test" if is_loadtest(c) else None
            if role is None or role in out:
                continue
            root = os.path.join(outdir, role)
            os.makedirs(root, exist_ok=True)
            mounts = []
            argv, env = materialise(root, d, spec, c, objs, rewrite_paths=False, mounts_out=mounts)
            out[role] = {"object": ident(d), "args": argv, "env": env, "mounts": mounts}
    for role in ("server", "test"):
        if role not in out:
            return ["%s: no %s container" % (path, role)]
    with open(os.path.join(outdir, "spec.json"), "w") as f:
        json.dump(out, f, indent=1)
    return []


# --- split-k8s ------------------------------------------------------------------

HELM_ONLY_LABELS = re.compile(r"^\s+(helm\.sh/chart|app\.kubernetes\.io/managed-by): .*\n", re.M)


def chunks(path):
    """The rendered objects as text (comments kept), without Helm's labels."""
    with open(path) as f:
        text = f.read()
    out = []
    for part in re.split(r"^---\s*$", text, flags=re.M):
        part = re.sub(r"^# Source: .*\n", "", part.strip("\n") + "\n", flags=re.M)
        d = yaml.safe_load(part)
        if not d:
            continue
        out.append((d["kind"], d["metadata"]["name"], HELM_ONLY_LABELS.sub("", part).strip("\n") + "\n"))
    return out


def write_objects(directory, objects, header):
    os.makedirs(directory, exist_ok=True)
    files = []
    for kind, name, text in objects:
        fn = "%s-%s.yaml" % (kind.lower(), name)
        with open(os.path.join(directory, fn), "w") as f:
            f.write(header + text)
        files.append(fn)
    return sorted(files)


def split_k8s(all_path, cluster_path, outdir, kustomizations):
    header = "# Generated by `make k8s` from helm/presence; do not edit.\n"
    a, c = chunks(all_path), chunks(cluster_path)
    common = [x for x in a if x in c]
    only_a = [x for x in a if x not in common]
    only_c = [x for x in c if x not in common]
    for sub in ("base", "overlays/all-in-one", "overlays/cluster"):
        d = os.path.join(outdir, sub)
        if os.path.isdir(d):
            for fn in os.listdir(d):
                if fn.endswith(".yaml") and fn != "kustomization.yaml":
                    os.remove(os.path.join(d, fn))
    lists = {
        "base": write_objects(os.path.join(outdir, "base"), common, header),
        "overlays/all-in-one": write_objects(os.path.join(outdir, "overlays/all-in-one"), only_a, header),
        "overlays/cluster": write_objects(os.path.join(outdir, "overlays/cluster"), only_c, header),
    }
    for sub, files in lists.items():
        with open(os.path.join(kustomizations, "kustomization-%s.yaml" % sub.replace("/", "-"))) as f:
            template = f.read()
        resources = "".join("  - %s\n" % fn for fn in files)
        with open(os.path.join(outdir, sub, "kustomization.yaml"), "w") as f:
            f.write(header + template.replace("  # @RESOURCES@\n", resources))
    return []


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    v = sub.add_parser("validate")
    v.add_argument("--allow-host-network", action="append", default=[],
                   help="component allowed to use hostNetwork (reported)")
    v.add_argument("files", nargs="+")
    cc = sub.add_parser("check-config")
    cc.add_argument("--bin", required=True)
    cc.add_argument("--loadtest", help="presence-loadtest: also check the args of the test pods that run it")
    cc.add_argument("files", nargs="+")
    nc = sub.add_parser("nats-config")
    nc.add_argument("--nats-server", required=True)
    nc.add_argument("files", nargs="+")
    mo = sub.add_parser("monitoring")
    mo.add_argument("file")
    mo.add_argument("mondir")
    ps = sub.add_parser("pod-spec")
    ps.add_argument("file")
    ps.add_argument("outdir")
    sk = sub.add_parser("split-k8s")
    sk.add_argument("all_in_one")
    sk.add_argument("cluster")
    sk.add_argument("outdir")
    sk.add_argument("--kustomizations", required=True)
    a = ap.parse_args()
    if a.cmd == "validate":
        errors = validate(a.files, set(a.allow_host_network))
    elif a.cmd == "check-config":
        errors = check_config(a.bin, a.files, a.loadtest)
    elif a.cmd == "nats-config":
        errors = check_nats_config(a.nats_server, a.files)
    elif a.cmd == "pod-spec":
        errors = pod_spec(a.file, a.outdir)
    elif a.cmd == "monitoring":
        errors = check_monitoring(a.file, a.mondir)
    else:
        errors = split_k8s(a.all_in_one, a.cluster, a.outdir, a.kustomizations)
    for e in errors:
        print("  ERROR " + e, file=sys.stderr)
    sys.exit(1 if errors else 0)


if __name__ == "__main__":
    main()
