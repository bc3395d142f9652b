"""Dagster resources: the home folder, the compute device, the survey roots."""

from __future__ import annotations

from pathlib import Path

import dagster as dg
from pydantic import Field

from galaxy_assets.runtime import Home, select_device, select_dtype
from galaxy_assets.settings import load_settings
from galaxy_assets.survey.readers import find_shards, open_shard, resolve_shard, shard_key


class HomeResource(dg.ConfigurableResource):
    """The folder that holds everything the graph writes (``GALAXY_ASSETS_HOME``)."""

    root: str = Field("", description="Empty: $GALAXY_ASSETS_HOME, else ./.galaxy_home")

    def home(self) -> Home:
        return Home.from_env(self.root or None).ensure()


class ComputeResource(dg.ConfigurableResource):
    """Where torch work runs: device (auto, cpu, cuda, cuda:N, mps), dtype and batch size."""

    device: str = "auto"
    dtype: str = "float32"
    batch_size: int = 256

    def torch_device(self) -> str:
        return select_device(self.device)

    def torch_dtype(self):
        return select_dtype(self.dtype, self.torch_device().split(":")[0])


class SurveyResource(dg.ConfigurableResource):
    """Which shards make up the survey, and how cutouts are read from them."""

    roots: list[str] = Field(default_factory=list, description="Empty: the home's mock survey")
    bands: list[str] = Field(default_factory=lambda: ["g", "r", "i", "z"])
    cutout_size: int = Field(64, description="Centre crop in pixels; 0 keeps the native size")

    def root_paths(self, home: Home) -> list[Path]:
        if self.roots:
            return [Path(r).expanduser().resolve() for r in self.roots]
        return [home.mock_survey]

    def discover(self, home: Home) -> dict[str, Path]:
        """Every shard under the roots, by partition key."""
        found: dict[str, Path] = {}
        for root in self.root_paths(home):
            if not root.exists():
                continue
            for path in find_shards(root):
                found.setdefault(shard_key(root, path), path)
        return found

    def locate(self, home: Home, key: str) -> Path:
        return resolve_shard(self.root_paths(home), key)

    def open(self, path: Path):
        return open_shard(path, bands=self.bands, size=self.cutout_size or None)


def default_resources() -> dict[str, object]:
    """Resources configured from settings (config file + environment)."""
    from dagster_polars import PolarsParquetIOManager

    settings = load_settings()
    home = settings.home_folder()
    return {
        "home": HomeResource(root=settings.home),
        "compute": ComputeResource(**settings.compute.model_dump()),
        "survey": SurveyResource(**settings.survey.model_dump()),
        "io_manager": PolarsParquetIOManager(base_dir=str(home.parquet)),
    }
