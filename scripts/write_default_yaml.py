"""Write ``configs/default.yaml`` from ``TrainingConfig`` (run it after adding or changing a config field).

``tests/unit/test_config_cli.py`` fails while the committed file differs from what this writes.
"""

from __future__ import annotations

from pathlib import Path

from higgs_train.config import default_yaml

if __name__ == "__main__":
    target = Path(__file__).resolve().parents[1] / "configs" / "default.yaml"
    target.write_text(default_yaml())
    print(f"wrote {target}")
