"""Where the token-cache build runs (``--data_nodes``) and the guard that no accepted row's record goes missing.

The two-node test (``tests/reliability/test_two_nodes.py``) runs the build on a cluster whose second node cannot see
the driver's files; these are the parts that need no cluster."""

from __future__ import annotations

import pyarrow as pa
import pytest

from higgs_train.commands.train import config_from_args
from higgs_train.data.pipeline_stages import ERROR_REASON
from higgs_train.data.ray_pipeline import LostRecordsError, check_records_written


def meta(rows: list[tuple[int, str | None]]) -> pa.Table:
    return pa.table(
        {
            "row_index": pa.array([r for r, _ in rows], pa.int64()),
            ERROR_REASON: pa.array([e for _, e in rows], pa.string()),
        }
    )


def test_data_nodes_defaults_to_the_drivers_node_and_is_validated():
    assert config_from_args([]).data_nodes == "driver"
    assert config_from_args(["--data_nodes", "any"]).data_nodes == "any"
    with pytest.raises(ValueError, match=r"TrainingConfig\.data_nodes='everywhere' is invalid: expected driver, any"):
        config_from_args(["--data_nodes", "everywhere"])


def test_an_entry_missing_records_of_accepted_rows_is_refused(tmp_path):
    accepted_and_failed = meta([(0, None), (1, "audio missing"), (2, None)])
    check_records_written(accepted_and_failed, {0: (0, 0, 0), 2: (0, 0, 1)}, tmp_path)  # the failed row needs none
    check_records_written(meta([]), {}, tmp_path)
    with pytest.raises(LostRecordsError) as lost:
        check_records_written(accepted_and_failed, {0: (0, 0, 0)}, tmp_path)  # row 2's part was written elsewhere
    assert str(lost.value).startswith(
        f"token-cache build: 1 of 2 preprocessed rows have no record in {tmp_path} (row_index 2)"
    )
    assert "--data_nodes driver" in str(lost.value)
