"""benchmarks/report.py turns pytest-benchmark JSON into the performance table."""
import importlib.util
import json
import pathlib

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]


def load_report_module():
    spec = importlib.util.spec_from_file_location("bench_report", ROOT / "benchmarks" / "report.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def bench(name, group, median, **extra):
    return {"name": name, "group": group, "params": None, "extra_info": extra,
            "stats": {"median": median, "min": median, "mean": median}}


def test_ratios_and_ceiling_fractions(tmp_path):
    report = load_report_module()
    data = {
        "datetime": "2026-11-24T00:00:00", "device_name": "Test GPU", "command": "pytest benchmarks/",
        "machine_info": {"python_version": "3.11"},
        "benchmarks": [
            bench("test_copy", "ceiling", 1.0, role="ceiling", kind="bandwidth", bytes=100e9),
            bench("test_mm", "ceiling", 1.0, role="ceiling", kind="matmul", flops=50e12, dtype="float32"),
            bench("test_mahalanobis_ours", "maha", 0.5, bytes=25e9, flops=5e12),
            bench("test_mahalanobis_numpy", "maha", 2.0, role="baseline"),
        ],
    }
    path = tmp_path / "run.json"
    path.write_text(json.dumps(data))
    out = tmp_path / "perf.md"
    assert report.main([str(path), "--output", str(out)]) == 0
    text = out.read_text()
    assert "Test GPU" in text and "copy bandwidth 100.0 GB/s" in text
    assert "| 4.00x |" in text  # numpy 2.0 s / ours 0.5 s
    assert "50% bw" in text and "20% mm" in text  # 50 GB/s of 100; 10 TFLOP/s of 50


def test_rejects_non_benchmark_json(tmp_path, capsys):
    report = load_report_module()
    path = tmp_path / "bad.json"
    path.write_text("{}")
    assert report.main([str(path)]) == 2
    assert "no 'benchmarks' key" in capsys.readouterr().err


def test_ci_runs_the_readme_commands():
    """.ci/run reads the README's first bash block, which must hold the two documented commands."""
    readme = (ROOT / "README.md").read_text()
    block = readme.split("```bash\n", 1)[1].split("```", 1)[0].strip().splitlines()
    assert len(block) == 2
    assert block[0].endswith("inform-fast demo") and block[1].endswith("pytest")
    assert "README.md" in (ROOT / ".ci" / "run").read_text()


def test_ratios_compare_only_equal_sizes(tmp_path):
    report = load_report_module()
    runs = [
        dict(bench("ours-6", "nn", 0.010, role="ours"), params={"impl": "ours", "queries": 6}),
        dict(bench("numpy-6", "nn", 0.020), params={"impl": "numpy", "queries": 6}),
        dict(bench("ours-1000", "nn", 0.150, role="ours"), params={"impl": "ours", "queries": 1000}),
        dict(bench("numpy-1000", "nn", 0.100), params={"impl": "numpy", "queries": 1000}),
    ]
    path = tmp_path / "run.json"
    path.write_text(json.dumps({"benchmarks": runs, "machine_info": {}}))
    text = report.render([(str(path), json.loads(path.read_text()))])
    assert "| 2.00x |" in text and "| 0.67x |" in text


def test_detection_targets_json_is_rendered(tmp_path):
    report = load_report_module()
    data = {"date": "d", "machine": "m", "command": "python benchmarks/run_detection_targets.py",
            "cases": [{"case": "ours_icds_32k", "backend": "cpp", "n": 32000, "m": 200000, "seconds": 1.5,
                       "max_rss_bytes": 2**29, "peak_memory_growth_bytes": 2**27}],
            "summary": {"speedup_32k": 19.7}}
    text = report.render([("t.json", data)])
    assert "| `ours_icds_32k` | cpp | 32000 | 200000 | 1.5 s | 512 MiB | 128 MiB |" in text
    assert "speedup_32k = 19.7" in text


def test_baseline_on_a_subset_is_compared_per_row(tmp_path):
    report = load_report_module()
    runs = [bench("ours", "maha", 0.1, role="ours", rows=200_000), bench("scipy_loop", "maha", 0.01, rows=2_000),
            bench("one_matmul", "maha", 0.09, role="ceiling", rows=200_000)]
    text = report.render([("r.json", {"benchmarks": runs, "machine_info": {}})])
    assert "| 10.00x per row |" in text  # 5 us/row vs 0.5 us/row
    assert "`one_matmul` | ceiling" in text and "| 0.90x |" in text


def test_profile_head_runs_and_writes_its_table(tmp_path, capsys):
    spec = importlib.util.spec_from_file_location("profile_head", ROOT / "benchmarks" / "profile_head.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    out = tmp_path / "profile.json"
    assert module.main(["--pairs", "8", "--hidden", "24", "--latent", "6", "--backend", "reference", "--top", "3", "--json", str(out)]) == 0
    assert "B=8 H=24 L=6" in capsys.readouterr().out
    table = json.loads(out.read_text())
    assert table["backend"] == "reference" and table["kernels"]
    assert all(row["us_per_step"] >= 0 and row["calls_per_step"] > 0 for row in table["kernels"])
    if not __import__("torch").cuda.is_available():
        assert module.main(["--backend", "triton"]) == 2  # never the interpreter
