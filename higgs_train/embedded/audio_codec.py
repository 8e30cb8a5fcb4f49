"""Build a Higgs audio tokenizer directory (``config.json`` + ``model.pth``) and its semantic teacher offline.

Upstream's ``HiggsAudioTokenizer`` constructor calls ``AutoModel.from_pretrained("bosonai/hubert_base")``. No hub is
reachable here, so the teacher is written as a genuine Hugging Face cache entry for that repo id; the tokenizer is
then loaded by upstream's own ``load_higgs_audio_tokenizer`` with no patching.

Two sizes exist:

* ``tiny`` (the embedded default): the real 24 kHz / 25 frames/s / 8-codebook layout, but a narrow acoustic path
  (``ratios=[8, 8, 15]``, ``D=32``) and a one-layer HuBERT teacher (hidden size 768, which upstream hard-codes).
* ``real``: the released tokenizer's shapes with random weights, for performance work (CPU cost and memory of
  preprocessing are dominated by its size, not by its weights).

The residual codebooks are not left to upstream's lazy k-means (which would initialise them from the *first batch
encoded*, so two processes would disagree). They are filled deterministically with k-means centres of residuals of
seeded speech-like calibration audio and marked ``inited``; codes therefore depend on the audio, and identical
audio gives identical codes in every process.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch

from higgs_train.embedded.marker import GENERATED_MARKER
from higgs_train.embedded.voices import SENTENCES, Speaker, synthesize

TEACHER_REPO_ID = "bosonai/hubert_base"
TEACHER_MARKER = "higgs_train_generated_teacher.json"

TINY_CODEC_CONFIG: dict[str, Any] = {
    "n_filters": 32,
    "D": 32,
    "target_bandwidths": [0.5, 1, 1.5, 2],
    "ratios": [8, 8, 15],
    "sample_rate": 24000,
    "bins": 1024,
    "n_q": 8,
    "codebook_dim": 16,
    "semantic_techer": "hubert_base_general",
    "last_layer_semantic": True,
    "merge_mode": "concat",
    "downsample_mode": "step_down",
    "semantic_mode": "classic",
    "vq_scale": 1,
    "semantic_sample_rate": 16000,
}

REAL_CODEC_CONFIG: dict[str, Any] = {
    **TINY_CODEC_CONFIG,
    "D": 256,
    "ratios": [8, 5, 4, 2, 3],
    "codebook_dim": 64,
}

TINY_TEACHER_CONFIG: dict[str, Any] = {
    "model_type": "hubert",
    "architectures": ["HubertModel"],
    "hidden_size": 768,  # upstream hard-codes semantic_dim = 768
    "num_hidden_layers": 1,
    "num_attention_heads": 12,
    "intermediate_size": 256,
    "conv_dim": [32, 32, 32, 32, 32, 32, 32],
    "conv_stride": [5, 2, 2, 2, 2, 2, 2],  # 320x downsampling at 16 kHz = 50 Hz, as HuBERT base
    "conv_kernel": [10, 3, 3, 3, 3, 2, 2],
    "num_conv_pos_embeddings": 16,
    "num_conv_pos_embedding_groups": 16,
    "feat_extract_norm": "group",
    "do_stable_layer_norm": False,
    "hidden_act": "gelu",
    "apply_spec_augment": False,
    "vocab_size": 32,
}

REAL_TEACHER_CONFIG: dict[str, Any] = {
    **TINY_TEACHER_CONFIG,
    "num_hidden_layers": 12,
    "intermediate_size": 3072,
    "conv_dim": [512, 512, 512, 512, 512, 512, 512],
    "num_conv_pos_embeddings": 128,
}


def hf_hub_cache_dir() -> Path:
    """The Hugging Face hub cache that ``from_pretrained`` reads (honours HF_HOME / HF_HUB_CACHE)."""
    from huggingface_hub import constants

    return Path(constants.HF_HUB_CACHE)


def _snapshot_dir(cache_dir: Path, repo_id: str) -> Path:
    return cache_dir / ("models--" + repo_id.replace("/", "--")) / "snapshots"


def installed_teacher_marker(cache_dir: Path | None = None) -> dict[str, Any] | None:
    """Return the marker of a teacher this project generated, or None if the cached teacher is not ours."""
    cache_dir = cache_dir or hf_hub_cache_dir()
    ref = cache_dir / ("models--" + TEACHER_REPO_ID.replace("/", "--")) / "refs" / "main"
    if not ref.exists():
        return None
    marker = _snapshot_dir(cache_dir, TEACHER_REPO_ID) / ref.read_text().strip() / TEACHER_MARKER
    return json.loads(marker.read_text()) if marker.exists() else None


def install_semantic_teacher(size: str = "tiny", seed: int = 0, cache_dir: Path | None = None) -> Path:
    """Write a seeded HuBERT teacher as the HF cache entry for ``bosonai/hubert_base``.

    A real (downloaded) teacher is never overwritten. A generated teacher of another size is replaced, and the
    marker records the size so that ``load_audio_tokenizer`` can refuse a mismatched pairing.
    """
    from transformers import HubertConfig, HubertModel

    cache_dir = cache_dir or hf_hub_cache_dir()
    repo_dir = cache_dir / ("models--" + TEACHER_REPO_ID.replace("/", "--"))
    marker = installed_teacher_marker(cache_dir)
    if repo_dir.exists() and marker is None:
        return repo_dir  # a real teacher from the hub: leave it alone
    if marker is not None and marker.get("size") == size and marker.get("seed") == seed:
        return repo_dir

    config_dict = TINY_TEACHER_CONFIG if size == "tiny" else REAL_TEACHER_CONFIG
    revision = hashlib.sha1(
        json.dumps({"size": size, "seed": seed, **config_dict}, sort_keys=True).encode()
    ).hexdigest()
    snapshot = _snapshot_dir(cache_dir, TEACHER_REPO_ID) / revision
    snapshot.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    config = HubertConfig(**{k: v for k, v in config_dict.items() if k != "model_type"})
    model = HubertModel(config).eval()
    model.save_pretrained(snapshot, safe_serialization=True)
    (snapshot / TEACHER_MARKER).write_text(json.dumps({"size": size, "seed": seed}, sort_keys=True))
    (repo_dir / "refs").mkdir(parents=True, exist_ok=True)
    (repo_dir / "refs" / "main").write_text(revision)
    return repo_dir


LIVE_CODES_PER_CODEBOOK = 64
"""Codebook entries a tiny codec actually uses (of 1024). Why not all: residual codes of a random encoder spread
evenly over 1024 entries are close to noise (consecutive frames agreed <1% of the time, per-codebook entropy 6.0 of
ln 1024 = 6.9 nats), so nothing a tiny model learns in a couple of minutes shows in its loss. 64 k-means centres of
speech-like residuals give codes that follow the voice and the vowel, as a trained codec's do."""


def calibration_audio(sample_rate: int, seconds: float, seed: int) -> np.ndarray:
    """Seeded speech-like audio: utterances of random source-filter voices (not the sample data's speakers)."""
    rng = np.random.default_rng(seed)
    pieces: list[np.ndarray] = []
    total = 0
    while total < seconds * sample_rate:
        voice = Speaker(
            name=f"calibration_{len(pieces)}",
            f0=float(rng.uniform(80, 320)),
            tract_scale=float(rng.uniform(0.85, 1.3)),
            breathiness=float(rng.uniform(0.0, 0.1)),
            syllables_per_second=float(rng.uniform(3.5, 5.5)),
        )
        text = SENTENCES[int(rng.integers(len(SENTENCES)))]
        pieces.append(synthesize(voice, text, seed=seed, sample_rate=sample_rate))
        total += len(pieces[-1])
    return np.concatenate(pieces)[: int(seconds * sample_rate)]


def _kmeans(points: torch.Tensor, clusters: int, generator: torch.Generator, iterations: int = 25) -> torch.Tensor:
    """Lloyd's k-means with a k-means++ start (seeded); an emptied cluster keeps its previous centre."""
    first = int(torch.randint(0, points.shape[0], (1,), generator=generator))
    centres = [points[first]]
    distance = ((points - centres[0]) ** 2).sum(-1)
    for _ in range(clusters - 1):
        pick = int(torch.multinomial(distance / distance.sum(), 1, generator=generator))
        centres.append(points[pick])
        distance = torch.minimum(distance, ((points - points[pick]) ** 2).sum(-1))
    centre = torch.stack(centres)
    for _ in range(iterations):
        assign = torch.cdist(points, centre).argmin(-1)
        for c in range(clusters):
            members = points[assign == c]
            if len(members):
                centre[c] = members.mean(0)
    return centre


@torch.no_grad()
def _initialise_codebooks(tokenizer: Any, seed: int, seconds: float = 60.0) -> None:
    """Fill each residual codebook (greedy RVQ order) with k-means centres of calibration residuals.

    Only ``LIVE_CODES_PER_CODEBOOK`` entries are reachable: the others are parked far outside the data, so the
    encoder never picks them (the decoder still accepts them, e.g. from an untrained model).
    """
    generator = torch.Generator().manual_seed(seed)
    wav = calibration_audio(tokenizer.sample_rate, seconds, seed)
    x = torch.from_numpy(wav)[None, None, :]
    semantic = tokenizer.encoder_semantic(tokenizer.get_regress_target(x).transpose(1, 2))
    acoustic = tokenizer.encoder(x)
    frames = min(acoustic.shape[2], semantic.shape[2])
    e = torch.cat([acoustic[:, :, :frames], semantic[:, :, :frames]], dim=1)
    e = tokenizer.fc_prior(e.transpose(1, 2))  # (1, T, quantizer_dim)
    residual = e[0]
    for layer in tokenizer.quantizer.vq.layers:
        projected = layer.project_in(residual)  # (T, codebook_dim)
        codebook = layer._codebook
        size, dim = codebook.embed.shape
        live = _kmeans(projected, LIVE_CODES_PER_CODEBOOK, generator)
        direction = torch.randn(size - len(live), dim, generator=generator)
        parked = 1e3 * projected.abs().max() * direction / direction.norm(dim=-1, keepdim=True)
        embed = torch.cat([live, parked])
        codebook.embed.copy_(embed)
        codebook.embed_avg.copy_(embed)
        codebook.cluster_size.fill_(1.0)
        codebook.inited.fill_(1.0)
        quantized = layer.project_out(codebook.dequantize(codebook.quantize(projected)))
        residual = residual - quantized


def build_audio_tokenizer_dir(out_dir: Path, size: str = "tiny", seed: int = 0) -> Path:
    """Write ``config.json`` + ``model.pth`` for a seeded audio tokenizer of ``size`` ('tiny' or 'real')."""
    from boson_multimodal.audio_processing.higgs_audio_tokenizer import HiggsAudioTokenizer

    if size not in ("tiny", "real"):
        raise ValueError(f"audio tokenizer size must be 'tiny' or 'real', got {size!r}")
    install_semantic_teacher(size=size, seed=seed)
    config = TINY_CODEC_CONFIG if size == "tiny" else REAL_CODEC_CONFIG
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    torch.manual_seed(seed)
    tokenizer = HiggsAudioTokenizer(**config, device="cpu").eval()
    # The codebooks are calibrated on encoder outputs, whose float sums depend on torch's thread count: pinned to one
    # thread, every machine (and a 1-thread Ray actor beside a many-core driver) builds the same bytes.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        _initialise_codebooks(tokenizer, seed)
    finally:
        torch.set_num_threads(threads)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    # The teacher is loaded from its own cache entry by the constructor; keep it out of model.pth as upstream does.
    state = {k: v.contiguous() for k, v in tokenizer.state_dict().items() if not k.startswith("semantic_model.")}
    torch.save(state, out_dir / "model.pth")
    (out_dir / GENERATED_MARKER).write_text(
        json.dumps(
            {"size": size, "seed": seed, "frame_rate": math.ceil(config["sample_rate"] / np.prod(config["ratios"]))}
        )
        + "\n"
    )
    return out_dir
