"""The embedded runtime: one home folder for everything the graph writes, and device choice.

Plain Python (no Dagster): the Dagster resources in ``galaxy_assets.defs.resources`` and the
CLI both build on these helpers, so the layout of the home folder is defined once.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)

HOME_ENV = "GALAXY_ASSETS_HOME"
DEFAULT_HOME = ".galaxy_home"


class RuntimeConfigError(Exception):
    """A runtime setting (home folder, device, dtype) is invalid."""


# what `galaxy-assets demo` records beside the mock survey it simulated (n, size, seed, …)
SIMULATION_MARKER = "SIMULATION.json"


@dataclass(frozen=True)
class Home:
    """The git-ignored folder that holds all state of an embedded deployment.

    Layout (all paths derived from ``root``)::

        dagster/        DAGSTER_HOME: dagster.yaml, SQLite run/event/schedule storage
        lancedb/        the LanceDB database (galaxy_index)
        mlflow/         mlflow.db (tracking + registry, sqlite) and artifacts/
        parquet/        asset outputs (one Parquet file per asset and partition)
        mock_survey/    the simulated survey shards and their truth tables
        reports/        evaluation reports and plots
        captions/       the caption store (captioning/store.py), made by its first write
        cache/thumbnails/  the search page's PNG thumbnails (web/server.py), made by the first
                        thumbnail written
        config.yaml     the settings file read when $GALAXY_ASSETS_CONFIG is unset (written by
                        the user; optional)

    :meth:`ensure` creates the first six folders; the code that writes into the other two makes
    them.
    """

    root: Path

    @classmethod
    def from_env(cls, root: str | os.PathLike[str] | None = None) -> Home:
        """The home named by ``root``, else ``$GALAXY_ASSETS_HOME``, else ``./.galaxy_home``."""
        value = root if root not in (None, "") else os.environ.get(HOME_ENV) or DEFAULT_HOME
        return cls(Path(value).expanduser().resolve())

    @property
    def dagster(self) -> Path:
        return self.root / "dagster"

    @property
    def lancedb(self) -> Path:
        return self.root / "lancedb"

    @property
    def mlflow(self) -> Path:
        return self.root / "mlflow"

    @property
    def mlflow_tracking_uri(self) -> str:
        return f"sqlite:///{self.mlflow / 'mlflow.db'}"

    @property
    def mlflow_artifacts(self) -> Path:
        return self.mlflow / "artifacts"

    @property
    def parquet(self) -> Path:
        return self.root / "parquet"

    @property
    def mock_survey(self) -> Path:
        return self.root / "mock_survey"

    def simulated_cutout_size(self) -> int | None:
        """The cutout size the demo simulated the home's mock survey at (its
        ``SIMULATION.json``), or None when there is none or it cannot be read."""
        import json

        try:
            size = json.loads((self.mock_survey / SIMULATION_MARKER).read_text()).get("size")
        except (OSError, ValueError, AttributeError):
            return None
        return int(size) if isinstance(size, int) and size > 0 else None

    @property
    def reports(self) -> Path:
        return self.root / "reports"

    def ensure(self) -> Home:
        """Create the folders (idempotent) and return self."""
        for path in (self.dagster, self.lancedb, self.mlflow_artifacts, self.parquet,
                     self.mock_survey, self.reports):
            path.mkdir(parents=True, exist_ok=True)
        return self


DEVICES = ("auto", "cpu", "cuda", "mps")
DTYPES = ("float32", "bfloat16", "float16")


def select_device(requested: str = "auto") -> str:
    """Resolve a device name: ``auto`` picks cuda, then mps, then cpu.

    ``cuda:N`` is accepted. Asking for a device that is not available raises a
    RuntimeConfigError that says which devices are.
    """
    import torch

    name = requested.strip().lower()
    base = name.split(":", 1)[0]
    if base not in DEVICES:
        raise RuntimeConfigError(
            f"compute.device={requested!r} is not a device; use one of {', '.join(DEVICES)} "
            "(or cuda:N)"
        )
    cuda = torch.cuda.is_available()
    mps = bool(getattr(torch.backends, "mps", None)) and torch.backends.mps.is_available()
    if base == "auto":
        return "cuda" if cuda else "mps" if mps else "cpu"
    if base == "cuda" and not cuda:
        raise RuntimeConfigError(
            f"compute.device={requested!r} but torch sees no CUDA device "
            f"(torch {torch.__version__}); set compute.device to 'cpu' or 'auto'"
        )
    if base == "mps" and not mps:
        raise RuntimeConfigError(
            f"compute.device={requested!r} but MPS is not available; set it to 'cpu' or 'auto'"
        )
    return name


def select_dtype(requested: str, device: str):
    """The torch dtype for ``requested`` on ``device``; half precision only off the CPU
    unless bfloat16 was asked for explicitly (CPUs run bfloat16, slowly, but correctly)."""
    import torch

    if requested not in DTYPES:
        raise RuntimeConfigError(
            f"compute.dtype={requested!r} is not supported; use one of {', '.join(DTYPES)}"
        )
    if requested == "float16" and device == "cpu":
        raise RuntimeConfigError(
            "compute.dtype='float16' is not supported on the CPU; use 'float32' or 'bfloat16'"
        )
    return getattr(torch, requested)


@contextlib.contextmanager
def exclusive_file_lock(path: str | os.PathLike[str]) -> Iterator[None]:
    """Hold an exclusive inter-process lock on the file ``path`` (created with its folder) while
    the block runs: SQLite-backed stores use it where SQLite cannot serialise a read-then-write
    between processes. A no-op where ``fcntl`` is missing (Windows)."""
    try:
        import fcntl
    except ImportError:  # Windows: no advisory locks; concurrent processes may race
        yield
        return
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def restore_interrupt_signals() -> bool:
    """Give SIGINT Python's handler and SIGTERM the default action again where the process
    started with them ignored, as any job started in the background of a non-interactive shell
    (CI runners, ``nohup … &``) starts with SIGINT ignored. Returns whether anything changed.

    Dagster copies SIGINT's handler onto SIGTERM around all user code
    (``dagster._utils.interrupts.setup_interrupt_handlers``), so an ignored SIGINT leaves SIGTERM
    ignored too, and every child inherits that: the workers of a ``LocalCluster`` started from
    such a process, and the ``tail -F`` of each step's compute-log capture, then survive
    ``terminate()``. Each step waited 30 s per captured stream for its tail, and the tails
    leaked. Call it in the main thread of a process that runs Dagster code (the CLI, every dask
    worker); elsewhere it does nothing.
    """
    if threading.current_thread() is not threading.main_thread():
        return False
    changed = False
    if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)
        changed = True
    if signal.getsignal(signal.SIGTERM) is signal.SIG_IGN:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        changed = True
    return changed
