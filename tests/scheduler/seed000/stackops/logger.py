"""Seed 000's `stackops.logger.get_logger`: a standard library logger."""

from __future__ import annotations

import logging


def get_logger(name: str) -> logging.Logger:
    return logging.getLogger(name)
