#!/usr/bin/env python3
"""Checks that the deploy files agree with each other, as `docker compose up` would need them to.

There is no Docker engine in CI, so nothing here starts a container: it reads docker-compose.yml,
deploy/prometheus/prometheus.yml, deploy/otel-collector/config.yaml, the Grafana provisioning
files and .dockerignore, and checks the references between them — bind-mount sources exist, every
host a config talks to is a compose service listening on that port, the collector's pipelines use
components it defines, Grafana's provider path is where the dashboards are mounted, the image's
build context holds what `cargo build` reads and not target/ or .git/.

    check-deploy-wiring.py                 check; one line per problem, exit 1 if any
    check-deploy-wiring.py --keel-env      print the `keel` service's environment, NAME=VALUE per
                                           line (.ci/check-deploy starts `keel serve` with it)

Needs PyYAML (pinned in .ci/requirements.txt; run with the tools venv's python).
"""

import os
import re
import sys
from urllib.parse import urlsplit

import yaml

ROOT = os.path.normpath(os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
COMPOSE = "docker-compose.yml"
PROMETHEUS = "deploy/prometheus/prometheus.yml"
COLLECTOR = "deploy/otel-collector/config.yaml"
GRAFANA_DATASOURCES = "deploy/grafana/provisioning/datasources/prometheus.yml"
GRAFANA_DASHBOARDS = "deploy/grafana/provisioning/dashboards/keel.yml"
# Scrape targets whose service does not exist yet, and why.
NOT_YET = {}
# Ports the images listen on by default (no flag in compose changes them).
IMAGE_PORTS = {
    "prom/prometheus": {9090},
    "grafana/grafana": {3000},
    "jaegertracing/jaeger": {4317, 4318, 16686},
    "otel/opentelemetry-collector-contrib": set(),  # from its config file, added below
}

DOCKERIGNORE = ".dockerignore"
# What the release build reads, besides the files that src/ includes (found below).
BUILD_INPUTS = ["Cargo.toml", "Cargo.lock", ".cargo/config.toml", "src/main.rs", "src/lib.rs", "build.rs"]
BUILD_INPUT_DIRS = [".sqlx", "migrations", "src"]
KEPT_OUT = ["target/debug", ".git/HEAD"]

errors = []


def fail(path, why):
    errors.append(f"{path}: {why}")


def load(path):
    try:
        with open(os.path.join(ROOT, path), encoding="utf-8") as f:
            return yaml.safe_load(f)
    except (OSError, yaml.YAMLError) as e:
        fail(path, f"cannot read: {e}")
        return None


def env_of(service):
    env = service.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.split("=", 1) if "=" in item else (item, "") for item in env)
    return {k: "" if v is None else str(v) for k, v in env.items()}


def port_of_addr(addr):
    m = re.search(r":(\d+)$", addr or "")
    return int(m.group(1)) if m else None


def service_ports(name, service, collector_ports):
    """The ports a compose service listens on inside the network."""
    image = (service.get("image") or "").split(":")[0]
    if name in ("keel", "keel-worker"):
        env = env_of(service)
        return {p for p in (port_of_addr(env.get("KEEL_HTTP_ADDR", "0.0.0.0:8080")),
                            port_of_addr(env.get("KEEL_ADMIN_ADDR", "127.0.0.1:9000"))) if p}
    if image == "otel/opentelemetry-collector-contrib":
        return collector_ports
    return IMAGE_PORTS.get(image)


def mounts(service):
    """(source, target) of every bind mount given in short syntax or long syntax."""
    for v in service.get("volumes") or []:
        if isinstance(v, str):
            parts = v.split(":")
            if parts[0].startswith((".", "/")):
                yield parts[0], parts[1]
        elif isinstance(v, dict) and v.get("type") == "bind":
            yield v.get("source"), v.get("target")


def host_path(mount_list, container_path):
    """The repository path that a container path comes from, through the service's bind mounts."""
    best = None
    for source, target in mount_list:
        t = target.rstrip("/")
        if container_path == t or container_path.startswith(t + "/"):
            if best is None or len(t) > len(best[1]):
                best = (source, t)
    if best is None:
        return None
    return os.path.normpath(os.path.join(ROOT, best[0], os.path.relpath(container_path, best[1])))


def dockerignore_excludes(patterns):
    """A predicate: is this repository path left out of the build context? (Docker's rules: the
    last matching pattern wins, `!` re-includes, a pattern that matches a directory leaves out all
    of it, `*` does not cross `/`, `**` does.)"""
    compiled = []
    for raw in patterns:
        neg = raw.startswith("!")
        pat = raw[1:] if neg else raw
        pat = pat.strip().strip("/")
        if pat.startswith("./"):
            pat = pat[2:]
        rx = ""
        i = 0
        while i < len(pat):
            if pat.startswith("**/", i):
                rx += "(?:.*/)?"
                i += 3
            elif pat.startswith("**", i):
                rx += ".*"
                i += 2
            elif pat[i] == "*":
                rx += "[^/]*"
                i += 1
            elif pat[i] == "?":
                rx += "[^/]"
                i += 1
            else:
                rx += re.escape(pat[i])
                i += 1
        compiled.append((neg, re.compile(rx + "(?:/.*)?$")))

    def excluded(path):
        result = False
        for neg, rx in compiled:
            if rx.match(path):
                result = not neg
        return result
    return excluded


def check_build_context():
    try:
        with open(os.path.join(ROOT, DOCKERIGNORE), encoding="utf-8") as f:
            patterns = [ln.strip() for ln in f if ln.strip() and not ln.lstrip().startswith("#")]
    except OSError as e:
        fail(DOCKERIGNORE, f"cannot read: {e}")
        return
    excluded = dockerignore_excludes(patterns)
    needed = [p for p in BUILD_INPUTS if os.path.exists(os.path.join(ROOT, p))]
    for d in BUILD_INPUT_DIRS:
        for dirpath, _, files in os.walk(os.path.join(ROOT, d)):
            needed += [os.path.relpath(os.path.join(dirpath, f), ROOT) for f in files]
    # Files the sources pull in at compile time: include_str!/include_bytes!, sqlx::migrate!(dir).
    for dirpath, _, files in os.walk(os.path.join(ROOT, "src")):
        for f in files:
            if not f.endswith(".rs"):
                continue
            with open(os.path.join(dirpath, f), encoding="utf-8") as fh:
                text = fh.read()
            for m in re.finditer(r'include_(?:str|bytes)!\(\s*"([^"]+)"', text):
                needed.append(os.path.relpath(os.path.normpath(os.path.join(dirpath, m.group(1))), ROOT))
            for m in re.finditer(r'sqlx::migrate!\(\s*"([^"]+)"', text):
                needed.append(os.path.normpath(m.group(1)))
    for path in sorted(set(needed)):
        if excluded(path):
            fail(DOCKERIGNORE, f"leaves {path} out of the build context, but `cargo build --release` reads it")
    for path in KEPT_OUT:
        if not excluded(path):
            fail(DOCKERIGNORE, f"sends {path.split('/')[0]}/ into the build context; leave it out")


def main():
    compose = load(COMPOSE) or {}
    services = compose.get("services") or {}
    if "--keel-env" in sys.argv[1:]:
        for k, v in env_of(services.get("keel") or {}).items():
            print(f"{k}={v}")
        return 0 if "keel" in services else 1

    # -- compose on its own
    for name, svc in services.items():
        for source, target in mounts(svc):
            if not os.path.exists(os.path.join(ROOT, source)):
                fail(COMPOSE, f"service {name} mounts {source} (at {target}), which does not exist in the repository")
        build = svc.get("build")
        if build:
            context = build if isinstance(build, str) else build.get("context", ".")
            dockerfile = "Dockerfile" if isinstance(build, str) else build.get("dockerfile", "Dockerfile")
            if not os.path.isfile(os.path.join(ROOT, context, dockerfile)):
                fail(COMPOSE, f"service {name} builds {context}/{dockerfile}, which does not exist")
        deps = svc.get("depends_on") or []
        for dep in deps if isinstance(deps, list) else deps.keys():
            if dep not in services:
                fail(COMPOSE, f"service {name} depends on {dep}, which is not a service")
            elif not svc.get("profiles") and services[dep].get("profiles"):
                fail(COMPOSE, f"service {name} (no profile) depends on {dep}, which only runs with profile "
                              f"{services[dep]['profiles']}: a plain `docker compose up` would fail")

    # -- the OpenTelemetry Collector
    collector = load(COLLECTOR) or {}
    collector_ports = set()
    for rname, receiver in (collector.get("receivers") or {}).items():
        for proto in ((receiver or {}).get("protocols") or {}).values():
            p = port_of_addr((proto or {}).get("endpoint"))
            if p:
                collector_ports.add(p)
    for ename, ext in (collector.get("extensions") or {}).items():
        p = port_of_addr((ext or {}).get("endpoint"))
        if p:
            collector_ports.add(p)
    service_section = collector.get("service") or {}
    for ext in service_section.get("extensions") or []:
        if ext not in (collector.get("extensions") or {}):
            fail(COLLECTOR, f"service.extensions lists {ext}, which is not defined under extensions")
    used = {"receivers": set(), "processors": set(), "exporters": set()}
    pipelines = service_section.get("pipelines") or {}
    if "traces" not in pipelines:
        fail(COLLECTOR, "no traces pipeline (Keel sends traces)")
    for pname, pipeline in pipelines.items():
        for kind in used:
            for comp in (pipeline or {}).get(kind) or []:
                used[kind].add(comp)
                if comp not in (collector.get(kind) or {}):
                    fail(COLLECTOR, f"pipeline {pname} uses {kind[:-1]} {comp}, which is not defined under {kind}")
        procs = (pipeline or {}).get("processors") or []
        if "memory_limiter" in procs and procs[0] != "memory_limiter":
            fail(COLLECTOR, f"pipeline {pname}: memory_limiter must be the first processor")
    for kind, names in used.items():
        for comp in (collector.get(kind) or {}):
            if comp not in names:
                fail(COLLECTOR, f"{kind[:-1]} {comp} is defined but used by no pipeline")
    ports = {name: service_ports(name, svc, collector_ports) for name, svc in services.items()}

    def check_endpoint(path, what, endpoint, default_scheme="http"):
        url = urlsplit(endpoint if "://" in endpoint else f"{default_scheme}://{endpoint}")
        host, port = url.hostname, url.port
        if host in NOT_YET:
            if host in services:
                fail(path, f"{what}: {host} is a compose service now; drop it from NOT_YET in {__file__}")
            return
        if host not in services:
            fail(path, f"{what}: {endpoint} — {host} is not a service of {COMPOSE}")
        elif ports.get(host) is not None and port not in ports[host]:
            fail(path, f"{what}: {endpoint} — service {host} listens on {sorted(ports[host])}, not {port}")

    for ename, exporter in (collector.get("exporters") or {}).items():
        if (exporter or {}).get("endpoint"):
            check_endpoint(COLLECTOR, f"exporter {ename}", exporter["endpoint"])
    for name, svc in services.items():
        if "otel/opentelemetry-collector" in (svc.get("image") or ""):
            config_args = [a for a in (svc.get("command") or []) if str(a).startswith("--config=")]
            config_path = config_args[0].split("=", 1)[1] if config_args else "/etc/otelcol-contrib/config.yaml"
            src = host_path(list(mounts(svc)), config_path)
            if src is None or os.path.normpath(os.path.join(ROOT, COLLECTOR)) != src:
                fail(COMPOSE, f"service {name} reads {config_path}, which is not a mount of {COLLECTOR}")

    # -- Keel's own environment
    keel = services.get("keel")
    if keel is None:
        fail(COMPOSE, "no keel service")
    else:
        env = env_of(keel)
        if env.get("KEEL_ADMIN_ADDR", "").split(":")[0] not in ("0.0.0.0", "[::]"):
            fail(COMPOSE, "keel: KEEL_ADMIN_ADDR must listen on all interfaces (0.0.0.0:9000) for Prometheus")
        if env.get("OTEL_EXPORTER_OTLP_ENDPOINT"):
            check_endpoint(COMPOSE, "keel OTEL_EXPORTER_OTLP_ENDPOINT", env["OTEL_EXPORTER_OTLP_ENDPOINT"])
        if env.get("DATABASE_URL"):
            check_endpoint(COMPOSE, "keel DATABASE_URL", env["DATABASE_URL"].replace("postgres://", "http://", 1)
                           if env["DATABASE_URL"].startswith("postgres://") else env["DATABASE_URL"])

    # -- Prometheus
    prom = load(PROMETHEUS) or {}
    jobs = {}
    for sc in prom.get("scrape_configs") or []:
        for static in sc.get("static_configs") or []:
            for t in static.get("targets") or []:
                jobs.setdefault(sc.get("job_name"), []).append(t)
                if t.split(":")[0] != "localhost":
                    check_endpoint(PROMETHEUS, f"job {sc.get('job_name')} target", t)
    if "keel" not in str(jobs.get("keel-api")):
        fail(PROMETHEUS, "job keel-api must scrape the keel service (the SLO rules select job=\"keel-api\")")
    for name, svc in services.items():
        if (svc.get("image") or "").startswith("prom/prometheus"):
            cfg = next((a.split("=", 1)[1] for a in svc.get("command") or [] if str(a).startswith("--config.file=")),
                       "/etc/prometheus/prometheus.yml")
            src = host_path(list(mounts(svc)), cfg)
            if src != os.path.normpath(os.path.join(ROOT, PROMETHEUS)):
                fail(COMPOSE, f"service {name} reads {cfg}, which is not a mount of {PROMETHEUS}")
            for rf in prom.get("rule_files") or []:
                rule_in_container = os.path.normpath(os.path.join(os.path.dirname(cfg), rf))
                src = host_path(list(mounts(svc)), rule_in_container)
                if src is None or not os.path.isfile(src):
                    fail(PROMETHEUS, f"rule file {rf} is {rule_in_container} in service {name}, which no mount provides")

    # -- Grafana
    grafana = next((n for n, s in services.items() if (s.get("image") or "").startswith("grafana/grafana")), None)
    if grafana is None:
        fail(COMPOSE, "no grafana service")
    else:
        gm = list(mounts(services[grafana]))
        for prov, kind in ((GRAFANA_DATASOURCES, "datasources"), (GRAFANA_DASHBOARDS, "dashboards")):
            target = f"/etc/grafana/provisioning/{kind}/{os.path.basename(prov)}"
            if host_path(gm, target) != os.path.normpath(os.path.join(ROOT, prov)):
                fail(COMPOSE, f"service {grafana} does not mount {prov} at {target}")
        ds = load(GRAFANA_DATASOURCES) or {}
        for d in ds.get("datasources") or []:
            if d.get("type") == "prometheus":
                check_endpoint(GRAFANA_DATASOURCES, f"datasource {d.get('name')}", d.get("url", ""))
        dp = load(GRAFANA_DASHBOARDS) or {}
        for p in dp.get("providers") or []:
            path = ((p.get("options") or {}).get("path")) or ""
            src = host_path(gm, path)
            if src is None or not os.path.isdir(src) or not any(f.endswith(".json") for f in os.listdir(src)):
                fail(GRAFANA_DASHBOARDS, f"provider {p.get('name')} reads {path}, which in service {grafana} "
                                         f"is no mounted directory of dashboard JSON")
        home = env_of(services[grafana]).get("GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH")
        if home and not (host_path(gm, home) and os.path.isfile(host_path(gm, home))):
            fail(COMPOSE, f"GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH {home} is no mounted file")

    check_build_context()

    if errors:
        print("\n".join(errors), file=sys.stderr)
        return 1
    print(f"deploy wiring (and the build context of .dockerignore): {len(services)} compose services, {sum(len(t) for t in jobs.values())} scrape targets, "
          f"{len(pipelines)} collector pipeline(s), Grafana provisioning: ok"
          + "".join(f"\n  (not yet a service: {h}, {why})" for h, why in NOT_YET.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
