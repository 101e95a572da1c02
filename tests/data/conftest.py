"""Fixtures that write tiny datasets in exactly the official on-disk formats."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
from datahelpers import write_image


@pytest.fixture
def folder_tree(tmp_path: Path) -> Path:
    """3 classes (zebra, ant, bee) x 6 images; names chosen so sorting matters."""
    root = tmp_path / "imgs"
    for c, cls in enumerate(["zebra", "ant", "bee"]):
        for i in range(6):
            write_image(root / cls / f"{i:02d}.png", value=40 * c + i)
    return root


class ListHandler(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@pytest.fixture
def tinyshot_log():
    """Records of the 'tinyshot' logger (which does not propagate to the root once set up)."""
    h = ListHandler()
    logger = logging.getLogger("tinyshot")
    old = logger.level
    logger.setLevel(logging.DEBUG)
    logger.addHandler(h)
    yield h.records
    logger.removeHandler(h)
    logger.setLevel(old)
