"""Throughput of the token-cache build (Ray Data: decode tasks -> encoder actor pool) on the sample data.

Why: audio encoding is the CPU-side cost of a fine-tune; this prints how fast each configuration turns audio into
codes (audio seconds per CPU second, and per wall second), the ratios that size a cluster (clips per encoder call
N vs 1 on the same actors; 2 actors vs 1 at the same clips per call), all measured in one run, and the
hours-of-audio -> wall-time table those rates give for N CPU cores. Every configuration builds into a fresh cache
directory (a hit would measure nothing). The machine's load average is printed with every row: on a shared box
wall-time figures move with it, CPU-second figures much less.

    python benchmarks/preprocess_throughput.py [--configs 1x1.0,2x0.5] [--batch_size 2] [--utterances 6]
    python benchmarks/preprocess_throughput.py --real_size   # the released tokenizer's shapes (random weights)
    python benchmarks/preprocess_throughput.py --real_size --clip_seconds 4 --configs 1x1:1,1x1:4,2x0.5:1,2x0.5:4

A configuration is ``<actors>x<cpus per actor>[:<most clips per encoder call>]`` (default: the pipeline's, 1 on
CPU). Only clips of the same length share an encoder call (``clip_encoder.ClipEncoder``: that is what keeps the
codes exact), and the synthesized sample clips all differ in length, so ``--clip_seconds S`` cuts or loops every
clip to exactly S seconds, as a corpus segmented into fixed windows is.

``--real_size`` builds a real-size audio tokenizer once under $HIGGS_TRAIN_HOME and installs its semantic teacher
into a private Hugging Face cache (``HF_HUB_CACHE`` of this process and its Ray workers), so the shared cache the
embedded tiny stack uses is left alone.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

HOURS = (1, 10, 100)
CORES = (2, 8, 32, 128)


def parse_configs(text: str) -> list[tuple[int, float, int | None]]:
    out = []
    for item in text.split(","):
        sizing, _, clips = item.lower().partition(":")
        actors, cpus = sizing.split("x")
        out.append((int(actors), float(cpus), int(clips) if clips else None))
    return out


def fix_lengths(audio_base: Path, seconds: float) -> None:
    """Cut or loop every sample clip to exactly ``seconds`` (same rate, so the same sample count)."""
    import numpy as np
    import soundfile as sf

    for wav in sorted(audio_base.rglob("*.wav")):
        data, sr = sf.read(wav, dtype="float32")
        n = int(round(seconds * sr))
        sf.write(wav, np.resize(data, n), sr)


def load() -> str:
    return "load " + " ".join(f"{x:.1f}" for x in os.getloadavg())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--configs", default="1x1.0,2x0.5", help="comma list of <actors>x<cpus>[:<clips per call>]")
    parser.add_argument("--batch_size", type=int, default=2, help="manifest rows per batch")
    parser.add_argument("--utterances", type=int, default=6, help="utterances per speaker in the sample data")
    parser.add_argument("--num_cpus", type=int, default=2, help="ray.init(num_cpus=...)")
    parser.add_argument("--real_size", action="store_true", help="use a real-size audio tokenizer")
    parser.add_argument("--clip_seconds", type=float, default=0.0, help="make every clip exactly this long")
    args = parser.parse_args()

    env: dict[str, str] = {}
    if args.real_size:
        from higgs_train.embedded import default_home

        env["HF_HUB_CACHE"] = str(default_home() / "bench-hf-cache")
        os.environ.update(env)  # before huggingface_hub reads it

    import ray

    from higgs_train.data.ray_pipeline import build_token_cache
    from higgs_train.embedded.sample_data import create_sample_data
    from higgs_train.model_loading import resolve_paths

    paths = resolve_paths("embedded", "embedded")
    if args.real_size:
        from dataclasses import replace

        from higgs_train.embedded import default_home
        from higgs_train.embedded.audio_codec import build_audio_tokenizer_dir

        real_dir = default_home() / "bench-audio-tokenizer-real"
        if not (real_dir / "higgs_train_generated.json").exists():
            t = time.perf_counter()
            build_audio_tokenizer_dir(real_dir, size="real")
            print(f"built real-size audio tokenizer in {time.perf_counter() - t:.1f}s: {real_dir}")
        paths = replace(paths, audio_tokenizer_path=str(real_dir))

    work = Path(tempfile.mkdtemp(prefix="preprocess-bench-"))
    sample = create_sample_data(work / "data", utterances_per_speaker=args.utterances)
    if args.clip_seconds:
        fix_lengths(Path(sample["audio_base_path"]), args.clip_seconds)
    rows = json.loads(sample["train"].read_text())
    from higgs_train.data.manifest import convert_manifest

    manifest = work / "train.parquet"
    convert_manifest(sample["train"], manifest)

    ray.init(
        address="local",
        num_cpus=args.num_cpus,
        include_dashboard=False,
        log_to_driver=False,
        runtime_env={"env_vars": env},
    )
    ray.data.DataContext.get_current().enable_progress_bars = False
    size = "real" if args.real_size else "tiny"
    clips = f"{args.clip_seconds:g} s each" if args.clip_seconds else "sample lengths"
    print(
        f"{len(rows)} rows ({clips}), audio tokenizer: {size}, batch_size={args.batch_size}, "
        f"ray num_cpus={args.num_cpus}, {os.cpu_count()} cores, {load()}"
    )
    header = (
        f"{'actors x cpu':<13} {'clips/call':>10} {'clips':>6} {'calls':>6} {'audio s':>8} {'enc cpu s':>9} "
        f"{'dec cpu s':>9} {'audio s/cpu s':>13} {'wall s':>7} {'audio s/wall s':>14}  load after (1, 5, 15 min)"
    )
    print(header)
    measured = {}
    for actors, cpus, per_call in parse_configs(args.configs):
        result = build_token_cache(
            manifest,
            work / f"cache-{actors}x{cpus}-{per_call}",
            paths,
            sample["audio_base_path"],
            num_actors=actors,
            cpus_per_actor=cpus,
            batch_size=args.batch_size,
            encode_batch_size=per_call,
        )
        s = result.stats
        per_cpu = s["audio_seconds_per_cpu_second"]
        per_wall = s["encoded_audio_seconds"] / s["wall_seconds"]
        measured[(actors, cpus, s["encode_batch_size"])] = (per_cpu, per_wall)
        print(
            f"{f'{actors} x {cpus:g}':<13} {s['encode_batch_size']:>10} {s['encoder_calls']:>6} "
            f"{s['encoder_batches']:>6} {s['encoded_audio_seconds']:>8.1f} {s['cpu_seconds']:>9.1f} "
            f"{s['decode_cpu_seconds']:>9.1f} {per_cpu:>13.3f} {s['wall_seconds']:>7.1f} {per_wall:>14.3f}  {load()}"
        )
    ray.shutdown()
    print_ratios(measured)


def print_ratios(measured: dict[tuple[int, float, int], tuple[float, float]]) -> None:
    """Batched vs one-by-one per CPU second; 2 actors vs 1 per wall second; the wall-time table."""
    for (actors, cpus, per_call), (per_cpu, _) in measured.items():
        solo = measured.get((actors, cpus, 1))
        if per_call > 1 and solo:
            print(f"{actors} x {cpus:g}: {per_call} clips/call vs 1, audio s per CPU s: {per_cpu / solo[0]:.2f}x")
    for (actors, _cpus, per_call), (_, per_wall) in measured.items():
        one = next((v for (a, _c, p), v in measured.items() if a == 1 and p == per_call), None)
        if actors > 1 and one:
            print(f"{actors} actors vs 1 ({per_call} clips/call), audio s per wall s: {per_wall / one[1]:.2f}x")
    best = max(per_cpu for per_cpu, _ in measured.values())
    print(f"\nwall time to encode, at the best {best:.3f} audio s per CPU s, cores fully used (linear in cores):")
    print(f"{'hours of audio':<15}" + "".join(f"{f'{n} cores':>12}" for n in CORES))
    for hours in HOURS:
        cells = [hours * 3600 / (best * n) for n in CORES]
        print(f"{hours:<15}" + "".join(f"{_duration(c):>12}" for c in cells))


def _duration(seconds: float) -> str:
    if seconds < 60:
        return f"{seconds:.0f} s"
    return f"{seconds / 3600:.1f} h" if seconds >= 3600 else f"{seconds / 60:.0f} min"


if __name__ == "__main__":
    main()
