"""Measure issue 4's full-size CPU detection targets, each case in its own process (so peak
memory is that case's alone), and write JSON to benchmarks/results/.

    python benchmarks/run_detection_targets.py            # all cases
    python benchmarks/run_detection_targets.py --quick    # smaller sizes, to try the script

Cases (6 dense clusters, L = 128, eps = 12, min_samples = 5; data from bench_detection.make_latents):
  ours_icds_32k       ICDS n = 32,000 vs m = 2*10^5 (ours)
  sklearn_icds_32k    the same with scikit-learn DBSCAN + NumPy centroids + sklearn nearest neighbour
  ours_icds_100k      ICDS n = 10^5 vs m = 2*10^5 (ours; scikit-learn needs more memory than 23 GB)

Targets: ours_icds_32k >= 3x faster than sklearn_icds_32k with <= 1/4 of its peak memory;
ours_icds_100k under 60 s and 2 GB. Memory is reported two ways: the peak resident-set growth
during the call (sampled every 2 ms, the algorithm's own memory: data and imports excluded) and
the process's lifetime peak RSS (ru_maxrss, everything included). Other processes sharing the
CPU inflate the times; the JSON records the load average before and after.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import resource
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
CASES = {
    "ours_icds_32k": ("ours", 32_000, 200_000),
    "sklearn_icds_32k": ("sklearn", 32_000, 200_000),
    "ours_icds_100k": ("ours", 100_000, 200_000),
}
QUICK = {"ours_icds_32k": 4_000, "sklearn_icds_32k": 4_000, "ours_icds_100k": 8_000}


def child(case: str, n: int, m: int) -> dict:
    sys.path.insert(0, HERE)
    import torch

    from bench_detection import EPS, MIN_SAMPLES, make_latents, peak_memory, sklearn_icds

    impl = CASES[case][0]
    rlhf, reference = make_latents(n, m)
    out = {}
    if impl == "ours":
        from inform_fast import dispatch
        from inform_fast.detect.icds import icds

        fn = lambda: out.setdefault("result", icds(rlhf, reference, eps=EPS, min_samples=MIN_SAMPLES))  # noqa: E731
        backend = dispatch.resolve("dbscan", torch.device("cpu"))[0]
    else:
        r, s = rlhf.numpy(), reference.numpy()
        fn = lambda: out.setdefault("result", sklearn_icds(r, s))  # noqa: E731
        backend = "sklearn"
    start = time.perf_counter()
    memory = peak_memory(fn, "cpu")
    seconds = time.perf_counter() - start
    result = out["result"]
    score = result if isinstance(result, float) else result.score
    return {
        "case": case,
        "impl": impl,
        "backend": backend,
        "n": n,
        "m": m,
        "dim": 128,
        "eps": EPS,
        "min_samples": MIN_SAMPLES,
        "seconds": seconds,
        "peak_memory_growth_bytes": memory,
        "max_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
        "score": score,
        "torch_threads": torch.get_num_threads(),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="small sizes, to check the script")
    parser.add_argument("--cases", nargs="*", default=list(CASES), choices=list(CASES))
    parser.add_argument("--output", default=os.path.join(HERE, "results", "detection_targets.json"))
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--n", type=int, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print("RESULT " + json.dumps(child(args.child, args.n, CASES[args.child][2])))
        return 0
    rows = []
    for case in args.cases:
        n = QUICK[case] if args.quick else CASES[case][1]
        load_before = os.getloadavg()
        proc = subprocess.run([sys.executable, __file__, "--child", case, "--n", str(n)], capture_output=True, text=True, timeout=1800)
        if proc.returncode != 0:
            rows.append({"case": case, "n": n, "error": proc.stderr[-2000:]})
            print(f"{case}: failed\n{proc.stderr[-2000:]}")
            continue
        row = json.loads(next(line for line in proc.stdout.splitlines() if line.startswith("RESULT "))[7:])
        row["load_average_before"], row["load_average_after"] = load_before, os.getloadavg()
        rows.append(row)
        print(f"{case}: {row['seconds']:.2f} s, memory growth {row['peak_memory_growth_bytes'] / 2**20:.0f} MiB, "
              f"max RSS {row['max_rss_bytes'] / 2**20:.0f} MiB, score {row['score']:.6g}")
    by = {r["case"]: r for r in rows if "seconds" in r}
    summary = {}
    if "ours_icds_32k" in by and "sklearn_icds_32k" in by:
        ours, theirs = by["ours_icds_32k"], by["sklearn_icds_32k"]
        summary["speedup_32k"] = theirs["seconds"] / ours["seconds"]
        summary["memory_growth_ratio_32k"] = ours["peak_memory_growth_bytes"] / max(theirs["peak_memory_growth_bytes"], 1)
        summary["max_rss_ratio_32k"] = ours["max_rss_bytes"] / theirs["max_rss_bytes"]
        summary["score_relative_difference_32k"] = abs(ours["score"] - theirs["score"]) / max(abs(theirs["score"]), 1e-12)
        print(f"32k: {summary['speedup_32k']:.2f}x faster (target >= 3), memory growth ratio "
              f"{summary['memory_growth_ratio_32k']:.3f} (target <= 0.25), max RSS ratio {summary['max_rss_ratio_32k']:.3f}")
    if "ours_icds_100k" in by:
        row = by["ours_icds_100k"]
        summary["n100k_seconds"] = row["seconds"]
        summary["n100k_max_rss_gib"] = row["max_rss_bytes"] / 2**30
    payload = {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "command": "python " + " ".join([os.path.relpath(__file__)] + sys.argv[1:]),
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} logical cores",
        "quick": args.quick,
        "cases": rows,
        "summary": summary,
    }
    os.makedirs(os.path.dirname(os.path.abspath(args.output)), exist_ok=True)
    temp = args.output + ".tmp"
    with open(temp, "w") as stream:
        json.dump(payload, stream, indent=2)
    os.replace(temp, args.output)
    print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
