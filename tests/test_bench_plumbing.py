"""The CUDA-only variants of the head benchmark run (a few rounds, under the Triton interpreter).

The benchmarks skip them on a machine without CUDA, so without this a mistake in their code
would first show on a GPU, in the one session that has one.
"""
import os
import subprocess
import sys
from pathlib import Path

from inform_fast.testing import requires_triton_interpreter

REPO = Path(__file__).resolve().parents[1]


@requires_triton_interpreter()
def test_head_benchmark_triton_variants_run():
    env = dict(os.environ, TRITON_INTERPRET="1", INFORM_FAST_BENCH_PLUMBING="1")
    command = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--benchmark-only",
               "benchmarks/bench_head.py", "-k", "triton"]
    result = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-4000:]
    assert "2 passed" in result.stdout, output[-4000:]
