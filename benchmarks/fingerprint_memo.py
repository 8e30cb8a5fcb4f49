"""What the token cache's fingerprint memo saves at 100k rows: a stat-keyed lookup against hashing every clip again.

Why: the cache key needs the content of every referenced clip (``cache_key.FingerprintMemo``). Re-hashing every
file on every run is always right; the memo instead trusts a stat key that every write changes (size, mtime_ns,
ctime_ns, inode). This prints both costs so the trade is a number:

* memo lookups (one ``stat`` + a dict probe per file, all hits) over ``--stat_files`` real files (default 100k);
* the memo's JSON file read and written at that many entries;
* full sha256 of ``--hash_files`` clips of ``--clip_bytes`` each (default 240,000: 5 s of 24 kHz 16-bit mono),
  page cache warm (the best case for re-hashing; a cold read is bound by the disk instead), extrapolated to
  ``--stat_files`` clips.

    python benchmarks/fingerprint_memo.py [--stat_files 100000] [--hash_files 2000] [--clip_bytes 240000]
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time
from pathlib import Path

from higgs_train.data.cache_key import FingerprintMemo
from higgs_train.data.clip_encoder import file_sha256


def make_files(root: Path, count: int, size: int) -> list[Path]:
    """``count`` files of ``size`` distinct bytes, 1000 per folder (as clips lie in speaker folders)."""
    files = []
    block = os.urandom(size)
    for i in range(count):
        folder = root / f"spk{i // 1000:04d}"
        if i % 1000 == 0:
            folder.mkdir(parents=True)
        path = folder / f"clip{i:06d}.wav"
        path.write_bytes(i.to_bytes(8, "little") + block[8:])
        files.append(path)
    return files


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--stat_files", type=int, default=100_000)
    parser.add_argument("--hash_files", type=int, default=2000)
    parser.add_argument("--clip_bytes", type=int, default=240_000)
    parser.add_argument("--dir", default=None, help="where the files are written (default: a temp folder)")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="fingerprint-memo-", dir=args.dir))
    try:
        t = time.perf_counter()
        small = make_files(work / "small", args.stat_files, 1024)
        print(f"wrote {len(small)} files of 1 KiB in {time.perf_counter() - t:.1f} s (setup, not measured)")

        memo = FingerprintMemo(work / "fingerprints.json", racy_seconds=0)
        t = time.perf_counter()
        for f in small:
            memo.sha256(f)
        first = time.perf_counter() - t
        t = time.perf_counter()
        memo.save()
        save = time.perf_counter() - t
        size_mb = (work / "fingerprints.json").stat().st_size / 1e6

        t = time.perf_counter()
        memo = FingerprintMemo(work / "fingerprints.json", racy_seconds=0)
        load = time.perf_counter() - t
        t = time.perf_counter()
        for f in small:
            memo.sha256(f)
        lookups = time.perf_counter() - t
        assert memo.hashed == 0, "every lookup should have been a memo hit"

        clips = make_files(work / "clips", args.hash_files, args.clip_bytes)
        for f in clips:  # warm the page cache: the measured figure is hashing, not the disk
            f.read_bytes()
        t = time.perf_counter()
        for f in clips:
            file_sha256(f)
        per_clip = (time.perf_counter() - t) / len(clips)
        rehash = per_clip * args.stat_files
        total_gb = args.clip_bytes * args.stat_files / 1e9
        n = args.stat_files

        print(f"{'what':<62} {'seconds':>9} {'per file':>10}")
        print(
            f"{'memo lookups, all hits (stat + dict), ' + str(n) + ' files':<62} {lookups:>9.2f} "
            f"{lookups / n * 1e6:>8.1f}us"
        )
        print(f"{'memo JSON load + save, ' + str(n) + f' entries ({size_mb:.1f} MB)':<62} {load + save:>9.2f}")
        print(
            f"{'first run: hash + remember ' + str(n) + ' files of 1 KiB':<62} {first:>9.2f} {first / n * 1e6:>8.1f}us"
        )
        print(
            f"{f'sha256 of {len(clips)} clips of {args.clip_bytes} B (page cache warm)':<62} "
            f"{per_clip * len(clips):>9.2f} {per_clip * 1e3:>8.2f}ms"
        )
        print(f"{f're-hash every clip, extrapolated to {n} ({total_gb:.1f} GB)':<62} {rehash:>9.2f}")
        print(
            f"memo vs re-hash at {n} clips: {lookups + load:.2f} s vs {rehash:.1f} s "
            f"({rehash / (lookups + load):.0f}x); a cold re-hash reads {total_gb:.1f} GB from disk on top"
        )
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
