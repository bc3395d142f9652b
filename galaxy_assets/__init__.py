"""galaxy-assets: semantic search for unlabeled galaxy images, built as a Dagster asset graph."""

from galaxy_assets import _torchvision_compat

_torchvision_compat.install()

__version__ = "0.1.0"
