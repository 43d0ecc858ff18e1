"""The UCI Online Retail file for the tests that check the real data, and why they skip without
it: the reason names every path looked for and the setting that points at the file, so that a run
elsewhere does not pass without those checks unnoticed."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from crm_shared.ops.demo.load import DATA_ENV, DATA_FILE, REPO_ROOT, default_data_path


def _located() -> tuple[Path | None, str]:
    """The file (or None) and, without it, the reason to skip."""
    path = default_data_path()
    if DATA_ENV in os.environ:
        if path is not None and path.is_file():
            return path, ""
        return None, (
            f"${DATA_ENV} is {os.environ[DATA_ENV]!r}, which is not a file: set it to the path of"
            " online_retail.csv.gz to run the real-data checks"
        )
    if path is not None:
        return path, ""
    looked = ", ".join(str(folder / DATA_FILE) for folder in (REPO_ROOT, *REPO_ROOT.parents))
    return None, (
        f"the UCI Online Retail file was not found at {looked}; set {DATA_ENV}=/path/to/"
        "online_retail.csv.gz (or put it in shared/data/ beside the checkout) to run the "
        "real-data checks"
    )


DATA, MISSING = _located()
real_file = pytest.mark.skipif(DATA is None, reason=MISSING)
"""Skips a test that reads the file when it is absent, saying where it was looked for."""
