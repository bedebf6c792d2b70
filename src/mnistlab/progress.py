"""Training progress for the terminal: a live bar with ETA inside each epoch, one line per epoch.

When stdout is not a terminal (CI logs, pipes) only the per-epoch lines are printed, as plain text.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from mnistlab.callbacks import Callback
from mnistlab.config import TrainConfig
from mnistlab.results import EpochRecord


def format_epoch(record: EpochRecord, epochs: int) -> str:
    """``epoch 3/30  loss 0.1234  acc 0.9650  [val_loss … val_acc …]  1.23 s``."""
    width = len(str(epochs))
    # A classical model scored by decision values (sgd, svm) has no loss: NaN, shown as "n/a".
    loss = "n/a" if math.isnan(record.loss) else f"{record.loss:.4f}"
    text = f"epoch {record.epoch:>{width}}/{epochs}  loss {loss}  acc {record.accuracy:.4f}"
    if record.val_loss is not None and record.val_accuracy is not None:
        text += f"  val_loss {record.val_loss:.4f}  val_acc {record.val_accuracy:.4f}"
    return text + f"  {record.seconds:.2f} s"


class ConsoleObserver(Callback):
    """Draws a rich progress bar on a terminal and prints one line per epoch everywhere."""

    REFRESH_SECONDS = 0.2  # how often the running loss is read (a device sync on GPUs)

    def __init__(self, console: Console | None = None, *, label: str = "") -> None:
        if console is None:
            console = Console()
            console.soft_wrap = not console.is_terminal  # a log gets each line whole
        self.console = console
        self.label = label
        # How notes name parameters: the CLI shows `lr` as --lr (mnistlab.cli.flag_text); the API leaves them.
        self.translate: Callable[[str], str] = lambda text: text
        self.live = self.console.is_terminal
        self.epochs = 0
        self._progress: Progress | None = None
        self._task: Any = None
        self._last_refresh = 0.0

    def on_train_start(self, *, config: TrainConfig, run_dir: Path, steps_per_epoch: int, samples: int,
                       device: str = "cpu", precision: str = "fp32") -> None:
        """Print what is about to be trained, and where it goes."""
        self.epochs = config.epochs
        prefix = f"[{self.label}] " if self.label else ""
        if config.family == "classical":
            options = ", ".join(f"{key}={value}" for key, value in config.options.items())
            self.console.print(f"{prefix}fitting {config.model} on {config.dataset}: {samples:,} samples, {options}, "
                               f"seed {config.seed} -> {run_dir}", highlight=False, markup=False)
            return
        self.console.print(
            f"{prefix}training {config.model} on {config.dataset}: {samples:,} samples, batch {config.batch_size}, "
            f"{steps_per_epoch} steps/epoch, {config.optimizer} lr {config.lr:g}, schedule {config.schedule}, "
            f"seed {config.seed}, on {device} in {precision} -> {run_dir}",
            highlight=False, markup=False,  # paths and labels are the user's: never rich markup
        )

    def on_epoch_start(self, *, epoch: int, epochs: int, steps: int) -> None:
        """Start a transient progress bar for the epoch (terminals only)."""
        if not self.live:
            return
        self._progress = Progress(
            TextColumn(f"epoch {epoch}/{epochs}"), BarColumn(), MofNCompleteColumn(),
            TextColumn("{task.fields[stats]}"), TimeRemainingColumn(),
            console=self.console, transient=True,
        )
        self._progress.start()
        self._task = self._progress.add_task("train", total=steps, stats="")
        self._last_refresh = 0.0

    def on_step(self, *, step: int, steps: int, running: Callable[[], tuple[float, float]]) -> None:
        """Advance the bar; read the running loss only a few times a second."""
        if self._progress is None:
            return
        now = time.monotonic()
        if now - self._last_refresh >= self.REFRESH_SECONDS or step == steps:
            loss, acc = running()
            self._progress.update(self._task, completed=step, stats=f"loss {loss:.4f} acc {acc:.4f}")
            self._last_refresh = now
        else:
            self._progress.update(self._task, completed=step)

    def on_epoch_end(self, record: EpochRecord) -> None:
        """Close the bar and print the epoch's line."""
        if self._progress is not None:
            self._progress.stop()
            self._progress = None
        self.console.print(format_epoch(record, self.epochs), highlight=False)

    def on_message(self, text: str) -> None:
        """Print a note (e.g. a precision fallback)."""
        from rich.markup import escape

        self.console.print(f"[yellow]note:[/yellow] {escape(self.translate(text))}", highlight=False)

    def close(self) -> None:
        """Stop a live bar left running (e.g. after Ctrl-C mid-epoch)."""
        if self._progress is not None:
            self._progress.stop()
            self._progress = None


def in_notebook() -> bool:
    """True inside a Jupyter kernel (where a terminal progress bar cannot redraw)."""
    import sys

    shell = sys.modules.get("IPython")
    if shell is None:
        return False
    try:
        ipython = shell.get_ipython()
    except AttributeError:
        return False
    return ipython is not None and type(ipython).__name__ == "ZMQInteractiveShell"


class NotebookProgress(Callback):
    """Progress for Jupyter: one live-updating line per epoch (step, running loss, ETA), kept as output."""

    REFRESH_SECONDS = 0.25

    def __init__(self, *, label: str = "") -> None:
        self.label = label
        self.epochs = 0
        self._handle: Any = None
        self._epoch = 0
        self._started = 0.0
        self._last = 0.0

    def _show(self, text: str) -> None:
        from IPython.display import display

        if self._handle is None:
            self._handle = display({"text/plain": text}, raw=True, display_id=True)
        else:
            self._handle.update({"text/plain": text}, raw=True)

    def on_train_start(self, *, config: TrainConfig, run_dir: Path, steps_per_epoch: int, samples: int,
                       device: str = "cpu", precision: str = "fp32") -> None:
        self.epochs = config.epochs
        prefix = f"[{self.label}] " if self.label else ""
        print(f"{prefix}training {config.model} on {config.dataset}: {samples:,} samples -> {run_dir}")

    def on_epoch_start(self, *, epoch: int, epochs: int, steps: int) -> None:
        self._handle, self._epoch = None, epoch
        self._started = self._last = time.monotonic()

    def on_step(self, *, step: int, steps: int, running: Callable[[], tuple[float, float]]) -> None:
        now = time.monotonic()
        if now - self._last < self.REFRESH_SECONDS and step != steps:
            return
        self._last = now
        loss, acc = running()
        eta = (now - self._started) / step * (steps - step)
        bar = "#" * round(20 * step / steps)
        self._show(f"epoch {self._epoch}/{self.epochs} [{bar:<20}] {step}/{steps}  loss {loss:.4f}  "
                   f"acc {acc:.4f}  ETA {eta:.0f} s")

    def on_epoch_end(self, record: EpochRecord) -> None:
        self._show(format_epoch(record, self.epochs))

    def on_message(self, text: str) -> None:
        print(f"note: {text}")


def make_progress(mode: str = "auto", *, label: str = "", console: Console | None = None) -> Callback:
    """A progress display: ``bar`` (rich, terminals), ``lines`` (one line per epoch), ``notebook`` (Jupyter),
    or ``auto``: the notebook display inside Jupyter, else a bar on a terminal and lines elsewhere."""
    if mode == "notebook" or (mode == "auto" and in_notebook()):
        return NotebookProgress(label=label)
    observer = ConsoleObserver(console, label=label)
    if mode == "lines":
        observer.live = False
    elif mode == "bar":
        observer.live = True
    elif mode != "auto":
        from mnistlab.errors import MnistlabError

        raise MnistlabError(f"progress {mode!r} is not one of auto, bar, lines, notebook, none")
    return observer
