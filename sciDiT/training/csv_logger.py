"""A CSV logger whose ``metrics.csv`` survives reruns and kills: appended, never deleted or garbled.

Lightning's ``CSVLogger`` deletes an existing ``metrics.csv`` when a run starts in the same folder,
so a resumed or rerun stage loses its history. :class:`AppendingCSVLogger` keeps the file, adopts
its header, appends rows as they are logged (Lightning saves after every log call) and rewrites the
file (atomically) only when new columns appear. The first write of a new process replaces the rows
from its first logged step on: those are the steps a killed run logged after its last checkpoint,
which the resumed run recomputes, so every step appears once.
"""

from __future__ import annotations

import csv
import io
import os
import tempfile
from pathlib import Path

from lightning.pytorch.loggers import CSVLogger
from lightning.pytorch.loggers.csv_logs import ExperimentWriter
from lightning.pytorch.loggers.logger import rank_zero_experiment


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
        """Adopt the header of an existing metrics.csv (called by the constructor instead of deleting it)."""
        self._resumed = True  # the first save drops the earlier rows this process logs again
        path = Path(self.metrics_file_path)
        if path.is_file():
            self.metrics_keys = next(csv.reader(io.StringIO(path.read_text())), [])

    def save(self) -> None:
        """Append the recorded rows; rewrite the file when new columns appear or on a resume's first write."""
        if not self.metrics:
            return
        path = Path(self.metrics_file_path)
        new_keys = set().union(*self.metrics) - set(self.metrics_keys)
        if new_keys or self._resumed or not path.is_file():
            text = path.read_text() if path.is_file() else ""
            text = text[: text.rfind("\n") + 1]  # a kill mid-append can leave a partial last line
            old_rows = list(csv.DictReader(io.StringIO(text)))
            if self._resumed:
                first = min(int(row["step"]) for row in self.metrics)
                old_rows = [row for row in old_rows if not row.get("step") or int(float(row["step"])) < first]
                self._resumed = False
            self.metrics_keys = sorted(set(self.metrics_keys) | new_keys)
            out = io.StringIO()
            writer = csv.DictWriter(out, fieldnames=self.metrics_keys, lineterminator="\n")
            writer.writeheader()
            writer.writerows(old_rows + self.metrics)
            _atomic_write(path, out.getvalue())
        else:
            with path.open("a", newline="") as fh:
                csv.DictWriter(fh, fieldnames=self.metrics_keys, lineterminator="\n").writerows(self.metrics)
        self.metrics = []


class AppendingCSVLogger(CSVLogger):
    """Lightning's ``CSVLogger`` (same arguments) writing through :class:`AppendingWriter`."""

    @property
    @rank_zero_experiment
    def experiment(self) -> AppendingWriter:
        if self._experiment is None:
            self._fs.makedirs(self.root_dir, exist_ok=True)
            self._experiment = AppendingWriter(log_dir=self.log_dir)
        return self._experiment
