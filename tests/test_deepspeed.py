"""DeepSpeed ZeRO-2 and ZeRO-3: two gloo processes on their halves of a batch give the full batch's
gradients and, after one SGD step, the full batch's parameters; a ZeRO-3 model saved from its
gathered parameters loads back with the same rewards; InfoRMTrainer trains and saves under ZeRO-3
(``TrainingArguments(deepspeed=...)``). CPU only (DeepSpeed's CPU accelerator); one launch of two
processes runs every case.

Skipped where deepspeed is not installed (CI does not install it; see README, "DeepSpeed").
"""
import importlib.util
import os
import sys
from pathlib import Path

import pytest
import torch
import torch.distributed as dist

from inform_fast.integrations.hf_trainer import inform_batch_loss
from inform_fast.modeling import InfoRMForRewardModel


def _load_ddp_helpers():
    # The model, batch and halves of tests/test_ddp.py, loaded from its path: pytest's importlib
    # mode leaves tests/ off sys.path, so `import test_ddp` works in the worker scripts only.
    spec = importlib.util.spec_from_file_location("_inform_fast_test_ddp", Path(__file__).with_name("test_ddp.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


_ddp = _load_ddp_helpers()
build_model, make_batch, half, PAIRS = _ddp.build_model, _ddp.make_batch, _ddp.half, _ddp.PAIRS

LR = 0.5  # plain SGD: the step is p - LR * grad, the same on every rank and in one process


def build(decoder: str):
    if decoder == "linear":
        return build_model()
    # the gated-MLP decoder: its projections are read inside the decoder's forward, not the head's
    model = build_model()
    config = model.config
    config.decoder = "mlp"
    torch.manual_seed(3)
    return InfoRMForRewardModel(config, backbone=model.backbone).eval()


CASES = [(2, "linear"), (3, "linear"), (3, "mlp")]


def _case(deepspeed, stage, decoder, rank, world_size, out):
    from deepspeed.utils import safe_get_full_grad

    model = build(decoder)
    config = {
        "train_micro_batch_size_per_gpu": PAIRS // world_size,
        "gradient_accumulation_steps": 1,
        # threshold 0: every parameter partitioned, however small (by default ZeRO-3 keeps
        # parameters under 10^5 elements whole on every rank, which would hide a read of the
        # head's weights outside a forward in this tiny model)
        "zero_optimization": {"stage": stage, "stage3_param_persistence_threshold": 0},
        "zero_allow_untested_optimizer": True,  # torch.optim.SGD
    }
    engine, *_ = deepspeed.initialize(model=model, optimizer=torch.optim.SGD(model.parameters(), lr=LR), config=config)
    loss, _, _ = inform_batch_loss(engine, half(make_batch(), rank))
    engine.backward(loss)
    # the full (averaged) gradient of each parameter, gathered from the ZeRO partitions
    grads = {name: safe_get_full_grad(p) for name, p in engine.module.named_parameters()}
    grads = {name: g.clone() for name, g in grads.items() if g is not None}
    engine.step()
    with deepspeed.zero.GatheredParameters(list(engine.module.parameters()), enabled=stage == 3):
        stepped = {name: p.detach().clone() for name, p in engine.module.named_parameters()}
        if stage == 3 and rank == 0:
            # the full model, saved while gathered (outside, a ZeRO-3 parameter is an empty partition)
            engine.module.save_pretrained(f"{out}-saved")
    # rewards of the stepped model through the engine (eval mode: z = mu)
    batch = make_batch()
    # score() and latents() as a reward function calls them on a ZeRO-3 model (no gathering),
    # before any other forward of the stepped model
    scored, mu = engine.module.score(batch["chosen_input_ids"], batch["chosen_attention_mask"])
    latents = engine.module.latents(batch["chosen_input_ids"], batch["chosen_attention_mask"])
    pair_loss = engine.module.pairwise_loss(batch["chosen_input_ids"], batch["chosen_attention_mask"],
                                            batch["rejected_input_ids"], batch["rejected_attention_mask"]).loss.detach()
    with torch.no_grad():
        rewards = engine(input_ids=batch["chosen_input_ids"], attention_mask=batch["chosen_attention_mask"]).rewards
    torch.save({"grads": grads, "params": stepped, "rewards": rewards.clone(), "scored": scored.clone(),
                "mu": mu.clone(), "latents": latents.clone(), "pair_loss": pair_loss.clone()}, f"{out}-rank{rank}.pt")
    dist.barrier()


def _trainer_case(deepspeed, rank, out):
    """Two steps of InfoRMTrainer with ``TrainingArguments(deepspeed=<ZeRO-3 dict>)``, then save_model."""
    from transformers import TrainingArguments

    from inform_fast.data import PreferenceDataset
    from inform_fast.integrations.hf_trainer import InfoRMTrainer, default_collator

    batch = make_batch()
    pairs = [{"chosen_ids": w.tolist(), "rejected_ids": l.tolist()}
             for w, l in zip(batch["chosen_input_ids"], batch["rejected_input_ids"])]
    config = {
        "train_micro_batch_size_per_gpu": "auto", "gradient_accumulation_steps": "auto", "train_batch_size": "auto",
        # save_model writes the full weights only with this (else a ZeRO checkpoint)
        "zero_optimization": {"stage": 3, "stage3_gather_16bit_weights_on_model_save": True},
    }
    args = TrainingArguments(
        output_dir=f"{out}-output", max_steps=2, per_device_train_batch_size=PAIRS // 2, learning_rate=1e-2,
        logging_steps=1, report_to=[], save_strategy="no", disable_tqdm=True, seed=0, use_cpu=True, deepspeed=config,
    )
    model = build_model()
    trainer = InfoRMTrainer(model=model, args=args, train_dataset=PreferenceDataset(pairs), data_collator=default_collator(0))
    trainer.train()
    assert type(trainer.model_wrapped).__name__ == "DeepSpeedEngine", type(trainer.model_wrapped)
    trainer.save_model(f"{out}-saved")
    with deepspeed.zero.GatheredParameters(list(model.parameters())):
        full = {name: p.detach().clone() for name, p in model.named_parameters()}
    torch.save({"params": full, "log_history": trainer.state.log_history}, f"{out}-rank{rank}.pt")
    dist.barrier()


def _worker(rank, world_size, result_dir):
    torch.set_num_threads(1)
    # As in test_ddp.py: a file store (no TCP port to race for), set up before DeepSpeed, which
    # then uses the existing process group.
    store = dist.FileStore(os.path.join(result_dir, "store"), world_size)
    dist.init_process_group("gloo", store=store, rank=rank, world_size=world_size)
    # what a launcher would set; accelerate (TrainingArguments) wants LOCAL_WORLD_SIZE too, else it
    # takes the run for multi-node and asks for MASTER_ADDR
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world_size), LOCAL_WORLD_SIZE=str(world_size))
    try:
        import deepspeed

        # DeepSpeed's CPU backend JIT-compiles a shared-memory allreduce op (about 20 s, and it needs
        # a C++ compiler) that it uses only with LOCAL_SIZE set; None is its own fallback to gloo.
        # (`deepspeed.comm.torch` as an attribute is torch itself, hence import_module.)
        backend = importlib.import_module("deepspeed.comm.torch")
        if hasattr(backend, "build_shm_op"):
            backend.build_shm_op = lambda: None
        deepspeed.init_distributed(dist_backend="gloo")
        # all the cases in one launch: starting the processes (imports) costs more than a case
        for stage, decoder in CASES:
            _case(deepspeed, stage, decoder, rank, world_size, os.path.join(result_dir, f"zero{stage}-{decoder}"))
        # last: TrainingArguments(deepspeed=...) leaves ZeRO-3 on for from_pretrained in this process
        _trainer_case(deepspeed, rank, os.path.join(result_dir, "trainer"))
    finally:
        dist.destroy_process_group()


@pytest.fixture(scope="module")
def zero_runs(tmp_path_factory):
    """The directory with every case's results from one two-process launch of this file."""
    pytest.importorskip("deepspeed")
    if not dist.is_available() or not dist.is_gloo_available():
        pytest.skip("torch.distributed with gloo is not available")
    result_dir = tmp_path_factory.mktemp("deepspeed")
    _ddp.run_ranks(__file__, [], result_dir, env=dict(os.environ, DS_ACCELERATOR="cpu"))
    return result_dir


@pytest.mark.parametrize("stage,decoder", CASES)
def test_deepspeed_zero_matches_single_process(zero_runs, stage, decoder):
    out = zero_runs / f"zero{stage}-{decoder}"
    model = build(decoder)
    loss, _, _ = inform_batch_loss(model, make_batch())
    loss.backward()
    results = [torch.load(f"{out}-rank{r}.pt") for r in range(2)]
    names = [name for name, p in model.named_parameters() if p.grad is not None]
    assert any(name.startswith("head.") for name in names) and any(name.startswith("backbone.") for name in names)
    for result in results:
        assert sorted(result["grads"]) == sorted(names)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.grad is None:
                continue
            for result in results:
                # DeepSpeed averages gradients, and the loss is a mean over equally sized halves
                torch.testing.assert_close(result["grads"][name], p.grad, rtol=1e-4, atol=1e-6, msg=name)
                torch.testing.assert_close(result["params"][name], p - LR * p.grad, rtol=1e-4, atol=1e-6, msg=name)
            p -= LR * p.grad
        batch = make_batch()
        expected = model(input_ids=batch["chosen_input_ids"], attention_mask=batch["chosen_attention_mask"]).rewards
        expected_scored, expected_mu = model.score(batch["chosen_input_ids"], batch["chosen_attention_mask"])
        expected_loss = model.pairwise_loss(batch["chosen_input_ids"], batch["chosen_attention_mask"],
                                            batch["rejected_input_ids"], batch["rejected_attention_mask"]).loss
    torch.testing.assert_close(expected_scored, expected)
    for result in results:
        torch.testing.assert_close(result["rewards"], expected, rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(result["scored"], expected, rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(result["mu"], expected_mu, rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(result["latents"], expected_mu, rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(result["pair_loss"], expected_loss, rtol=1e-4, atol=1e-5)
    if stage == 3:
        saved = InfoRMForRewardModel.from_pretrained(f"{out}-saved").eval()
        assert saved.config.decoder == decoder
        with torch.no_grad():
            again = saved(input_ids=batch["chosen_input_ids"], attention_mask=batch["chosen_attention_mask"]).rewards
        torch.testing.assert_close(again, expected, rtol=1e-4, atol=1e-5)


def test_hf_trainer_with_deepspeed_zero3_trains_and_saves(zero_runs):
    results = [torch.load(zero_runs / f"trainer-rank{r}.pt") for r in range(2)]
    for result in results:
        losses = [entry["loss"] for entry in result["log_history"] if "loss" in entry]
        assert len(losses) == 2 and all(torch.isfinite(torch.tensor(losses))), result["log_history"]
        assert all("kl" in entry for entry in result["log_history"] if "loss" in entry)
    initial = dict(build_model().named_parameters())
    saved = dict(InfoRMForRewardModel.from_pretrained(zero_runs / "trainer-saved").named_parameters())
    assert sorted(saved) == sorted(initial)
    for name, p in saved.items():
        for result in results:  # the full weights, the same on both ranks
            torch.testing.assert_close(p, result["params"][name], rtol=0, atol=0, msg=name)
    assert not torch.equal(saved["head.encoder.weight"], initial["head.encoder.weight"])  # it trained


if __name__ == "__main__":
    _ddp.run_as_rank(_worker, int(sys.argv[1]), int(sys.argv[2]), sys.argv[3])
