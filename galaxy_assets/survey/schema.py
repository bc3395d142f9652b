"""Names and schemas of the survey layer: MMU dataset names, bands, the manifest schema."""

from __future__ import annotations

import pandera.polars as pa
import polars as pl

# Bands the Legacy Survey (g, r, i, z) and HSC (g, r, i, z, y) parent samples carry, and u
# (SDSS, CFHT, LSST). Other names (narrow bands) are left unread in MMU shards.
KNOWN_BANDS: tuple[str, ...] = ("u", "g", "r", "i", "z", "y")  # blue to red
DEFAULT_BANDS: tuple[str, ...] = ("g", "r", "i", "z")
PIXEL_SCALE_ARCSEC = 0.262  # Legacy Survey DR10 pixel scale

# Datasets of a Multimodal Universe (MMU) image shard.
MMU_IMAGE = "image_array"  # (N, B, H, W) float32
MMU_BAND = "image_band"  # (N, B) bytes
MMU_IVAR = "image_ivar"  # (N, B, H, W) float32
MMU_PSF_FWHM = "image_psf_fwhm"  # (N, B) float32, arcsec
MMU_SCALE = "image_scale"  # (N, B) float32, arcsec / pixel
MMU_OBJECT_ID = "object_id"  # (N,) bytes or int
MMU_RA = "ra"
MMU_DEC = "dec"
MMU_EBV = "EBV"
MMU_REQUIRED = (MMU_IMAGE, MMU_BAND, MMU_OBJECT_ID, MMU_RA, MMU_DEC)


def flux_column(band: str) -> str:
    """MMU column holding the catalogue flux (nanomaggies) of ``band``: FLUX_G, FLUX_R…"""
    return f"FLUX_{band.upper()}"


# One row per galaxy; pixels stay in the shard files.
MANIFEST_COLUMNS: dict[str, pl.DataType] = {
    "object_id": pl.Utf8(),
    "ra": pl.Float64(),
    "dec": pl.Float64(),
    "healpix": pl.Int64(),
    "flux_g": pl.Float32(),
    "flux_r": pl.Float32(),
    "flux_i": pl.Float32(),
    "flux_z": pl.Float32(),
    "ebv": pl.Float32(),
    "bands": pl.Utf8(),  # comma-separated band names, in the order of the pixel axis
    "height": pl.Int32(),
    "width": pl.Int32(),
    "nonfinite_fraction": pl.Float32(),  # fraction of NaN/inf pixels over all bands
    "shard": pl.Utf8(),  # the Dagster partition key
    "shard_uri": pl.Utf8(),  # where the pixels are
    "row": pl.Int64(),  # row of the galaxy in the shard
}

MANIFEST_SCHEMA = pa.DataFrameSchema(
    {
        "object_id": pa.Column(pl.Utf8, nullable=False, checks=pa.Check.str_length(min_value=1)),
        "ra": pa.Column(pl.Float64, checks=[pa.Check.ge(0.0), pa.Check.lt(360.0)]),
        "dec": pa.Column(pl.Float64, checks=[pa.Check.ge(-90.0), pa.Check.le(90.0)]),
        "healpix": pa.Column(pl.Int64, nullable=True, checks=pa.Check.ge(0)),
        "flux_g": pa.Column(pl.Float32, nullable=True),
        "flux_r": pa.Column(pl.Float32, nullable=True),
        "flux_i": pa.Column(pl.Float32, nullable=True),
        "flux_z": pa.Column(pl.Float32, nullable=True),
        "ebv": pa.Column(pl.Float32, nullable=True),
        "bands": pa.Column(pl.Utf8, checks=pa.Check.str_length(min_value=1)),
        "height": pa.Column(pl.Int32, checks=pa.Check.gt(0)),
        "width": pa.Column(pl.Int32, checks=pa.Check.gt(0)),
        "nonfinite_fraction": pa.Column(
            pl.Float32, checks=[pa.Check.ge(0.0), pa.Check.le(1.0)]
        ),
        "shard": pa.Column(pl.Utf8),
        "shard_uri": pa.Column(pl.Utf8),
        "row": pa.Column(pl.Int64, checks=pa.Check.ge(0)),
    },
    strict=True,
    unique=["object_id"],
    name="raw_cutouts manifest",
)
