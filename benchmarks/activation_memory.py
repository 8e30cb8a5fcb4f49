"""Activation memory of one training forward with and without activation checkpointing of the decoder layers.

Why: checkpointing costs one extra forward of every decoder layer per step, and is only worth it if it really frees
the activations autograd keeps for backward (upstream's own ``gradient_checkpointing`` flag frees nothing: its
decoder loop never calls a checkpoint function). This builds a deeper/wider tiny Higgs model, runs the same batch
through two identically initialised LoRA models (one checkpointed), and prints the bytes autograd saved during the
forward + loss (``saved_activation_bytes``, parameters excluded, each storage once), how often each decoder layer's
attention ran per step (2 = recomputed in backward), and the largest gradient difference between the two.

    python benchmarks/activation_memory.py [--layers 8] [--hidden 256] [--batch 2] [--frames 120]
"""

from __future__ import annotations

import argparse
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch


@dataclass(frozen=True)
class ActivationMemoryResult:
    """Figures of one comparison; ``calls_*`` are per-layer attention calls in one forward + backward."""

    bytes_without: int
    bytes_with: int
    calls_without: list[int]
    calls_with: list[int]
    max_grad_diff: float
    max_grad: float
    loss_without: float
    loss_with: float

    @property
    def ratio(self) -> float:
        return self.bytes_with / self.bytes_without


def build_model(out_dir: Path, layers: int, hidden: int) -> Path:
    """A tiny Higgs checkpoint with ``layers`` decoder layers of width ``hidden`` (released flags otherwise)."""
    from higgs_train.embedded import ensure_tiny_stack
    from higgs_train.embedded.model import build_model_dir

    overrides = {
        "num_hidden_layers": layers,
        "hidden_size": hidden,
        "intermediate_size": 2 * hidden,
        "num_attention_heads": max(1, hidden // 32),
        "num_key_value_heads": max(1, hidden // 64),
    }
    return build_model_dir(out_dir, ensure_tiny_stack().tokenizer_dir, text_overrides=overrides)


def synthetic_batch(model_config: Any, batch: int, frames: int, seed: int = 0):
    """A collated cloning-layout batch: text, a context (reference) audio segment, text, a trained target segment.

    Random token ids and codes are enough here: activation memory and gradients do not depend on their values,
    only on the layout the collator builds from them.
    """
    from boson_multimodal.dataset.chatml_dataset import ChatMLDatasetSample

    from higgs_train.data.collate import build_collator

    gen = torch.Generator().manual_seed(seed)
    out_id = model_config.audio_out_token_idx

    def text(k: int) -> list[int]:
        return torch.randint(100, 1000, (k,), generator=gen).tolist()  # ordinary (non-special) token ids

    samples = []
    for i in range(batch):
        n = frames - 7 * i  # unequal lengths, so padding is part of the picture
        prefix, middle, end = text(20), text(12), text(2)
        ids = prefix + [out_id] + middle + [out_id] + end
        labels = [-100] * (len(prefix) + 1 + len(middle)) + [out_id] + end
        codes = torch.randint(0, 1024, (model_config.audio_num_codebooks, 2 * n), generator=gen)
        samples.append(
            ChatMLDatasetSample(
                input_ids=torch.tensor(ids),
                label_ids=torch.tensor(labels),
                audio_ids_concat=codes,
                audio_ids_start=torch.tensor([0, n]),
                audio_waveforms_concat=torch.tensor([]),
                audio_waveforms_start=torch.tensor([], dtype=torch.long),
                audio_sample_rate=torch.tensor([]),
                audio_speaker_indices=torch.tensor([-1, -1]),
            )
        )
    return build_collator(model_config)(samples)


def lora_model(model_dir: Path, checkpointing: bool, seed: int = 0, checkpoint_layers: int = 0):
    """Fresh LoRA model (dropout 0, lora_B randomised so every adapter matrix gets a gradient), its layers routed as
    the trainer's are; with ``checkpointing``, ``checkpoint_layers`` of them checkpointed (0: all)."""
    from higgs_train.adapter import apply_lora
    from higgs_train.config import DEFAULT_LORA_TARGETS
    from higgs_train.model_loading import load_model
    from higgs_train.training.activation_checkpointing import enable_activation_checkpointing
    from higgs_train.training.dual_ffn_routing import enable_sync_free_routing

    torch.manual_seed(seed)
    model = apply_lora(load_model(str(model_dir)), 8, 16, 0.0, [DEFAULT_LORA_TARGETS])
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in sorted(model.named_parameters()):
            if "lora_B" in name:
                param.copy_(torch.randn(param.shape, generator=gen) * 0.02)
    enable_sync_free_routing(model)
    if checkpointing:
        enable_activation_checkpointing(model, checkpoint_layers)
    model.train()
    return model


def run_step(model: Any, batch: Any) -> tuple[int, list[int], dict[str, torch.Tensor], float]:
    """One forward + loss + backward; returns (saved bytes, attention calls per layer, adapter grads, loss)."""
    from higgs_train.data.collate import batch_to_model_inputs
    from higgs_train.loss import compute_higgs_audio_loss
    from higgs_train.training.activation_checkpointing import _decoder_layers, saved_activation_bytes

    layers = _decoder_layers(model)
    calls = [0] * len(layers)
    handles = [
        layer.self_attn.register_forward_hook(lambda *_, i=i: calls.__setitem__(i, calls[i] + 1))
        for i, layer in enumerate(layers)
    ]
    try:
        with saved_activation_bytes(exclude=model.parameters()) as saved:
            outputs = model(**batch_to_model_inputs(batch))
            loss = compute_higgs_audio_loss(outputs, batch)
        loss.total.backward()
    finally:
        for handle in handles:
            handle.remove()
    grads = {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    return saved[0], calls, grads, float(loss.total.detach())


def compare(
    model_dir: Path, batch_size: int = 2, frames: int = 120, checkpoint_layers: int = 0
) -> ActivationMemoryResult:
    """Run the same batch through an ordinary and a checkpointed copy (``checkpoint_layers`` of its layers, 0: all)
    of the same LoRA model."""
    plain = lora_model(model_dir, checkpointing=False)
    ckpt = lora_model(model_dir, checkpointing=True, checkpoint_layers=checkpoint_layers)
    batch = synthetic_batch(plain.config, batch_size, frames)
    bytes_without, calls_without, grads_without, loss_without = run_step(plain, batch)
    bytes_with, calls_with, grads_with, loss_with = run_step(ckpt, batch)
    max_diff = max(float((grads_without[n] - grads_with[n]).abs().max()) for n in grads_without)
    max_grad = max(float(g.abs().max()) for g in grads_without.values())
    return ActivationMemoryResult(
        bytes_without, bytes_with, calls_without, calls_with, max_diff, max_grad, loss_without, loss_with
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layers", type=int, default=8)
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--frames", type=int, default=120, help="audio frames per segment (two segments a sample)")
    parser.add_argument("--checkpoint_layers", type=int, default=0, help="layers to checkpoint (0: all)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="higgs-actmem-") as tmp:
        model_dir = build_model(Path(tmp) / "model", args.layers, args.hidden)
        result = compare(model_dir, args.batch, args.frames, args.checkpoint_layers)
    mib = 1024**2
    print(
        f"model: {args.layers} layers, hidden {args.hidden}; batch {args.batch} x 2 segments of ~{args.frames} frames"
    )
    print(f"saved activations without checkpointing: {result.bytes_without / mib:8.2f} MiB")
    which = f"{args.checkpoint_layers} of {args.layers} layers" if args.checkpoint_layers else "every layer"
    print(f"saved activations with checkpointing ({which}): {result.bytes_with / mib:8.2f} MiB")
    print(f"ratio with / without:                    {result.ratio:8.3f}")
    print(f"attention calls per layer per step:      without {result.calls_without}, with {result.calls_with}")
    print(f"loss without / with: {result.loss_without:.6f} / {result.loss_with:.6f}")
    print(f"max |grad difference|: {result.max_grad_diff:.3g} (max |grad| {result.max_grad:.3g})")


if __name__ == "__main__":
    main()
