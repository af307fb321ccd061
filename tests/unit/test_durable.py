"""The checkpoint file writer: byte-exact output and CRC-32 across block boundaries, with
O_DIRECT (ext4 here) and without it (tmpfs), errors that surface, and old sha256 manifests."""

import hashlib
import io
import json
import os
import random
import tempfile
import zlib

import pytest
import torch

from hpc_mm.run import checkpoints, durable
from hpc_mm.train import checkpoint

BLOCK = durable.BLOCK
SIZES = [0, 1, 4095, BLOCK - 1, BLOCK, BLOCK + 1, 3 * BLOCK + 12345]


def folders(tmp_path):
    yield tmp_path  # a disk filesystem: O_DIRECT
    if os.path.isdir("/dev/shm"):
        with tempfile.TemporaryDirectory(dir="/dev/shm") as shm:  # tmpfs: no O_DIRECT on most kernels
            yield shm


@pytest.mark.parametrize("size", SIZES)
def test_bytes_and_checksum_are_exact_in_any_chunking(tmp_path, size):
    data = random.Random(size).randbytes(size)
    for folder in folders(tmp_path):
        path = os.path.join(folder, "f.bin")
        chunks, at, rng = [], 0, random.Random(7)
        while at < size:  # torch.save-like: small pickle pieces and big tensor buffers
            n = rng.choice([1, 17, 4096, BLOCK // 3, BLOCK + 5])
            chunks.append(data[at : at + n])
            at += n
        with durable.DurableWriter(path) as writer:
            for chunk in chunks:
                assert writer.write(memoryview(chunk)) == len(chunk)
        with open(path, "rb") as f:
            assert f.read() == data
        assert writer.size == size and writer.checksum == f"{zlib.crc32(data):08x}" == durable.crc32_of(path)


def test_torch_save_through_the_writer_loads_back(tmp_path):
    state = {"w": torch.randn(5_000_000), "step": 3, "rng": torch.get_rng_state()}
    with durable.DurableWriter(tmp_path / "m.pt") as writer:
        torch.save(state, writer)
    expected = io.BytesIO()
    torch.save(state, expected)
    assert (tmp_path / "m.pt").read_bytes() == expected.getvalue()
    loaded = torch.load(tmp_path / "m.pt", weights_only=True)
    assert torch.equal(loaded["w"], state["w"]) and loaded["step"] == 3


def test_a_failed_write_surfaces_in_the_caller(tmp_path, monkeypatch):
    real = os.pwrite
    calls = {"n": 0}

    def failing(fd, data, offset):
        calls["n"] += 1
        if calls["n"] == 2:
            raise OSError(28, "No space left on device")
        return real(fd, data, offset)

    monkeypatch.setattr(durable.os, "pwrite", failing)
    with pytest.raises(OSError) as info:
        with durable.DurableWriter(tmp_path / "f.bin") as writer:
            for _ in range(4):
                writer.write(bytes(BLOCK))
    assert info.value.errno == 28


def test_manifests_with_sha256_still_verify(tmp_path):
    """Checkpoints written before the CRC-32 manifest: their sha256 is still checked."""
    folder = checkpoints.iter_dir(tmp_path, 5) / "mp_rank_00"
    folder.mkdir(parents=True)
    (folder / checkpoints.FILENAME).write_bytes(b"weights")
    digest = hashlib.sha256(b"weights").hexdigest()
    manifest = {"files": {f"mp_rank_00/{checkpoints.FILENAME}": {"size": 7, "sha256": digest}}}
    (folder.parent / checkpoints.MANIFEST).write_text(json.dumps(manifest))
    assert checkpoints.verify(tmp_path, 5, deep=True).ok
    (folder / checkpoints.FILENAME).write_bytes(b"weighTs")
    verdict = checkpoints.verify(tmp_path, 5, deep=True)
    assert not verdict.ok and "checksum" in verdict.detail


def test_a_flipped_bit_fails_the_deep_check(tmp_path):
    checkpoint.save(tmp_path, 1, {"w": torch.arange(100_000.0)})
    path = checkpoints.checkpoint_file(tmp_path, 1)
    raw = bytearray(path.read_bytes())
    raw[len(raw) // 2] ^= 0x10
    path.write_bytes(bytes(raw))
    assert checkpoints.verify(tmp_path, 1).ok  # sizes agree
    assert not checkpoints.verify(tmp_path, 1, deep=True).ok


def test_async_saves_reuse_their_copy_and_save_the_state_of_their_moment(tmp_path):
    saver = checkpoint.AsyncSaver()
    state = {"model": {"w": torch.zeros(1000)}, "iteration": 1}
    saver.save(tmp_path, 1, state, keep_last=None)
    saver.before_update()  # the trainer's optimizer step waits for the copy, then changes the weights
    first = saver._snapshot["model"]["w"]
    state["model"]["w"].add_(1)  # training goes on while the first save writes
    saver.save(tmp_path, 2, {"model": {"w": state["model"]["w"]}, "iteration": 2}, keep_last=None)
    saver.before_update()
    assert saver._snapshot["model"]["w"] is first  # the same memory, copied into
    state["model"]["w"].add_(1)
    saver.wait()
    assert saver.blocked_seconds >= 0
    for iteration, value in ((1, 0.0), (2, 1.0)):
        loaded = torch.load(checkpoints.checkpoint_file(tmp_path, iteration), weights_only=True)
        assert torch.all(loaded["model"]["w"] == value), iteration
