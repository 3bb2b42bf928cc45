"""The one progress bar of long loops (capture, generation): tqdm on process 0 only, None when disabled."""
from __future__ import annotations

import jax


def progress_bar(total: int, enabled: bool, desc: str, unit: str = "prompt"):
    """A tqdm bar over `total` units on process 0 when `enabled`, else None (callers check for None)."""
    if not enabled or jax.process_index() != 0:
        return None
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit=unit)
