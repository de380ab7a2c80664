"""A worker process: runs one job on one or two models, then exits.

The agent runs every job in a worker of its own, forked from a zygote that has done the
imports (agent/zygote.py), so that a runtime crash or out-of-memory kills only the
worker, and so that each model's peak memory (VmHWM) is its own. ``JOBDIR/job.json`` holds the job, ``JOBDIR/in_<k>.npy``
the inputs (leading sample axis). The worker writes ``JOBDIR/result.json``; progress
goes to stdout as JSON lines; anything else it says goes to stderr.
"""

from __future__ import annotations

import json
import sys
import time
import traceback
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Callable

import numpy as np

from qbench.protocols.messages import (
    BenchmarkRequest,
    CaptureReply,
    CaptureRequest,
    ErrorCode,
    ErrorInfo,
    MemoryStats,
    ProtocolError,
    RunnerConfig,
    BenchmarkReply,
    from_dict,
    to_dict,
)

from . import capture, evaluate, heap, memory, structure, tensor_spool, timing
from .outputs import save_outputs
from .runners import (COMPILED, RUNTIMES, available_runtimes, import_runtime, litert_probe, runner_class, runner_for,
                      runtime_of)
from .runners.base import ProfilingUnavailable, Runner


def main(argv: list[str] | None = None) -> int:
    jobdir = Path((argv or sys.argv[1:])[0])
    job = json.loads((jobdir / "job.json").read_text())
    try:
        result: Any = JOBS[job["kind"]](job, jobdir)
        payload = {"ok": to_dict(result)}
    except ProtocolError as exc:
        payload = {"error": to_dict(exc.info)}
    except MemoryError:
        payload = {"error": to_dict(ErrorInfo(ErrorCode.OUT_OF_MEMORY.value, "worker ran out of memory", "worker"))}
    except Exception as exc:  # a runtime failure we did not foresee: typed, with its traceback
        info = ErrorInfo(ErrorCode.INTERNAL.value, f"{type(exc).__name__}: {exc}", "worker", traceback.format_exc())
        if "bad_alloc" in str(exc) or "Failed to allocate" in str(exc):
            info.code, info.message = ErrorCode.OUT_OF_MEMORY.value, f"worker ran out of memory: {exc}"
        payload = {"error": to_dict(info)}
    tmp = jobdir / "result.json.tmp"
    tmp.write_text(json.dumps(payload))
    tmp.replace(jobdir / "result.json")
    return 0


PROGRESS_EVERY_S = 0.25
_last_progress = [0.0]


def progress(stage: str, done: int, total: int, force: bool = True) -> None:
    """One progress line for the agent to forward to the host; unforced lines at most every 0.25 s."""
    now = time.monotonic()
    if not force and now - _last_progress[0] < PROGRESS_EVERY_S:
        return
    _last_progress[0] = now
    sys.stdout.write(json.dumps({"stage": stage, "done": done, "total": total}) + "\n")
    sys.stdout.flush()


def load_inputs(job: dict, jobdir: Path) -> tuple[list[str], list[np.ndarray]]:
    names = job["inputs"]
    return names, [np.load(jobdir / f"in_{k}.npy", allow_pickle=False) for k in range(len(names))]


def sample_feeds(names: list[str], arrays: list[np.ndarray]) -> list[dict[str, np.ndarray]]:
    """One feed dict per sample (views, no copies; a scalar input stays a 0-d array, as runtimes want)."""
    count = arrays[0].shape[0] if arrays else 1
    return [{n: np.asarray(a[i]) for n, a in zip(names, arrays)} for i in range(count)]


def run_probe(job: dict, jobdir: Path) -> dict:
    runtimes = [r for r in job["runtimes"] if r in RUNTIMES]
    if COMPILED in runtimes:
        litert_probe.start()  # its child process starts up while this one imports the runtimes
    return {"runtimes": to_dict(available_runtimes(runtimes))}


def run_baseline(job: dict, jobdir: Path) -> dict:
    import_runtime(runtime_of(from_dict(RunnerConfig, job["runner"])))
    return {"peak_mb": memory.peak_rss_mb()}


def run_benchmark(job: dict, jobdir: Path) -> BenchmarkReply:
    req = from_dict(BenchmarkRequest, job["request"])
    names, arrays = load_inputs(job, jobdir)
    feeds = sample_feeds(names, arrays)
    runner = runner_for(req.runner)(job["model_path"], req.runner)
    t0 = time.perf_counter_ns()
    runner.load()
    init_ms = (time.perf_counter_ns() - t0) / 1e6
    runner.infer(feeds[0])  # validates the inputs once; the timed loop then skips the checks
    fast: Callable[[int], object] = lambda i: runner.infer_unchecked(feeds[i % len(feeds)])
    total = req.timing.runs
    stats = timing.measure(fast, req.timing, init_ms, on_run=lambda i: progress("timing", min(i, total), total, False))
    peak = memory.peak_rss_mb()
    baseline = float(job.get("baseline_mb", 0.0))
    reply = BenchmarkReply(
        latency=stats,
        memory=MemoryStats(peak_mb=peak, baseline_mb=baseline, delta_mb=max(peak - baseline, 0.0)),
        providers_used=runner.providers_used(),
        coverage=runner.delegation(),
    )
    if req.return_outputs:  # after the peak was read: the stacked outputs must not count as the model's memory
        reply.outputs_omitted = save_outputs(runner, feeds, jobdir, int(job.get("max_frame_bytes", 0)))
    # Last, in a session of its own: profiling slows kernels, so it must not overlap timing or memory.
    reply.profile, reply.profile_note = _op_profile(runner, feeds, req.profile_runs)
    return reply


def _op_profile(runner: Runner, feeds: list[dict[str, np.ndarray]], runs: int) -> tuple[list[dict], str | None]:
    """Per-op kernel times as reply dicts, or why there are none (``runs`` 0: not asked, no note)."""
    if runs <= 0:
        return [], None
    progress("profile", 0, runs)
    try:
        times = runner.profile(feeds, runs, lambda i: progress("profile", i, runs))  # a line per run: few, and slow
    except ProfilingUnavailable as exc:
        return [], str(exc)
    return [to_dict(t) for t in times], None


def run_capture(job: dict, jobdir: Path) -> CaptureReply:
    heap.tune_heap()
    req = from_dict(CaptureRequest, job["request"])
    if not 0 <= req.histogram_bins <= capture.MAX_HISTOGRAM_BINS:
        raise ProtocolError(ErrorCode.BAD_MESSAGE, f"histogram_bins must be 0..{capture.MAX_HISTOGRAM_BINS}")
    names, arrays = load_inputs(job, jobdir)
    feeds = sample_feeds(names, arrays)
    cls = runner_class(req.runner.runtime)
    phase = capture.Phases()
    accs = [capture.PairAccumulator(p, req.histogram_bins) for p in req.pairs]
    structures = structure.accumulators(req.pairs)
    # The deployed int8 session: its outputs are what every capture pass must reproduce, and, where the
    # runtime can write it, the graph it optimized is what the capture exposes tensors of (reloaded as it
    # is, so exposing them blocks no fusion). It and each pass's float session load on a thread of their
    # own (the runtimes release the GIL while they build a session) while the int8 capture session
    # loads: two builds at a time, not three, as there are only so many cores.
    loader = ThreadPoolExecutor(1, thread_name_prefix="load")
    deployed = cls(job["int8_model_path"], req.runner)
    wants_graph = deployed.save_deployed_graph(str(jobdir / "int8.deployed.onnx"))
    reference_job = loader.submit(_deployed_outputs, deployed, feeds[0])
    reducer = capture.Reducer(capture.reduce_threads(req.runner.threads))
    spool = tensor_spool.Spool(jobdir, req.pairs) if req.save_tensors else None
    done: list[list[int]] = []
    fidelity = 0.0
    pending = capture.plan_groups([p.nbytes for p in req.pairs], req.budget_bytes)
    planned = len(pending)
    graph: str | None = None
    note: str | None = None
    try:
        if wants_graph:
            with phase("reference"):
                reference = reference_job.result()
            graph = deployed.deployed_graph
        del deployed  # the deployed session's memory goes once its outputs are in (the loader drops it too)
        if wants_graph and graph is None:
            note = "the runtime could not write the graph it deployed"
        while pending:
            # counted in layers, not passes: a pass split in two (below) changes the passes, not the layers
            progress("capture", sum(map(len, done)), len(req.pairs))
            group = pending.pop(0)
            with phase("load"):
                float_job = loader.submit(
                    _loaded, cls(job["float_model_path"], req.runner, [req.pairs[i].float_name for i in group]))
                int8_runner = cls(job["int8_model_path"], req.runner, [req.pairs[i].int8_name for i in group])
                int8_runner.deployed_graph = graph
                _loaded(int8_runner)
            with phase("infer"):
                first = int8_runner.infer(feeds[0])
            with phase("reference"):
                reference = reference_job.result()
            diff = _max_abs_diff(reference, first)
            if diff > 0 and (graph is not None or len(group) > 1):
                del int8_runner, first
                float_job.result()
                del float_job
                if graph is not None:
                    # Never seen: the reloaded deployed graph computed other outputs. Leave it for the
                    # model itself, whose passes are checked (and halved) as below.
                    note = f"the deployed graph, reloaded, gave outputs {diff:g} off the deployed session's"
                    graph = None
                    pending[:0] = [group]
                else:
                    # Exposing some tensor of this group changed how the runtime fuses the int8 graph:
                    # halve the group until every pass computes what the deployed model computes.
                    pending[:0] = [group[: len(group) // 2], group[len(group) // 2:]]
                continue
            for i in group:
                accs[i].s.graph_altered = diff > 0
            fidelity = max(fidelity, diff)
            with phase("load"):
                float_runner = float_job.result()
            del float_job
            observed = _observable(group, req.pairs, float_runner, int8_runner, accs)
            for s, feed in enumerate(feeds):
                with phase("infer"):
                    f_out = float_runner.infer(feed)
                    if s == 0:
                        q_out, first = first, None  # sample 0 ran for the fidelity check: not held twice
                    else:
                        q_out = int8_runner.infer(feed)
                pairs, kept = [], []
                for i in observed:
                    f = f_out[req.pairs[i].float_name]
                    q, why = int8_runner.in_layout_of(req.pairs[i].int8_name, q_out[req.pairs[i].int8_name], f.shape)
                    if q is None:  # shapes are the same for every sample: decided on the first
                        accs[i].s.fused = why
                        continue
                    pairs.append((f, _as_written(q, req.pairs[i])))
                    kept.append(i)
                observed = kept
                with phase("reduce"):
                    reducer.reduce([(accs[i], f, q) for i, (f, q) in zip(observed, pairs)])
                    structure.update(structures, observed, pairs)
                if spool is not None:
                    with phase("save"):
                        spool.put_sample(observed, s, pairs)
                del f_out, q_out, pairs
            del float_runner, int8_runner
            heap.release_memory()  # the next pass starts from what this one held, not above it
            done.append(group)
    finally:
        reducer.close()
        loader.shutdown()
    progress("capture", len(req.pairs), len(req.pairs))
    stats = [a.stats() for a in accs]
    structure.finish(structures, stats)
    return CaptureReply(stats=stats, groups=done, fidelity_max_abs_diff=fidelity,
                        peak_mb=memory.peak_rss_mb(), budget_bytes=req.budget_bytes, phases_s=phase.seconds,
                        passes_planned=planned, source="deployed graph" if graph is not None else "model",
                        source_note=note)


def _as_written(q: np.ndarray, pair) -> np.ndarray:
    """An int8 tensor that the deployed graph holds as uint8: ORT's QDQ s8->u8 transform adds 128 to
    the values and to the zero point, so flipping the top bit gives back the int8 model's codes."""
    if q.dtype == np.uint8 and pair.qparams is not None and pair.qparams.dtype == "int8":
        return (q ^ np.uint8(0x80)).view(np.int8)
    return q


def _deployed_outputs(runner: Runner, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The unmodified int8 model's outputs for one sample: what every capture session must reproduce."""
    runner.load()
    return {k: v.copy() for k, v in runner.infer(feed).items()}


def _loaded(runner: Runner) -> Runner:
    runner.load()
    return runner


def _observable(group: list[int], pairs: list, float_runner: Runner, int8_runner: Runner,
                accs: list[capture.PairAccumulator]) -> list[int]:
    """The pairs of ``group`` both runners expose; the others (inside a delegate partition, or fused
    away in the deployed graph) are marked."""
    kept = []
    for i in group:
        if pairs[i].float_name in float_runner.unobservable or pairs[i].int8_name in int8_runner.unobservable:
            accs[i].s.unobservable = True
        elif pairs[i].int8_name in int8_runner.fused:
            accs[i].s.fused = int8_runner.fused[pairs[i].int8_name]
        else:
            kept.append(i)
    return kept


#: the difference of an element that is NaN or infinite on one side only (or infinite with opposite signs):
#: the largest float, as the wire and report.json are JSON, which has no infinity
NONFINITE_DIFF = sys.float_info.max


def _max_abs_diff(reference: dict[str, np.ndarray], outputs: dict[str, np.ndarray]) -> float:
    """How far the capture session's model outputs are from the deployed session's.

    NaN in both at the same place, or the same infinity, is no departure; NaN or infinity against anything
    else is, and counts as :data:`NONFINITE_DIFF` (``np.max`` of a NaN difference would drop it).
    """
    worst = 0.0
    for name, ref in reference.items():
        got = outputs.get(name)
        if got is None or got.shape != ref.shape or not ref.size:
            continue
        a, b = got.astype(np.float64), ref.astype(np.float64)
        departs = ~((a == b) | (np.isnan(a) & np.isnan(b)))
        if departs.any():
            diff = np.abs(a[departs] - b[departs])
            worst = max(worst, float(diff.max()) if np.isfinite(diff).all() else NONFINITE_DIFF)
    return worst


JOBS: dict[str, Callable[[dict, Path], Any]] = {
    "probe": run_probe,
    "baseline": run_baseline,
    "benchmark": run_benchmark,
    "capture": run_capture,
    "evaluate": lambda job, jobdir: evaluate.run_evaluate(job, sample_feeds(*load_inputs(job, jobdir)), progress),
}

if __name__ == "__main__":
    sys.exit(main())
