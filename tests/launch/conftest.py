"""Fixtures for the launcher tests: the trainer suite's small real dataset, shared here."""

from __future__ import annotations

from tests.trainer.conftest import char_manifest

__all__ = ["char_manifest"]
