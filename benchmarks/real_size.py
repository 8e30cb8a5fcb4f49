"""A full-size pass on CPU: the released model configuration, on disk as released, through the product's commands.

Why: everything else is proven on the 7M-parameter embedded stack; users run the released 3B model. This builds
``bosonai/higgs-audio-v2-generation-3B-base``'s configuration (5,771,283,456 parameters, checked: 28 Llama-3.2-3B
layers with the audio FFN in every one, no Whisper tower, delay pattern; ``benchmarks/gpu_step.released_config``)
with random bf16 weights in the released on-disk layout, then runs the product's own commands on it, each as its own
process, and prints wall time and peak RSS per stage as one JSON line at the end.

Stages (``--root``, default /tmp/realsize, holds everything; deleted at the end unless ``--keep``):

1. ``build``: the model folder (``config.json``, ``model-0000k-of-0000n.safetensors`` shards of at most
   ``--shard_gib`` with ``model.safetensors.index.json``, the text tokenizer files), written shard by shard so the
   build never holds the whole model; the text tokenizer (the embedded BPE with the released size and special-token
   ids: 128,256 entries, ``<|AUDIO_OUT|>`` = 128016, so the config's ids are the released ones); the real-size audio
   tokenizer (``embedded.audio_codec`` 'real': the released shapes, 200M parameters, random weights; its HuBERT
   teacher goes into a private Hugging Face cache under the root, so the shared cache's tiny teacher is untouched);
   a few short rows of the sample data (``--rows``, the shortest clips).
2. ``train``: ``ray_jobs/train.py --precision bf16 --max_steps 2 --save_every_steps 1`` (a checkpoint per step).
3. ``resume``: the same command with ``--resume_from`` the step-1 checkpoint into another run; its step-2 loss must
   equal the first run's (relative 1e-6).
4. ``export``: ``ray_jobs/export.py --merge`` (the merged model: as large as the base).
5. ``peft``: ``PeftModel.from_pretrained(base, adapter)`` on the exported adapter: every LoRA tensor loaded, equal to
   the file, and a forward pass that is finite.
6. ``generate``: ``ray_jobs/generate.py --precision bf16`` through the merged model, greedy, ``--max_new_tokens``
   small: a WAV of a few frames.

Peak RSS is sampled every 0.2 s over the stage's process tree (the command and every descendant: Ray's raylet, its
workers, the data actors): ``peak_rss_gib`` is the largest sum (it counts shared pages once per process, so it is an
upper bound), ``peak_process_rss_gib`` the largest single process (the training worker, which holds the weights).

    nice -n 10 python benchmarks/real_size.py                 # full size: ~15 GiB RAM, 2x11.5 GB on disk, ~13 minutes
    python benchmarks/real_size.py --tiny --root /tmp/rs-tiny # the CPU-size twin CI runs (2 layers, width 64)

``--tiny``: the same stages and code path with a 2-layer, 64-wide model (real vocabulary and codebooks, small shards so
the index still spans several files) and the tiny audio tokenizer. ``--layers N``: another depth at the released
width. Exit status 1 when a stage fails or a check does not hold (the JSON says which).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if __package__ in (None, ""):  # run as a script: import the repository's higgs_train and gpu_step
    sys.path.insert(0, str(ROOT))
    sys.path.insert(0, str(ROOT / "benchmarks"))

RESUME_REL_TOL = 1e-6
RANDOM_POOL = 16_777_259  # a prime near 2**24: the random values each weight tensor is tiled from
GENERATE_TEXT = "The library closes early on Sundays."
STAGES = ("build", "train", "resume", "export", "peft", "generate")


# --------------------------------------------------------------------------------------------------------------------
# Layout under --root
# --------------------------------------------------------------------------------------------------------------------


def layout(root: Path) -> dict[str, Path]:
    return {
        "model": root / "model",
        "tokenizer": root / "tokenizer",
        "audio_tokenizer": root / "audio_tokenizer",
        "hf_cache": root / "hf-cache",
        "data": root / "data",
        "rows": root / "data" / "rows.json",
        "train": root / "runs" / "train",
        "resume": root / "runs" / "resume",
        "export": root / "export",
        "wav": root / "generated.wav",
        "cache": root / "token_cache",
    }


def audio_tokenizer_ref(root: Path, tiny: bool) -> str:
    """``--audio_tokenizer_path`` of every stage: the real-size one built under the root, or (``--tiny``) the
    embedded stack's, which CI has built already (building a tokenizer calibrates its codebooks: a minute)."""
    return "embedded" if tiny else str(layout(root)["audio_tokenizer"])


def stage_env(root: Path, ray_tmp: Path, tiny: bool) -> dict[str, str]:
    """Every stage's environment: this repository first on the path, a private Ray temp dir (other Ray instances
    on the machine stay apart) and, at real size, a private HF cache: the real-size teacher replaces a generated
    teacher of another size, so in the shared cache it would take the embedded stack's tiny one away."""
    paths = layout(root)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    env.update(RAY_TMPDIR=str(ray_tmp), HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    if not tiny:
        env.update(HF_HUB_CACHE=str(paths["hf_cache"]), HIGGS_TRAIN_HOME=str(root / "home"))
    env.pop("RAY_ADDRESS", None)
    return env


# --------------------------------------------------------------------------------------------------------------------
# Stage 1: build (runs in its own process: --stage build)
# --------------------------------------------------------------------------------------------------------------------


def model_config(tiny: bool, layers: int | None):
    from gpu_step import released_config

    config = released_config(tiny=tiny, layers=layers)
    config.torch_dtype = "bfloat16"
    config.text_config.torch_dtype = "bfloat16"
    return config


def write_random_weights(config: Any, model_dir: Path, shard_bytes: int, seed: int = 0) -> dict[str, Any]:
    """Random bf16 weights for every tensor ``HiggsAudioModel(config)`` loads, in shards of at most ``shard_bytes``
    named as ``save_pretrained`` names them, plus the index. One shard is in memory at a time.

    Initialisation: norms 1, biases 0, every other tensor N(0, 0.02) (the config's initializer range). The normal
    values are drawn once, a pool of ``RANDOM_POOL`` (a prime, so no row of any width repeats in step), and each
    tensor is that pool tiled from a random offset: drawing 5.8e9 normals takes over 12 minutes on one core of this
    machine, the tiling seconds; only the sizes, names, dtype and magnitudes matter here."""
    import torch
    from boson_multimodal.model.higgs_audio import HiggsAudioModel
    from safetensors.torch import save_file

    with torch.device("meta"):
        meta = HiggsAudioModel(config)
    shapes = {name: tuple(t.shape) for name, t in meta.state_dict().items()}
    groups: list[list[str]] = [[]]
    size = 0
    for name, shape in shapes.items():
        nbytes = 2 * int(torch.Size(shape).numel())
        if groups[-1] and size + nbytes > shard_bytes:
            groups.append([])
            size = 0
        groups[-1].append(name)
        size += nbytes
    generator = torch.Generator().manual_seed(seed)
    pool = torch.randn(RANDOM_POOL, generator=generator).mul_(0.02).to(torch.bfloat16)
    weight_map: dict[str, str] = {}
    total = 0
    for k, names in enumerate(groups, start=1):
        file = f"model-{k:05d}-of-{len(groups):05d}.safetensors"
        tensors = {}
        for name in names:
            tensor = torch.empty(shapes[name], dtype=torch.bfloat16)
            if "norm" in name and name.endswith(".weight"):
                tensor.fill_(1.0)
            elif name.endswith(".bias"):
                tensor.zero_()
            else:
                flat, start = tensor.view(-1), int(torch.randint(RANDOM_POOL, (1,), generator=generator))
                filled = 0
                while filled < flat.numel():
                    piece = pool[start : start + flat.numel() - filled]
                    flat[filled : filled + piece.numel()] = piece
                    filled, start = filled + piece.numel(), 0
            tensors[name] = tensor
            weight_map[name] = file
            total += tensor.numel() * 2
        save_file(tensors, str(model_dir / file), metadata={"format": "pt"})
        del tensors
    index = {"metadata": {"total_size": total}, "weight_map": weight_map}
    (model_dir / "model.safetensors.index.json").write_text(json.dumps(index, indent=2, sort_keys=True) + "\n")
    return {"shards": len(groups), "weight_bytes": total, "parameters": total // 2}


def shortest_rows(sample: dict[str, Path], rows: int) -> list[dict]:
    """The ``rows`` training samples with the least audio (reference + target), so a step stays short."""
    import soundfile

    base = sample["audio_base_path"]

    def seconds(row: dict) -> float:
        urls = [m["content"]["audio_url"] for m in row["messages"] if isinstance(m["content"], dict)]
        return sum(soundfile.info(str(base / url)).duration for url in urls)

    train = json.loads(sample["train"].read_text())
    return sorted(train, key=seconds)[:rows]


def build(args: argparse.Namespace) -> dict[str, Any]:
    """The model folder, tokenizers and rows under ``--root`` (see the module docstring)."""
    from gpu_step import RELEASED_PARAMETERS, parameter_count

    from higgs_train.embedded.audio_codec import build_audio_tokenizer_dir
    from higgs_train.embedded.sample_data import create_sample_data
    from higgs_train.embedded.text_tokenizer import build_released_size_text_tokenizer_dir

    paths = layout(Path(args.root))
    released = parameter_count(model_config(tiny=False, layers=None))
    if released != RELEASED_PARAMETERS:
        raise SystemExit(f"released configuration has {released:,} parameters, expected {RELEASED_PARAMETERS:,}")
    build_released_size_text_tokenizer_dir(paths["tokenizer"])
    config = model_config(args.tiny, args.layers)
    paths["model"].mkdir(parents=True)
    config.save_pretrained(str(paths["model"]))
    shard_bytes = int(args.shard_gib * 2**30)
    written = write_random_weights(config, paths["model"], shard_bytes, seed=args.seed)
    for file in paths["tokenizer"].iterdir():  # released checkpoints ship their tokenizer alongside
        shutil.copy2(file, paths["model"] / file.name)
    if not args.tiny:
        build_audio_tokenizer_dir(paths["audio_tokenizer"], size="real", seed=args.seed)
    sample = create_sample_data(paths["data"], utterances_per_speaker=3, seed=args.seed)
    paths["rows"].write_text(json.dumps(shortest_rows(sample, args.rows), indent=2) + "\n")
    return {
        "released_parameters": released,
        "model_parameters": parameter_count(config),
        "layers": config.text_config.num_hidden_layers,
        "hidden_size": config.text_config.hidden_size,
        **written,
    }


# --------------------------------------------------------------------------------------------------------------------
# Stage 5: PeftModel on the exported adapter (runs in its own process: --stage peft)
# --------------------------------------------------------------------------------------------------------------------


def peft_check(args: argparse.Namespace) -> dict[str, Any]:
    """Upstream's loader + peft's own ``PeftModel.from_pretrained`` (not the project's loader) on the exported
    adapter: every LoRA tensor of the file is in the model with the file's values, and a forward is finite."""
    import torch
    from boson_multimodal.model.higgs_audio import HiggsAudioModel
    from peft import PeftModel
    from safetensors.torch import load_file

    paths = layout(Path(args.root))
    adapter = paths["export"] / "adapter"
    base = HiggsAudioModel.from_pretrained(str(paths["model"]), torch_dtype=torch.bfloat16, attn_implementation="sdpa")
    model = PeftModel.from_pretrained(base, str(adapter)).eval()
    state = model.state_dict()
    stored = load_file(str(adapter / "adapter_model.safetensors"))
    mismatched = []
    for key, value in stored.items():
        name = key.replace(".weight", ".default.weight")
        if name not in state or not torch.equal(state[name].to(value.dtype), value):
            mismatched.append(key)
    ids = torch.tensor([[128000, 128006, 882, 128007, 271, 791, 4062, 128009]])
    with torch.no_grad():
        out = model(input_ids=ids, attention_mask=torch.ones_like(ids))
    return {
        "lora_tensors": len(stored),
        "mismatched": mismatched[:5],
        "trained": any(float(v.abs().max()) > 0 for k, v in stored.items() if "lora_B" in k),
        "finite": bool(torch.isfinite(out.logits).all()),
    }


# --------------------------------------------------------------------------------------------------------------------
# Running a stage: wall time and peak RSS of its process tree
# --------------------------------------------------------------------------------------------------------------------


def run_stage(name: str, argv: list[str], env: dict[str, str], log_dir: Path) -> dict[str, Any]:
    import psutil

    log = log_dir / f"{name}.log"
    start = time.perf_counter()
    with open(log, "w") as out:
        proc = subprocess.Popen(argv, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT)
        peak_sum = peak_one = 0
        root = psutil.Process(proc.pid)
        while proc.poll() is None:
            try:
                tree = [root, *root.children(recursive=True)]
            except psutil.NoSuchProcess:
                tree = []
            rss = []
            for p in tree:
                try:
                    rss.append(p.memory_info().rss)
                except psutil.Error:
                    continue
            if rss:
                peak_sum, peak_one = max(peak_sum, sum(rss)), max(peak_one, max(rss))
            time.sleep(0.2)
    result = {
        "rc": proc.returncode,
        "seconds": round(time.perf_counter() - start, 1),
        "peak_rss_gib": round(peak_sum / 2**30, 2),
        "peak_process_rss_gib": round(peak_one / 2**30, 2),
        "log": str(log),
    }
    print(f"{name}: {json.dumps(result)}", flush=True)
    if proc.returncode != 0:
        print(log.read_text()[-4000:], file=sys.stderr, flush=True)
    return result


def train_argv(paths: dict[str, Path], audio_tokenizer: str, run: str, extra: list[str]) -> list[str]:
    return [
        sys.executable,
        "ray_jobs/train.py",
        "--model_path",
        str(paths["model"]),
        "--audio_tokenizer_path",
        audio_tokenizer,
        "--train_data",
        str(paths["rows"]),
        "--audio_base_path",
        str(paths["data"]),
        "--cache_dir",
        str(paths["cache"]),
        "--precision",
        "bf16",
        "--batch_size",
        "1",
        "--max_steps",
        "2",
        "--save_every_steps",
        "1",
        "--output_dir",
        str(paths[run]),
        "--run_name",
        f"realsize-{run}",
        "--mlflow_tracking_uri",
        f"sqlite:///{paths['train'].parent / 'mlflow.db'}",
        *extra,
    ]


def history_losses(output_dir: Path) -> dict[int, float]:
    history = json.loads((output_dir / "history.json").read_text())
    return {int(h["step"]): float(h["train/total_loss"]) for h in history if "train/total_loss" in h}


def checkpoint_at(output_dir: Path, run: str, step: int) -> Path | None:
    for state in sorted((output_dir / "ray_results" / run).glob("checkpoint_*/trainer_state.json")):
        if json.loads(state.read_text()).get("global_step") == step:
            return state.parent
    return None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", default="/tmp/realsize", help="where every file goes (deleted at the end)")
    parser.add_argument("--layers", type=int, default=None, help="decoder layers (default: 28, released; 2 tiny)")
    parser.add_argument("--tiny", action="store_true", help="2 layers of width 64, tiny audio tokenizer (CI)")
    parser.add_argument("--rows", type=int, default=2, help="training rows (the shortest sample-data clips)")
    parser.add_argument("--shard_gib", type=float, default=None, help="safetensors shard size (default 4; tiny 0.01)")
    parser.add_argument("--max_new_tokens", type=int, default=12, help="generate.py's (delay pattern: 8 codebooks)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--keep", action="store_true", help="keep --root (default: deleted at the end)")
    parser.add_argument("--stage", choices=("build", "peft"), help=argparse.SUPPRESS)  # a stage's own process
    args = parser.parse_args(argv)
    args.shard_gib = args.shard_gib or (0.01 if args.tiny else 4.0)
    root = Path(args.root)
    if args.stage:
        if not args.tiny:
            os.environ["HF_HUB_CACHE"] = str(layout(root)["hf_cache"])
        result = build(args) if args.stage == "build" else peft_check(args)
        (root / f"{args.stage}.json").write_text(json.dumps(result) + "\n")
        return 0

    if root.exists():
        shutil.rmtree(root)
    root.mkdir(parents=True)
    (root / "logs").mkdir()
    ray_tmp = Path(tempfile.mkdtemp(prefix="hr-realsize-", dir="/tmp"))  # short: Ray's socket paths are limited
    env = stage_env(root, ray_tmp, args.tiny)
    audio_tokenizer = audio_tokenizer_ref(root, args.tiny)
    paths = layout(root)
    me = [sys.executable, str(Path(__file__).resolve()), "--root", str(root), "--seed", str(args.seed)]
    me += ["--tiny"] if args.tiny else []
    me += ["--layers", str(args.layers)] if args.layers else []
    summary: dict[str, Any] = {"root": str(root), "tiny": args.tiny, "stages": {}, "checks": {}}
    stages, checks = summary["stages"], summary["checks"]
    try:
        stages["build"] = run_stage(
            "build",
            [*me, "--stage", "build", "--rows", str(args.rows), "--shard_gib", str(args.shard_gib)],
            env,
            root / "logs",
        )
        if stages["build"]["rc"] == 0:
            summary["model"] = json.loads((root / "build.json").read_text())
            summary["model"]["weights_gib"] = round(summary["model"]["weight_bytes"] / 2**30, 2)
            stages["train"] = run_stage("train", train_argv(paths, audio_tokenizer, "train", []), env, root / "logs")
        if stages.get("train", {}).get("rc") == 0:
            first = history_losses(paths["train"])
            checks["train_losses"] = first
            step1 = checkpoint_at(paths["train"], "realsize-train", 1)
            checks["step1_checkpoint"] = str(step1) if step1 else None
            if step1:
                stages["resume"] = run_stage(
                    "resume",
                    train_argv(paths, audio_tokenizer, "resume", ["--resume_from", str(step1)]),
                    env,
                    root / "logs",
                )
            if stages.get("resume", {}).get("rc") == 0:
                resumed = history_losses(paths["resume"])
                console = Path(stages["resume"]["log"]).read_text()
                trained = re.findall(r"^step (\d+)/\d+ \|", console, flags=re.M)
                a, b = first.get(2), resumed.get(2)
                rel = abs(a - b) / max(abs(a), 1e-12) if a is not None and b is not None else None
                checks["resume"] = {
                    "steps_resumed": sorted(resumed),
                    "step2_loss_first_run": a,
                    "step2_loss_resumed": b,
                    "rel_diff": rel,
                    "steps_trained_after_resume": [int(t) for t in trained],
                    "ok": rel is not None and rel <= RESUME_REL_TOL and trained == ["2"] and "at step 1" in console,
                }
            export = [sys.executable, "ray_jobs/export.py", "--checkpoint", str(paths["train"])]
            stages["export"] = run_stage(
                "export", [*export, "--output", str(paths["export"]), "--merge"], env, root / "logs"
            )
        if stages.get("export", {}).get("rc") == 0:
            stages["peft"] = run_stage("peft", [*me, "--stage", "peft"], env, root / "logs")
            if stages["peft"]["rc"] == 0:
                checks["peft"] = json.loads((root / "peft.json").read_text())
                checks["peft"]["ok"] = (
                    not checks["peft"]["mismatched"] and checks["peft"]["trained"] and checks["peft"]["finite"]
                )
            row = json.loads(paths["rows"].read_text())[0]
            ref_text = row["messages"][1]["content"]
            ref_audio = paths["data"] / row["messages"][2]["content"]["audio_url"]
            generate = [sys.executable, "ray_jobs/generate.py", "--model_path", str(paths["export"] / "merged")]
            generate += ["--audio_tokenizer_path", audio_tokenizer, "--precision", "bf16"]
            generate += ["--ref_audio", str(ref_audio), "--ref_text", ref_text, "--text", GENERATE_TEXT]
            generate += ["--output", str(paths["wav"]), "--temperature", "0", "--max_new_tokens"]
            generate += [str(args.max_new_tokens), "--allow_bad_audio", "--device", "cpu"]
            stages["generate"] = run_stage("generate", generate, env, root / "logs")
            if stages["generate"]["rc"] == 0:
                import soundfile

                info = soundfile.info(str(paths["wav"]))
                checks["generate"] = {"samples": info.frames, "seconds": round(info.duration, 3)}
                checks["generate"]["ok"] = info.frames > 0
    finally:
        shutil.rmtree(ray_tmp, ignore_errors=True)
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)
    summary["ok"] = all(stages.get(s, {}).get("rc") == 0 for s in STAGES) and all(
        checks.get(c, {}).get("ok") for c in ("resume", "peft", "generate")
    )
    print(json.dumps(summary))
    return 0 if summary["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
