"""Fixtures shared by the checkpoint tests: one small real training run's records and its checkpoints."""

from __future__ import annotations

import pytest
import torch
from ckpt_fixtures import make_records, trained_checkpoints


def pytest_collection_modifyitems(items):
    """Every test in this folder carries the ``reliability`` marker (``-m reliability`` runs them all); the ones
    that start Ray or a full job also carry ``integration`` in their module."""
    for item in items:
        if "/reliability/" in str(item.path):
            item.add_marker(pytest.mark.reliability)


@pytest.fixture(scope="module")
def one_torch_thread():
    """Two intra-op threads spin against each other on a shared 2-CPU runner; nothing here depends on the count."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def records(tmp_path_factory, one_torch_thread):
    return make_records(tmp_path_factory.mktemp("records"))


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory, records):
    return trained_checkpoints(tmp_path_factory.mktemp("trained"), records)
