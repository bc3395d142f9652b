"""Survey layer: reading real (Multimodal Universe HDF5, FITS) and mock cutouts.

Plain Python; knows nothing of Dagster.
"""
