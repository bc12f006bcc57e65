"""The README's Python examples run as written (except those that need a real checkpoint path)."""
import pathlib
import re

import pytest

README = (pathlib.Path(__file__).resolve().parents[1] / "README.md").read_text()
BLOCKS = re.findall(r"```python\n(.*?)```", README, flags=re.S)


@pytest.mark.parametrize("index", range(len(BLOCKS)))
def test_readme_python_block_runs(index):
    code = BLOCKS[index]
    if "path/to/" in code:
        pytest.skip("needs a pretrained checkpoint path (the same API is tested in tests/test_modeling.py)")
    exec(compile(code, f"README.md python block {index}", "exec"), {})


def test_readme_has_examples():
    assert len(BLOCKS) >= 3
