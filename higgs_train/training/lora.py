"""LoRA adapters on the DualFFN decoder (attention q/k/v/o, text MLP, audio MLP) via peft.

No PEFT task type is used: ``TaskType.CAUSAL_LM`` wraps the model in ``PeftModelForCausalLM``, whose forward injects
``labels=`` and other causal-LM arguments that ``HiggsAudioModel.forward`` does not take. The bare ``PeftModel``
forwards our keyword arguments untouched.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass

import torch

logger = logging.getLogger(__name__)

_REGEX_CHARS = re.compile(r"[\^\$\\\[\]\(\)\|\*\+\?]")


@dataclass(frozen=True)
class ParameterCounts:
    trainable: int
    total: int

    @property
    def fraction(self) -> float:
        return self.trainable / max(1, self.total)


def lora_targets(target_modules: list[str]) -> str | list[str]:
    """peft semantics: a single regex string is full-matched; a list matches module-name suffixes."""
    if len(target_modules) == 1 and _REGEX_CHARS.search(target_modules[0]):
        return target_modules[0]
    return list(target_modules)


def apply_lora(model: torch.nn.Module, r: int, alpha: int, dropout: float, target_modules: list[str]):
    """Freeze the base model and add LoRA adapters; fail if no module matched."""
    from peft import LoraConfig, get_peft_model

    config = LoraConfig(
        r=r, lora_alpha=alpha, lora_dropout=dropout, target_modules=lora_targets(target_modules), bias="none"
    )
    peft_model = get_peft_model(model, config)
    assert_only_adapters_trainable(peft_model)
    return peft_model


def adapted_module_names(model: torch.nn.Module) -> list[str]:
    """Names of modules that carry a LoRA adapter (for logging and tests)."""
    return sorted({name.rsplit(".lora_A", 1)[0] for name, _ in model.named_parameters() if ".lora_A." in name})


def assert_only_adapters_trainable(model: torch.nn.Module) -> ParameterCounts:
    """Raise if any non-LoRA parameter would train (or none would); return the counts."""
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    stray = [n for n in trainable if "lora_" not in n]
    if stray:
        raise RuntimeError(f"non-adapter parameters are trainable: {stray[:5]}{'...' if len(stray) > 5 else ''}")
    if not trainable:
        raise RuntimeError("no LoRA adapter was attached: lora_target_modules matched no module")
    return count_parameters(model)


def count_parameters(model: torch.nn.Module) -> ParameterCounts:
    total = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return ParameterCounts(trainable=trainable, total=total)
