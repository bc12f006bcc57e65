"""Public names resolve to functions whatever was imported before (lazy exports shadowed by
submodules of the same name gave ``dbscan`` as a module, and ``mop`` after the monitor ran)."""
import subprocess
import sys

import pytest

CHECK = """
{pre}
from inform_fast import icds, dbscan, mop
import inform_fast.detect as detect
names = [icds, dbscan, mop, detect.icds, detect.dbscan, detect.mop]
print("KINDS", ",".join(type(v).__name__ for v in names))
"""


@pytest.mark.parametrize(
    "pre",
    [
        "",
        "import inform_fast.detect.monitor",  # imports the mop module
        "import inform_fast.detect.dbscan, inform_fast.detect.mop, inform_fast.detect.icds",
        "from inform_fast.detect.icds import icds as first",
        "import inform_fast.detect\nfrom inform_fast.detect import dbscan as first",
    ],
)
def test_names_are_functions_whatever_was_imported_before(pre):
    out = subprocess.run([sys.executable, "-c", CHECK.format(pre=pre)], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    line = next(line for line in out.stdout.splitlines() if line.startswith("KINDS"))
    assert line.split()[1] == ",".join(["function"] * 6)


def test_import_inform_fast_stays_light():
    out = subprocess.run([sys.executable, "-c", "import sys, inform_fast; print('TORCH', 'torch' in sys.modules)"],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0 and "TORCH False" in out.stdout
