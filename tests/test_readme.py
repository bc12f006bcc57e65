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


def test_top_level_names_are_the_functions_after_their_modules_are_imported():
    # the README's `from inform_fast import icds, mop` once inform_fast.detect.icds / .mop were
    # imported (by the monitor, say): the package attribute of that name is then the submodule
    import importlib

    import inform_fast

    for name in ("icds", "mop", "dbscan", "ibl_penalty", "nearest_distance", "OverOptimizationMonitor", "MahalanobisScorer"):
        importlib.import_module("inform_fast.detect." + {"ibl_penalty": "ibl", "nearest_distance": "neighbors",
                                                          "OverOptimizationMonitor": "monitor",
                                                          "MahalanobisScorer": "mahalanobis"}.get(name, name))
        value = inform_fast.__getattr__(name)
        assert callable(value) and not isinstance(value, type(inform_fast)), (name, value)


def test_readme_has_examples():
    assert len(BLOCKS) >= 3


def test_detection_guide_example_runs(tmp_path, monkeypatch):
    # docs/detection.md's TRL example, with a tiny model and a saved reference file in place of
    # the user's: the imports, the arguments and the logged names must be what the guide says
    pytest.importorskip("trl")
    import torch
    from safetensors.torch import save_file

    from inform_fast.modeling import InfoRMForRewardModel
    from inform_fast.tiny import tiny_llama, tiny_tokenizer

    guide = (pathlib.Path(__file__).resolve().parents[1] / "docs" / "detection.md").read_text()
    (code,) = re.findall(r"```python\n(.*?)```", guide, flags=re.S)
    tokenizer = tiny_tokenizer()
    model = InfoRMForRewardModel.from_backbone(tiny_llama(len(tokenizer), seed=0), latent_dim=6).eval()
    save_file({"mu": torch.randn(400, 6), "rewards": torch.randn(400)}, str(tmp_path / "sft.safetensors"))
    monkeypatch.chdir(tmp_path)
    scope = {"model": model, "tokenizer": tokenizer}
    exec(compile(code, "docs/detection.md python block", "exec"), scope)
    logged = {}
    words = ["good", "answer", "no", "yes", "great", "thanks", "red", "three"]
    prompts = ["hello question", "please help"] * 8
    completions = [" " + " ".join(words[(i * 3 + k) % 8] for k in range(1 + i % 4)) for i in range(16)]
    from types import SimpleNamespace

    rewards = scope["reward_func"](prompts=prompts, completions=completions, trainer_state=SimpleNamespace(global_step=0),
                                   log_metric=logged.__setitem__)
    assert len(rewards) == 16
    assert {"inform/kop", "inform/kop_shift", "inform/kop_shift_z", "inform/excess_fraction", "inform/onset",
            "inform/ibl_penalty_mean"} <= set(logged)


def test_integration_recipes_run(tmp_path, monkeypatch):
    # docs/integrations.md: the setup block, then every recipe as a user would paste it, each in a
    # fresh namespace, in a folder of their own (the recipes read the files the setup wrote)
    pytest.importorskip("trl")
    pytest.importorskip("peft")
    guide = (pathlib.Path(__file__).resolve().parents[1] / "docs" / "integrations.md").read_text()
    setup, *recipes = re.findall(r"```python\n(.*?)```", guide, flags=re.S)
    assert len(recipes) >= 6
    monkeypatch.chdir(tmp_path)
    exec(compile(setup, "docs/integrations.md setup", "exec"), {})
    scopes = []
    for index, code in enumerate(recipes):
        scopes.append({})
        exec(compile(code, f"docs/integrations.md recipe {index}", "exec"), scopes[-1])
    trl_recipe, hf_recipe, grpo_recipe, openrlhf_recipe, *_ = scopes
    assert (tmp_path / "rm-lora" / "adapter_config.json").is_file() and (tmp_path / "rm-stock" / "model.safetensors").is_file()
    assert any({"loss", "inform/mop"} <= set(entry) for entry in hf_recipe["trainer"].state.log_history)
    assert grpo_recipe["monitor"].history, "the GRPO run never evaluated the monitor"
    out = openrlhf_recipe["reward_func"](["hello good"], ["hello"], [None])
    assert {"inform_raw_reward", "inform_icds", "inform_mop", "inform_evaluated"} <= set(out["extra_logs"])
