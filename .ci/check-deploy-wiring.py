#!/usr/bin/env python3
"""Checks that the deploy files agree with each other, as `docker compose up` would need them to.

There is no Docker engine in CI, so nothing here starts a container: it reads docker-compose.yml,
deploy/prometheus/prometheus.yml, deploy/otel-collector/config.yaml, the Grafana provisioning
files and .dockerignore, and checks the references between them — bind-mount sources exist, every
host a config talks to is a compose service listening on that port, the collector's pipelines use
components it defines, Grafana's provider path is where the dashboards are mounted, the image's
build context holds what `cargo build` reads and not target/ or .git/. And the start order of
the stack, as `docker compose up` would follow it:

- every long-running service (anything but a one-shot, `restart: "no"`) has a health check: its
  own, or its image's HEALTHCHECK when compose builds it from a Dockerfile here (the exceptions
  are listed in NO_HEALTHCHECK with the reason);
- every depends_on target exists and its condition fits it: service_completed_successfully for a
  one-shot (and only for one), service_healthy only for a service with a health check;
- profiles: a service that a profile enables depends only on services that the same profile
  enables (compose >= 2.18 refuses the project otherwise), and a service without a profile only
  on services without one;
- the API replicas, nginx's upstream (deploy/nginx/keel.conf) and Prometheus' keel-api job name
  the same services and ports; nginx's fixed address is what the replicas trust
  (KEEL_TRUSTED_PROXIES) and the load generator's is what nginx believes (set_real_ip_from);
  the worker's SMTP_URL and the load generator's --host are services listening on those ports.

    check-deploy-wiring.py                 check; one line per problem, exit 1 if any
    check-deploy-wiring.py --keel-env      print the first API replica's environment, NAME=VALUE
                                           per line (.ci/check-deploy starts `keel serve` with it)
    check-deploy-wiring.py --nginx-hosts   print every compose service name, one a line
                                           (.ci/check-deploy resolves them for `nginx -t`)

Needs PyYAML (pinned in .ci/requirements.txt; run with the tools venv's python).
"""

import ipaddress
import os
import re
import shlex
import sys
from urllib.parse import urlsplit

import yaml

ROOT = os.path.normpath(os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
COMPOSE = "docker-compose.yml"
PROMETHEUS = "deploy/prometheus/prometheus.yml"
COLLECTOR = "deploy/otel-collector/config.yaml"
GRAFANA_DATASOURCES = "deploy/grafana/provisioning/datasources/prometheus.yml"
GRAFANA_DASHBOARDS = "deploy/grafana/provisioning/dashboards/keel.yml"
NGINX = "deploy/nginx/keel.conf"
# Long-running services that cannot have a health check, by image, and why.
NO_HEALTHCHECK = {
    "otel/opentelemetry-collector-contrib": "its image is FROM scratch: no shell or HTTP client to run a check with",
}
# Scrape targets whose service does not exist yet, and why.
NOT_YET = {}
# Ports the images listen on by default (no flag in compose changes them).
IMAGE_PORTS = {
    "prom/prometheus": {9090},
    "grafana/grafana": {3000},
    "jaegertracing/jaeger": {4317, 4318, 16686},
    "axllent/mailpit": {1025, 8025},
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
    if is_keel(service):
        env = env_of(service)
        return {p for p in (port_of_addr(env.get("KEEL_HTTP_ADDR", "0.0.0.0:8080")),
                            port_of_addr(env.get("KEEL_ADMIN_ADDR", "127.0.0.1:9000"))) if p}
    if image == "otel/opentelemetry-collector-contrib":
        return collector_ports
    if image == "nginx":
        return nginx_listen_ports()
    return IMAGE_PORTS.get(image)


def build_of(service):
    """(context, dockerfile) of a service that compose builds, else None."""
    build = service.get("build")
    if not build:
        return None
    if isinstance(build, str):
        return build, "Dockerfile"
    return build.get("context", "."), build.get("dockerfile", "Dockerfile")


def is_keel(service):
    """A service that runs Keel's image (built from the repository's Dockerfile)."""
    b = build_of(service)
    return b is not None and os.path.normpath(os.path.join(ROOT, b[0], b[1])) == os.path.join(ROOT, "Dockerfile")


def api_replicas(services):
    """The services that run `keel serve`, in file order."""
    return [n for n, s in services.items() if is_keel(s) and list(s.get("command") or ["serve"])[:1] == ["serve"]]


def dockerfile_healthcheck(path):
    """The HEALTHCHECK of the final stage of a Dockerfile ("NONE" counts as none)."""
    try:
        with open(path, encoding="utf-8") as f:
            text = re.sub(r"\\\n", " ", f.read())
    except OSError:
        return None
    check = None
    for line in text.splitlines():
        words = line.strip().split(None, 1)
        if not words:
            continue
        if words[0].upper() == "FROM":
            check = None
        elif words[0].upper() == "HEALTHCHECK":
            check = None if (len(words) > 1 and words[1].strip().upper() == "NONE") else words[1]
    return check


def health_of(service):
    """Where a service's health check comes from, or None."""
    hc = service.get("healthcheck")
    if hc is not None:
        if hc.get("disable") or (hc.get("test") or [None])[0] == "NONE":
            return None
        return "its healthcheck"
    b = build_of(service)
    if b and dockerfile_healthcheck(os.path.join(ROOT, b[0], b[1])):
        return f"the HEALTHCHECK of {os.path.normpath(os.path.join(b[0], b[1]))}"
    return None


def is_one_shot(service):
    return str(service.get("restart", "")).strip() == "no"


def depends_of(service):
    deps = service.get("depends_on") or {}
    if isinstance(deps, list):
        return {d: "service_started" for d in deps}
    return {d: (c or {}).get("condition", "service_started") for d, c in deps.items()}


def check_start_order(services):
    for name, svc in services.items():
        if not is_one_shot(svc) and health_of(svc) is None:
            image = (svc.get("image") or "").split(":")[0]
            if image not in NO_HEALTHCHECK:
                fail(COMPOSE, f"service {name} runs until stopped but has no health check (its own, or its "
                              f"Dockerfile's HEALTHCHECK): add one, or list the image in NO_HEALTHCHECK with the reason")
        profiles = svc.get("profiles") or []
        for dep, condition in depends_of(svc).items():
            target = services.get(dep)
            if target is None:
                fail(COMPOSE, f"service {name} depends on {dep}, which is not a service")
                continue
            if condition == "service_completed_successfully" and not is_one_shot(target):
                fail(COMPOSE, f"service {name} waits for {dep} to complete, but {dep} runs until stopped "
                              f"(restart is not \"no\"): {name} would never start")
            elif is_one_shot(target) and condition != "service_completed_successfully":
                fail(COMPOSE, f"service {name} depends on the one-shot {dep} with {condition}: it would start "
                              f"before {dep} has finished; use service_completed_successfully")
            elif condition == "service_healthy" and health_of(target) is None:
                fail(COMPOSE, f"service {name} waits for {dep} to be healthy, but {dep} has no health check")
            elif condition not in ("service_started", "service_healthy", "service_completed_successfully"):
                fail(COMPOSE, f"service {name}: depends_on {dep} has an unknown condition {condition}")
            dep_profiles = target.get("profiles") or []
            if not profiles and dep_profiles:
                fail(COMPOSE, f"service {name} (no profile) depends on {dep}, which only runs with profile "
                              f"{dep_profiles}: a plain `docker compose up` would fail")
            for p in profiles:
                if dep_profiles and p not in dep_profiles:
                    fail(COMPOSE, f"service {name} runs with profile {p}, but its dependency {dep} does not "
                                  f"(profiles {dep_profiles}): `docker compose --profile {p} up` would refuse the project")


def nginx_conf():
    try:
        with open(os.path.join(ROOT, NGINX), encoding="utf-8") as f:
            return re.sub(r"#[^\n]*", "", f.read())
    except OSError as e:
        fail(NGINX, f"cannot read: {e}")
        return ""


def nginx_listen_ports():
    return {int(m.group(1)) for m in re.finditer(r"\blisten\s+(?:[\d.]+:)?(\d+)\b", nginx_conf())}


def nginx_upstream_servers():
    """host:port of every `server` in the upstream blocks."""
    servers = []
    for block in re.finditer(r"\bupstream\s+\S+\s*\{([^}]*)\}", nginx_conf()):
        servers += re.findall(r"^\s*server\s+([^\s;]+)", block.group(1), re.M)
    return servers


def network_address(service, network):
    nets = service.get("networks") or {}
    if isinstance(nets, dict):
        return ((nets.get(network) or {}).get("ipv4_address"))
    return None


def check_edge(services, compose, jobs, ports):
    """The API replicas, nginx, Prometheus and the load generator agree."""
    replicas = api_replicas(services)
    if not replicas:
        fail(COMPOSE, "no service runs `keel serve`")
        return
    # nginx's upstream: exactly the replicas, on their public port.
    upstream = nginx_upstream_servers()
    want = {f"{r}:{port_of_addr(env_of(services[r]).get('KEEL_HTTP_ADDR', '0.0.0.0:8080'))}" for r in replicas}
    if set(upstream) != want:
        fail(NGINX, f"upstream servers {sorted(upstream)} are not the API replicas of {COMPOSE} {sorted(want)}")
    # Prometheus: every replica's admin port in job keel-api, the worker in job keel-worker.
    want = {f"{r}:{port_of_addr(env_of(services[r]).get('KEEL_ADMIN_ADDR', ''))}" for r in replicas}
    if set(jobs.get("keel-api") or []) != want:
        fail(PROMETHEUS, f"job keel-api scrapes {sorted(jobs.get('keel-api') or [])}, not every API replica's "
                         f"admin listener {sorted(want)} (the SLO rules select job=\"keel-api\")")
    workers = [n for n, s in services.items() if is_keel(s) and list(s.get("command") or [])[:1] == ["worker"]]
    for w in workers:
        if not any(t.split(":")[0] == w for t in jobs.get("keel-worker") or []):
            fail(PROMETHEUS, f"job keel-worker does not scrape {w}")
    # The replicas are identical but for their ports: one anchor.
    envs = {r: env_of(services[r]) for r in replicas}
    first = replicas[0]
    for r in replicas[1:]:
        if envs[r] != envs[first]:
            diff = sorted(k for k in set(envs[r]) | set(envs[first]) if envs[r].get(k) != envs[first].get(k))
            fail(COMPOSE, f"API replicas {first} and {r} differ in {diff}")
    # nginx: mounted where the image includes it, with a fixed address the replicas trust.
    proxies = [n for n, s in services.items() if (s.get("image") or "").split(":")[0] == "nginx"]
    if len(proxies) != 1:
        fail(COMPOSE, f"expected one nginx service, found {proxies}")
        return
    nginx = proxies[0]
    src = host_path(list(mounts(services[nginx])), "/etc/nginx/conf.d/" + os.path.basename(NGINX))
    if src != os.path.normpath(os.path.join(ROOT, NGINX)):
        fail(COMPOSE, f"service {nginx} does not mount {NGINX} under /etc/nginx/conf.d/")
    subnets = {}
    for net, cfg in (compose.get("networks") or {}).items():
        for c in (((cfg or {}).get("ipam") or {}).get("config") or []):
            subnets[net] = ipaddress.ip_network(c["subnet"])
    addr = None
    for net, cfg in (services[nginx].get("networks") or {}).items() if isinstance(services[nginx].get("networks"), dict) else []:
        a = (cfg or {}).get("ipv4_address")
        if a:
            addr = ipaddress.ip_address(a)
            if net not in subnets or addr not in subnets[net]:
                fail(COMPOSE, f"{nginx}'s address {a} is not in the subnet of network {net}")
    if addr is None:
        fail(COMPOSE, f"{nginx} has no fixed ipv4_address: the replicas' KEEL_TRUSTED_PROXIES cannot name it")
    else:
        for r in replicas:
            trusted = [ipaddress.ip_network(x.strip(), strict=False)
                       for x in envs[r].get("KEEL_TRUSTED_PROXIES", "").split(",") if x.strip()]
            if not any(addr in n for n in trusted):
                fail(COMPOSE, f"{r}: KEEL_TRUSTED_PROXIES does not trust {nginx} ({addr}): the rate limits "
                              f"would key on nginx, one budget for every client")
            elif any(n.num_addresses > 1 for n in trusted):
                fail(COMPOSE, f"{r}: KEEL_TRUSTED_PROXIES trusts whole networks {trusted}: any container there "
                              f"could choose its client address; name nginx's address only")
    # Whose X-Forwarded-For nginx believes: the load generator's fixed address, nobody else's.
    real_ip_from = re.findall(r"\bset_real_ip_from\s+([^\s;]+)", nginx_conf())
    loadgens = [n for n, s in services.items() if "--host" in " ".join(map(str, s.get("command") or []))]
    allowed = {network_address(services[n], net) for n in loadgens for net in (services[n].get("networks") or {})}
    for a in real_ip_from:
        if a not in allowed:
            fail(NGINX, f"set_real_ip_from {a} is not the fixed address of a load generator of {COMPOSE} "
                        f"({sorted(x for x in allowed if x)})")
    for n in loadgens:
        argv = [str(a) for a in services[n].get("command") or []]
        host = argv[argv.index("--host") + 1] if "--host" in argv else ""
        url = urlsplit(host)
        if url.hostname != nginx or url.port not in (ports.get(nginx) or set()):
            fail(COMPOSE, f"{n}: --host {host} is not {nginx} on a port it listens on {sorted(ports.get(nginx) or [])}")


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
    replicas = api_replicas(services)
    if "--keel-env" in sys.argv[1:]:
        for k, v in env_of(services[replicas[0]] if replicas else {}).items():
            print(f"{k}={v}")
        return 0 if replicas else 1
    if "--nginx-hosts" in sys.argv[1:]:
        print("\n".join(services))
        return 0

    # -- compose on its own
    for name, svc in services.items():
        for source, target in mounts(svc):
            if not os.path.exists(os.path.join(ROOT, source)):
                fail(COMPOSE, f"service {name} mounts {source} (at {target}), which does not exist in the repository")
        b = build_of(svc)
        if b and not os.path.isfile(os.path.join(ROOT, b[0], b[1])):
            fail(COMPOSE, f"service {name} builds {b[0]}/{b[1]}, which does not exist")
    check_start_order(services)

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

    # -- Keel's own environment, in every service that runs its image
    for name, svc in services.items():
        if not is_keel(svc):
            continue
        env = env_of(svc)
        long_running = not is_one_shot(svc)
        if long_running and env.get("KEEL_ADMIN_ADDR", "").split(":")[0] not in ("0.0.0.0", "[::]"):
            fail(COMPOSE, f"{name}: KEEL_ADMIN_ADDR must listen on all interfaces (0.0.0.0:9000) for Prometheus")
        if env.get("OTEL_EXPORTER_OTLP_ENDPOINT"):
            check_endpoint(COMPOSE, f"{name} OTEL_EXPORTER_OTLP_ENDPOINT", env["OTEL_EXPORTER_OTLP_ENDPOINT"])
        if env.get("DATABASE_URL"):
            check_endpoint(COMPOSE, f"{name} DATABASE_URL", env["DATABASE_URL"].replace("postgres://", "http://", 1)
                           if env["DATABASE_URL"].startswith("postgres://") else env["DATABASE_URL"])
        if env.get("SMTP_URL"):
            # lettre's syntax: smtp:// is plain SMTP (port 25 by default), smtps:// implicit TLS (465).
            url = urlsplit(env["SMTP_URL"])
            if url.scheme not in ("smtp", "smtps"):
                fail(COMPOSE, f"{name}: SMTP_URL {env['SMTP_URL']} is not smtp:// or smtps://")
            else:
                port = url.port or (25 if url.scheme == "smtp" else 465)
                check_endpoint(COMPOSE, f"{name} SMTP_URL", f"smtp://{url.hostname}:{port}")

    # -- Prometheus
    prom = load(PROMETHEUS) or {}
    jobs = {}
    for sc in prom.get("scrape_configs") or []:
        for static in sc.get("static_configs") or []:
            for t in static.get("targets") or []:
                jobs.setdefault(sc.get("job_name"), []).append(t)
                if t.split(":")[0] != "localhost":
                    check_endpoint(PROMETHEUS, f"job {sc.get('job_name')} target", t)
    check_edge(services, compose, jobs, ports)
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
