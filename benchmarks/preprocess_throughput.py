"""Throughput of the token-cache build (Ray Data actor pool) on the sample data: audio seconds per CPU second, rows/s.

Why: audio encoding is the CPU-side cost of a fine-tune; this prints how fast one actor configuration turns audio
into codes, so actor counts and CPU fractions can be sized from numbers. Every configuration builds into a fresh
cache directory (a hit would measure nothing).

    python benchmarks/preprocess_throughput.py [--configs 1x1.0,2x0.5] [--batch_size 2] [--utterances 6]
    python benchmarks/preprocess_throughput.py --real_size   # the released tokenizer's shapes (random weights)

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


def parse_configs(text: str) -> list[tuple[int, float]]:
    out = []
    for item in text.split(","):
        actors, cpus = item.lower().split("x")
        out.append((int(actors), float(cpus)))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--configs", default="1x1.0,2x0.5", help="comma list of <actors>x<cpus per actor>")
    parser.add_argument("--batch_size", type=int, default=2)
    parser.add_argument("--utterances", type=int, default=6, help="utterances per speaker in the sample data")
    parser.add_argument("--num_cpus", type=int, default=2, help="ray.init(num_cpus=...)")
    parser.add_argument("--real_size", action="store_true", help="use a real-size audio tokenizer")
    args = parser.parse_args()

    env: dict[str, str] = {}
    if args.real_size:
        from higgs_train.embedded import default_home

        env["HF_HUB_CACHE"] = str(default_home() / "bench-hf-cache")
        os.environ.update(env)  # before huggingface_hub reads it

    import ray

    from higgs_train.data.ray_pipeline import build_token_cache
    from higgs_train.models import resolve_paths
    from higgs_train.sample_data import create_sample_data

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
    print(f"{len(rows)} rows, audio tokenizer: {size}, batch_size={args.batch_size}, ray num_cpus={args.num_cpus}")
    header = (
        f"{'actors x cpu':<13} {'enc calls':>9} {'audio s':>8} {'cpu s':>7} {'audio s/cpu s':>13} "
        f"{'wall s':>7} {'rows/s':>7} {'audio s/wall s':>14}"
    )
    print(header)
    for actors, cpus in parse_configs(args.configs):
        result = build_token_cache(
            manifest,
            work / f"cache-{actors}x{cpus}",
            paths,
            sample["audio_base_path"],
            num_actors=actors,
            cpus_per_actor=cpus,
            batch_size=args.batch_size,
        )
        s = result.stats
        print(
            f"{f'{actors} x {cpus:g}':<13} {s['encoder_calls']:>9} {s['encoded_audio_seconds']:>8.1f} "
            f"{s['cpu_seconds']:>7.1f} {s['audio_seconds_per_cpu_second']:>13.2f} {s['wall_seconds']:>7.1f} "
            f"{s['rows_per_second']:>7.2f} {s['encoded_audio_seconds'] / s['wall_seconds']:>14.2f}"
        )
    ray.shutdown()


if __name__ == "__main__":
    main()
