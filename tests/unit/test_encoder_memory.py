"""Encoder actors keep the tokenizer's big freed blocks for the next clip (``clip_encoder.keep_freed_memory_for_reuse``).

Why it matters: glibc gives every block above its mmap threshold pages of its own and unmaps them on free, so an
encoder paid the page faults of its whole working set on every clip (reuse: 1.75x the audio seconds per CPU
second on 10 s clips with the real-size tokenizer, ``benchmarks/encoder_heap.py``). What glibc reports (``mallinfo2``) shows the policy directly: a
200 MB block is heap memory, not a mapping of its own, and once freed it stays with the process for reuse. Each
case runs in a child process, so this test process keeps its allocator as it was.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import json
import platform
import subprocess
import sys

import pytest

pytestmark = pytest.mark.skipif(
    platform.system() != "Linux" or platform.libc_ver()[0] != "glibc", reason="mallopt and mallinfo2 are glibc's"
)

CHILD = r"""
import ctypes, ctypes.util, json, sys
import numpy as np
from higgs_train.data.clip_encoder import keep_freed_memory_for_reuse

class MallInfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in
                ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks",
                 "keepcost")]

libc = ctypes.CDLL(ctypes.util.find_library("c"))
libc.mallinfo2.restype = MallInfo2
applied = keep_freed_memory_for_reuse() if sys.argv[1] == "reuse" else None
block = np.ones(200 * 2**20, dtype=np.uint8)  # touched, like an activation
during = libc.mallinfo2()
del block
after = libc.mallinfo2()
print(json.dumps({"applied": applied, "mapped_during": during.hblkhd, "free_in_heap_after": after.fordblks}))
"""


def _child(mode: str) -> dict:
    done = subprocess.run([sys.executable, "-c", CHILD, mode], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_a_big_block_stays_in_the_heap_for_the_next_clip_only_where_asked():
    assert ctypes.util.find_library("c")
    default, reuse = _child("default"), _child("reuse")
    # By default the block is a mapping of its own, given back when freed.
    assert default["mapped_during"] >= 200 * 2**20 and default["free_in_heap_after"] < 200 * 2**20
    # In an encoder process it comes from the heap and stays there, free for the next clip's blocks.
    assert reuse["applied"] is True
    assert reuse["mapped_during"] < 200 * 2**20 and reuse["free_in_heap_after"] >= 200 * 2**20
