"""Token-cache keys that cannot go stale: the text tokenizer's identity, the audio fingerprint memo, the cache root.

Each case is a change that used to keep the old key (so rows kept their old ids or codes) and must now change it,
next to a non-change (a moved tokenizer, an untouched file) that must keep it.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pyarrow as pa
import pytest
from tokenizer_variants import derived_tokenizer

from higgs_train.data.cache_key import CACHE_FORMAT, FingerprintMemo, text_tokenizer_identity
from higgs_train.data.preprocess_settings import PreprocessSettings
from higgs_train.data.row_reuse import row_context_digest, row_keys
from higgs_train.data.token_cache import CacheLocationError, TokenCache, local_cache_root
from higgs_train.model_loading import load_text_tokenizer, resolve_paths


@pytest.fixture(scope="module")
def tokenizers(tmp_path_factory):
    """The embedded tokenizer, a moved copy of it, and the two variants of ``tokenizer_variants``."""
    source = resolve_paths("embedded", "embedded").tokenizer_path
    root = tmp_path_factory.mktemp("tokenizers")
    original = load_text_tokenizer(source)
    original.save_pretrained(root / "moved")
    return {
        "original": original,
        "moved": load_text_tokenizer(str(root / "moved")),
        **{v: load_text_tokenizer(str(derived_tokenizer(source, root / v, v))) for v in ("merges", "lowercase")},
    }


def test_other_merges_or_a_normalizer_change_the_identity_a_moved_copy_does_not(tokenizers):
    original = tokenizers["original"]
    identities = {name: text_tokenizer_identity(tok) for name, tok in tokenizers.items()}
    assert identities["moved"] == identities["original"]
    for variant in ("merges", "lowercase"):
        tok = tokenizers[variant]
        # Same vocabulary and special tokens (what the old identity hashed), yet other ids for the same text.
        assert tok.get_vocab() == original.get_vocab() and tok.all_special_ids == original.all_special_ids
        assert tok.encode("Hello there", add_special_tokens=False) != original.encode(
            "Hello there", add_special_tokens=False
        )
        assert identities[variant] != identities["original"], variant
    assert identities["merges"] != identities["lowercase"]


def test_a_tokenizer_change_changes_every_row_key_a_moved_copy_none(tokenizers):
    manifest = pa.table(
        {
            "id": ["a", "b"],
            "messages_json": [json.dumps([{"role": "user", "content": t}]) for t in ("Hello", "there")],
        }
    )
    settings, audio = PreprocessSettings(), {"hub_id": "x"}

    def keys(name: str) -> list[str]:
        context = row_context_digest(text_tokenizer_identity(tokenizers[name]), audio, settings, CACHE_FORMAT)
        return row_keys(manifest, {}, context)

    original = keys("original")
    assert keys("moved") == original
    for variant in ("merges", "lowercase"):
        assert not set(keys(variant)) & set(original), variant


def _edit_in_place_keeping_size_and_mtime(path: Path) -> None:
    """What ``cp -p``/``rsync -t`` leave: other bytes, the same size and the same mtime."""
    before = path.stat()
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF
    with open(path, "r+b") as fh:  # in place: same inode
        fh.write(data)
    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))
    after = path.stat()
    assert (after.st_size, after.st_mtime_ns, after.st_ino) == (before.st_size, before.st_mtime_ns, before.st_ino)


def test_an_in_place_edit_with_the_same_size_and_mtime_is_hashed_again(tmp_path):
    clip = tmp_path / "clip.wav"
    clip.write_bytes(b"RIFF" + bytes(range(200)))
    memo = FingerprintMemo(tmp_path / "fingerprints.json", racy_seconds=0)  # the stat key alone decides here
    first = memo.sha256(clip)
    assert memo.sha256(clip) == first and memo.hashed == 1  # unchanged: served from the memo
    memo.save()

    _edit_in_place_keeping_size_and_mtime(clip)
    reloaded = FingerprintMemo(tmp_path / "fingerprints.json", racy_seconds=0)
    assert reloaded.sha256(clip) != first and reloaded.hashed == 1


def test_a_file_changed_just_before_hashing_is_not_remembered(tmp_path):
    """Timestamps tick coarsely: a hash taken within the racy window could be followed by an edit with equal ctime."""
    clip = tmp_path / "clip.wav"
    clip.write_bytes(b"fresh")
    memo = FingerprintMemo(tmp_path / "fingerprints.json")  # default window: the file was written just now
    memo.sha256(clip)
    memo.sha256(clip)
    assert memo.hashed == 2
    memo.save()
    assert not (tmp_path / "fingerprints.json").exists()


def test_a_memo_of_the_old_size_and_mtime_form_is_not_trusted(tmp_path):
    clip = tmp_path / "clip.wav"
    clip.write_bytes(b"new bytes")
    st = clip.stat()
    (tmp_path / "fingerprints.json").write_text(json.dumps({str(clip.resolve()): [st.st_size, st.st_mtime_ns, "0f"]}))
    memo = FingerprintMemo(tmp_path / "fingerprints.json", racy_seconds=0)
    assert memo.sha256(clip) != "0f" and memo.hashed == 1


def test_cache_dir_takes_a_path_or_file_uri_and_refuses_object_stores_before_writing(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert local_cache_root(f"file://{tmp_path}/c") == tmp_path / "c"
    assert TokenCache(f"file://{tmp_path}/c").root == tmp_path / "c"
    assert local_cache_root("rel/c") == Path("rel/c")
    for uri in ("s3://bucket/x", "gs://bucket/x"):
        with pytest.raises(CacheLocationError) as err:
            TokenCache(uri)
        message = str(err.value)
        assert "\n" not in message and message.startswith(f"--cache_dir {uri}:")
        assert f"--stream_cache_uri {uri}" in message
    assert list(tmp_path.iterdir()) == []  # no folder named 's3:' or 'gs:'
