"""Per-stage timings (for run.json and the summary line) and progress bars."""
from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator


class StageTimer:
    """Wall time and frames per second of each stage, for run.json and the summary line."""

    def __init__(self) -> None:
        self.stages: dict[str, dict] = {}

    @contextlib.contextmanager
    def stage(self, name: str) -> Iterator[dict]:
        """Times the block; the block sets entry["frames"] to the frames it processed."""
        entry: dict = {"frames": 0}
        t0 = time.perf_counter()
        yield entry
        seconds = time.perf_counter() - t0
        entry["seconds"] = round(seconds, 3)
        entry["frames_per_second"] = round(entry["frames"] / seconds, 2) if seconds > 0 else None
        self.stages[name] = entry


class StageProgress:
    """A progress bar for a stage that reports (pass name, frames done in that pass), e.g. detect then hrnet."""

    def __init__(self, bar) -> None:
        self.bar = bar
        self.pass_name: str | None = None

    def __call__(self, pass_name: str, done: int) -> None:
        if pass_name != self.pass_name:
            self.pass_name = pass_name
            self.bar.reset()
            self.bar.set_postfix_str(pass_name)
        self.bar.update(done - self.bar.n)


def progress_bar(show: bool, desc: str, total: int | None):
    """A tqdm bar in frames that disappears when done; `show=False` gives a silent one."""
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit="frame", disable=not show, leave=False, dynamic_ncols=True)
