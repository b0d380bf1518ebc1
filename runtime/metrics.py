"""What a run reports: a progress bar with ETA, the metrics files, and the per-exit table.

Metrics are one flat record per epoch (`epoch`, `step`, `lr`, `seconds`, `examples_per_second`, `loss`,
`loss/<term>` (weighted), `ce/<head>` (raw cross-entropy), `alpha/<term>` (schedule factor), `top1/<exit>`,
`top5/<exit>`), written to `metrics.jsonl` and `metrics.csv` in the run directory; with
`train.log_every_steps`, one record every N steps (`step`, fractional `epoch`, the same loss keys, `lr`,
`examples_per_second`; with `train.log_gradients`, `grad/<node>`) to `steps.jsonl`. Epochs skipped by
`train.eval_every` have no `top1/` / `top5/` keys. When the `tensorboard` package is importable (`pip install
'netspec[tensorboard]'`), both also go to TensorBoard event files in `<run>/tensorboard/`.
"""
from __future__ import annotations

import csv
import io
import json
import sys
import time
from pathlib import Path
from typing import TextIO

from netspec.compiler.summary import human
from netspec.errors import UserError
from netspec.project import atomic_write, read_small_text


class Progress:
    """A one-line progress bar with ETA on a terminal; in a log file, a line a minute and one per epoch;
    with no stream, silent."""

    def __init__(self, total_steps: int, done_steps: int = 0, stream: TextIO | None = sys.stderr,
                 width: int = 24, log_every: float = 60.0):
        self.total, self.done = total_steps, done_steps
        self.stream, self.width, self.log_every = stream, width, log_every
        self.live = stream is not None and stream.isatty()
        self.started, self.started_at = time.perf_counter(), done_steps
        self.last_draw = self.started

    def eta(self) -> float:
        """Seconds left, from the mean step time since this bar started."""
        steps = self.done - self.started_at
        return (time.perf_counter() - self.started) / steps * (self.total - self.done) if steps else float("nan")

    def step(self, prefix: str, step: int, steps: int, loss: float) -> None:
        self.done += 1
        now = time.perf_counter()
        if self.stream is None or now - self.last_draw < (0.2 if self.live else self.log_every):
            return
        filled = self.width * step // steps
        bar = "#" * filled + "." * (self.width - filled)
        text = f"{prefix} [{bar}] {step}/{steps} loss {loss:.4f} ETA {clock(self.eta())}"
        self.stream.write(f"\r{text}\033[K" if self.live else text + "\n")
        self.stream.flush()
        self.last_draw = now

    def end_epoch(self, line: str) -> None:
        """Replace the bar by the epoch's summary line (and say how long the run still has)."""
        if self.stream is None:
            return
        erase = ("\r", "\033[K") if self.live else ("", "")
        self.stream.write(f"{erase[0]}{line}  ETA {clock(self.eta())}{erase[1]}\n")
        self.stream.flush()


def clock(seconds: float) -> str:
    if seconds != seconds:  # nan: nothing measured yet
        return "?"
    minutes, secs = divmod(int(round(seconds)), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


class MetricsLog:
    """The run's per-epoch records, rewritten whole (and atomically) to metrics.jsonl and metrics.csv."""

    def __init__(self, folder: Path, keep_until_epoch: int = 0, keep_until_step: int = 0):
        """Start empty, or (resuming) keep the records of epochs up to `keep_until_epoch` and the step records up
        to `keep_until_step` (a killed run may have logged past its last checkpoint)."""
        self.folder = folder
        self.records = [r for r in _read_jsonl(folder / "metrics.jsonl", "epoch") if r["epoch"] <= keep_until_epoch]
        steps = [r for r in _read_jsonl(folder / "steps.jsonl", "step", appended=True) if r["step"] <= keep_until_step]
        if steps or (folder / "steps.jsonl").is_file():
            atomic_write(folder / "steps.jsonl", "".join(json.dumps(r) + "\n" for r in steps))

    def append_step(self, record: dict) -> None:
        """One step record, appended to steps.jsonl (a line cut by a kill is dropped when the run resumes)."""
        with open(self.folder / "steps.jsonl", "a") as f:
            f.write(json.dumps(record) + "\n")

    def append(self, record: dict) -> None:
        self.records.append(record)
        atomic_write(self.folder / "metrics.jsonl", "".join(json.dumps(r) + "\n" for r in self.records))
        columns = list(dict.fromkeys(key for r in self.records for key in r))
        text = io.StringIO()
        writer = csv.DictWriter(text, columns)
        writer.writeheader()
        writer.writerows(self.records)
        atomic_write(self.folder / "metrics.csv", text.getvalue())


def check_logs(folder: Path) -> None:
    """Read a run's logs as resuming will: a damaged record is an error naming the file and line."""
    _read_jsonl(folder / "metrics.jsonl", "epoch")
    _read_jsonl(folder / "steps.jsonl", "step", appended=True)


def _read_jsonl(path: Path, key: str, appended: bool = False) -> list[dict]:
    """The records of a run's log; a damaged one is an error naming its line, except the last line of an
    `appended` log (a kill can cut it)."""
    if not path.exists():
        return []
    out = []
    lines = read_small_text(path).splitlines()
    for number, line in enumerate(lines, 1):
        try:
            record = json.loads(line)
        except ValueError:
            record = None
        if not isinstance(record, dict) or type(record.get(key)) is not int:
            if appended and number == len(lines):
                break
            raise UserError(f"{path}:{number} is damaged: not a record of one {key}",
                            f"delete {path} (its records are lost from the curves) or train afresh without --resume")
        out.append(record)
    return out


class TensorBoard:
    """Scalars to TensorBoard event files (`<run>/tensorboard/`) through `torch.utils.tensorboard`, which needs the
    `tensorboard` package (the extra `pip install netspec[tensorboard]`). `wanted`: None writes them when the
    package is there and is silent otherwise; True (asked for) says in one line on `stream` how to get it when it
    is missing; False writes nothing."""

    INSTALL = "pip install 'netspec[tensorboard]'"

    def __init__(self, run: Path, step: int = 0, wanted: bool | None = None, stream: TextIO | None = sys.stderr):
        self.writer = None
        if wanted is False:
            return
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            if wanted and stream is not None:
                stream.write(f"TensorBoard event files are not written: the tensorboard package is missing "
                             f"({self.INSTALL})\n")
        else:
            self.writer = SummaryWriter(str(run / "tensorboard"), purge_step=step or None)

    def scalars(self, record: dict, step: int, group: str) -> None:
        """`record`'s numbers under `group/` ("epoch" or "step"), except the step and the group's own counter
        (TensorBoard's x axis already is the step; an `epoch/epoch` curve would be a straight line)."""
        if self.writer is None:
            return
        for key, value in record.items():
            if key not in ("step", group) and isinstance(value, (int, float)):
                self.writer.add_scalar(f"{group}/{key}", value, step)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


def exit_rows(summary: dict, accuracy: dict[str, tuple[float, float]],
              val: dict[str, tuple[float, float]] | None = None) -> list[dict]:
    """One row per exit: depth, params and FLOPs of the model cut at that exit, its test accuracy (`top1`, `top5`)
    and, given `val`, its validation accuracy (`val_top1`, `val_top5`). Only the exits in `accuracy`."""
    return [{"exit": h["head"], "depth": h["depth"], "params": h["params"], "flops": h["flops"],
             "top1": accuracy[h["head"]][0], "top5": accuracy[h["head"]][1],
             **({"val_top1": val[h["head"]][0], "val_top5": val[h["head"]][1]} if val else {})}
            for h in sorted(summary["heads"], key=lambda h: h["depth"]) if h["head"] in accuracy]


def format_exit_table(rows: list[dict]) -> str:
    """MW-BP's "several compact models at once": every exit as a model of its own (validation columns when the
    rows have them)."""
    width = max(4, *(len(r["exit"]) for r in rows))
    val = all("val_top1" in r for r in rows)
    lines = [f"{'exit':<{width}}  {'depth':>5}  {'params':>9}  {'FLOPs':>9}  "
             + ("val top-1  val top-5  " if val else "") + "test top-1  test top-5"]
    for r in rows:
        lines.append(f"{r['exit']:<{width}}  {r['depth']:>5}  {human(r['params']):>9}  {human(r['flops']):>9}  "
                     + (f"{100 * r['val_top1']:>8.2f}%  {100 * r['val_top5']:>8.2f}%  " if val else "")
                     + f"{100 * r['top1']:>9.2f}%  {100 * r['top5']:>9.2f}%")
    return "\n".join(lines)
