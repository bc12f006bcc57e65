"""``inform-fast report``: plot a saved monitor history (ICDS / MOP over steps) to PNG."""
from __future__ import annotations

HELP = "plot a monitor history (ICDS / MOP over steps) to PNG"


def add_arguments(parser) -> None:
    parser.add_argument("--history", required=True, help="monitor JSON written by OverOptimizationMonitor.save")
    parser.add_argument("--out", required=True, help="PNG to write (atomically)")


def run(args) -> int:
    from inform_fast.detect.monitor import plot_history, read_history

    if not args.out.lower().endswith(".png"):
        raise ValueError(f"--out: expected a .png path, got {args.out}")
    data = read_history(args.history)
    plot_history(data, args.out)
    history = data["history"]
    onset = data.get("onset_step")
    print(f"{len(history)} evaluations, steps {history[0]['step'] if history else '-'}..{history[-1]['step'] if history else '-'}; "
          f"onset: {'step ' + str(onset) + ' (' + str(data.get('onset_reason')) + ')' if onset is not None else 'none'}")
    print(f"wrote {args.out}")
    return 0
