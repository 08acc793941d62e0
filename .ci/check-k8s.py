#!/usr/bin/env python3
"""Reads what `kubectl kustomize` rendered from k8s/ and checks what no schema can: .ci/check-k8s
runs it (with the tools venv's Python, for PyYAML). Subcommands:

  split RENDERED OUTDIR         the objects kubernetes-validate has schemas for -> OUTDIR/core.yaml,
                                the KEDA objects (CRDs) -> OUTDIR/keda-N.yaml, one per file (for
                                check-jsonschema); any other CRD group fails (nothing skipped)
  policy RENDERED               every Deployment and Job: requests and limits, the securityContext
                                (non-root, read-only root, no privilege escalation, capabilities
                                dropped, RuntimeDefault seccomp); every Deployment: liveness and
                                readiness probes on the admin port that KEEL_ADMIN_ADDR binds, and
                                preStop + KEEL_SHUTDOWN_DELAY + KEEL_SHUTDOWN_TIMEOUT < grace; every
                                envFrom/Service/HPA/PDB/ScaledObject reference resolves
  env-names RENDERED SRC        every variable the pods get (env, and the keys of the ConfigMaps and
                                Secrets they load) is one Keel reads: a string literal under SRC
                                (the rule of tests/api/config_docs.rs)
  roles RENDERED                the roles the containers run (their args), one per line
  pod-env RENDERED DEPLOYMENT   the container's environment as Kubernetes would build it, NAME=VALUE
                                per line (ConfigMap, then Secret, then env, later ones winning)
  grace RENDERED DEPLOYMENT     its terminationGracePeriodSeconds
  probes RENDERED DEPLOYMENT    its probe paths, one per line
  keda-queues RENDERED SRC      the ScaledObject's queues are the work queues of src/jobs (under the
                                rendered KEEL_AMQP_PREFIX), one trigger each
"""

import base64
import re
import sys
from pathlib import Path

import yaml

# Variables Keel reads under their own names (tests/api/config_docs.rs: EXACT_NAMES). One counts
# only when it is also a string literal under src/, so a name announced but not yet read (a
# DATABASE_READ_URL before its code lands) is refused until it is.
EXACT_NAMES = {"DATABASE_URL", "DATABASE_READ_URL", "REDIS_URL", "AMQP_URL", "SMTP_URL", "RUST_LOG"}
PREFIXES = ("KEEL_", "OTEL_")
# Keel's defaults for the shutdown variables (src/config/http.rs).
DEFAULTS = {"KEEL_SHUTDOWN_DELAY": "0s", "KEEL_SHUTDOWN_TIMEOUT": "20s", "KEEL_ADMIN_ADDR": "127.0.0.1:9000"}
KEDA_GROUP = "keda.sh"
# The Postgres connections the manifests may use at most: PostgreSQL's default max_connections
# (100) less superuser_reserved_connections (3). docs/scaling.md, "The Postgres connection budget":
# with the default pool of 20, four processes fill it. An operator with a bigger server (or
# PgBouncer in front) raises this with the manifests' pool sizes.
POSTGRES_CONNECTIONS = 97
DEFAULT_POOL = 20  # KEEL_DB_MAX_CONNECTIONS' default (src/config/database.rs)

errors = []


def fail(message):
    errors.append(message)


def load(path):
    with open(path) as f:
        return [d for d in yaml.safe_load_all(f) if d]


def name_of(obj):
    return f"{obj['kind']}/{obj['metadata']['name']}"


def find(objs, kind, name):
    for obj in objs:
        if obj["kind"] == kind and obj["metadata"]["name"] == name:
            return obj
    return None


def pod_spec(obj):
    return obj["spec"]["template"]["spec"]


def workloads(objs, kinds=("Deployment", "Job")):
    return [o for o in objs if o["kind"] in kinds]


def seconds(raw):
    """A humantime duration as Keel's configuration writes them (500ms, 5s, 1m, 1m 30s)."""
    total = 0.0
    units = {"ms": 0.001, "s": 1, "m": 60, "min": 60, "h": 3600}
    parts = re.findall(r"(\d+(?:\.\d+)?)\s*(ms|min|s|m|h)", raw)
    if not parts or re.sub(r"(\d+(?:\.\d+)?)\s*(ms|min|s|m|h)|\s", "", raw):
        raise ValueError(f"{raw!r} is not a duration this checker reads")
    for number, unit in parts:
        total += float(number) * units[unit]
    return total


def config_data(objs, container, kind):
    """The data of the ConfigMaps (or Secrets) a container loads with envFrom, in order."""
    data = {}
    ref_key = "configMapRef" if kind == "ConfigMap" else "secretRef"
    for source in container.get("envFrom", []):
        ref = source.get(ref_key)
        if not ref:
            continue
        obj = find(objs, kind, ref["name"])
        if obj is None:
            fail(f"envFrom names {kind} {ref['name']}, which the render does not contain")
            continue
        if kind == "Secret":
            data.update({k: base64.b64decode(v).decode() for k, v in (obj.get("data") or {}).items()})
            data.update(obj.get("stringData") or {})
        else:
            data.update(obj.get("data") or {})
    return data


def container_env(objs, container):
    """What the process sees: envFrom in order (ConfigMaps, Secrets), then env (env wins)."""
    env = {}
    for source in container.get("envFrom", []):
        for kind, key in (("ConfigMap", "configMapRef"), ("Secret", "secretRef")):
            if key in source:
                env.update(config_data(objs, {"envFrom": [source]}, kind))
    for item in container.get("env", []):
        if "value" not in item:
            fail(f"env {item['name']}: only literal values are understood by this checker")
            continue
        env[item["name"]] = item["value"]
    return env


def the_container(obj):
    containers = pod_spec(obj)["containers"]
    if len(containers) != 1:
        fail(f"{name_of(obj)}: expected one container, found {len(containers)}")
    return containers[0]


# ---- split ------------------------------------------------------------------------------------
def cmd_split(rendered, outdir):
    objs = load(rendered)
    out = Path(outdir)
    out.mkdir(parents=True, exist_ok=True)
    core, keda = [], []
    for obj in objs:
        group = obj["apiVersion"].split("/")[0] if "/" in obj["apiVersion"] else ""
        if group == KEDA_GROUP:
            keda.append(obj)
        elif "." in group and not group.endswith(".k8s.io"):
            fail(f"{name_of(obj)}: group {group} is a CRD this check has no schema for")
        else:
            core.append(obj)
    with open(out / "core.yaml", "w") as f:
        yaml.safe_dump_all(core, f, sort_keys=False)
    for n, obj in enumerate(keda):
        with open(out / f"keda-{n}.yaml", "w") as f:
            yaml.safe_dump(obj, f, sort_keys=False)
    print(f"{len(core)} built-in objects, {len(keda)} KEDA objects")


# ---- policy -----------------------------------------------------------------------------------
def check_security(obj):
    spec = pod_spec(obj)
    pod_sc = spec.get("securityContext") or {}
    for container in spec["containers"] + spec.get("initContainers", []):
        where = f"{name_of(obj)} container {container['name']}"
        sc = container.get("securityContext") or {}
        if not (sc.get("runAsNonRoot", pod_sc.get("runAsNonRoot")) is True):
            fail(f"{where}: runAsNonRoot is not true")
        uid = sc.get("runAsUser", pod_sc.get("runAsUser"))
        if uid is not None and uid == 0:
            fail(f"{where}: runAsUser 0")
        if sc.get("readOnlyRootFilesystem") is not True:
            fail(f"{where}: readOnlyRootFilesystem is not true")
        if sc.get("allowPrivilegeEscalation") is not False:
            fail(f"{where}: allowPrivilegeEscalation is not false")
        if "ALL" not in ((sc.get("capabilities") or {}).get("drop") or []):
            fail(f"{where}: capabilities.drop lacks ALL")
        if (sc.get("capabilities") or {}).get("add"):
            fail(f"{where}: adds capabilities")
        seccomp = (sc.get("seccompProfile") or pod_sc.get("seccompProfile") or {}).get("type")
        if seccomp != "RuntimeDefault":
            fail(f"{where}: seccompProfile is {seccomp!r}, not RuntimeDefault")
        resources = container.get("resources") or {}
        for bound in ("requests", "limits"):
            for resource in ("cpu", "memory"):
                if resource not in (resources.get(bound) or {}):
                    fail(f"{where}: no {bound}.{resource}")


def port_number(container, port):
    if isinstance(port, int):
        return port
    for p in container.get("ports", []):
        if p.get("name") == port:
            return p["containerPort"]
    fail(f"container {container['name']}: no port named {port}")
    return None


def prestop_seconds(obj, container):
    pre = (container.get("lifecycle") or {}).get("preStop")
    if not pre:
        return 0
    if "sleep" in pre:
        return pre["sleep"]["seconds"]
    command = (pre.get("exec") or {}).get("command") or []
    if len(command) == 2 and command[0] in ("sleep", "/bin/sleep", "/usr/bin/sleep"):
        return seconds(command[1] if command[1][-1].isalpha() else command[1] + "s")
    fail(f"{name_of(obj)}: a preStop hook this checker cannot time: {pre}")
    return 0


def check_deployment(objs, obj):
    container = the_container(obj)
    env = container_env(objs, container)
    where = name_of(obj)
    admin_port = int(env.get("KEEL_ADMIN_ADDR", DEFAULTS["KEEL_ADMIN_ADDR"]).rsplit(":", 1)[1])
    if env.get("KEEL_ADMIN_ADDR", DEFAULTS["KEEL_ADMIN_ADDR"]).startswith("127."):
        fail(f"{where}: KEEL_ADMIN_ADDR listens on loopback only: the kubelet cannot probe it")
    for probe, path in (("livenessProbe", "/healthz"), ("readinessProbe", "/readyz")):
        spec = container.get(probe)
        if not spec:
            fail(f"{where}: no {probe}")
            continue
        get = spec.get("httpGet") or {}
        if get.get("path") != path:
            fail(f"{where}: {probe} path {get.get('path')!r}, expected {path}")
        if port_number(container, get.get("port")) != admin_port:
            fail(f"{where}: {probe} port is not the admin listener's {admin_port} (KEEL_ADMIN_ADDR)")
    startup = container.get("startupProbe")
    if startup and port_number(container, (startup.get("httpGet") or {}).get("port")) != admin_port:
        fail(f"{where}: startupProbe port is not the admin listener's {admin_port}")
    grace = pod_spec(obj).get("terminationGracePeriodSeconds", 30)
    delay = seconds(env.get("KEEL_SHUTDOWN_DELAY", DEFAULTS["KEEL_SHUTDOWN_DELAY"]))
    timeout = seconds(env.get("KEEL_SHUTDOWN_TIMEOUT", DEFAULTS["KEEL_SHUTDOWN_TIMEOUT"]))
    pre = prestop_seconds(obj, container)
    total = pre + delay + timeout
    verdict = "ok" if total < grace else "TOO LONG"
    print(f"  {where}: preStop {pre:g}s + KEEL_SHUTDOWN_DELAY {delay:g}s + KEEL_SHUTDOWN_TIMEOUT "
          f"{timeout:g}s = {total:g}s < terminationGracePeriodSeconds {grace}s: {verdict}")
    if total >= grace:
        fail(f"{where}: the shutdown ({total:g}s) does not fit the grace period ({grace}s)")


def check_references(objs):
    for obj in objs:
        kind = obj["kind"]
        if kind == "Service":
            selected = [d for d in workloads(objs, ("Deployment",))
                        if all(d["spec"]["template"]["metadata"]["labels"].get(k) == v
                               for k, v in obj["spec"]["selector"].items())]
            if not selected:
                fail(f"{name_of(obj)}: its selector matches no Deployment's pods")
            for port in obj["spec"]["ports"]:
                for d in selected:
                    if port_number(the_container(d), port["targetPort"]) is None:
                        fail(f"{name_of(obj)}: targetPort {port['targetPort']} is no port of {name_of(d)}")
        elif kind == "Ingress":
            for rule in obj["spec"].get("rules", []):
                for path in rule["http"]["paths"]:
                    backend = path["backend"]["service"]
                    service = find(objs, "Service", backend["name"])
                    if service is None:
                        fail(f"{name_of(obj)}: backend Service {backend['name']} is not rendered")
                    elif backend["port"].get("name") not in [p.get("name") for p in service["spec"]["ports"]]:
                        fail(f"{name_of(obj)}: backend port {backend['port']} is not a port of the Service")
        elif kind in ("HorizontalPodAutoscaler", "ScaledObject"):
            target = obj["spec"]["scaleTargetRef"]
            if find(objs, target.get("kind", "Deployment"), target["name"]) is None:
                fail(f"{name_of(obj)}: scale target {target['name']} is not rendered")
        elif kind == "PodDisruptionBudget":
            labels = obj["spec"]["selector"]["matchLabels"]
            if not any(all(d["spec"]["template"]["metadata"]["labels"].get(k) == v for k, v in labels.items())
                       for d in workloads(objs, ("Deployment",))):
                fail(f"{name_of(obj)}: its selector matches no Deployment's pods")
    namespaces = {o["metadata"].get("namespace") for o in objs if o["kind"] != "Namespace"}
    if len(namespaces) != 1:
        fail(f"objects in several namespaces (or some in none): {sorted(map(str, namespaces))}")
    hpa_targets = {o["spec"]["scaleTargetRef"]["name"] for o in objs
                   if o["kind"] in ("HorizontalPodAutoscaler", "ScaledObject")}
    for d in workloads(objs, ("Deployment",)):
        if d["metadata"]["name"] in hpa_targets and "replicas" in d["spec"]:
            fail(f"{name_of(d)}: has `replicas` while an autoscaler owns it (every apply would reset it)")
    # KEDA: the authentication and the Secret it reads.
    for so in (o for o in objs if o["kind"] == "ScaledObject"):
        for trigger in so["spec"]["triggers"]:
            ref = (trigger.get("authenticationRef") or {}).get("name")
            auth = find(objs, "TriggerAuthentication", ref) if ref else None
            if ref and auth is None:
                fail(f"{name_of(so)}: authenticationRef {ref} is not rendered")
    for auth in (o for o in objs if o["kind"] == "TriggerAuthentication"):
        for target in auth["spec"].get("secretTargetRef", []):
            secret = find(objs, "Secret", target["name"])
            if secret is None:
                fail(f"{name_of(auth)}: Secret {target['name']} is not rendered (a generated Secret's "
                     "hashed name must reach it: add the component inside the overlay)")
            elif target["key"] not in (secret.get("data") or {}):
                fail(f"{name_of(auth)}: Secret {target['name']} has no key {target['key']}")


def cmd_policy(rendered):
    objs = load(rendered)
    deployments = workloads(objs, ("Deployment",))
    if not deployments:
        fail("no Deployment rendered")
    for obj in workloads(objs):
        check_security(obj)
    for obj in deployments:
        check_deployment(objs, obj)
    check_references(objs)
    check_connection_budget(objs)


def most_pods(objs, obj):
    """The most pods a workload can run at once: its autoscaler's maximum (HPA or KEDA) or its
    replicas, plus the rolling update's surge."""
    name, kind = obj["metadata"]["name"], obj["kind"]
    if kind == "Job":
        return 1
    most = obj["spec"].get("replicas", 1)
    for scaler in objs:
        target = (scaler.get("spec") or {}).get("scaleTargetRef") or {}
        if target.get("name") != name or target.get("kind", "Deployment") != kind:
            continue
        if scaler["kind"] == "HorizontalPodAutoscaler":
            most = scaler["spec"]["maxReplicas"]
        elif scaler["kind"] == "ScaledObject":
            most = scaler["spec"].get("maxReplicaCount", 100)  # KEDA's default
    surge = ((obj["spec"].get("strategy") or {}).get("rollingUpdate") or {}).get("maxSurge", "25%")
    if isinstance(surge, str) and surge.endswith("%"):
        surge = -(-most * int(surge[:-1]) // 100)  # rounded up, as Kubernetes does
    return most + int(surge)


def check_connection_budget(objs):
    """Every process opens a pool of KEEL_DB_MAX_CONNECTIONS to the primary: at the autoscalers'
    maxima, mid-rollout, with the migrate Job running, they must fit POSTGRES_CONNECTIONS."""
    total, parts = 0, []
    for obj in workloads(objs):
        env = container_env(objs, the_container(obj))
        pool = int(env.get("KEEL_DB_MAX_CONNECTIONS", DEFAULT_POOL))
        pods = most_pods(objs, obj)
        total += pods * pool
        parts.append(f"{name_of(obj)} {pods} x {pool}")
    verdict = "ok" if total <= POSTGRES_CONNECTIONS else "OVER"
    print(f"  Postgres connections at most: {' + '.join(parts)} = {total} "
          f"<= {POSTGRES_CONNECTIONS}: {verdict}")
    if total > POSTGRES_CONNECTIONS:
        fail(f"the pools can open {total} Postgres connections, over the {POSTGRES_CONNECTIONS} "
             f"of a default server (docs/scaling.md): lower KEEL_DB_MAX_CONNECTIONS or the maxima")


# ---- env-names --------------------------------------------------------------------------------
def variables_read(src):
    """String literals under src that are whole variable names (comments skipped)."""
    names = set()
    for path in Path(src).rglob("*.rs"):
        for line in path.read_text().splitlines():
            code = line.split("//", 1)[0] if not line.lstrip().startswith("//") else ""
            for literal in re.findall(r'"([A-Z][A-Z0-9_]*)"', code):
                if literal in EXACT_NAMES or (literal.startswith(PREFIXES) and len(literal) > 5):
                    names.add(literal)
    return names


def cmd_env_names(rendered, src):
    objs = load(rendered)
    known = variables_read(src)
    if "KEEL_SHUTDOWN_DELAY" not in known or "DATABASE_URL" not in known:
        fail(f"reading the variable names from {src} found too little ({len(known)}): is it Keel's source?")
    used = {}
    for obj in workloads(objs):
        for container in pod_spec(obj)["containers"]:
            names = set(container_env(objs, container))
            for name in names:
                used.setdefault(name, set()).add(name_of(obj))
    for name in sorted(used):
        if name not in known:
            fail(f"{name} (in {', '.join(sorted(used[name]))}) is no variable Keel reads")
    print(f"  {len(used)} variables in the pods' environments, all read by Keel"
          if not errors else f"  {len(used)} variables checked")


# ---- small queries for the shell --------------------------------------------------------------
def cmd_roles(rendered):
    roles = set()
    for obj in workloads(load(rendered)):
        for container in pod_spec(obj)["containers"]:
            if container.get("command"):
                fail(f"{name_of(obj)}: overrides the image's entrypoint (keel)")
            args = container.get("args") or []
            if len(args) != 1:
                fail(f"{name_of(obj)}: expected one argument (the role), found {args}")
            roles.update(args[:1])
    print("\n".join(sorted(roles)))


def deployment(objs, name):
    obj = find(objs, "Deployment", name)
    if obj is None:
        sys.exit(f"no Deployment {name} in the render")
    return obj


def cmd_pod_env(rendered, name):
    objs = load(rendered)
    for key, value in container_env(objs, the_container(deployment(objs, name))).items():
        if "\n" in value:
            fail(f"{key}: a multi-line value")
        print(f"{key}={value}")


def cmd_grace(rendered, name):
    print(pod_spec(deployment(load(rendered), name)).get("terminationGracePeriodSeconds", 30))


def cmd_probes(rendered, name):
    container = the_container(deployment(load(rendered), name))
    paths = []
    for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
        if container.get(probe):
            paths.append(container[probe]["httpGet"]["path"])
    print("\n".join(dict.fromkeys(paths)))


def cmd_keda_queues(rendered, src):
    objs = load(rendered)
    mod = (Path(src) / "jobs" / "mod.rs").read_text()
    queued = re.search(r"QUEUED: \[Kind; \d+\] = \[([^\]]*)\]", mod)
    if not queued:
        fail("src/jobs/mod.rs: Kind::QUEUED not found")
        return
    kinds = re.findall(r"Kind::(\w+)", queued.group(1))
    names = dict(re.findall(r"Kind::(\w+) => \"([^\"]+)\"", mod))
    if not kinds or any(k not in names for k in kinds):
        fail("src/jobs/mod.rs: could not read the queued kinds' names")
        return
    scaled = [o for o in objs if o["kind"] == "ScaledObject"]
    if not scaled:
        fail("no ScaledObject rendered")
        return
    for so in scaled:
        target = so["spec"]["scaleTargetRef"]["name"]
        container = the_container(deployment(objs, target))
        prefix = container_env(objs, container).get("KEEL_AMQP_PREFIX") or "keel."
        expected = sorted(prefix + names[k] for k in kinds)
        queues = sorted(t["metadata"].get("queueName") for t in so["spec"]["triggers"] if t["type"] == "rabbitmq")
        if queues != expected:
            fail(f"{name_of(so)}: triggers on {queues}, but the work queues are {expected}")
        else:
            print(f"  {name_of(so)}: triggers on {', '.join(queues)} (src/jobs: the work queues)")


def main():
    commands = {
        "split": cmd_split, "policy": cmd_policy, "env-names": cmd_env_names, "roles": cmd_roles,
        "pod-env": cmd_pod_env, "grace": cmd_grace, "probes": cmd_probes, "keda-queues": cmd_keda_queues,
    }
    if len(sys.argv) < 3 or sys.argv[1] not in commands:
        sys.exit(__doc__)
    commands[sys.argv[1]](*sys.argv[2:])
    if errors:
        for e in errors:
            print(f"{sys.argv[2]}: {e}", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
