"""``inform-fast export``: fold a linear-decoder InfoRM checkpoint into a stock sequence classifier."""
from __future__ import annotations


def add_arguments(parser) -> None:
    parser.add_argument("--model", required=True, help="InfoRM checkpoint folder (save_pretrained output)")
    parser.add_argument("--output", required=True, help="folder for the stock *ForSequenceClassification checkpoint")
    parser.add_argument("--pad-token-id", type=int, default=None, help="pad token id for the exported config (default: the backbone's or tokenizer's)")
    parser.add_argument(
        "--drop-bias", action="store_true",
        help="export even if the folded constant (head bias / reward_mean) cannot be stored; rewards shift by it",
    )
    parser.add_argument("--overwrite", action="store_true",
                        help="replace a previous export in --output (a folder holding anything else is refused)")


def run(args) -> int:
    from inform_fast.export import export_from_directory
    from inform_fast.loading import resolve_model

    path = export_from_directory(
        resolve_model(args.model, local_only=True), args.output, pad_token_id=args.pad_token_id, drop_bias=args.drop_bias, overwrite=args.overwrite
    )
    print(f"exported stock sequence classifier to {path}")
    return 0
