"""Training-step speed of the project's ``HiggsAudioTrainer`` on the released 3B configuration, vs a bare loop.

What it runs: a ``HiggsAudioConfig`` equal to ``bosonai/higgs-audio-v2-generation-3B-base`` (28 Llama-3.2-3B layers
with an audio FFN in every layer, no Whisper tower, delay pattern, 8 codebooks of 1024 + 2 codes, vocabulary
128,256; 5,771,283,456 parameters, checked), with random weights built directly on the device (no hub, nothing on
disk), and synthetic rows in the project's record schema with the real voice-cloning layout (system prompt,
reference transcript, reference audio as a masked context segment, target text, trained target audio). For each
configuration (tokens per row, rows per step, activation checkpointing, LoRA rank) it times the project's step
(``HiggsAudioTrainer._train_step``: its LoRA, loss, AdamW, schedule, clipping) and a bare hand-written loop (peft +
the project's loss + AdamW) on the same rows, and prints one line per run and a JSON summary line at the end.

Figures per run: tokens/s (merged-sequence tokens, the unit the batcher budgets), step time, MFU, peak memory and
activation memory (CUDA: peak allocated minus allocated before the step; CPU: bytes autograd saved in one step),
and the losses (must be finite).

MFU = tokens/s * F / peak, F = 4 * N_active + 6 * L * S * d per token: the frozen linear layers cost 2 N_active
FLOPs forward and 2 N_active for the activation gradients (no weight gradients; LoRA's are negligible), N_active =
attention projections + one FFN per layer (a token takes the text or the audio FFN) = 2.82e9 for the 3B model;
causal attention costs 2 S d per layer forward (S: row length, d: hidden size) and twice that backward. The text
head is not counted (a trained model needs it only at labelled positions), nor is recomputation under activation
checkpointing. Peak: 989 TFLOP/s dense bf16 on H100/H200 (``--peak_tflops`` for other devices).

``--tiny``: the same code on CPU in seconds with a 2-layer, 64-wide model (real vocabulary and codebooks), as run
in CI. ``--profile``: per-step counts of host syncs (``aten::_local_scalar_dense``, behind ``.item()``/``float()``/
``int()``/``tolist()``, and ``aten::nonzero``, behind boolean indexing) and of operator launches, for the project
step and the bare loop, excluding the host-side data work (collation, label counting). AdamW's scalar reads of its
step counters are counted apart (``optimizer_scalars``: host tensors, no device sync). On CPU every scalar read is
counted, also those of the loss's bookkeeping on host tensors (which on a GPU wait for nothing), so the CPU count
is an upper bound of the GPU's; most of what remains is upstream's embedding merge.

    python benchmarks/gpu_step.py                      # GPU, the default configurations
    python benchmarks/gpu_step.py --tiny --profile     # CPU, seconds
    python benchmarks/gpu_step.py --configs 4096x1 4096x1:ckpt 4096x4:ckpt 8192x1 --adapter_dtype bf16

Imports nothing from Ray or MLflow: a bare GPU machine needs torch, transformers, peft, boson_multimodal, pyyaml
and pyarrow (the record schema) next to this repository; ``scripts/device_wheels.sh`` fetches the missing ones and
``benchmarks/gpu_step_device.sh`` installs them there and runs the GPU measurements as one script.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

if __package__ in (None, ""):  # run as a script from anywhere: import the repository's higgs_train
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

RELEASED_PARAMETERS = 5_771_283_456
PEAK_TFLOPS = {"H100": 989.0, "H200": 989.0, "A100": 312.0}
# Llama-3 special token ids as the released tokenizer has them.
BOS, START_HEADER, END_HEADER, EOT, NEWLINES = 128000, 128006, 128007, 128009, 271
AUDIO_OUT_BOS, AUDIO_EOS, AUDIO_IN, AUDIO_OUT = 128013, 128012, 128015, 128016
ROLE_IDS = {"system": [9125], "user": [882], "assistant": [78191]}

RELEASED_TEXT_CONFIG: dict[str, Any] = {
    "model_type": "llama",
    "vocab_size": 128256,
    "hidden_size": 3072,
    "intermediate_size": 8192,
    "num_hidden_layers": 28,
    "num_attention_heads": 24,
    "num_key_value_heads": 8,
    "head_dim": 128,
    "max_position_embeddings": 131072,
    "rope_theta": 500000.0,
    "rope_scaling": {
        "factor": 32.0,
        "high_freq_factor": 4.0,
        "low_freq_factor": 1.0,
        "original_max_position_embeddings": 8192,
        "rope_type": "llama3",
    },
    "rms_norm_eps": 1e-5,
    "tie_word_embeddings": False,
    "hidden_act": "silu",
    "bos_token_id": BOS,
    "eos_token_id": 128001,
    "pad_token_id": 128001,
}
TINY_TEXT_OVERRIDES: dict[str, Any] = {
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "head_dim": 16,
}


def released_config(tiny: bool = False, layers: int | None = None):
    """``HiggsAudioConfig`` of the released 3B checkpoint (``tiny``: same flags, 2 layers of width 64; ``layers``:
    another depth, every layer DualFFN as released)."""
    from boson_multimodal.model.higgs_audio import HiggsAudioConfig

    text = {**RELEASED_TEXT_CONFIG, **(TINY_TEXT_OVERRIDES if tiny else {})}
    if layers:
        text["num_hidden_layers"] = layers
    return HiggsAudioConfig(
        text_config=text,
        audio_adapter_type="dual_ffn_fast_forward",
        audio_dual_ffn_layers=list(range(text["num_hidden_layers"])),
        audio_ffn_hidden_size=text["hidden_size"],
        audio_ffn_intermediate_size=text["intermediate_size"],
        audio_decoder_proj_num_layers=0,
        skip_audio_tower=True,
        encode_whisper_embed=False,
        encode_audio_in_tokens=True,
        use_delay_pattern=True,
        audio_num_codebooks=8,
        audio_codebook_size=1024,
        audio_stream_bos_id=1024,
        audio_stream_eos_id=1025,
        audio_in_token_idx=AUDIO_IN,
        audio_out_token_idx=AUDIO_OUT,
        audio_out_bos_token_id=AUDIO_OUT_BOS,
        audio_eos_token_id=AUDIO_EOS,
        pad_token_id=128001,
    )


def parameter_count(config: Any) -> int:
    """Parameters of ``HiggsAudioModel(config)``, built on the meta device (no memory)."""
    from boson_multimodal.model.higgs_audio import HiggsAudioModel

    with torch.device("meta"):
        model = HiggsAudioModel(config)
    return sum(p.numel() for p in model.parameters())


def active_parameters_per_token(config: Any) -> int:
    """Linear-layer parameters one token passes through: attention projections + one FFN, every layer."""
    text = config.text_config
    d, heads, kv = text.hidden_size, text.num_attention_heads, text.num_key_value_heads
    head_dim = getattr(text, "head_dim", None) or d // heads
    attention = d * heads * head_dim * 2 + d * kv * head_dim * 2
    ffn = 3 * d * text.intermediate_size
    return text.num_hidden_layers * (attention + ffn)


def build_model(config: Any, device: torch.device, dtype: torch.dtype, seed: int = 0):
    """Random ``HiggsAudioModel`` created directly on ``device`` in ``dtype`` (nothing read or written on disk)."""
    from boson_multimodal.model.higgs_audio import HiggsAudioModel

    torch.manual_seed(seed)
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device(device):
            model = HiggsAudioModel(config)
    finally:
        torch.set_default_dtype(previous)
    return model


def synthetic_records(config: Any, rows: int, tokens_per_row: int, seed: int = 0) -> list[dict]:
    """Rows in the token-cache record schema (``higgs_train.data.preprocess``) with the voice-cloning layout.

    System prompt, user reference transcript, assistant reference audio (context: label -100, so its codes are
    masked), user target text, assistant target audio (trained: ``<|audio_out_bos|>``, the audio, ``<|audio_eos|>``
    and ``<|eot_id|>`` carry labels). The two clips share the audio budget 2 : 3 so that a row's merged length
    (``num_tokens``) is ``tokens_per_row``.
    """
    from higgs_train.data.sample_tokens import estimate_num_tokens

    gen = np.random.default_rng(seed)
    codebooks = config.audio_num_codebooks

    def words(n: int) -> list[int]:
        return gen.integers(1000, 100_000, size=n).tolist()

    def turn(role: str, body: list[int]) -> list[int]:
        return [START_HEADER, *ROLE_IDS[role], END_HEADER, NEWLINES, *body, EOT]

    records = []
    for i in range(rows):
        system = [BOS, *turn("system", words(30))]
        reference_text = turn("user", words(20))
        reference_audio = turn("assistant", [AUDIO_OUT_BOS, AUDIO_OUT, AUDIO_EOS])
        target_text = turn("user", words(20))
        target_audio = turn("assistant", [AUDIO_OUT_BOS, AUDIO_OUT, AUDIO_EOS])
        ids = system + reference_text + reference_audio + target_text + target_audio
        labels = [-100] * (len(ids) - 4) + target_audio[-4:]
        audio_budget = tokens_per_row - len(ids) + 2 - 2 * (codebooks + 1)
        if audio_budget < 4:
            raise ValueError(f"tokens_per_row={tokens_per_row} is too short for the cloning layout")
        frames = [audio_budget * 2 // 5, audio_budget - audio_budget * 2 // 5]
        codes = gen.integers(0, config.audio_codebook_size, size=(codebooks, sum(frames))).astype(np.int16)
        records.append(
            {
                "id": f"synthetic_{i}",
                "row_index": i,
                "speaker": "synthetic",
                "input_ids": np.asarray(ids, np.int32),
                "label_ids": np.asarray(labels, np.int32),
                "audio_codes": np.ascontiguousarray(codes).reshape(-1),
                "audio_codes_shape": np.asarray(codes.shape, np.int32),
                "audio_ids_start": np.asarray([0, frames[0]], np.int64),
                "audio_is_out": np.asarray([True, True], np.bool_),
                "audio_waveforms": np.zeros(0, np.float32),
                "audio_waveforms_start": np.zeros(0, np.int64),
                "audio_sample_rates": np.zeros(0, np.int32),
                "num_tokens": estimate_num_tokens(len(ids), frames, [True, True], codebooks),
                "audio_seconds": sum(frames) / 25.0,
            }
        )
    return records


@dataclass(frozen=True)
class RunConfig:
    """One benchmarked configuration: ``tokens`` per row, ``rows`` per step, checkpointing, LoRA rank."""

    tokens: int
    rows: int
    checkpointing: bool
    lora_r: int
    checkpoint_layers: int = 0  # with checkpointing: how many layers (0 = all)

    @classmethod
    def parse(cls, text: str, default_r: int) -> RunConfig:
        """``TOKENSxROWS[:ckpt[N]][:rR]``, e.g. ``4096x1``, ``4096x4:ckpt``, ``4096x1:ckpt14`` (14 layers
        checkpointed), ``4096x1:r64``."""
        head, *flags = text.split(":")
        tokens, _, rows = head.partition("x")
        rank = next((int(f[1:]) for f in flags if f.startswith("r")), default_r)
        ckpt = next((f for f in flags if f.startswith("ckpt")), None)
        return cls(int(tokens), int(rows or 1), ckpt is not None, rank, int(ckpt[4:] or 0) if ckpt else 0)

    @property
    def name(self) -> str:
        ckpt = f":ckpt{self.checkpoint_layers or ''}" if self.checkpointing else ""
        return f"{self.tokens}x{self.rows}{ckpt}:r{self.lora_r}"


@dataclass
class RunResult:
    config: str
    loop: str  # "project" or "bare"
    tokens_per_step: int
    step_seconds: float
    tokens_per_second: float
    mfu: float | None
    peak_memory_gib: float | None
    activation_memory_gib: float | None
    losses: list[float]
    finite: bool
    profile: dict[str, int] = field(default_factory=dict)


# --------------------------------------------------------------------------------------------------------------------
# Timing, memory and profiling helpers
# --------------------------------------------------------------------------------------------------------------------


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def step_flops_per_token(config: Any, tokens_per_row: int) -> float:
    text = config.text_config
    return 4.0 * active_parameters_per_token(config) + 6.0 * text.num_hidden_layers * tokens_per_row * text.hidden_size


def peak_flops(device: torch.device, override_tflops: float | None) -> float | None:
    if override_tflops:
        return override_tflops * 1e12
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((tf * 1e12 for key, tf in PEAK_TFLOPS.items() if key in name), None)


SYNC_OPS = ("aten::_local_scalar_dense", "aten::nonzero")


def profile_counts(run_one_step) -> dict[str, int]:
    """Per-step op counts of ``run_one_step()`` outside the host-data regions (see the module docstring)."""
    from torch.profiler import ProfilerActivity, profile

    from higgs_train.training.trainer import HOST_DATA_REGION

    activities = [ProfilerActivity.CPU]
    if torch.cuda.is_available():
        activities.append(ProfilerActivity.CUDA)
    with profile(activities=activities) as prof:
        run_one_step()
    events = list(prof.events())
    regions = [(e.time_range.start, e.time_range.end) for e in events if e.name == HOST_DATA_REGION]

    def in_host_data(event: Any) -> bool:
        return any(start <= event.time_range.start and event.time_range.end <= end for start, end in regions)

    optimizer_regions = [(e.time_range.start, e.time_range.end) for e in events if e.name.startswith("Optimizer.step")]

    def in_optimizer(event: Any) -> bool:
        return any(start <= event.time_range.start and event.time_range.end <= end for start, end in optimizer_regions)

    counts = {"host_syncs": 0, "local_scalar_dense": 0, "nonzero": 0, "optimizer_scalars": 0, "leaf_ops": 0}
    counts["cuda_kernels"] = 0
    for event in events:
        if getattr(event, "device_type", None) is not None and event.device_type.name == "CUDA":
            counts["cuda_kernels"] += 1
            continue
        if not event.name.startswith("aten::") or in_host_data(event):
            continue
        if not event.cpu_children:
            counts["leaf_ops"] += 1
        if event.name == "aten::_local_scalar_dense" and in_optimizer(event):
            counts["optimizer_scalars"] += 1  # AdamW's step counters: host tensors unless fused, never a device sync
        elif event.name == "aten::_local_scalar_dense":
            counts["local_scalar_dense"] += 1
        elif event.name == "aten::nonzero":
            counts["nonzero"] += 1
    counts["host_syncs"] = counts["local_scalar_dense"] + counts["nonzero"]
    return counts


# --------------------------------------------------------------------------------------------------------------------
# The two loops
# --------------------------------------------------------------------------------------------------------------------


def project_loop(model: Any, records: list[dict], run: RunConfig, args: argparse.Namespace, device: torch.device):
    """The project's trainer on ``model``: returns (step function, teardown, trainable parameters)."""
    from higgs_train.config import TrainingConfig
    from higgs_train.training.context import LocalContext
    from higgs_train.training.trainer import HiggsAudioTrainer

    config = TrainingConfig(
        output_dir=str(Path(args.output_dir) / "project"),
        lora_r=run.lora_r,
        lora_alpha=2 * run.lora_r,
        lora_dropout=args.lora_dropout,
        batch_size=run.rows,
        use_gradient_checkpointing=run.checkpointing,
        checkpoint_layers=run.checkpoint_layers,
        precision=args.precision,
        adapter_dtype=args.adapter_dtype,
        compile_layers=args.compile,
        warmup_steps=1,
        max_steps=10_000,
        log_every_steps=args.log_every,
    )
    context = LocalContext(checkpoint_root=Path(config.output_dir) / "checkpoints", device=device)
    trainer = HiggsAudioTrainer(config, context=context, train_records=records, val_records=[], model=model)
    trainer.setup()
    rows = list(range(run.rows))
    losses: list[float] = []

    def step() -> None:
        totals = trainer._train_step([rows])
        trainer._record_step(totals)  # the loop's bookkeeping: figures read back at reported steps only
        trainer.state.global_step += 1
        losses.append(totals.losses[2])  # the step's total loss, still on the device

    def teardown() -> None:
        from higgs_train.training.activation_checkpointing import disable_activation_checkpointing
        from higgs_train.training.dual_ffn_routing import disable_sync_free_routing

        disable_activation_checkpointing(trainer.model)
        disable_sync_free_routing(trainer.model)  # the bare loop runs upstream's own layer forward
        trainer.model.unload()

    return step, teardown, losses


def bare_loop(model: Any, records: list[dict], run: RunConfig, args: argparse.Namespace, device: torch.device):
    """A hand-written loop: peft LoRA on the same targets, upstream forward, the project's loss, AdamW."""
    from peft import LoraConfig, get_peft_model

    from higgs_train.config import DEFAULT_LORA_TARGETS
    from higgs_train.data.collate import batch_to_model_inputs, build_collator, collate_records
    from higgs_train.loss import compute_higgs_audio_loss, count_label_tokens
    from higgs_train.training.activation_checkpointing import enable_activation_checkpointing
    from higgs_train.training.precision import cast_adapters, weight_dtype
    from higgs_train.training.trainer import HOST_DATA_REGION

    model = model.to(dtype=weight_dtype(args.precision, device))
    lora = LoraConfig(
        r=run.lora_r, lora_alpha=2 * run.lora_r, lora_dropout=args.lora_dropout, target_modules=DEFAULT_LORA_TARGETS
    )
    peft_model = get_peft_model(model, lora)
    cast_adapters(peft_model, args.adapter_dtype)
    if run.checkpointing:
        enable_activation_checkpointing(peft_model, run.checkpoint_layers)
    peft_model.train()
    optimizer = torch.optim.AdamW([p for p in peft_model.parameters() if p.requires_grad], lr=1e-4)
    collator = build_collator(model.config)
    out_id = model.config.audio_out_token_idx
    losses: list[float] = []

    def step() -> None:
        with torch.profiler.record_function(HOST_DATA_REGION):
            batch = collate_records(records[: run.rows], collator)
            counts = count_label_tokens(batch, audio_out_token_id=out_id)
        inputs = {
            k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in batch_to_model_inputs(batch).items()
        }
        outputs = peft_model(**inputs)
        loss = compute_higgs_audio_loss(outputs, batch, num_label_tokens=counts)
        loss.total.backward()
        torch.nn.utils.clip_grad_norm_([p for p in peft_model.parameters() if p.requires_grad], 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(loss.total.detach())

    def teardown() -> None:
        from higgs_train.training.activation_checkpointing import disable_activation_checkpointing

        disable_activation_checkpointing(peft_model)
        peft_model.unload()

    return step, teardown, losses


def measure(loop_name: str, model: Any, config: Any, run: RunConfig, args: argparse.Namespace, device: torch.device):
    from higgs_train.training.activation_checkpointing import saved_activation_bytes

    records = synthetic_records(config, run.rows, run.tokens, seed=args.seed)
    tokens_per_step = sum(int(r["num_tokens"]) for r in records)
    make = project_loop if loop_name == "project" else bare_loop
    step, teardown, losses = make(model, records, run, args, device)
    try:
        for _ in range(args.warmup):
            step()
        _sync(device)
        profile = profile_counts(step) if args.profile else {}
        activation = None
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
            before = torch.cuda.memory_allocated(device)
        else:
            params = [p for p in model.parameters()]
            with saved_activation_bytes(exclude=params) as saved:
                step()
            activation = saved[0] / 2**30
        _sync(device)
        start = time.perf_counter()
        for _ in range(args.steps):
            step()
        _sync(device)
        seconds = (time.perf_counter() - start) / args.steps
        peak = None
        if device.type == "cuda":
            peak_bytes = torch.cuda.max_memory_allocated(device)
            peak, activation = peak_bytes / 2**30, (peak_bytes - before) / 2**30
        values = [float(v) for v in losses]
    finally:
        teardown()
    tokens_per_second = tokens_per_step / seconds
    flops = peak_flops(device, args.peak_tflops)
    mfu = tokens_per_second * step_flops_per_token(config, run.tokens) / flops if flops else None
    return RunResult(
        config=run.name,
        loop=loop_name,
        tokens_per_step=tokens_per_step,
        step_seconds=seconds,
        tokens_per_second=tokens_per_second,
        mfu=mfu,
        peak_memory_gib=peak,
        activation_memory_gib=activation,
        losses=values,
        finite=bool(values) and all(math.isfinite(v) for v in values),
        profile=profile,
    )


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tiny", action="store_true", help="2-layer width-64 model on CPU, short rows (CI)")
    parser.add_argument("--configs", nargs="+", default=None, help="TOKENSxROWS[:ckpt][:rR] ...")
    parser.add_argument("--steps", type=int, default=None, help="timed steps per run")
    parser.add_argument("--warmup", type=int, default=None, help="untimed steps per run")
    parser.add_argument(
        "--layers", type=int, default=None, help="decoder layers of the benchmarked model (default: 2 tiny, 28 full)"
    )
    parser.add_argument("--lora_r", type=int, default=16)
    parser.add_argument("--lora_dropout", type=float, default=0.05)
    parser.add_argument("--precision", default="auto", choices=("auto", "bf16", "fp32"))
    parser.add_argument("--adapter_dtype", default="fp32", choices=("fp32", "bf16"))
    parser.add_argument("--compile", action="store_true", help="torch.compile every decoder layer")
    parser.add_argument("--loops", nargs="+", default=["project", "bare"], choices=("project", "bare"))
    parser.add_argument("--profile", action="store_true", help="count host syncs and op launches per step")
    parser.add_argument("--log_every", type=int, default=1, help="the project step's log_every_steps")
    parser.add_argument("--peak_tflops", type=float, default=None)
    parser.add_argument("--device", default=None, help="default: cuda when available, else cpu")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--output_dir", default="outputs/gpu_step")
    args = parser.parse_args(argv)
    if args.configs is None:
        args.configs = ["192x2", "192x2:ckpt"] if args.tiny else ["4096x1", "4096x1:ckpt", "4096x4:ckpt", "8192x1"]
    args.steps = args.steps or (2 if args.tiny else 5)
    args.warmup = args.warmup if args.warmup is not None else (1 if args.tiny else 2)
    return args


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    device = torch.device(args.device or ("cpu" if args.tiny or not torch.cuda.is_available() else "cuda"))
    if args.tiny:
        torch.set_num_threads(1)  # a shared 2-CPU runner: two spinning intra-op threads only slow each other
    from higgs_train.training.precision import weight_dtype

    full = released_config(tiny=False)
    full_count = parameter_count(full)
    if full_count != RELEASED_PARAMETERS:
        raise SystemExit(f"released configuration has {full_count:,} parameters, expected {RELEASED_PARAMETERS:,}")
    config = released_config(tiny=args.tiny, layers=args.layers)
    dtype = weight_dtype(args.precision, device)
    model = build_model(config, device, dtype, seed=args.seed)
    count = sum(p.numel() for p in model.parameters())
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    print(
        f"released config: {full_count:,} parameters (expected {RELEASED_PARAMETERS:,}); benchmarked model: "
        f"{count:,} parameters, {dtype}, on {name}; adapters {args.adapter_dtype}, dropout {args.lora_dropout}, "
        f"compile {args.compile}"
    )
    results = []
    for text in args.configs:
        run = RunConfig.parse(text, args.lora_r)
        for loop in args.loops:
            result = measure(loop, model, config, run, args, device)
            results.append(result)
            mfu = f"{100 * result.mfu:5.1f}%" if result.mfu is not None else "  n/a"
            peak = f"{result.peak_memory_gib:6.1f}" if result.peak_memory_gib is not None else "   n/a"
            act = f"{result.activation_memory_gib:7.3f}" if result.activation_memory_gib is not None else "    n/a"
            print(
                f"{run.name:>18} {loop:>7}: {result.tokens_per_second:10.0f} tokens/s  {result.step_seconds:8.3f} s/step"
                f"  MFU {mfu}  peak {peak} GiB  activations {act} GiB  losses "
                f"{', '.join(f'{v:.4f}' for v in result.losses[-3:])}  {result.profile or ''}"
            )
    ratios = {}
    for run_name in dict.fromkeys(r.config for r in results):
        pair = {r.loop: r for r in results if r.config == run_name}
        if "project" in pair and "bare" in pair:
            ratios[run_name] = pair["project"].step_seconds / pair["bare"].step_seconds
    summary = {
        "device": name,
        "tiny": args.tiny,
        "released_parameters": full_count,
        "model_parameters": count,
        "weight_dtype": str(dtype).removeprefix("torch."),
        "adapter_dtype": args.adapter_dtype,
        "lora_dropout": args.lora_dropout,
        "compile": args.compile,
        "mfu_formula": "tokens/s * (4*N_active + 6*L*S*d) / peak_flops",
        "project_over_bare_step_time": ratios,
        "all_finite": all(r.finite for r in results),
        "runs": [asdict(r) for r in results],
    }
    print(json.dumps(summary))
    return summary


if __name__ == "__main__":
    main()
