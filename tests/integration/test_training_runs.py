"""Whole training runs: overfitting one real sample, and one global batch split over two real Ray Train workers.

The split test runs ``HiggsAudioTrainer`` itself inside ``TorchTrainer`` workers (DDP over gloo, the
``RayWorkerContext`` of ``higgs_train.driver.worker``), so the world-size loss scaling, DDP's gradient averaging and the
all-reduced label counts are the production code paths; only ``optimizer.step`` is replaced to record gradients.
"""

from __future__ import annotations

import importlib.util
import json
import math
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
from stand_ins import StandInCodec

from higgs_train.config import TrainingConfig
from higgs_train.data.preprocess import SamplePreprocessor
from higgs_train.embedded.sample_data import create_sample_data
from higgs_train.model_loading import load_text_tokenizer, resolve_paths
from higgs_train.training.trainer import HiggsAudioTrainer

pytestmark = [
    pytest.mark.integration,
    # Gradients are captured by replacing ``optimizer.step``; torch warns about exactly that.
    pytest.mark.filterwarnings("ignore:Seems like `optimizer.step\\(\\)` has been overridden"),
]

ROOT = Path(__file__).resolve().parents[2]
SPLIT_RTOL = 1e-6  # max |difference| relative to max |gradient|; fp32 reordering gives ~1e-7


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread():
    """Two intra-op threads on a shared 2-CPU runner spin against each other; no figure here depends on it."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


# --------------------------------------------------------------------------------------------------------------------
# Overfitting one sample (benchmarks/overfit.py)
# --------------------------------------------------------------------------------------------------------------------


def load_benchmark(name: str):
    spec = importlib.util.spec_from_file_location(f"benchmarks_{name}", ROOT / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def test_overfitting_one_sample_reaches_high_next_code_accuracy(tmp_path):
    """The loop, the loss and the adapters (default targets) can memorise a sample: teacher-forced next-code
    accuracy >= 0.95 and the audio loss >= 5x lower, measured in eval mode on real codes of the embedded audio
    tokenizer (measured: 7.67 -> 0.995, accuracy 0.004 -> 1.0 in 60 steps)."""
    overfit = load_benchmark("overfit")
    result = overfit.run_overfit(tmp_path, steps=60, learning_rate=5e-3, lora_r=32)

    # Starts at chance or above: the scaled random heads add about half the logit variance to log(1026); a start
    # below chance would mean the targets leak into the inputs.
    assert math.log(1026) - 0.05 < result.initial_audio_loss < math.log(1026) + 1.5
    assert result.initial_accuracy < 0.05
    assert result.final_accuracy >= 0.95
    assert result.loss_drop >= 5, f"audio loss {result.initial_audio_loss:.3f} -> {result.final_audio_loss:.3f}"
    assert (tmp_path / "run" / "adapter" / "adapter_model.safetensors").exists()


# --------------------------------------------------------------------------------------------------------------------
# Split invariance across Ray Train workers
# --------------------------------------------------------------------------------------------------------------------


def randomise_lora_b(model: torch.nn.Module, seed: int = 0) -> None:
    """Non-zero lora_B (peft starts it at zero) so every lora_A gets a gradient too; same values on every rank."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in sorted(model.named_parameters(), key=lambda item: item[0].removeprefix("module.")):
            if "lora_B" in name:
                param.copy_(torch.randn(param.shape, generator=gen) * 0.02)


def capture_gradients(trainer: HiggsAudioTrainer) -> list[dict[str, torch.Tensor]]:
    """Record gradients at ``optimizer.step`` instead of applying them (weights stay put between splits)."""
    captured: list[dict[str, torch.Tensor]] = []

    def step(*_args: Any, **_kwargs: Any) -> None:
        captured.append(
            {
                n.removeprefix("module."): p.grad.detach().clone()
                for n, p in trainer.model.named_parameters()
                if p.requires_grad
            }
        )

    trainer.optimizer.step = step
    return captured


def split_worker(loop_config: dict[str, Any]) -> None:
    """Ray Train worker: rank r holds samples 2r and 2r + 1 of the global batch of 4."""
    from higgs_train.driver.worker import RayWorkerContext

    torch.set_num_threads(1)
    context = RayWorkerContext.current()
    rank = context.rank
    trainer = HiggsAudioTrainer(TrainingConfig.from_dict(loop_config["config"]), loop_config["records"], [], context)
    trainer.setup()
    assert type(trainer.model).__name__ == "DistributedDataParallel"
    randomise_lora_b(trainer.model)
    captured = capture_gradients(trainer)
    mine = [2 * rank, 2 * rank + 1]
    trainer._train_step([mine])  # (c) one micro-batch of 2 per worker
    trainer._train_step([[mine[0]], [mine[1]]])  # two accumulation micro-steps of 1 per worker (DDP no_sync)
    if rank == 0:
        torch.save(captured, loop_config["out"])


def relative_difference(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    assert a.keys() == b.keys()
    scale = max(float(t.abs().max()) for t in a.values())
    assert scale > 0
    return max(float((a[n] - b[n]).abs().max()) for n in a) / scale


def test_two_ray_workers_compute_the_single_process_gradient(tmp_path):
    import ray
    import ray.cloudpickle
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    paths = create_sample_data(tmp_path / "sample_data")
    rows = json.loads(Path(paths["train"]).read_text())[:4]
    tokenizer = load_text_tokenizer(resolve_paths("embedded", "embedded").tokenizer_path)
    result = SamplePreprocessor(tokenizer, StandInCodec(), paths["audio_base_path"]).process_batch(rows)
    assert not result.failures
    records = result.records
    config = {"output_dir": str(tmp_path / "run"), "batch_size": 2, "lora_dropout": 0.0, "max_grad_norm": 0.0}

    # (a) one process, one micro-batch of 4: the reference.
    single = HiggsAudioTrainer(TrainingConfig(**config), train_records=records, val_records=[])
    single.setup()
    randomise_lora_b(single.model)
    reference = capture_gradients(single)
    single._train_step([[0, 1, 2, 3]])

    # (c) two workers with 2 samples each. The workers unpickle split_worker by value: this test module is not
    # importable on them.
    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        out = tmp_path / "rank0_grads.pt"
        trainer = TorchTrainer(
            split_worker,
            train_loop_config={"config": config, "records": records, "out": str(out)},
            torch_config=TorchConfig(backend="gloo"),
            scaling_config=ScalingConfig(num_workers=2, use_gpu=False, resources_per_worker={"CPU": 0.5}),
            run_config=RunConfig(name="split-invariance", storage_path=str(tmp_path / "ray_results")),
        )
        fit = trainer.fit()
        assert fit.error is None
    finally:
        ray.shutdown()
        ray.cloudpickle.unregister_pickle_by_value(sys.modules[__name__])

    distributed = torch.load(out)
    assert len(distributed) == 2
    for grads in distributed:
        assert relative_difference(reference[0], grads) < SPLIT_RTOL
