"""The machine's ceilings, measured in the same run as the other benchmarks: a large copy
(memory bandwidth) and a large matrix product (matrix rate). ``benchmarks/report.py`` expresses
the kernels' rates as fractions of these."""
import pytest
import torch


def _sync(device):
    if device == "cuda":
        torch.cuda.synchronize()


@pytest.mark.benchmark(group="ceiling: copy bandwidth")
def test_copy_bandwidth(benchmark, device, gpu_sizes):
    numel = (1 << 30) if gpu_sizes else (1 << 25)  # 4 GiB or 128 MiB of float32
    src = torch.randn(numel, device=device)
    dst = torch.empty_like(src)

    def copy():
        dst.copy_(src)
        _sync(device)

    benchmark.pedantic(copy, rounds=10, warmup_rounds=2)
    moved = 2 * src.numel() * src.element_size()  # read + write
    benchmark.extra_info.update(role="ceiling", kind="bandwidth", bytes=moved, device=device, numel=numel)


@pytest.mark.benchmark(group="ceiling: matrix rate")
@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_matmul_rate(benchmark, device, gpu_sizes, dtype):
    if device == "cpu" and dtype == "bfloat16":
        pytest.skip("bf16 matmul is not a CPU ceiling of interest here")
    n = 8192 if gpu_sizes else 1024
    a = torch.randn(n, n, device=device, dtype=getattr(torch, dtype))
    b = torch.randn(n, n, device=device, dtype=getattr(torch, dtype))

    def matmul():
        torch.mm(a, b)
        _sync(device)

    benchmark.pedantic(matmul, rounds=10, warmup_rounds=2)
    benchmark.extra_info.update(role="ceiling", kind="matmul", flops=2 * n**3, device=device, n=n, dtype=dtype)
