#!/usr/bin/env python3
"""Checks a Grafana dashboard's PromQL, and the rules' own expressions, against what Keel really
exposes. Standard library only.

    check-dashboard.py DASHBOARD.json --metrics SCRAPE.txt --rules slo-rules.yml \
                       [--datasources provisioning/datasources/prometheus.yml]

* the JSON parses, panel ids are unique, every query panel has a grid position;
* every metric name in every expression (panel targets and template-variable queries) is either a
  series in SCRAPE.txt (a real `/metrics` scrape of Keel), a recording rule of the rules file, or a
  series Prometheus makes itself (`up`, `ALERTS`, ...);
* every label a selector, a `by (...)`/`without (...)` clause or `label_values()` names exists on
  that metric in the scrape (or is a target label, `job`/`instance`);
* every `$variable` is a template variable of the dashboard or a Grafana built-in;
* with --datasources, every panel and query uses the provisioned datasource's uid;
* the same metric and label checks for every `expr:` of the rules files: their unit tests run on
  synthetic series, so only this check notices when a metric or label the SLOs read is renamed.

Exits 1 with one line per problem, each naming the file, the panel and the reason.
"""

import argparse
import json
import re
import sys

# Series that Prometheus writes itself, not found in a target's scrape.
PROMETHEUS_SERIES = {
    "up", "ALERTS", "ALERTS_FOR_STATE", "scrape_duration_seconds", "scrape_samples_scraped",
    "scrape_samples_post_metric_relabeling", "scrape_series_added",
}
# Labels every scraped series gets from its target.
TARGET_LABELS = {"job", "instance"}
GRAFANA_BUILTINS = {
    "__rate_interval", "__interval", "__interval_ms", "__range", "__range_s", "__range_ms",
    "__dashboard", "__from", "__to", "__name", "__org", "__user", "timeFilter", "__auto",
}
KEYWORDS = {
    "and", "or", "unless", "by", "without", "on", "ignoring", "group_left", "group_right",
    "offset", "bool", "inf", "nan", "Inf", "NaN",
}
IDENT = r"[a-zA-Z_:][a-zA-Z0-9_:]*"
GROUPING = re.compile(r"\b(by|without|on|ignoring|group_left|group_right)\s*\(([^()]*)\)")
SELECTOR = re.compile(r"(" + IDENT + r")?\s*\{([^{}]*)\}")
METRIC = re.compile(r"(?<![\w:.$])(" + IDENT + r")(?![\w:])(?!\s*\()")
VARIABLE = re.compile(r"\$\{(\w+)(?::[^}]*)?\}|\[\[(\w+)\]\]|\$(\w+)")
SAMPLE = re.compile(r"^(" + IDENT + r")(?:\{(.*)\})?\s+\S+")
LABEL_PAIR = re.compile(r'(' + IDENT + r')\s*=\s*"(?:[^"\\]|\\.)*"')


def load_scrape(path):
    """Metric name -> set of label names, from Prometheus text exposition."""
    series = {}
    with open(path, encoding="utf-8") as f:
        for line in f:
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            m = SAMPLE.match(line)
            if not m:
                raise ValueError(f"unparseable sample line: {line[:120]}")
            labels = series.setdefault(m.group(1), set())
            if m.group(2):
                labels.update(LABEL_PAIR.findall(m.group(2)))
    return series


def load_recording_rules(path):
    with open(path, encoding="utf-8") as f:
        return set(re.findall(r"^\s*-?\s*record:\s*[\"']?(" + IDENT + r")", f.read(), re.M))


def load_rule_exprs(path):
    """(rule name, expr) of every rule, reading `expr:` as a plain scalar or a block scalar."""
    with open(path, encoding="utf-8") as f:
        lines = f.read().splitlines()
    out, name = [], "?"
    for i, line in enumerate(lines):
        m = re.match(r"^\s*-?\s*(record|alert):\s*(\S+)", line)
        if m:
            name = m.group(2)
        m = re.match(r"^(\s*)expr:\s*(.*)$", line)
        if not m:
            continue
        indent, value = len(m.group(1)), m.group(2).strip()
        if value[:1] in ("|", ">"):
            block = []
            for nxt in lines[i + 1:]:
                if nxt.strip() and len(nxt) - len(nxt.lstrip()) <= indent:
                    break
                block.append(nxt.strip())
            value = " ".join(block)
        elif value[:1] in ("'", '"'):
            value = value[1:-1]
        out.append((name, value))
    return out


def load_datasource_uids(path):
    with open(path, encoding="utf-8") as f:
        return set(re.findall(r"^\s*uid:\s*[\"']?([\w.-]+)", f.read(), re.M))


def strip_strings(expr):
    return re.sub(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`', '""', expr)


def substitute_variables(expr):
    """Grafana variables become something PromQL-shaped: durations inside [], regexes in strings."""
    expr = re.sub(r"\$\{?__(rate_)?interval(_ms)?\}?|\$\{?__range(_s|_ms)?\}?", "5m", expr)
    return VARIABLE.sub(".*", expr)


def analyse(expr):
    """(metric names, {metric: labels in its selector}, grouping labels) of one PromQL expression."""
    text = strip_strings(substitute_variables(expr))
    grouping = set()
    for m in GROUPING.finditer(text):
        grouping.update(x.strip() for x in m.group(2).split(",") if x.strip())
    text = GROUPING.sub(" ", text)
    selectors = {}
    for m in SELECTOR.finditer(text):
        labels = set(re.findall(r"(" + IDENT + r")\s*(?:=~|!~|!=|=)", m.group(2)))
        if m.group(1) and m.group(1) not in KEYWORDS:
            selectors.setdefault(m.group(1), set()).update(labels)
    text = SELECTOR.sub(lambda m: " " + (m.group(1) or "") + " ", text)
    text = re.sub(r"\[[^\]]*\]", " ", text)
    names = {n for n in METRIC.findall(text) if n not in KEYWORDS}
    return names, selectors, grouping


def walk_panels(panels):
    for panel in panels or []:
        yield panel
        yield from walk_panels(panel.get("panels"))


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("dashboard")
    ap.add_argument("--metrics", required=True, help="a /metrics scrape of Keel (text format)")
    ap.add_argument("--rules", required=True, action="append", help="a Prometheus rules file (repeatable)")
    ap.add_argument("--datasources", help="Grafana datasource provisioning file: the uids panels may use")
    args = ap.parse_args()
    dash_file = args.dashboard
    errors = []

    def fail(where, why):
        errors.append(f"{dash_file}: {where}: {why}")

    try:
        with open(dash_file, encoding="utf-8") as f:
            dashboard = json.load(f)
    except (OSError, json.JSONDecodeError) as e:
        print(f"{dash_file}: not valid JSON: {e}", file=sys.stderr)
        return 1
    try:
        scrape = load_scrape(args.metrics)
    except (OSError, ValueError) as e:
        print(f"{args.metrics}: cannot read the scrape: {e}", file=sys.stderr)
        return 1
    if not scrape:
        print(f"{args.metrics}: the scrape holds no samples (did Keel serve /metrics?)", file=sys.stderr)
        return 1
    recorded = set()
    rule_queries = []
    for path in args.rules:
        recorded |= load_recording_rules(path)
        rule_queries += [(path, f"rule {name}", expr) for name, expr in load_rule_exprs(path)]
    uids = load_datasource_uids(args.datasources) if args.datasources else None
    if uids is not None and not uids:
        print(f"{args.datasources}: no datasource uid found", file=sys.stderr)
        return 1

    if not dashboard.get("uid"):
        fail("dashboard", "has no uid (alerts and links refer to the dashboard by uid)")
    variables = {v.get("name") for v in dashboard.get("templating", {}).get("list", [])}

    queries = []  # (where, expr)
    for var in dashboard.get("templating", {}).get("list", []):
        where = f"template variable ${var.get('name')}"
        if var.get("type") == "query":
            q = var.get("query")
            q = q.get("query") if isinstance(q, dict) else q
            if not q:
                fail(where, "query variable without a query")
                continue
            lv = re.fullmatch(r"\s*label_values\(\s*(.+?)\s*,\s*(" + IDENT + r")\s*\)\s*", q)
            if lv:
                queries.append((where, lv.group(1)))
                names, _, _ = analyse(lv.group(1))
                for name in names:
                    if name in scrape and lv.group(2) not in scrape[name] | TARGET_LABELS:
                        fail(where, f"label_values(): metric {name} has no label {lv.group(2)} in {args.metrics}")
            elif not re.fullmatch(r"\s*label_names\(\s*\)\s*", q):
                queries.append((where, q))
        check_datasource = var.get("datasource")
        if uids is not None and isinstance(check_datasource, dict) and check_datasource.get("uid") not in uids:
            fail(where, f"datasource uid {check_datasource.get('uid')!r} is not a provisioned one {sorted(uids)}")

    ids = {}
    for panel in walk_panels(dashboard.get("panels")):
        title = panel.get("title", "")
        where = f"panel {panel.get('id')} {title!r}"
        if panel.get("id") in ids:
            fail(where, f"duplicate panel id (also {ids[panel.get('id')]!r})")
        ids[panel.get("id")] = title
        grid = panel.get("gridPos") or {}
        if not all(isinstance(grid.get(k), int) for k in ("x", "y", "w", "h")):
            fail(where, "gridPos needs integer x, y, w, h")
        if panel.get("type") == "row":
            continue
        for holder in [panel] + list(panel.get("targets") or []):
            ds = holder.get("datasource")
            if uids is not None and isinstance(ds, dict) and ds.get("type") == "prometheus" and ds.get("uid") not in uids:
                fail(where, f"datasource uid {ds.get('uid')!r} is not a provisioned one {sorted(uids)}")
        for target in panel.get("targets") or []:
            expr = target.get("expr")
            if not expr or not expr.strip():
                fail(f"{where} query {target.get('refId')}", "empty expression")
                continue
            queries.append((f"{where} query {target.get('refId')}", expr))

    checked = [(dash_file, where, expr) for where, expr in queries] + rule_queries
    for source, where, expr in checked:
        def fail(where, why, source=source):
            errors.append(f"{source}: {where}: {why}")
        for m in VARIABLE.finditer(expr):
            name = next(g for g in m.groups() if g)
            if name not in variables and name not in GRAFANA_BUILTINS:
                fail(where, f"${name} is neither a template variable of the dashboard nor a Grafana built-in")
        try:
            names, selectors, grouping = analyse(expr)
        except re.error as e:  # pragma: no cover
            fail(where, f"cannot analyse {expr!r}: {e}")
            continue
        if not names:
            fail(where, f"no metric in {expr!r}")
        known_labels = set(TARGET_LABELS)
        for name in sorted(names):
            if name in scrape:
                known_labels |= scrape[name]
            elif name not in recorded and name not in PROMETHEUS_SERIES:
                fail(where, f"metric {name} is neither in the scrape {args.metrics} nor a recording rule "
                            f"of {', '.join(args.rules)}")
        for name, labels in selectors.items():
            if name in scrape:
                for label in sorted(labels - scrape[name] - TARGET_LABELS):
                    fail(where, f"{name}{{{label}=...}}: {name} has no label {label} in {args.metrics}")
        if all(n in scrape for n in names):
            for label in sorted(grouping - known_labels):
                fail(where, f"groups by label {label}, which none of {sorted(names)} has in {args.metrics}")

    if errors:
        print("\n".join(errors), file=sys.stderr)
        print(f"{len(errors)} problem(s) in {dash_file} or {', '.join(args.rules)} "
              f"(checked against the scrape {args.metrics})", file=sys.stderr)
        return 1
    metrics = set()
    for _, expr in queries:
        metrics |= analyse(expr)[0]
    print(f"{dash_file}: {len(queries)} queries, {len(metrics)} metric names "
          f"({len(metrics & set(scrape))} scraped, {len(metrics & recorded)} recording rules, "
          f"{len(metrics & PROMETHEUS_SERIES)} from Prometheus itself): ok")
    print(f"{', '.join(args.rules)}: {len(rule_queries)} rule expressions against {args.metrics}: ok")
    return 0


if __name__ == "__main__":
    sys.exit(main())
