"""Let torchvision's pure-Python parts import when its compiled ops cannot load.

timm imports torchvision, and transformers imports it when it is installed. PyPI's
torchvision wheels are built against PyPI's (CUDA) torch; beside a CPU-only torch build of
the same version its ``_C`` extension cannot load, and torchvision then fails at import
(``operator torchvision::nms does not exist``), because it registers fake kernels for
``nms``/``qnms`` without checking that its ops were loaded. Nothing in galaxy-assets uses
those ops (no detection), so when — and only when — the extension cannot load we declare
the two operator schemas ourselves; calling them would raise "no kernel registered".
Where torchvision matches torch (any normal install, GPU machines included) this does
nothing. The hook runs on the first ``import torchvision`` and then removes itself.
"""

from __future__ import annotations

import importlib.abc
import importlib.util
import logging
import sys
from pathlib import Path

log = logging.getLogger(__name__)
_LIBRARIES: list[object] = []  # keep torch.library.Library objects alive


def _declare_missing_ops() -> None:
    spec = importlib.util.find_spec("torchvision")
    if spec is None or not spec.submodule_search_locations:
        return
    import torch

    folder = Path(next(iter(spec.submodule_search_locations)))
    candidates = sorted(folder.glob("_C*.so")) + sorted(folder.glob("_C*.pyd"))
    if not candidates:
        return
    try:
        torch.ops.load_library(str(candidates[0]))
        return  # the compiled ops load: torchvision is healthy
    except (OSError, RuntimeError) as exc:
        reason = str(exc).splitlines()[0][:200]
    try:
        torch.ops.torchvision.nms  # noqa: B018 - declared already (e.g. by a second import)
        return
    except (AttributeError, RuntimeError):
        pass
    lib = torch.library.Library("torchvision", "DEF")
    lib.define("nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
    lib.define(
        "qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor"
    )
    _LIBRARIES.append(lib)
    log.debug(
        "torchvision's compiled ops do not match this torch build (%s); its detection "
        "ops are unavailable, the rest of torchvision works", reason
    )


class _TorchvisionGuard(importlib.abc.MetaPathFinder):
    def find_spec(self, fullname, path, target=None):  # noqa: D102
        if fullname != "torchvision":
            return None
        if self in sys.meta_path:
            sys.meta_path.remove(self)
        try:
            _declare_missing_ops()
        except Exception:  # never block an import because of the guard itself
            log.debug("torchvision guard failed", exc_info=True)
        return None  # the normal finders import torchvision


def install() -> None:
    """Install the one-shot import hook (idempotent)."""
    if "torchvision" in sys.modules:
        return
    if not any(isinstance(f, _TorchvisionGuard) for f in sys.meta_path):
        sys.meta_path.insert(0, _TorchvisionGuard())
