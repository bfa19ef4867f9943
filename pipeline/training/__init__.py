"""Training and evaluation of the PoseFormerV2 lifter: data as `SequenceSet`s, released recipe and metrics."""


def run_cli(entry, argv: list[str] | None) -> int:
    """Run a training/evaluation command; bad input (missing files, bad checkpoints) ends in one line, no traceback."""
    try:
        return entry(argv)
    except (FileNotFoundError, ValueError, KeyError) as exc:
        raise SystemExit(f"error: {exc.args[0] if exc.args else exc}") from None
