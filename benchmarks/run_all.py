"""Run every benchmark of issue 5 side by side; write results.json and RESULTS.md.

    .venv/bin/python -m benchmarks.run_all                 # everything
    .venv/bin/python -m benchmarks.run_all --only anchor,depth

Measurements that need ``qbench run`` are reported as errors until it exists; the
others (anchor side alone, throughput) still run. Benchmarks are not tests: nothing
here fails the process on a missed goal.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import tempfile
import time
from pathlib import Path

from . import models, qbench_cli, report, suite

HERE = Path(__file__).resolve().parent
KEYS = ("throughput", "startup", "latency", "anchor", "published", "depth")


def _build_models(keys: set[str], depths: tuple[int, ...]) -> dict:
    """All model pairs the selected measurements need (cached; quantization is not timed)."""
    pairs: dict = {}
    if keys & {"anchor", "latency"}:
        pairs["detection"] = models.pair_in_subprocess("detection", size=640)
    if "startup" in keys:
        pairs["tiny"] = models.pair_in_subprocess("tiny")
    if "depth" in keys:
        pairs["deep"] = {n: models.pair_in_subprocess("deep", blocks=n) for n in depths}
    return pairs


def run(keys: set[str], ctx: suite.Context) -> list[suite.Result]:
    pairs = _build_models(keys, ctx.depths)
    have_qbench = qbench_cli.available()
    plan = {
        "throughput": lambda: suite.tensor_throughput(ctx, tiny_seed=int(time.time())),
        "startup": lambda: suite.startup(ctx, pairs["tiny"]),
        "latency": lambda: suite.latency_fidelity(ctx, pairs["detection"]),
        "anchor": lambda: (suite.anchor_comparison(ctx, pairs["detection"]) if have_qbench
                           else suite.anchor_alone(pairs["detection"])),
        "depth": lambda: suite.depth_scaling(ctx, pairs["deep"]),
    }
    results = []
    for key in KEYS:
        if key not in keys:
            continue
        if key == "published":  # one result per real model, each against the anchor in the same run
            for name in suite.PUBLISHED:
                print(f"... published {name}", flush=True)
                results.extend(suite.guarded_all(f"published-{name}", name,
                                                 lambda name=name: suite.published_comparison(ctx, name)))
            continue
        if not have_qbench and key in ("startup", "latency", "depth"):
            results.append(suite.Result(key, key, "", error="qbench run not available yet"))
            continue
        print(f"... {key}", flush=True)
        results.append(suite.guarded(key, key, plan[key]))
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", default=",".join(KEYS), help=f"comma-separated subset of {','.join(KEYS)}")
    parser.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)))
    parser.add_argument("--depth-budget-mb", type=int, default=16)
    parser.add_argument("--results", type=Path, default=HERE / "results.json")
    parser.add_argument("--markdown", type=Path, default=HERE / "RESULTS.md")
    args = parser.parse_args()
    keys = {k.strip() for k in args.only.split(",") if k.strip()}
    unknown = keys - set(KEYS)
    if unknown:
        parser.error(f"unknown measurement(s): {', '.join(sorted(unknown))}")
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="qbench-bench-") as work:
        ctx = suite.Context(threads=args.threads, work=Path(work), depth_budget_mb=args.depth_budget_mb)
        results = run(keys, ctx)
    doc = {
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "total_s": time.perf_counter() - start,
        "machine": report.machine_facts(),
        "settings": {"threads": ctx.threads, "depth_budget_mb": ctx.depth_budget_mb, "depths": list(ctx.depths),
                     "latency_runs": ctx.latency_runs, "latency_min_seconds": ctx.latency_seconds},
        "results": [r.to_dict() for r in results],
    }
    args.results.write_text(json.dumps(doc, indent=2) + "\n")
    args.markdown.write_text(report.markdown(doc))
    print(report.table(doc["results"]))
    for r in doc["results"]:
        for cmd in r["commands"]:
            print(f"  [{r['key']}] {cmd}")
    print(f"wrote {args.results} and {args.markdown} ({doc['total_s']:.0f} s)")


if __name__ == "__main__":
    main()
