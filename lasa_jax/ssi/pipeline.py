"""Old import path of the SSI stage: its names now live in `lasa_jax.ssi.stage` (the stage) and `lasa_jax.ssi.data`
(its data); "pipeline" names only the orchestrator, `lasa_jax.pipeline`."""
from lasa_jax.ssi.data import DATA_SOURCES, MULTIJAIL_SET, SSIData, load_ssi_data
from lasa_jax.ssi.stage import resolve_residual_index, train_settings, train_ssi

__all__ = ["DATA_SOURCES", "MULTIJAIL_SET", "SSIData", "load_ssi_data", "resolve_residual_index", "train_settings",
           "train_ssi"]
