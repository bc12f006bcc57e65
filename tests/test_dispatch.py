"""The dispatch point: forced backends, automatic choice and its errors."""
import pytest
import torch

from inform_fast import InfoRMHead, dispatch


def test_automatic_choice_on_cpu_is_reference(monkeypatch):
    monkeypatch.delenv("INFORM_FAST_BACKEND", raising=False)
    name, fn = dispatch.resolve("linear_pairwise_loss", "cpu")
    assert name == "reference" and callable(fn)


def test_environment_variable_forces_reference(monkeypatch):
    monkeypatch.setenv("INFORM_FAST_BACKEND", "reference")
    assert dispatch.resolve("vib_encode", "cpu")[0] == "reference"


def test_unknown_backend_name_is_rejected(monkeypatch):
    monkeypatch.setenv("INFORM_FAST_BACKEND", "cuda")
    with pytest.raises(ValueError, match="INFORM_FAST_BACKEND"):
        dispatch.resolve("vib_encode", "cpu")
    with pytest.raises(ValueError, match="backend"):
        dispatch.resolve("vib_encode", "cpu", backend="fast")


def test_forced_cpp_without_cpp_implementation_uses_reference(monkeypatch):
    monkeypatch.setenv("INFORM_FAST_BACKEND", "cpp")
    assert dispatch.resolve("linear_pairwise_loss", "cpu")[0] == "reference"


def test_forced_triton_on_cpu_without_interpreter_raises(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    with pytest.raises(RuntimeError, match="TRITON_INTERPRET=1.*registered"):
        dispatch.resolve("vib_encode", "cpu", backend="triton")


def test_unregistered_op_and_backend():
    with pytest.raises(ValueError, match="no implementation registered"):
        dispatch.resolve("no_such_op", "cpu")
    with pytest.raises(ValueError, match="backend"):
        dispatch.resolve("vib_encode", "cpu", backend="cuda")


def test_static_table_names_loadable_implementations_with_one_signature():
    # one table, no registration by import: every entry is a known backend and resolves to a
    # function; the backends of a registered torch op take the same arguments
    import inspect

    import inform_fast.detect.dbscan  # noqa: F401  (these define the torch ops, register no backend)
    import inform_fast.detect.neighbors  # noqa: F401
    import inform_fast.ops.mahalanobis  # noqa: F401
    import inform_fast.ops.vib_head  # noqa: F401

    torch_ops = [op for op in dispatch.BACKENDS if hasattr(torch.ops.inform_fast, op)]
    # nearest_distance is knn_distance's op with k = 1
    assert sorted(torch_ops) == sorted(["vib_encode", "vib_encode_backward", "linear_pairwise_loss",
                                        "linear_pairwise_loss_backward", "mahalanobis_sq", "dbscan", "knn_distance"])
    for op, implementations in dispatch.BACKENDS.items():
        assert set(implementations) <= set(dispatch.BACKEND_NAMES), op
        if not dispatch.triton_importable():
            implementations = {k: v for k, v in implementations.items() if k != "triton"}
        parameters = {name: list(inspect.signature(dispatch._load(target)).parameters)
                      for name, target in implementations.items()}
        if op in torch_ops:
            assert len({tuple(p) for p in parameters.values()}) == 1, (op, parameters)


def test_head_honours_environment(monkeypatch):
    monkeypatch.setenv("INFORM_FAST_BACKEND", "reference")
    head = InfoRMHead(8, latent_dim=2).eval()
    out = head.pairwise_loss(torch.randn(3, 8), torch.randn(3, 8))
    assert torch.isfinite(out.loss)


def test_importing_package_is_light():
    """import inform_fast must not import triton, transformers or the detection code."""
    import subprocess
    import sys

    code = "import sys, inform_fast; print(sorted(m for m in ('triton', 'transformers', 'inform_fast.detect.icds', 'sklearn') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == "[]"


def test_every_public_name_resolves():
    import inform_fast
    import inform_fast.detect

    for module in (inform_fast, inform_fast.detect):
        for name in module.__all__:
            assert getattr(module, name) is not None, name
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        inform_fast.nope
