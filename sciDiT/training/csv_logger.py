"""A CSV logger whose ``metrics.csv`` survives reruns and kills: appended, never deleted or garbled.

Lightning's ``CSVLogger`` deletes an existing ``metrics.csv`` when a run starts in the same folder
(so a resumed or rerun stage loses its history) and flushes rows every N steps regardless of
checkpoints. :class:`AppendingCSVLogger` keeps the file, adopts its header, appends new rows and
rewrites the file (atomically) only when new columns appear. Rows are written when ``last.ckpt``
is saved and when the run ends, so after ``kill -9`` the file holds exactly the rows up to the
last checkpoint, and the resumed run appends the steps it recomputes without duplicating any.
"""

from __future__ import annotations

import csv
import io
import os
import sys
import tempfile
from pathlib import Path
from typing import Any

from lightning.pytorch.loggers import CSVLogger
from lightning.pytorch.loggers.csv_logs import ExperimentWriter
from lightning.pytorch.loggers.logger import rank_zero_experiment
from lightning.pytorch.utilities.rank_zero import rank_zero_only


def _atomic_write(path: Path, text: str) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", newline="") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


class AppendingWriter(ExperimentWriter):
    """Lightning's CSV experiment writer, appending to an existing ``metrics.csv`` instead of deleting it."""

    def _check_log_dir_exists(self) -> None:
        """Adopt the header of an existing metrics.csv; drop a partial last line a kill left behind."""
        path = Path(self.metrics_file_path)
        if not path.is_file():
            return
        text = path.read_text()
        if text and not text.endswith("\n"):
            text = text[: text.rfind("\n") + 1]
            _atomic_write(path, text)
        self.metrics_keys = next(csv.reader(io.StringIO(text)), [])

    def save(self) -> None:
        """Append the recorded rows; rewrite the whole file with a wider header if new columns appeared."""
        if not self.metrics:
            return
        path = Path(self.metrics_file_path)
        new_keys = set().union(*self.metrics) - set(self.metrics_keys)
        if new_keys or not path.is_file():
            old_rows = list(csv.DictReader(io.StringIO(path.read_text()))) if path.is_file() else []
            self.metrics_keys = sorted(set(self.metrics_keys) | new_keys)
            out = io.StringIO()
            writer = csv.DictWriter(out, fieldnames=self.metrics_keys, lineterminator="\n")
            writer.writeheader()
            writer.writerows(old_rows + self.metrics)
            _atomic_write(path, out.getvalue())
        else:
            with path.open("a", newline="") as fh:
                csv.DictWriter(fh, fieldnames=self.metrics_keys, lineterminator="\n").writerows(self.metrics)
                fh.flush()
                os.fsync(fh.fileno())
        self.metrics = []


class AppendingCSVLogger(CSVLogger):
    """``CSVLogger`` (same arguments, less the flush interval) writing through :class:`AppendingWriter`.

    Rows are flushed at every checkpoint save and at the end of a successful run, not on failure:
    the rerun recomputes the steps after the last checkpoint and logs them then.
    """

    def __init__(self, save_dir: str | Path, name: str | None = "lightning_logs", version: int | str | None = None, prefix: str = ""):
        # CSVLogger flushes when (step + 1) % n == 0: with n = sys.maxsize, never (rows go out at checkpoints instead)
        super().__init__(save_dir, name=name, version=version, prefix=prefix, flush_logs_every_n_steps=sys.maxsize)

    @property
    @rank_zero_experiment
    def experiment(self) -> AppendingWriter:
        if self._experiment is None:
            self._fs.makedirs(self.root_dir, exist_ok=True)
            self._experiment = AppendingWriter(log_dir=self.log_dir)
        return self._experiment

    @rank_zero_only
    def save(self) -> None:
        """Nothing: Lightning calls this after every ``log_metrics``; rows wait for the next ``last`` checkpoint."""

    @rank_zero_only
    def flush(self) -> None:
        """Write the recorded rows to metrics.csv."""
        self.experiment.save()

    def after_save_checkpoint(self, checkpoint_callback: Any) -> None:
        # ModelCheckpoint writes best-*.ckpt, then last.ckpt (the one a rerun resumes from): flush after the latter
        saved, last = getattr(checkpoint_callback, "_last_checkpoint_saved", None), getattr(checkpoint_callback, "last_model_path", None)
        if not last or saved == last:
            self.flush()

    @rank_zero_only
    def finalize(self, status: str) -> None:
        if self._experiment is not None and status != "failed":
            self.flush()
