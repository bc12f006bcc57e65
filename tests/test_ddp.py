"""DDP and FSDP2: two gloo processes on their halves of a batch give the full batch's gradients."""
import os
import subprocess
import sys

import pytest
import torch
import torch.distributed as dist

from inform_fast.integrations.hf_trainer import inform_batch_loss
from inform_fast.modeling import InfoRMConfig, InfoRMForRewardModel
from inform_fast.tiny import tiny_llama

PAIRS, LENGTH, VOCAB = 6, 9, 40


def build_model():
    backbone = tiny_llama(VOCAB, hidden_size=32, layers=1, seed=0)
    torch.manual_seed(1)
    config = InfoRMConfig(backbone_config=backbone.config.to_dict(), latent_dim=8, beta=0.2)
    model = InfoRMForRewardModel(config, backbone=backbone)
    return model.eval()  # z = mu: no sampling noise, so the two runs see the same function


def make_batch():
    generator = torch.Generator().manual_seed(2)
    ids = torch.randint(4, VOCAB, (2, PAIRS, LENGTH), generator=generator)
    mask = torch.ones_like(ids)
    mask[:, ::2, :3] = 0  # some left padding
    return {"chosen_input_ids": ids[0], "chosen_attention_mask": mask[0],
            "rejected_input_ids": ids[1], "rejected_attention_mask": mask[1]}


def half(batch, rank):
    rows = slice(rank * PAIRS // 2, (rank + 1) * PAIRS // 2)
    return {key: value[rows] for key, value in batch.items()}


def wrap(model, strategy: str, world_size: int):
    if strategy == "ddp":
        return torch.nn.parallel.DistributedDataParallel(model)
    # FSDP2 (what accelerate / TRL use with fsdp_version 2): each decoder layer its own unit,
    # then the whole model (the head is sharded with the root)
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    mesh = init_device_mesh("cpu", (world_size,))
    for layer in model.backbone.layers:
        fully_shard(layer, mesh=mesh)
    return fully_shard(model, mesh=mesh)


def _worker(strategy, rank, world_size, result_dir):
    import warnings

    torch.set_num_threads(1)
    # A file store: no TCP port to race for, and no store server living in one rank, so the
    # ranks may finish and exit in any order.
    store = dist.FileStore(os.path.join(result_dir, "store"), world_size)
    dist.init_process_group("gloo", store=store, rank=rank, world_size=world_size)
    try:
        model = wrap(build_model(), strategy, world_size)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            loss, _, _ = inform_batch_loss(model, half(make_batch(), rank))
            loss.backward()
        views = [str(w.message) for w in caught if "view" in str(w.message)]
        assert not views, views  # FSDP2 warns when a wrapped module returns a view
        core = model.module if strategy == "ddp" else model
        # FSDP2 gradients are DTensor shards: gather the full gradient to compare
        grads = {name: (p.grad.full_tensor() if hasattr(p.grad, "full_tensor") else p.grad).clone()
                 for name, p in core.named_parameters() if p.grad is not None}
        torch.save(grads, os.path.join(result_dir, f"rank{rank}.pt"))
        dist.barrier()
    finally:
        dist.destroy_process_group()


def run_as_rank(worker, *args) -> None:
    """Run ``worker(*args)`` as a rank's whole program, then leave with ``os._exit``: the
    interpreter's teardown can abort the process after its results are saved ("terminate called
    without an active exception" from a c10d/gloo background thread, exit code -6), which would
    fail a test whose every number was right."""
    import traceback

    code = 0
    try:
        worker(*args)
    except BaseException:
        traceback.print_exc()
        code = 1
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def run_ranks(script, args, result_dir, world_size=2, env=None):
    """Run ``script *args RANK WORLD_SIZE result_dir`` as ``world_size`` processes and wait; a rank
    that fails fails the test with the end of its log (``result_dir/rank{RANK}.log``).

    Each rank is a test file run as a script: pytest's importlib mode leaves test modules
    unimportable by name, which multiprocessing's spawn would need.
    """
    logs = [result_dir / f"rank{rank}.log" for rank in range(world_size)]
    ranks = [
        subprocess.Popen([sys.executable, script, *args, str(rank), str(world_size), str(result_dir)],
                         stdout=open(log, "w"), stderr=subprocess.STDOUT, env=env)
        for rank, log in enumerate(logs)
    ]
    try:
        for rank, log in zip(ranks, logs):
            rank.wait(timeout=300)
            assert rank.returncode == 0, log.read_text()[-3000:]
    finally:
        for rank in ranks:  # never leave a rank behind, whatever failed
            if rank.poll() is None:
                rank.kill()


@pytest.mark.skipif(not dist.is_available() or not dist.is_gloo_available(), reason="torch.distributed with gloo is not available")
@pytest.mark.parametrize("strategy", ["ddp", "fsdp2"])
def test_distributed_gradients_match_single_process(tmp_path, strategy):
    run_ranks(__file__, [strategy], tmp_path)
    model = build_model()
    loss, _, _ = inform_batch_loss(model, make_batch())
    loss.backward()
    rank_grads = [torch.load(tmp_path / f"rank{r}.pt") for r in range(2)]
    names = [name for name, p in model.named_parameters() if p.grad is not None]
    assert any(name.startswith("head.") for name in names) and any(name.startswith("backbone.") for name in names)
    for name, p in model.named_parameters():
        if p.grad is None:
            continue
        # DDP and FSDP average gradients, and the loss is a mean over equally sized halves.
        torch.testing.assert_close(rank_grads[0][name], rank_grads[1][name])
        torch.testing.assert_close(rank_grads[0][name], p.grad, rtol=1e-4, atol=1e-6, msg=name)


if __name__ == "__main__":
    run_as_rank(_worker, sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4])
