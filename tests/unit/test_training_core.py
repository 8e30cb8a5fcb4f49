"""Training core on the embedded tiny stack: where LoRA goes, where gradients go, split invariance, resume,
checkpoints, bf16, activation checkpointing and chance-level first losses.

Records come from the real ``SamplePreprocessor`` (real ChatML tokenisation and cloning layout of the generated
sample data) with a stand-in audio codec that returns deterministic pseudo-random codes. Everything tested here is
about how the loop computes and distributes gradients, which does not depend on what the codes mean, and the real
codec would use most of this file's time budget. tests/integration/test_training_runs.py trains on real codes
(overfitting one sample) and splits a batch over real Ray workers.
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
from safetensors.torch import load_file
from stand_ins import StandInCodec

from higgs_train.adapter import adapted_module_names, apply_lora
from higgs_train.commands.train import config_from_args
from higgs_train.config import DEFAULT_LORA_TARGETS, TrainingConfig
from higgs_train.data.collate import build_collator, collate_records
from higgs_train.data.preprocess import SamplePreprocessor
from higgs_train.embedded.sample_data import create_sample_data
from higgs_train.loss import compute_higgs_audio_loss
from higgs_train.model_loading import load_model, load_text_tokenizer, resolve_paths
from higgs_train.training.hooks import ValidationStep
from higgs_train.training.trainer import HiggsAudioTrainer

ROOT = Path(__file__).resolve().parents[2]
ATTENTION = ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj")
TEXT_MLP = ("mlp.gate_proj", "mlp.up_proj", "mlp.down_proj")
AUDIO_MLP = ("audio_mlp.gate_proj", "audio_mlp.up_proj", "audio_mlp.down_proj")
# Split invariance: max |difference| relative to max |gradient|. fp32 sums in another order differ by ~2e-7 here;
# normalising each micro-batch by its own label counts instead of the step's differs by ~0.1.
SPLIT_RTOL = 1e-6

# The tests replace ``optimizer.step`` to capture gradients without applying them; torch warns about exactly that.
pytestmark = pytest.mark.filterwarnings("ignore:Seems like `optimizer.step\\(\\)` has been overridden")


def make_records(rows: list[dict], audio_base: Path, whisper: bool = False) -> list[dict]:
    paths = resolve_paths("embedded", "embedded")
    preprocessor = SamplePreprocessor(
        load_text_tokenizer(paths.tokenizer_path), StandInCodec(), audio_base, whisper=whisper
    )
    result = preprocessor.process_batch(rows)
    assert not result.failures, result.failures
    return result.records


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread():
    """On a shared 2-CPU runner two intra-op threads spin against each other (a training step measured 50x slower
    under load); nothing asserted here depends on the thread count."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def sample_rows(tmp_path_factory) -> tuple[list[dict], Path]:
    paths = create_sample_data(tmp_path_factory.mktemp("data") / "sample_data")
    return json.loads(Path(paths["train"]).read_text()), Path(paths["audio_base_path"])


@pytest.fixture(scope="module")
def records(sample_rows) -> list[dict]:
    rows, audio_base = sample_rows
    return make_records(rows[:8], audio_base)


def trainer_for(tmp_path: Path, records: list[dict], val: list[dict] | None = None, **overrides: Any):
    """A trainer on given records; deterministic by default (no dropout) and without clipping, so gradients
    can be compared raw."""
    settings: dict[str, Any] = {
        "output_dir": str(tmp_path / "run"),
        "lora_dropout": 0.0,
        "max_grad_norm": 0.0,
        "warmup_steps": 0,
        **overrides,
    }
    return HiggsAudioTrainer(TrainingConfig(**settings), train_records=records, val_records=val or [])


def randomise_lora_b(model: torch.nn.Module, seed: int = 0) -> None:
    """peft initialises lora_B to zero, which makes every lora_A gradient exactly zero; give B small random values
    so that both adapter matrices of every module must receive a gradient."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in sorted(model.named_parameters(), key=lambda item: item[0].removeprefix("module.")):
            if "lora_B" in name:
                param.copy_(torch.randn(param.shape, generator=gen) * 0.02)


def capture_gradients(trainer: HiggsAudioTrainer) -> list[dict[str, torch.Tensor]]:
    """Make ``optimizer.step`` record the gradients instead of applying them, so several splits of the same batch
    can be compared on unchanged weights (the trainer zeroes the gradients right after the step)."""
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


def relative_difference(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    """max |a - b| over all adapter tensors, relative to max |a|."""
    assert a.keys() == b.keys()
    scale = max(float(t.abs().max()) for t in a.values())
    assert scale > 0
    return max(float((a[n] - b[n]).abs().max()) for n in a) / scale


def load_benchmark(name: str):
    """Import ``benchmarks/<name>.py`` (not a package) so a test checks the very figures the script prints."""
    spec = importlib.util.spec_from_file_location(f"benchmarks_{name}", ROOT / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


# --------------------------------------------------------------------------------------------------------------------
# LoRA placement
# --------------------------------------------------------------------------------------------------------------------


def test_default_targets_adapt_every_decoder_layer_and_nothing_in_the_whisper_tower():
    model = load_model(resolve_paths("embedded:whisper", "embedded").model_path)
    tower = [n for n, _ in model.audio_tower.named_modules() if n.endswith(("q_proj", "k_proj", "v_proj"))]
    assert tower, "the Whisper tower has q/k/v projections a suffix match would also adapt"
    layers = model.config.text_config.num_hidden_layers

    peft_model = apply_lora(model, 8, 16, 0.0, [DEFAULT_LORA_TARGETS])

    expected = {f"base_model.model.layers.{i}.{m}" for i in range(layers) for m in ATTENTION + TEXT_MLP + AUDIO_MLP}
    assert set(adapted_module_names(peft_model)) == expected
    for name, param in peft_model.named_parameters():
        assert param.requires_grad == ("lora_" in name), name


def test_bare_peft_model_runs_the_whisper_trainer_step_with_higgs_kwargs(tmp_path, sample_rows):
    """The trainer's forward passes every Higgs keyword (audio features for the tower, audio in/out codes, labels)
    through peft; a CAUSAL_LM task wrapper would inject ``labels=`` etc. that HiggsAudioModel does not take."""
    from peft import PeftModel

    rows, audio_base = sample_rows
    row = json.loads(json.dumps(rows[0]))
    row["messages"][2]["role"] = "user"  # reference as audio-in: the Whisper tower encodes it
    records = make_records([row], audio_base, whisper=True)
    assert len(records[0]["audio_waveforms"]) > 0
    trainer = trainer_for(tmp_path, records, model_path="embedded:whisper", batch_size=1)
    trainer.setup()
    assert type(trainer.model) is PeftModel
    captured = capture_gradients(trainer)
    metrics = trainer._record_step(trainer._train_step([[0]]))

    assert math.isfinite(metrics["train/total_loss"]) and metrics["train/audio_tokens"] > 0
    grads = captured[0]
    assert all(name.startswith("base_model.model.layers.") for name in grads)
    assert all(torch.isfinite(g).all() for g in grads.values())
    assert any("lora_B" in n and g.abs().sum() > 0 for n, g in grads.items())
    assert all(p.grad is None for n, p in trainer.model.named_parameters() if "lora_" not in n)


# --------------------------------------------------------------------------------------------------------------------
# Gradient flow per loss component
# --------------------------------------------------------------------------------------------------------------------


def test_each_loss_component_alone_reaches_the_adapters_and_nothing_else(tmp_path, records):
    trainer = trainer_for(tmp_path, records[:2], batch_size=2)
    trainer.setup()
    model = trainer.model
    randomise_lora_b(model)
    batch = collate_records(records[:2], trainer.collator)
    layers = model.config.text_config.num_hidden_layers

    def gradients(text: float, audio: float) -> dict[str, torch.Tensor]:
        model.zero_grad(set_to_none=True)
        outputs = model(**trainer._model_inputs(batch))
        loss = compute_higgs_audio_loss(outputs, batch, text_loss_weight=text, audio_loss_weight=audio)
        loss.total.backward()
        stray = [n for n, p in model.named_parameters() if "lora_" not in n and p.grad is not None]
        assert not stray, f"non-adapter parameters received gradients: {stray[:3]}"
        return {n: p.grad.detach().clone() for n, p in model.named_parameters() if "lora_" in n}

    def nonzero(grads: dict[str, torch.Tensor], layer: int, module: str) -> list[bool]:
        """Whether each of the two adapter matrices of ``module`` in ``layer`` got a non-zero gradient."""
        prefix = f"base_model.model.layers.{layer}.{module}.lora_"
        hits = [bool(g.abs().sum() > 0) for n, g in grads.items() if n.startswith(prefix)]
        assert len(hits) == 2, prefix
        return hits

    def reached(grads: dict[str, torch.Tensor], layer: int, module: str) -> bool:
        return all(nonzero(grads, layer, module))

    text = gradients(1.0, 0.0)
    audio = gradients(0.0, 1.0)
    for layer in range(layers):
        assert all(reached(text, layer, m) for m in ATTENTION + TEXT_MLP), f"text loss, layer {layer}"
        assert all(reached(audio, layer, m) for m in ATTENTION + AUDIO_MLP), f"audio loss, layer {layer}"
    # DualFFN routing: audio positions never pass the text MLP and the audio head reads only audio positions, so
    # the last layer's text MLP cannot influence the audio term (a term read off text positions would give it a
    # gradient).
    assert not any(any(nonzero(audio, layers - 1, m)) for m in TEXT_MLP)

    # The configured total is exactly the weighted sum of the two components, nothing more.
    combined = gradients(1.0, 0.5)
    summed = {n: text[n] + 0.5 * audio[n] for n in text}
    assert relative_difference(combined, summed) < 1e-5


# --------------------------------------------------------------------------------------------------------------------
# Split invariance (1 process; the Ray version is in tests/integration/test_training_runs.py)
# --------------------------------------------------------------------------------------------------------------------


def test_gradient_of_one_global_batch_does_not_depend_on_accumulation_split(tmp_path, records):
    four = records[:4]
    trainer = trainer_for(tmp_path, four, batch_size=4)
    trainer.setup()
    randomise_lora_b(trainer.model)
    captured = capture_gradients(trainer)

    trainer._train_step([[0, 1, 2, 3]])  # (a) one micro-batch of 4
    trainer._train_step([[0, 1], [2, 3]])  # (b) two accumulation micro-steps of 2
    trainer._train_step([[3, 0], [2, 1]])  # (b') other pairs, other order
    trainer._train_step([[2], [0, 1, 3]])  # unequal micro-batches, as token-budget batching makes them
    trainer._train_step([[2], [0], [3], [1]])  # four micro-steps of 1 (no padding at all)
    whole = captured[0]
    for split in captured[1:]:
        assert relative_difference(whole, split) < SPLIT_RTOL

    # The check can fail: averaging per-micro-batch means (each micro-batch normalised by its own label counts
    # instead of the step's) weights the lone sample 3x and moves the gradient far outside the tolerance.
    halves = [collate_records([four[i] for i in rows], trainer.collator) for rows in ([2], [0, 1, 3])]
    trainer.model.zero_grad(set_to_none=True)
    for batch in halves:
        (trainer._forward_loss(batch, None).total / 2).backward()
    naive = {n: p.grad.detach().clone() for n, p in trainer.model.named_parameters() if p.requires_grad}
    assert relative_difference(whole, naive) > 1000 * SPLIT_RTOL


# --------------------------------------------------------------------------------------------------------------------
# Chance-level first step (label leaks and normalisation errors show up here)
# --------------------------------------------------------------------------------------------------------------------


def test_first_step_loss_of_the_untrained_model_is_chance_level(tmp_path, records):
    """An untrained model must score ~log(V) on text and ~log(1026) per audio code. A loss near 0 means the target
    is visible to the model (a label leak); a multiple of these values means a wrong normaliser (e.g. codebooks
    summed instead of averaged, or a sum over tokens divided by the wrong count).

    The embedded model's output heads are scaled up (``HEAD_WEIGHT_SCALE``), which puts the untrained loss above
    chance by about half the logit variance; shrunk to a small init here, chance is log(V) and log(1026) again."""
    from higgs_train.embedded.model import HEAD_WEIGHT_SCALE

    trainer = trainer_for(tmp_path, records[:4], batch_size=2, max_steps=1, num_epochs=1)
    trainer.setup()
    with torch.no_grad():
        for name, module in trainer.model.named_modules():
            if name.endswith(("audio_lm_head", "text_lm_head")):
                module.weight.mul_(1 / (4 * HEAD_WEIGHT_SCALE))
    trainer.train()
    first = trainer.state.history[0]
    vocab = trainer.model_config.text_config.vocab_size
    codes = trainer.model_config.audio_codebook_size + 2  # + stream BOS and EOS
    assert abs(first["train/text_loss"] - math.log(vocab)) < 0.3
    assert abs(first["train/audio_loss"] - math.log(codes)) < 0.05
    assert first["train/text_tokens"] > 0 and first["train/audio_tokens"] > 0


# --------------------------------------------------------------------------------------------------------------------
# Resume and checkpoints
# --------------------------------------------------------------------------------------------------------------------


def test_interrupted_and_resumed_run_repeats_the_uninterrupted_losses(tmp_path, records):
    """7 steps straight vs. a run of the same config stopped after 4 steps (mid-epoch: 3 steps per epoch) and
    resumed through the command-line config (``--config`` + ``--resume_from``). LoRA dropout stays on, so the
    dropout masks must be reproduced too; CPU results are bit-identical, asserted to a relative 1e-6."""
    settings = {
        "batch_size": 2,
        "num_epochs": 3,
        "max_steps": 7,
        "save_every_steps": 4,
        "eval_every_steps": 4,
        "learning_rate": 1e-3,
        "warmup_steps": 1,
        "lora_dropout": 0.05,
        "max_grad_norm": 1.0,
    }
    train, val = records[:6], records[6:8]
    full = trainer_for(tmp_path / "full", train, val, **settings)
    full.train()

    part = trainer_for(tmp_path / "part", train, val, **settings)
    stopped = part.train(stop_after_steps=4)
    assert stopped.adapter_dir is None and part.state.global_step == 4
    assert (part.state.epoch, part.state.step_in_epoch) == (1, 1)
    assert not (tmp_path / "part" / "run" / "adapter").exists()
    checkpoint = tmp_path / "part" / "run" / "checkpoints" / "step_0000004"
    part.config.save(tmp_path / "part.yaml")

    resumed_config = config_from_args(
        [
            "--config",
            str(tmp_path / "part.yaml"),
            "--output_dir",
            str(tmp_path / "resumed"),
            "--resume_from",
            str(checkpoint),
        ]
    )
    resumed = HiggsAudioTrainer(resumed_config, train_records=train, val_records=val)
    resumed.train()

    assert [m["step"] for m in resumed.context.reported] == [5, 6, 7]  # continued, not restarted
    assert [h["step"] for h in resumed.state.history] == list(range(1, 8))
    keys = ("train/total_loss", "train/text_loss", "train/audio_loss", "train/learning_rate", "train/grad_norm")
    for expected, got in zip(full.state.history, resumed.state.history, strict=True):
        for key in keys:
            assert got[key] == pytest.approx(expected[key], rel=1e-6, abs=1e-9), (expected["step"], key)
        assert ("val_loss" in got) == ("val_loss" in expected)
        if "val_loss" in got:
            assert got["val_loss"] == pytest.approx(expected["val_loss"], rel=1e-6)
    # The adapters the two runs end with are the same as well.
    full_adapter = load_file(str(tmp_path / "full" / "run" / "adapter" / "adapter_model.safetensors"))
    resumed_adapter = load_file(str(tmp_path / "resumed" / "adapter" / "adapter_model.safetensors"))
    assert full_adapter.keys() == resumed_adapter.keys()
    assert relative_difference(full_adapter, resumed_adapter) < 1e-6


def test_save_checkpoint_then_load_checkpoint_on_a_fresh_trainer_restores_everything(tmp_path, records):
    settings = {"batch_size": 2, "learning_rate": 1e-3, "max_steps": 6, "warmup_steps": 1}
    source = trainer_for(tmp_path / "a", records[:6], **settings)
    source.train(stop_after_steps=2)
    source.save_checkpoint(tmp_path / "ckpt")

    fresh = trainer_for(tmp_path / "b", records[:6], **settings)
    fresh.load_checkpoint(tmp_path / "ckpt")  # no explicit setup(): the seed API sets the trainer up itself

    def adapters(trainer: HiggsAudioTrainer) -> dict[str, torch.Tensor]:
        return {n: p.detach() for n, p in trainer.model.named_parameters() if "lora_" in n}

    assert any(float(p.abs().sum()) > 0 for n, p in adapters(source).items() if "lora_B" in n)  # trained
    assert all(torch.equal(adapters(source)[n], p) for n, p in adapters(fresh).items())
    a, b = source.optimizer.state_dict(), fresh.optimizer.state_dict()
    assert a["param_groups"] == b["param_groups"]
    assert a["state"].keys() == b["state"].keys() and len(a["state"]) == len(adapters(source))
    for key, state in a["state"].items():
        assert set(state) == set(b["state"][key]) == {"step", "exp_avg", "exp_avg_sq"}
        assert all(torch.equal(state[k], b["state"][key][k]) for k in state)
    assert fresh.scheduler.state_dict() == source.scheduler.state_dict()
    assert (fresh.state.global_step, fresh.state.epoch, fresh.state.step_in_epoch) == (2, 0, 2)  # mid-epoch

    # Both continue identically (Adam moments and the LR schedule included).
    source.train()
    fresh.train()
    assert [h["train/total_loss"] for h in fresh.state.history] == [h["train/total_loss"] for h in source.state.history]


# --------------------------------------------------------------------------------------------------------------------
# Precision and activation checkpointing
# --------------------------------------------------------------------------------------------------------------------


def test_bf16_weights_run_forward_loss_and_backward_on_cpu(records):
    """The GPU recipe (bf16 base weights, fp32 adapters, no autocast) on CPU: finite loss close to the fp32 loss,
    finite fp32 adapter gradients."""
    path = resolve_paths("embedded", "embedded").model_path
    batch_records = records[:2]

    def loss_and_model(dtype: torch.dtype):
        torch.manual_seed(0)
        model = apply_lora(load_model(path, dtype=dtype), 8, 16, 0.0, [DEFAULT_LORA_TARGETS])
        randomise_lora_b(model)
        batch = collate_records(batch_records, build_collator(model.config))
        inputs = {k: v for k, v in vars(batch).items() if k != "reward"}
        outputs = model(**inputs)
        loss = compute_higgs_audio_loss(outputs, batch)
        return loss, model

    reference, _ = loss_and_model(torch.float32)
    loss, model = loss_and_model(torch.bfloat16)
    assert model.base_model.model.layers[0].self_attn.q_proj.base_layer.weight.dtype == torch.bfloat16
    assert torch.isfinite(loss.total) and loss.total.dtype == torch.float32
    assert float(loss.total.detach()) == pytest.approx(float(reference.total.detach()), abs=0.05)
    loss.total.backward()
    grads = [(n, p.grad) for n, p in model.named_parameters() if p.requires_grad]
    assert grads and all(g is not None and g.dtype == torch.float32 and torch.isfinite(g).all() for _, g in grads)
    assert all(float(g.abs().sum()) > 0 for n, g in grads if "lora_B" in n)
    assert all(p.grad is None for n, p in model.named_parameters() if "lora_" not in n)


def upstream_modules(model: torch.nn.Module) -> list[torch.nn.Module]:
    """The HiggsAudioModel, each of its decoder layers and its output projector: upstream code the step runs."""
    names = ("HiggsAudioModel", "HiggsAudioDualFFNDecoderLayer", "LlamaDecoderLayer", "HiggsAudioDecoderProjector")
    return [m for m in model.modules() if type(m).__name__ in names]


def test_trainer_step_on_bf16_weights_runs_every_upstream_module_without_autocast(tmp_path, records):
    """The dtype path the GPU takes (``precision=bf16``: bf16 base weights, fp32 adapters, no autocast), through the
    trainer's own step on CPU: every upstream module runs with autocast off for every device type, and the step
    gives finite losses and finite fp32 gradients on the adapters."""
    from higgs_train.training.precision import enabled_autocast_device_types

    trainer = trainer_for(tmp_path, records[:2], batch_size=2, precision="bf16")
    trainer.setup()
    randomise_lora_b(trainer.model)
    seen: list[tuple[str, list[str]]] = []
    modules = upstream_modules(trainer.model)
    handles = [
        m.register_forward_pre_hook(
            lambda mod, _args: seen.append((type(mod).__name__, enabled_autocast_device_types()))
        )
        for m in modules
    ]
    grads = capture_gradients(trainer)
    try:
        metrics = trainer._record_step(trainer._train_step([[0, 1]]))
    finally:
        for handle in handles:
            handle.remove()

    assert {name for name, _ in seen} >= {
        "HiggsAudioModel",
        "HiggsAudioDualFFNDecoderLayer",
        "HiggsAudioDecoderProjector",
    }
    assert all(enabled == [] for _, enabled in seen), [s for s in seen if s[1]]
    base = [p for n, p in trainer.model.named_parameters() if "lora_" not in n and p.is_floating_point()]
    assert base and all(p.dtype == torch.bfloat16 for p in base)
    for name in ("train/total_loss", "train/text_loss", "train/audio_loss"):
        assert math.isfinite(float(metrics[name])), name
    assert float(metrics["train/audio_loss"]) > 0 and float(metrics["train/text_loss"]) > 0
    (step_grads,) = grads
    assert step_grads and all(g.dtype == torch.float32 and torch.isfinite(g).all() for g in step_grads.values())
    assert all(float(g.abs().sum()) > 0 for n, g in step_grads.items() if "lora_B" in n)


def test_trainer_refuses_to_run_upstream_code_under_autocast(tmp_path, records):
    trainer = trainer_for(tmp_path, records[:2], batch_size=2, precision="bf16")
    trainer.setup()
    with (
        torch.autocast("cpu", dtype=torch.bfloat16),
        pytest.raises(RuntimeError, match="must not run under torch.autocast"),
    ):
        trainer._train_step([[0, 1]])


def test_precision_and_adapter_dtype_settings(tmp_path, records):
    auto = trainer_for(tmp_path / "auto", records[:2], batch_size=2)
    auto.setup()
    assert auto.weight_dtype == torch.float32  # CPU default
    bf16 = trainer_for(tmp_path / "bf16", records[:2], batch_size=2, precision="bf16", adapter_dtype="bf16")
    bf16.setup()
    adapters = [p for n, p in bf16.model.named_parameters() if p.requires_grad]
    assert adapters and all(p.dtype == torch.bfloat16 for p in adapters)
    metrics = bf16._record_step(bf16._train_step([[0, 1]]))
    assert math.isfinite(float(metrics["train/total_loss"]))
    with pytest.raises(ValueError, match="precision"):
        TrainingConfig(precision="fp16")


def test_activation_checkpointing_recomputes_layers_and_saves_activation_memory(tmp_path):
    bench = load_benchmark("activation_memory")
    model_dir = bench.build_model(tmp_path / "model", layers=8, hidden=256)
    result = bench.compare(model_dir, batch_size=2, frames=120)

    assert result.calls_without == [1] * 8  # the counter sees every layer once in an ordinary step...
    assert result.calls_with == [2] * 8  # ...and twice when backward recomputes it
    assert result.ratio < 0.3, f"saved activations only fell to {result.ratio:.2f} of the plain forward"
    assert result.loss_with == result.loss_without
    assert result.max_grad > 0 and result.max_grad_diff <= 1e-6 * result.max_grad


def test_checkpointing_some_layers_recomputes_those_and_keeps_memory_in_between(tmp_path):
    """``checkpoint_layers=4`` of 8: layers 0, 2, 5, 7 run twice, the others once; saved activations fall between
    full checkpointing and none; the loss and gradients stay those of the plain step."""
    from higgs_train.training.activation_checkpointing import spread_layers

    bench = load_benchmark("activation_memory")
    model_dir = bench.build_model(tmp_path / "model", layers=8, hidden=256)
    full = bench.compare(model_dir, batch_size=2, frames=120)
    half = bench.compare(model_dir, batch_size=2, frames=120, checkpoint_layers=4)

    assert spread_layers(8, 4) == [0, 2, 5, 7] and spread_layers(8, 1) == [0] and spread_layers(8, 0) == list(range(8))
    assert half.calls_with == [2, 1, 2, 1, 1, 2, 1, 2]
    assert full.bytes_with < half.bytes_with < half.bytes_without
    assert half.loss_with == half.loss_without
    assert half.max_grad_diff <= 1e-6 * half.max_grad
    with pytest.raises(ValueError, match="checkpoint_layers=9"):
        bench.lora_model(model_dir, checkpointing=True, checkpoint_layers=9)


def attention_calls_per_layer(trainer) -> list[int]:
    """How often each decoder layer's attention runs in one training step of ``trainer`` (2: recomputed)."""
    trainer.setup()
    layers = [m for m in trainer.model.modules() if type(m).__name__ == "HiggsAudioDualFFNDecoderLayer"]
    calls = [0] * len(layers)
    for i, layer in enumerate(layers):
        layer.self_attn.register_forward_hook(lambda *_, i=i: calls.__setitem__(i, calls[i] + 1))
    trainer._train_step([[0, 1]])
    return calls


def test_config_flag_makes_the_trainer_recompute_every_layer(tmp_path, records):
    calls = attention_calls_per_layer(trainer_for(tmp_path, records[:2], batch_size=2, use_gradient_checkpointing=True))
    assert calls == [2, 2]  # forward, then again in backward


def test_checkpoint_layers_alone_turns_checkpointing_on_for_that_many_layers(tmp_path, records):
    assert attention_calls_per_layer(trainer_for(tmp_path, records[:2], batch_size=2, checkpoint_layers=1)) == [2, 1]
    with pytest.raises(ValueError, match="checkpoint_layers"):
        TrainingConfig(checkpoint_layers=-1)


# --------------------------------------------------------------------------------------------------------------------
# Validation hooks (what the driver hands in: samples, voice metrics)
# --------------------------------------------------------------------------------------------------------------------


def test_validation_hooks_run_on_rank_0_at_every_validation_and_their_metrics_reach_history_and_checkpoints(
    tmp_path, records
):
    seen: list[tuple[int, int, bool, Path]] = []

    def probe(at: ValidationStep) -> dict[str, float]:
        seen.append((at.step, len(at.records), at.model.training, at.output_dir))
        return {"eval/probe": 10.0 * at.step}

    out = tmp_path / "run"
    config = TrainingConfig(
        output_dir=str(out), max_steps=2, batch_size=2, eval_every_steps=1, save_every_steps=2, lora_dropout=0.0
    )
    trainer = HiggsAudioTrainer(config, records[:4], records[4:6], validation_hooks=[probe])
    result = trainer.train()
    assert seen == [(1, 2, True, out), (2, 2, True, out)]  # after the loss, the model back in training mode
    assert [h["eval/probe"] for h in result.state.history] == [10.0, 20.0]
    assert json.loads((out / "checkpoints" / "step_0000002" / "metrics.json").read_text())["eval/probe"] == 20.0
    trainer.context.rank, trainer.context.world_size = 1, 2  # as the second of two workers
    trainer.context.all_reduce_sum = lambda tensor: tensor  # type: ignore[method-assign]  (no process group here)
    assert "eval/probe" not in trainer.validate() and len(seen) == 2  # other ranks only compute the loss
