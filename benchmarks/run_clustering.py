"""DBSCAN and k-NN on latent distributions that look like real reward-model latents, ours against
scikit-learn, each run in its own process (peak memory is that run's alone), JSON to
benchmarks/results/.

    python benchmarks/run_clustering.py                      # every distribution, n = 8k .. 1M
    python benchmarks/run_clustering.py --sizes 8000 32000 --distributions anisotropic
    python benchmarks/run_clustering.py --knn                # the k-NN score case only
    python benchmarks/run_clustering.py --report results/clustering-DATE.json   # markdown tables

Distributions and eps rules: ``benchmarks/latent_data.py`` (min_samples = 5; eps "auto" is our
``auto_eps_details`` on the same data, computed once in a process of its own and passed to both
implementations, so that the timed processes start alike). Per (distribution, n): ours (the
default backend, torch's default threads) and
scikit-learn's ``DBSCAN(eps, min_samples)`` (where ``n <= --sklearn-max-n``), interleaved,
``--repeats`` runs each in fresh processes, medians; the clusterings are compared (core points
equal, the partition of core points equal up to relabelling, noise equal; border points may join
either of two clusters, as scikit-learn allows). Growth exponents: least-squares slope of
log(time) against log(n). Memory: the resident-set growth during the call (sampled every 2 ms,
data, imports and a warm-up excluded: each run first clusters the first ``--warmup-rows`` rows of
its data, 2,000 by default (two row groups: the worker threads start), so that one-time runtime set-up such as torch's intra-op thread pool,
lazy imports and the code pages of first-used kernels is not counted as the call's memory, in
either implementation; ``--warmup-rows 0`` measures a cold first call), its anonymous part (the same less file-backed pages: without the code
pages of the libraries that a first call in a fresh process touches, which no allocation of the
algorithm makes; the runs report both), and the process's peak RSS. The machine is shared: each row records
the load average; ratios measured side by side move much less than times.

k-NN case (``--knn``): ``knn_distance`` (k = 10) of 10^5 InfoRM latents against 10^6 others,
against one GEMM pass of the same shape (``torch.mm`` of the queries with every reference chunk,
nothing else), timed on ``--gemm-queries`` queries and scaled linearly in the query count.

Score case (``--scores N``): the detection scores at N policy latents against N references, both
from the trained-InfoRM stream (references its first N rows, policy the next N): the paper's
``icds`` (eps "auto"), ``knn_scores`` (k = 10), ``kop`` (alpha 0.01, k = 10) and ``excess_icds``
(k = 20, eps "auto"), each in its own process, with their cost relative to ``icds``.
"""
from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
SIZES = (8_000, 32_000, 100_000, 300_000, 1_000_000)
MIN_SAMPLES = 5


# --- children ---------------------------------------------------------------------------------


def _measure(fn):
    """(result, wall seconds, CPU seconds, (RSS growth, anonymous-memory growth) bytes) of one call."""
    sys.path.insert(0, HERE)
    from bench_detection import peak_resident

    out = {}
    start, cpu = time.perf_counter(), time.process_time()
    memory = peak_resident(lambda: out.setdefault("result", fn()))
    return out["result"], time.perf_counter() - start, time.process_time() - cpu, memory


def child_dbscan(args) -> dict:
    sys.path.insert(0, HERE)
    import numpy as np
    import torch

    import latent_data

    x = latent_data.generate(args.distribution, args.n, args.seed)
    row = {"distribution": args.distribution, "n": args.n, "impl": args.impl, "threads": torch.get_num_threads(),
           "warmup_rows": args.warmup_rows}
    if args.impl == "ours":
        from inform_fast import dispatch
        from inform_fast.detect.dbscan import dbscan

        eps = float(args.eps)
        if args.warmup_rows:
            dbscan(x[: args.warmup_rows], eps, MIN_SAMPLES)
        result, wall, cpu, memory = _measure(lambda: dbscan(x, eps, MIN_SAMPLES))
        labels, core = result.labels.numpy(), result.core_mask.numpy()
        row.update(backend=dispatch.resolve("dbscan", torch.device("cpu"))[0], stats=result.stats)
    else:
        from sklearn.cluster import DBSCAN

        eps = float(args.eps)
        if args.warmup_rows:
            DBSCAN(eps=eps, min_samples=MIN_SAMPLES).fit(x[: args.warmup_rows])
        result, wall, cpu, memory = _measure(lambda: DBSCAN(eps=eps, min_samples=MIN_SAMPLES).fit(x))
        labels = result.labels_
        core = np.zeros(args.n, bool)
        core[result.core_sample_indices_] = True
    if args.save:
        np.savez(args.save, labels=labels, core=core)
    row.update(eps=eps, seconds=wall, cpu_seconds=cpu, memory_growth_bytes=memory[0], anon_growth_bytes=memory[1],
               max_rss_bytes=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
               n_clusters=int(labels.max() + 1) if labels.size else 0, n_core=int(core.sum()), n_noise=int((labels < 0).sum()))
    return row


def child_eps(args) -> dict:
    """The "auto" eps of a case (our ``auto_eps_details``), in a process of its own: computed in a
    DBSCAN run's process, the memory it freed stayed in that process's heap and served the timed
    call, so ours (which computed it) grew less than scikit-learn (which was given the number)."""
    sys.path.insert(0, HERE)
    import latent_data
    from inform_fast.detect.icds import auto_eps_details

    choice = auto_eps_details(latent_data.generate(args.distribution, args.n, args.seed), MIN_SAMPLES)
    return {"eps": choice.eps, "eps_choice": choice.to_dict()}


def child_knn(args) -> dict:
    sys.path.insert(0, HERE)
    import torch

    import latent_data

    data = latent_data.generate(args.distribution, args.nq + args.nr, args.seed)
    queries, references = torch.from_numpy(data[: args.nq]), torch.from_numpy(data[args.nq :])
    row = {"distribution": args.distribution, "nq": args.nq, "nr": args.nr, "k": args.k, "impl": args.impl,
           "threads": torch.get_num_threads()}
    if args.impl == "ours":
        from inform_fast.detect.neighbors import knn_distance, search_stats

        result, wall, cpu, memory = _measure(lambda: knn_distance(queries, references, args.k))
        row["stats"] = search_stats(queries[: min(args.nq, 4096)], references, args.k)  # the strategy on a prefix
        row["kth_distance_median"] = float(result[0][:, -1].median())
    else:  # one GEMM pass of the same shape on the first gemm_queries queries
        q = queries[: args.gemm_queries].contiguous()
        block = 8192
        out = torch.empty(q.shape[0], block)

        def gemm_pass():
            for r0 in range(0, references.shape[0], block):
                chunk = references[r0 : r0 + block]
                torch.mm(q, chunk.T, out=out[:, : chunk.shape[0]])

        _, wall, cpu, memory = _measure(gemm_pass)
        row["measured_queries"] = q.shape[0]
        wall, cpu = wall * args.nq / q.shape[0], cpu * args.nq / q.shape[0]
    row.update(seconds=wall, cpu_seconds=cpu, memory_growth_bytes=memory[0], anon_growth_bytes=memory[1],
               max_rss_bytes=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)
    return row


SCORES = ("icds", "knn_scores", "kop", "excess_icds")


def child_scores(args) -> dict:
    sys.path.insert(0, HERE)
    import torch

    import latent_data

    data = torch.from_numpy(latent_data.generate("inform", 2 * args.n, args.seed))
    reference, rlhf = data[: args.n], data[args.n :]
    from inform_fast.detect.calibrated import knn_scores, kop
    from inform_fast.detect.excess import excess_icds
    from inform_fast.detect.icds import icds

    calls = {
        "icds": lambda: icds(rlhf, reference, eps="auto"),
        "knn_scores": lambda: knn_scores(rlhf, reference, k=10),
        "kop": lambda: kop(rlhf, reference, alpha=0.01, k=10),
        "excess_icds": lambda: excess_icds(rlhf, reference),
    }
    result, wall, cpu, memory = _measure(calls[args.impl])
    row = {"distribution": "inform", "n": args.n, "m": args.n, "impl": args.impl, "threads": torch.get_num_threads(),
           "seconds": wall, "cpu_seconds": cpu, "memory_growth_bytes": memory[0], "anon_growth_bytes": memory[1],
           "max_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024}
    if args.impl == "icds":
        row.update(score=float(result.score), n_clusters=int(result.n_clusters), eps=float(result.eps))
    elif args.impl == "knn_scores":
        row.update(kth_distance_median=float(result.median()))
    elif args.impl == "kop":
        row.update(score=float(result.score), shift=float(result.shift))
    else:
        row.update(score=float(result.score), excess_fraction=float(result.excess_fraction))
    return row


# --- parent -----------------------------------------------------------------------------------


def _run_child(argv: list, timeout: float = 7200) -> dict:
    try:
        proc = subprocess.run([sys.executable, os.path.abspath(__file__)] + argv, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"error": f"timeout after {timeout:.0f} s", "timeout": timeout, "argv": argv}
    if proc.returncode != 0:
        return {"error": proc.stderr[-3000:], "argv": argv}
    row = json.loads(next(line for line in proc.stdout.splitlines() if line.startswith("RESULT "))[7:])
    row["load_average"] = os.getloadavg()
    return row


def compare(ours_file: str, theirs_file: str, data=None, eps: float = None) -> dict:
    """Core points equal, core partition equal up to relabelling (on the points both call core),
    noise equal. Where the core points differ and ``data`` (a callable returning the points) is
    given, each differing point's
    neighbour count is recomputed exactly (float64 differences of the stored values, ``<= eps``)
    and the pairs that decide it are checked against eps: ``core_mismatch_rounding`` counts the
    points where ours is the exact answer and the deciding pair lies within 1e-6 (relative) of
    eps, i.e. scikit-learn's own rounding of the distance (its expanded float64 formula) put it on
    the other side."""
    import numpy as np

    a, b = np.load(ours_file), np.load(theirs_file)
    core = a["core"]
    same_core = bool((core == b["core"]).all())
    both = core & b["core"]
    pairs = set(zip(a["labels"][both].tolist(), b["labels"][both].tolist()))
    same_partition = (len(pairs) == len(set(a["labels"][both].tolist())) == len(set(b["labels"][both].tolist())))
    out = {"same_core": same_core, "same_partition": bool(same_core and same_partition),
           "same_partition_on_common_core": bool(same_partition),
           "same_noise": bool(((a["labels"] < 0) == (b["labels"] < 0)).all())}
    if not same_core:
        differing = np.flatnonzero(core != b["core"])
        out["core_mismatch"] = int(differing.size)
        if data is not None:
            x64 = np.asarray(data(), dtype=np.float64)
            rounding = 0
            for i in differing[:1000]:
                distance = np.sqrt(((x64 - x64[i]) ** 2).sum(1))
                exact_core = int((distance <= eps).sum()) >= MIN_SAMPLES
                close = bool((np.abs(distance - eps) <= 1e-6 * eps).any())
                rounding += int(exact_core == bool(core[i]) and close)
            out["core_mismatch_rounding"] = rounding
    return out


def _median(values):
    values = sorted(values)
    return values[len(values) // 2]


def growth_exponent(points: list) -> float:
    """Least-squares slope of log(seconds) against log(n) over (n, seconds) points."""
    xs = [math.log(n) for n, _ in points]
    ys = [math.log(t) for _, t in points]
    mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
    return sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / sum((x - mx) ** 2 for x in xs)


def run_dbscan(args) -> list:
    sys.path.insert(0, HERE)
    import latent_data

    rows = []
    with tempfile.TemporaryDirectory() as folder:
        for name in args.distributions:
            for n in args.sizes:
                base = ["--child", "dbscan", "--distribution", name, "--n", str(n), "--seed", str(args.seed),
                        "--warmup-rows", str(args.warmup_rows)]
                repeats = args.repeats if n <= 100_000 else 1
                ours, theirs, eps, choice = [], [], latent_data.EPS[name], None
                if eps == "auto":  # one number for both implementations, computed apart from either
                    found = _run_child(["--child", "eps", "--distribution", name, "--n", str(n), "--seed", str(args.seed)],
                                       args.case_timeout)
                    if "error" in found:
                        rows.append(dict(found, distribution=name, n=n, impl="eps"))
                        print(f"{name} n={n} eps failed:\n{found['error']}")
                        continue
                    eps, choice = found["eps"], found["eps_choice"]
                for r in range(repeats):
                    save = os.path.join(folder, f"ours-{name}-{n}.npz")
                    row = _run_child(base + ["--impl", "ours", "--eps", repr(float(eps)), "--save", save], args.case_timeout)
                    if "error" in row:
                        row.update(distribution=name, n=n, impl="ours")
                        rows.append(row)
                        print(f"{name} n={n} ours failed:\n{row['error']}")
                        break
                    if choice is not None:
                        row["eps_choice"] = choice
                    ours.append(row)
                    if n <= args.sklearn_max_n:
                        other = os.path.join(folder, f"sklearn-{name}-{n}.npz")
                        row = _run_child(base + ["--impl", "sklearn", "--eps", repr(eps), "--save", other], args.case_timeout)
                        if "error" in row:
                            row.update(distribution=name, n=n, impl="sklearn")
                            rows.append(row)
                            print(f"{name} n={n} sklearn failed:\n{row['error'][-500:]}")
                        else:
                            row.update(compare(save, other, lambda: latent_data.generate(name, n, args.seed), eps))
                            theirs.append(row)
                for impl, runs in (("ours", ours), ("sklearn", theirs)):
                    if not runs:
                        continue
                    summary = dict(runs[-1])
                    summary["seconds"] = _median([r["seconds"] for r in runs])
                    summary["cpu_seconds"] = _median([r["cpu_seconds"] for r in runs])
                    summary["seconds_runs"] = [r["seconds"] for r in runs]
                    summary["memory_growth_bytes"] = max(r["memory_growth_bytes"] for r in runs)
                    summary["anon_growth_bytes"] = max(r.get("anon_growth_bytes", -1) for r in runs)
                    rows.append(summary)
                line = f"{name:15s} n={n:>8}  eps={eps if eps is None else f'{eps:.4g}'}"
                if ours:
                    line += f"  ours {rows[-1 - bool(theirs)]['seconds']:.2f}s"
                if theirs:
                    line += f"  sklearn {rows[-1]['seconds']:.2f}s  same core {rows[-1]['same_core']} partition {rows[-1]['same_partition']}"
                print(line, flush=True)
    return rows


def summarise(rows: list) -> dict:
    summary = {}
    by = {}
    for row in rows:
        if "error" in row or "distribution" not in row or "n" not in row:
            continue
        by.setdefault(row["distribution"], {}).setdefault(row["impl"], {})[row["n"]] = row
    for name, impls in by.items():
        ours, theirs = impls.get("ours", {}), impls.get("sklearn", {})
        entry = {}
        points = sorted((n, r["cpu_seconds"]) for n, r in ours.items())
        if len(points) >= 2:
            entry["ours_cpu_exponent"] = growth_exponent(points)
            upto = [(n, t) for n, t in points if n <= 100_000]
            if len(upto) >= 2:
                entry["ours_cpu_exponent_to_100k"] = growth_exponent(upto)
        sk_points = sorted((n, r["cpu_seconds"]) for n, r in theirs.items())
        if len(sk_points) >= 2:
            entry["sklearn_cpu_exponent"] = growth_exponent(sk_points)
        for n in sorted(set(ours) & set(theirs)):
            entry[f"speedup_{n}"] = theirs[n]["seconds"] / ours[n]["seconds"]
            entry[f"memory_ratio_{n}"] = ours[n]["memory_growth_bytes"] / max(theirs[n]["memory_growth_bytes"], 1)
            if ours[n].get("anon_growth_bytes", -1) >= 0 and theirs[n].get("anon_growth_bytes", -1) > 0:
                entry[f"anon_ratio_{n}"] = ours[n]["anon_growth_bytes"] / theirs[n]["anon_growth_bytes"]
            entry[f"identical_{n}"] = theirs[n]["same_core"] and theirs[n]["same_partition"]
        for n, r in ours.items():
            entry[f"seconds_{n}"] = r["seconds"]
        summary[name] = entry
    return summary


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", nargs="*", type=int, default=list(SIZES))
    parser.add_argument("--distributions", nargs="*", default=None)
    parser.add_argument("--sklearn-max-n", type=int, default=32_000)
    parser.add_argument("--repeats", type=int, default=3, help="runs per implementation up to n = 10^5 (then 1)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--warmup-rows", type=int, default=2000,
                        help="DBSCAN: each run first clusters this many rows of its data in the same process (0: none)")
    parser.add_argument("--case-timeout", type=float, default=1800, help="seconds one run may take (then recorded as a timeout)")
    parser.add_argument("--knn", action="store_true", help="run the k-NN score case only")
    parser.add_argument("--scores", type=int, default=None, metavar="N",
                        help="run the detection-score case only: N policy latents against N references")
    parser.add_argument("--score-impls", nargs="*", default=list(SCORES), choices=SCORES, help="the scores to time (default: all)")
    parser.add_argument("--nq", type=int, default=100_000)
    parser.add_argument("--nr", type=int, default=1_000_000)
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--gemm-queries", type=int, default=10_000)
    parser.add_argument("--knn-distribution", default="inform")
    parser.add_argument("--output", default=None)
    parser.add_argument("--report", default=None, help="print markdown tables of a saved JSON and exit")
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--distribution", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--n", type=int, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--impl", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--eps", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--save", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.report:
        with open(args.report) as stream:
            print(markdown(json.load(stream)))
        return 0
    if args.child:
        child = {"dbscan": child_dbscan, "eps": child_eps, "knn": child_knn, "scores": child_scores}[args.child]
        print("RESULT " + json.dumps(child(args)))
        return 0
    sys.path.insert(0, HERE)
    import latent_data

    args.distributions = args.distributions or list(latent_data.NAMES)
    stamp = datetime.date.today().isoformat()
    rows = []
    if args.scores:
        for impl in args.score_impls:
            row = _run_child(["--child", "scores", "--n", str(args.scores), "--seed", str(args.seed), "--impl", impl],
                             args.case_timeout)
            row.setdefault("impl", impl)
            rows.append(row)
            print({k: v for k, v in row.items() if k != "error"} if "error" not in row else row["error"][-1500:], flush=True)
        output = args.output or os.path.join(HERE, "results", f"scores-{stamp}.json")
    elif args.knn:
        base = ["--child", "knn", "--distribution", args.knn_distribution, "--nq", str(args.nq), "--nr", str(args.nr),
                "--k", str(args.k), "--seed", str(args.seed), "--gemm-queries", str(args.gemm_queries)]
        for impl in ("ours", "gemm", "ours", "gemm"):
            row = _run_child(base + ["--impl", impl])
            rows.append(row)
            print({k: v for k, v in row.items() if k != "error"} if "error" not in row else row["error"][-1500:], flush=True)
        output = args.output or os.path.join(HERE, "results", f"knn-{stamp}.json")
    else:
        rows = run_dbscan(args)
        output = args.output or os.path.join(HERE, "results", f"clustering-{stamp}.json")
    payload = {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "command": "python " + " ".join([os.path.relpath(__file__)] + sys.argv[1:]),
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} logical cores",
        "rows": rows,
        "summary": summarise(rows) if not args.knn else {},
    }
    os.makedirs(os.path.dirname(os.path.abspath(output)), exist_ok=True)
    temp = output + ".tmp"
    with open(temp, "w") as stream:
        json.dump(payload, stream, indent=1)
    os.replace(temp, output)
    print(f"wrote {output}")
    return 0


def _fmt_bytes(value: float) -> str:
    return f"{value / 2**30:.2f} GiB" if value >= 2**30 else f"{value / 2**20:.0f} MiB"


def _memory(row: dict) -> str:
    """RSS growth, and the anonymous-memory growth where the row has it (results before 2026-12-02e
    recorded the RSS only)."""
    anon = row.get("anon_growth_bytes", -1)
    return _fmt_bytes(row["memory_growth_bytes"]) + (f" / {_fmt_bytes(anon)}" if anon >= 0 else "")


def _equality(row: dict) -> str:
    """The comparison with scikit-learn in words: identical, or how the core points differ."""
    if row["same_core"] and row["same_partition"]:
        return "yes"
    mismatch, rounding = row.get("core_mismatch", 0), row.get("core_mismatch_rounding", 0)
    if mismatch and rounding == mismatch and row.get("same_partition_on_common_core"):
        return (f"yes but {mismatch} core point{'s' if mismatch > 1 else ''}: scikit-learn's rounding "
                "(a pair within 1e-6 of eps; ours is the exact answer)")
    return f"NO ({mismatch} core points differ, {rounding} of them by scikit-learn's rounding)"


def markdown(payload: dict) -> str:
    """Tables of a saved run: per distribution and n, ours and scikit-learn side by side."""
    lines = [f"Run `{os.path.basename(payload.get('command', ''))}` ({payload['date']}, {payload['machine']}): "
             f"`{payload['command']}`", ""]
    timeouts = [r for r in payload["rows"] if "timeout" in r]
    rows = [r for r in payload["rows"] if "error" not in r]
    if rows and "m" in rows[0]:
        icds_row = next((r for r in rows if r["impl"] == "icds"), None)
        lines += ["| score | policy x reference latents | time | CPU time | relative to icds (time) | memory growth | result |",
                  "|---|---|---|---|---|---|---|"]
        for r in rows:
            relative = f"{r['seconds'] / icds_row['seconds']:.2f}x" if icds_row else "-"
            result = ", ".join(f"{key} {r[key]:.4g}" for key in ("score", "n_clusters", "eps", "shift", "excess_fraction",
                                                                  "kth_distance_median") if key in r)
            lines.append(f"| {r['impl']} | {r['n']:,} x {r['m']:,} | {r['seconds']:.1f} s | {r['cpu_seconds']:.1f} s | {relative} | "
                         f"{_fmt_bytes(r['memory_growth_bytes'])} | {result} |")
        for r in payload["rows"]:
            if "error" in r:
                lines.append(f"| {r.get('impl')} | | failed: {r['error'].strip().splitlines()[-1][:120] if r['error'].strip() else ''} | | | | |")
        return "\n".join(lines)
    if rows and "nq" in rows[0]:
        lines += ["| implementation | queries x references | k | time | CPU time | memory growth | strategy |", "|---|---|---|---|---|---|---|"]
        for r in rows:
            strategy = r.get("stats", {}).get("strategy", f"GEMM only, timed on {r.get('measured_queries')} queries, scaled")
            lines.append(f"| {r['impl']} | {r['nq']:,} x {r['nr']:,} | {r['k']} | {r['seconds']:.1f} s | {r['cpu_seconds']:.1f} s | "
                         f"{_fmt_bytes(r['memory_growth_bytes'])} | {strategy} |")
        return "\n".join(lines)
    lines += ["| distribution | n | eps | ours | scikit-learn | speedup | ours memory (RSS / anonymous) | sklearn memory (RSS / anonymous) | same core / clusters | clusters | pairs computed (share of n^2) |",
              "|---|---|---|---|---|---|---|---|---|---|---|"]
    by = {}
    for r in rows:
        by.setdefault((r["distribution"], r["n"]), {})[r["impl"]] = r
    for (name, n), impls in sorted(by.items(), key=lambda kv: (kv[0][0], kv[0][1])):
        o, s = impls.get("ours"), impls.get("sklearn")
        if o is None:
            continue
        stats = o.get("stats", {})
        pairs = stats.get("pairs_full", 0) + stats.get("pairs_filtered", 0) / 8  # a lower-bound pair costs ~1/8
        lines.append(
            f"| {name} | {n:,} | {o['eps']:.3g} | {o['seconds']:.2f} s | {s['seconds']:.2f} s |" if s else
            f"| {name} | {n:,} | {o['eps']:.3g} | {o['seconds']:.2f} s | - |")
        if s:
            lines[-1] += f" {s['seconds'] / o['seconds']:.1f}x | {_memory(o)} | {_memory(s)} | {_equality(s)} |"
        else:
            lines[-1] += f" - | {_memory(o)} | - | - |"
        lines[-1] += f" {o['n_clusters']} | {pairs / n / n:.3f} |"
    for r in timeouts:
        lines.append(f"| {r.get('distribution')} | {r.get('n', 0):,} | | {r.get('impl')}: stopped after {r['timeout']:.0f} s | | | | | | | |")
    summary = payload.get("summary", {})
    if summary:
        lines += ["", "| distribution | ours CPU-time growth exponent (all n) | ours (n <= 10^5) | scikit-learn |", "|---|---|---|---|"]
        for name, entry in summary.items():
            lines.append(f"| {name} | {entry.get('ours_cpu_exponent', float('nan')):.2f} | "
                         f"{entry.get('ours_cpu_exponent_to_100k', float('nan')):.2f} | {entry.get('sklearn_cpu_exponent', float('nan')):.2f} |")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
