"""``inform-fast train``: train an InfoRM reward model on a preference file and save a checkpoint.

The data is read and validated first (a bad row stops the command before anything is written).
Training runs in ``transformers.Trainer`` (``--trainer hf``, default) or TRL's RewardTrainer
(``--trainer trl``) with the Trainer's tqdm progress bar. The checkpoint (model + tokenizer +
``training_log.json``) is written into a temporary folder next to ``--output-dir`` and renamed to it
at the end (``inform_fast._io.atomic_directory``), so a failed or interrupted run, or a full disk,
leaves no half-written output directory. Training that makes the weights or the hidden states
non-finite (a too high ``--lr``) stops with one line and saves nothing.

Sweeps: ``--latent-dim`` and ``--beta`` take several values (the two knobs that bound how much of
the input the reward can use). With more than one combination, each is trained from the same seed
into ``OUTPUT_DIR/latent{L}-beta{B}/`` and ``OUTPUT_DIR/sweep.json`` lists each run's final
training metrics and, with ``--eval-data``, its held-out accuracy, loss and KL.
"""
from __future__ import annotations

import itertools
import os
import shutil
from pathlib import Path


def add_arguments(parser) -> None:
    parser.add_argument("--model", required=True, help="backbone name/path (a fresh InfoRM head is added) or an InfoRM checkpoint to continue training")
    parser.add_argument("--data", required=True, help="preference data: .jsonl, .json, .parquet or a datasets.save_to_disk folder")
    parser.add_argument("--output-dir", required=True, help="where the checkpoint goes (must not exist yet)")
    parser.add_argument("--latent-dim", type=int, nargs="+", default=[128],
                        help="latent size L of a new head (default 128); several values sweep")
    parser.add_argument("--beta", type=float, nargs="+", default=[0.1], help="KL weight (default 0.1); several values sweep")
    parser.add_argument("--eval-data", default=None, help="held-out preference data evaluated after training (same formats as --data)")
    parser.add_argument("--max-steps", type=int, default=-1, help="optimizer steps (default: one pass over the data, see --epochs)")
    parser.add_argument("--epochs", type=float, default=1.0, help="passes over the data when --max-steps is not given")
    parser.add_argument("--max-length", type=int, default=1024, help="max tokens per sequence; see --truncation (default 1024)")
    parser.add_argument("--truncation", choices=("truncate", "drop"), default="truncate",
                        help="over-long pairs: keep the end of the prompt and cut the response from the right keeping EOS (truncate, default), or drop them")
    parser.add_argument("--batch-size", type=int, default=8, help="pairs per device step (default 8)")
    parser.add_argument("--grad-accum", type=int, default=1, help="gradient accumulation steps (default 1)")
    parser.add_argument("--lr", type=float, default=1e-5, help="learning rate (default 1e-5)")
    parser.add_argument("--packing", action="store_true", help="padding-free packing of chosen and rejected into one row")
    parser.add_argument("--trainer", choices=("hf", "trl"), default="hf", help="transformers.Trainer (hf, default) or TRL RewardTrainer (trl)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--bf16", action="store_true", help="bf16 mixed precision")
    parser.add_argument("--logging-steps", type=int, default=10)
    parser.add_argument("--gradient-checkpointing", action="store_true",
                        help="recompute the backbone's activations in the backward pass (less memory, more time); "
                             "off unless given, with either trainer (TRL's RewardConfig would turn it on by default)")


def _check_args(args) -> None:
    """The library's checks, under the options' names (``inform_fast.cli`` turns ``beta:`` into ``--beta:``)."""
    from inform_fast.validation import check_beta, check_positive_int, check_real

    for latent_dim in args.latent_dim:
        check_positive_int("latent_dim", latent_dim)
    for name in ("batch_size", "grad_accum", "logging_steps"):
        check_positive_int(name, getattr(args, name))
    check_positive_int("max_length", args.max_length, minimum=2)
    for beta in args.beta:
        check_beta(beta)
    check_real("lr", args.lr, minimum=0, open_minimum=True)
    check_real("epochs", args.epochs, minimum=0, open_minimum=True)
    if args.max_steps != -1:
        check_positive_int("max_steps", args.max_steps)
    if os.path.exists(args.output_dir):
        raise ValueError(f"--output-dir: {args.output_dir} already exists; choose a new directory")


def load_model(name_or_path: str, latent_dim: int, beta: float):
    """An InfoRM checkpoint is loaded as is (``--beta`` overrides its training beta); anything else
    is a backbone that gets a fresh head. ``name_or_path`` comes from ``resolve_model``."""
    from inform_fast.loading import load_weights, read_config
    from inform_fast.modeling import InfoRMForRewardModel

    if os.path.isdir(name_or_path):
        model_type = read_config(name_or_path).get("model_type")
    else:  # a Hub id that resolve_model found reachable
        from transformers import AutoConfig

        model_type = load_weights(lambda: AutoConfig.from_pretrained(name_or_path), name_or_path).model_type
    if model_type == "inform":
        model = load_weights(lambda: InfoRMForRewardModel.from_pretrained(name_or_path), name_or_path)
        model.config.beta = beta
        return model
    return load_weights(lambda: InfoRMForRewardModel.from_backbone(name_or_path, latent_dim=latent_dim, beta=beta),
                        name_or_path)


def run(args) -> int:
    _check_args(args)
    from inform_fast import data
    from inform_fast._io import atomic_directory, new_folders
    from inform_fast.loading import load_tokenizer, resolve_model
    from inform_fast.validation import require

    require("accelerate", "inform-fast train (transformers.Trainer)")
    if args.trainer == "trl":
        require("trl", "--trainer trl", "trl")
    args.model = resolve_model(args.model)
    tokenizer = load_tokenizer(args.model)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    if tokenizer.eos_token_id is None:
        raise ValueError(f"--model: the tokenizer of {args.model!r} has no EOS token")
    pairs, report = data.load_preference_data(args.data, tokenizer, max_length=args.max_length,
                                              truncation=args.truncation, return_report=True)
    print(f"inform-fast train: {report.kept} pairs from {args.data} "
          f"({report.truncated} truncated, {report.dropped} dropped at max_length={args.max_length})")
    eval_pairs = None
    if args.eval_data is not None:
        eval_pairs = data.load_preference_data(args.eval_data, tokenizer, max_length=args.max_length, truncation=args.truncation)

    output_dir = Path(args.output_dir).resolve()
    grid = list(itertools.product(args.latent_dim, args.beta))
    with new_folders(output_dir.parent, "--output-dir"), atomic_directory(output_dir, "--output-dir") as staging:
        staging = Path(staging)
        if len(grid) == 1:
            metrics = _train_one(args, grid[0][0], grid[0][1], tokenizer, pairs, eval_pairs, staging)
            if eval_pairs is not None:
                print("inform-fast train: held-out " + _eval_line(metrics))
        else:
            runs = []
            for latent_dim, beta in grid:
                name = f"latent{latent_dim}-beta{beta:g}"
                print(f"inform-fast train: sweep run {len(runs) + 1}/{len(grid)}: {name}")
                metrics = _train_one(args, latent_dim, beta, tokenizer, pairs, eval_pairs, staging / name)
                runs.append({"name": name, "latent_dim": latent_dim, "beta": beta, **metrics})
            _write_json(staging / "sweep.json", {"args": vars(args), "runs": runs})
            _print_sweep(runs)
    print(f"inform-fast train: saved {output_dir}")
    return 0


_EVAL_SHOWN = ("eval_accuracy", "eval_loss", "eval_preference_loss", "eval_kl", "eval_reward_margin")


def _eval_line(metrics: dict) -> str:
    """``eval_accuracy 0.75, eval_loss 0.61, ...``: the held-out metrics of ``trainer.evaluate()``."""
    return ", ".join(f"{key} {metrics[key]:.4g}" for key in _EVAL_SHOWN if isinstance(metrics.get(key), (int, float)))


def _write_json(path: Path, payload) -> None:
    """A JSON file inside the staging folder (fsync'ed with it); NaN / Inf written as null."""
    from inform_fast._io import json_text

    path.write_text(json_text(payload))


def check_trained_weights(model, lr: float) -> None:
    """ValueError naming --lr when training left a NaN / Inf weight (nothing is saved then)."""
    import torch

    for name, parameter in model.named_parameters():
        if not bool(torch.isfinite(parameter.detach()).all()):
            raise ValueError(f"--lr: training made the weights non-finite (first: {name}); nothing was saved; "
                             f"lower --lr (now {lr:g}) or check the data")


def checkpointing_argument(enabled: bool) -> dict:
    """The TrainingArguments keyword for activation (gradient) checkpointing, always explicit:
    transformers >= 5.24 calls it ``activation_checkpointing`` (the old name warns), older ones
    ``gradient_checkpointing``. The Trainer then enables it on the model itself."""
    from transformers import TrainingArguments

    fields = TrainingArguments.__dataclass_fields__
    return {"activation_checkpointing" if "activation_checkpointing" in fields else "gradient_checkpointing": bool(enabled)}


def _train_one(args, latent_dim: int, beta: float, tokenizer, pairs, eval_pairs, target: Path) -> dict:
    """Train one model into ``target`` (created); return its final train (and eval) metrics."""
    from transformers import set_seed

    from inform_fast import data

    set_seed(args.seed)
    model = load_model(args.model, latent_dim, beta)
    model.config.backbone_config.pad_token_id = tokenizer.pad_token_id
    target.mkdir(parents=True, exist_ok=True)
    common = dict(
        **checkpointing_argument(args.gradient_checkpointing),
        output_dir=str(target / "trainer"), max_steps=args.max_steps, num_train_epochs=args.epochs,
        per_device_train_batch_size=args.batch_size, per_device_eval_batch_size=args.batch_size,
        gradient_accumulation_steps=args.grad_accum, learning_rate=args.lr, seed=args.seed, bf16=args.bf16,
        logging_steps=args.logging_steps, save_strategy="no", report_to=[], disable_tqdm=False,
    )
    if args.trainer == "trl":
        from inform_fast.integrations.trl import InfoRMRewardTrainer, RewardConfig

        trainer = InfoRMRewardTrainer(
            model=model, args=RewardConfig(max_length=None, **common), train_dataset=data.to_hf_dataset(pairs),
            eval_dataset=None if eval_pairs is None else data.to_hf_dataset(eval_pairs),
            processing_class=tokenizer, packing=args.packing,
        )
    else:
        from transformers import TrainingArguments

        from inform_fast.integrations.hf_trainer import InfoRMTrainer

        trainer = InfoRMTrainer(
            model=model, args=TrainingArguments(**common), train_dataset=data.PreferenceDataset(pairs),
            eval_dataset=None if eval_pairs is None else data.PreferenceDataset(eval_pairs),
            processing_class=tokenizer, packing=args.packing,
        )
    from inform_fast.validation import NonFiniteError

    try:
        trainer.train()
    except NonFiniteError as error:  # the head refuses NaN / Inf hidden states: the backbone diverged
        raise ValueError(f"--lr: training diverged at step {trainer.state.global_step} ({error}); nothing was saved; "
                         f"lower --lr (now {args.lr:g}) or check the data") from None
    check_trained_weights(trainer.model, args.lr)
    metrics = {}
    for entry in trainer.state.log_history:  # the last value logged of each training metric
        metrics.update({k: v for k, v in entry.items() if isinstance(v, (int, float)) and not k.startswith("eval_")})
    if eval_pairs is not None:
        metrics.update(trainer.evaluate())
    shutil.rmtree(target / "trainer", ignore_errors=True)
    trainer.model.save_pretrained(str(target))
    tokenizer.save_pretrained(str(target))
    _write_json(target / "training_log.json", {"args": {**vars(args), "latent_dim": latent_dim, "beta": beta},
                                               "log_history": trainer.state.log_history})
    return metrics


def _print_sweep(runs: list[dict]) -> None:
    columns = ["name"] + [k for k in ("train_loss", "accuracy", "kl", "eval_accuracy", "eval_loss", "eval_kl") if any(k in r for r in runs)]
    print("  ".join(f"{c:>16}" for c in columns))
    for r in runs:
        print("  ".join(f"{r[c]:>16.4g}" if isinstance(r.get(c), float) else f"{str(r.get(c, '')):>16}" for c in columns))
