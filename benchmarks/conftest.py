"""Shared options for the benchmark suite.

``pytest benchmarks/ --benchmark-only`` runs small sizes (CPU, minutes); ``--gpu-sizes`` selects
the large sizes meant for an H100/H200.
"""
import os

import pytest

# The benchmarks time compiled kernels, never the Triton interpreter. INFORM_FAST_BENCH_PLUMBING=1
# (tests/test_bench_plumbing.py) keeps it, so that the CUDA-only variants run a few rounds on CPU
# tensors: a check of the benchmark code, whose timings mean nothing and are not saved.
PLUMBING = os.environ.get("INFORM_FAST_BENCH_PLUMBING") == "1"
if not PLUMBING:
    os.environ.pop("TRITON_INTERPRET", None)


def pytest_addoption(parser):
    parser.addoption(
        "--gpu-sizes",
        action="store_true",
        default=False,
        help="benchmark the large sizes meant for a GPU (default: small CPU sizes)",
    )


@pytest.fixture(scope="session")
def gpu_sizes(request) -> bool:
    return bool(request.config.getoption("--gpu-sizes"))


@pytest.fixture(scope="session")
def plumbing() -> bool:
    """True when the CUDA-only variants run under the Triton interpreter (see PLUMBING above)."""
    return PLUMBING


@pytest.fixture(scope="session")
def device(gpu_sizes) -> str:
    import torch

    if gpu_sizes and not torch.cuda.is_available():
        pytest.skip("--gpu-sizes needs a CUDA device")
    return "cuda" if torch.cuda.is_available() else "cpu"


def pytest_benchmark_update_json(config, benchmarks, output_json):
    """Record the command and the device in the saved JSON, for benchmarks/report.py."""
    import platform

    import torch

    output_json["command"] = "pytest " + " ".join(config.invocation_params.args)
    if torch.cuda.is_available():
        output_json["device_name"] = torch.cuda.get_device_name()
    else:
        output_json["device_name"] = f"CPU {platform.processor() or platform.machine()} ({os.cpu_count()} logical cores)"
    output_json["torch_version"] = torch.__version__
