#!/usr/bin/env python3
"""Figures from the benchmarks' JSON (Google Benchmark --benchmark_out).

  python3 bench/plots.py --primitives P.json --txn T.json --out DIR

writes into DIR:
  latency_cdf.png     gWRITE 64 B over 3 replicas: offload, CPU forwarding
                      with event-driven forwarders, with spinning ones
                      (BM_Latency), drawn through the cdf_q* quantiles that
                      bench_util.h's report_latencies records
  p99_vs_tenants.png  p99 of that gWRITE against the number of busy tenant
                      threads on the replicas' core (BM_MultiTenant, the
                      client on the NIC's core, as if on another machine),
                      log scale
  commits_per_s.png   commits/s of 1 x 64 B against client threads
                      (BM_CommitThroughput), per mode, and offload with
                      group commit off and on (BM_GroupCommit depth:0 and
                      depth:1: the same run's two cases, side by side)
Each figure's footer names the date and machine of the JSON's context
(Google Benchmark records host_name, date, num_cpus, mhz_per_cpu).

bench/plots.sh runs the benchmarks and this script in one command.
Only Debian's python3-matplotlib is needed (no pandas). A figure whose
benchmark rows are missing from the JSON is skipped with a message; a JSON
that does not parse is an error (exit 1).
"""
import argparse
import json
import os
import re
import sys

import matplotlib

matplotlib.use("Agg")  # no display: files only
import matplotlib.pyplot as plt  # noqa: E402

MODES = {0: "offload", 1: "CPU forwarding (event-driven)", 2: "CPU forwarding (spinning)"}
STYLE = {0: "-", 1: "--", 2: ":"}


def load(path):
    if not path:
        return None
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError) as e:
        sys.exit(f"plots: cannot read {path}: {e}")


def rows(doc, family):
    """(args dict, row) per case of `family`: the median aggregate where the
    run had repetitions, else the one run."""
    by_name = {}
    for b in (doc or {}).get("benchmarks", []):
        name = b.get("run_name", b.get("name", ""))
        if not name.startswith(family + "/"):
            continue
        slot = by_name.setdefault(name, {})
        if b.get("run_type") == "aggregate":
            if b.get("aggregate_name") == "median":
                slot["median"] = b
        else:
            slot.setdefault("run", b)
    out = []
    for name, slot in by_name.items():
        b = slot.get("median", slot.get("run"))
        if b is None:
            continue
        args = dict((k, int(v)) for k, v in re.findall(r"(\w+):(-?\d+)", name))
        out.append((args, b))
    return out


def footer(fig, doc):
    c = (doc or {}).get("context", {})
    fig.text(0.01, -0.03, "measured {} on {} ({} CPUs, {} MHz)".format(
        c.get("date", "?"), c.get("host_name", "?"), c.get("num_cpus", "?"), c.get("mhz_per_cpu", "?")),
        fontsize=7, color="gray")


def cdf_points(row, unit):
    pts = []
    for k, v in row.items():
        m = re.fullmatch(r"cdf_q(\d+)_" + unit, k)
        if m:
            pts.append((float(v), int(m.group(1)) / 1000.0))
    return sorted(pts, key=lambda p: p[1])


def latency_cdf(doc, out):
    fig, ax = plt.subplots(figsize=(7, 4.5))
    drawn = 0
    for args, b in rows(doc, "BM_Latency/gWRITE"):
        if args.get("bytes") != 64 or args.get("n") != 3:
            continue
        pts = cdf_points(b, "ns")
        if not pts:
            continue
        m = args.get("mode", -1)
        xs = [p[0] / 1000.0 for p in pts]
        ys = [p[1] for p in pts]
        ax.plot(xs, ys, STYLE.get(m, "-"), marker="o", ms=3, label=MODES.get(m, f"mode {m}"))
        drawn += 1
    if not drawn:
        plt.close(fig)
        return "latency_cdf.png: no BM_Latency/gWRITE rows with bytes:64 n:3 and cdf_q* counters"
    ax.set_xscale("log")
    ax.set_xlabel("latency (us, log scale)")
    ax.set_ylabel("fraction of operations")
    ax.set_title("gWRITE 64 B, 3 replicas, software RNIC")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    footer(fig, doc)
    fig.savefig(os.path.join(out, "latency_cdf.png"), dpi=120, bbox_inches="tight")
    plt.close(fig)
    return None


def line_plot(doc, out, name, family, x_of, y_field, y_div, log_y, xlabel, ylabel, title, extra=()):
    """One line per mode of `family`'s rows: x_of(args) against
    row[y_field] / y_div. extra: more lines, each (family, keep(args),
    label, style) from other rows. Returns None, or why nothing was drawn."""
    series = {}
    for args, b in rows(doc, family):
        if y_field in b:
            series.setdefault(args.get("mode", -1), []).append((x_of(args), b[y_field] / y_div))
    if not series:
        return f"{name}: no {family} rows with {y_field}"
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for m, pts in sorted(series.items()):
        pts.sort()
        ax.plot([p[0] for p in pts], [p[1] for p in pts], STYLE.get(m, "-"), marker="o", label=MODES.get(m, m))
    for fam, keep, label, style in extra:
        pts = sorted((x_of(a), b[y_field] / y_div) for a, b in rows(doc, fam) if y_field in b and keep(a))
        if pts:
            ax.plot([p[0] for p in pts], [p[1] for p in pts], style, marker="s", label=label)
    if log_y:
        ax.set_yscale("log")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(True, which="both" if log_y else "major", alpha=0.3)
    ax.legend()
    footer(fig, doc)
    fig.savefig(os.path.join(out, name), dpi=120, bbox_inches="tight")
    plt.close(fig)
    return None


def p99_vs_tenants(doc, out):
    return line_plot(doc, out, "p99_vs_tenants.png", "BM_MultiTenant/client_on_nic_core",
                     lambda a: a.get("K", 0) * 3, "p99_ns", 1000.0, True,
                     "busy tenant threads on the replicas' core (K x 3 replicas)", "p99 latency (us, log scale)",
                     "gWRITE 64 B, 3 replicas, replicas' agents sharing a core with busy tenants")


def commits_per_s(doc, out):
    return line_plot(doc, out, "commits_per_s.png", "BM_CommitThroughput", lambda a: a.get("threads", 0),
                     "commits_per_s", 1.0, False, "client threads", "commits/s (1 range x 64 B)",
                     "transactions over 3 replicas, software RNIC",
                     extra=[("BM_GroupCommit", lambda a: a.get("depth") == 0,
                             "offload, BM_GroupCommit depth 0 (group commit off)", "--"),
                            ("BM_GroupCommit", lambda a: a.get("depth") == 1,
                             "offload, BM_GroupCommit depth 1 (1 log write in flight)", "-.")])


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--primitives", help="primitives_bench JSON")
    ap.add_argument("--txn", help="txn_bench JSON")
    ap.add_argument("--out", required=True, help="directory for the PNGs")
    a = ap.parse_args()
    if not a.primitives and not a.txn:
        ap.error("give --primitives and/or --txn")
    os.makedirs(a.out, exist_ok=True)
    prim, txn = load(a.primitives), load(a.txn)
    made, skipped = [], []
    jobs = []
    if prim is not None:
        jobs += [("latency_cdf.png", latency_cdf, prim), ("p99_vs_tenants.png", p99_vs_tenants, prim)]
    if txn is not None:
        jobs += [("commits_per_s.png", commits_per_s, txn)]
    for name, fn, doc in jobs:
        why = fn(doc, a.out)
        (skipped if why else made).append(why or os.path.join(a.out, name))
    for m in made:
        print("plots: wrote", m)
    for s in skipped:
        print("plots: skipped", s)
    return 0 if made else 1


if __name__ == "__main__":
    sys.exit(main())
