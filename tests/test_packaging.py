"""The Triton kernels are installed as inform_fast.kernels; a top-level `kernels` is never imported.

The check runs in a fresh interpreter started outside the repository, as a user's program would
be: from the repository root, the folder ``kernels/`` itself is importable as ``kernels`` via the
current directory on sys.path (and transformers probes for the Hugging Face ``kernels`` package),
which is exactly the collision the package layout avoids for installed users.
"""
import os
import subprocess
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

CHECK = r"""
import importlib, pkgutil, sys
import inform_fast
failed = []
for info in pkgutil.walk_packages(inform_fast.__path__, "inform_fast."):
    if info.name.startswith("inform_fast.cli") or info.name == "inform_fast.__main__":
        continue  # the CLI modules are imported by the command line, not at package import
    try:
        importlib.import_module(info.name)
    except ImportError as error:  # an optional dependency missing on this platform
        failed.append(f"{info.name}: {error}")
try:
    importlib.import_module("inform_fast.kernels.min_distance")
    importlib.import_module("inform_fast.kernels.dbscan")
except ImportError as error:
    failed.append(f"inform_fast.kernels: {error}")
print("TOP_LEVEL_KERNELS", "kernels" in sys.modules, sys.modules.get("kernels"))
import inform_fast.kernels
print("KERNELS_FILE", inform_fast.kernels.__file__)
print("FAILED", failed)
"""


def run_check(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    out = subprocess.run([sys.executable, "-c", CHECK], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    return dict(line.split(" ", 1) for line in out.stdout.splitlines() if line.split(" ", 1)[0].isupper())


def test_no_top_level_kernels_module_and_kernels_folder(tmp_path):
    result = run_check(tmp_path)
    assert result["TOP_LEVEL_KERNELS"].startswith("False"), f"a top-level `kernels` module was imported: {result['TOP_LEVEL_KERNELS']}"
    folder = os.path.dirname(os.path.realpath(result["KERNELS_FILE"]))
    assert folder == os.path.realpath(os.path.join(REPO, "kernels"))


def test_sdist_carries_the_extension_sources_and_headers(tmp_path):
    # an sdist without csrc/*.h would build no inform_fast._C (optional extension: silently).
    # Built from a copy of what setup.py reads, without any egg-info: setuptools would otherwise
    # reuse an earlier SOURCES.txt and pass whatever the manifest says.
    import glob
    import shutil
    import tarfile

    source = tmp_path / "src"
    source.mkdir()
    for name in ("setup.py", "pyproject.toml", "MANIFEST.in", "README.md", "LICENSE"):
        if os.path.exists(os.path.join(REPO, name)):
            shutil.copy(os.path.join(REPO, name), source / name)
    for folder in ("csrc", "inform_fast", "kernels"):
        shutil.copytree(os.path.join(REPO, folder), source / folder, ignore=shutil.ignore_patterns("__pycache__", "*.so"))
    out = subprocess.run([sys.executable, "setup.py", "-q", "sdist", "--dist-dir", str(tmp_path / "dist")], cwd=source,
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    archive = next((tmp_path / "dist").glob("*.tar.gz"))
    names = {name.split("/", 1)[1] for name in tarfile.open(archive).getnames() if "/" in name}
    wanted = {os.path.relpath(path, REPO) for pattern in ("csrc/*.cpp", "csrc/*.h") for path in glob.glob(os.path.join(REPO, pattern))}
    assert wanted and wanted <= names, sorted(wanted - names)
