"""``inform-fast report``: plot a saved monitor history (ICDS / MOP over steps) to PNG."""
from __future__ import annotations


def add_arguments(parser) -> None:
    parser.add_argument("--history", required=True, help="monitor JSON written by OverOptimizationMonitor.save")
    parser.add_argument("--out", required=True, help="PNG to write (atomically)")


_IMAGE_MAGIC = {b"\x89PNG": "a PNG image", b"\xff\xd8\xff": "a JPEG image", b"%PDF": "a PDF file"}


def _check_history_file(path: str) -> None:
    """A history is JSON text: name what else a user may have given (often the monitor's PNG)."""
    try:
        with open(path, "rb") as stream:
            content = stream.read()
    except OSError:
        return  # read_history reports a missing or unreadable file
    kind = next((kind for magic, kind in _IMAGE_MAGIC.items() if content.startswith(magic)), None)
    if kind is None:
        try:
            content.decode("utf-8")
        except UnicodeDecodeError:
            kind = "not UTF-8 text"
    if kind is not None:
        raise ValueError(f"--history: {path} is {kind}; give the history.json that inform-fast monitor "
                         "(or OverOptimizationMonitor.save) wrote")


def run(args) -> int:
    from inform_fast._io import check_output_path
    from inform_fast.detect.monitor import plot_history, read_history

    if not args.out.lower().endswith(".png"):
        raise ValueError(f"--out: expected a .png path, got {args.out}")
    check_output_path(args.out, "--out")
    _check_history_file(args.history)
    data = read_history(args.history)
    plot_history(data, args.out)
    history = data["history"]
    onset = data.get("onset_step")
    print(f"{len(history)} evaluations, steps {history[0]['step'] if history else '-'}..{history[-1]['step'] if history else '-'}; "
          f"onset: {'step ' + str(onset) + ' (' + str(data.get('onset_reason')) + ')' if onset is not None else 'none'}")
    print(f"wrote {args.out}")
    return 0
