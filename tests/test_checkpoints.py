"""Damaged, foreign and malicious checkpoints are refused with exit 2; no code ever runs."""

from __future__ import annotations

import io
import os
import pickle
import struct
import zlib

import pytest
import torch

from conftest import DATA, write_config


@pytest.fixture
def trained(cli, tmp_path):
    cfg = write_config(
        tmp_path / "cfg.yaml",
        {
            "data": {"train": str(DATA / "linear.csv"), "target": "y", "standardize": False},
            "train": {"epochs": 3},
            "output": {"dir": str(tmp_path / "run"), "plot": False},
        },
    )
    assert cli("run", cfg, "-q").code == 0
    return tmp_path / "run" / "best.pt"


def refused(cli, path, *fragments):
    result = cli("eval", path, DATA / "linear.csv")
    assert result.code == 2, result
    for fragment in fragments:
        assert fragment in result.stderr, (fragment, result.stderr)
    assert "Traceback" not in result.stderr
    return result


def test_missing_checkpoint(cli, tmp_path):
    refused(cli, tmp_path / "nope.pt", "checkpoint not found")


def test_zero_bytes(cli, tmp_path):
    path = tmp_path / "empty.pt"
    path.write_bytes(b"")
    refused(cli, path, "the file is empty (0 bytes)")


def test_truncated(cli, trained, tmp_path):
    path = tmp_path / "cut.pt"
    data = trained.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    refused(cli, path, "damaged or truncated checkpoint")


def test_random_bytes(cli, tmp_path):
    path = tmp_path / "noise.pt"
    path.write_bytes(os.urandom(4096))
    refused(cli, path, "not a PyTorch checkpoint")


def test_random_bytes_after_a_zip_signature(cli, tmp_path):
    path = tmp_path / "noise.pt"
    path.write_bytes(b"PK\x03\x04" + os.urandom(4096))
    refused(cli, path, "damaged or truncated checkpoint")


def test_image_renamed_pt(cli, tmp_path):
    raw = b"\x00\xff\x00\x00"
    png = b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", struct.pack(">IIBBBBB", 1, 1, 8, 2, 0, 0, 0))
    png += _chunk(b"IDAT", zlib.compress(raw)) + _chunk(b"IEND", b"")
    path = tmp_path / "photo.pt"
    path.write_bytes(png)
    refused(cli, path, "not a PyTorch checkpoint")


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def test_weights_that_do_not_match_the_model(cli, trained, tmp_path):
    ckpt = torch.load(trained, weights_only=True)
    ckpt["weights"]["weight"] = torch.zeros(3, 5)
    path = tmp_path / "edited.pt"
    torch.save(ckpt, path)
    refused(cli, path, "the weights do not match the model described in the checkpoint")


def test_plain_state_dict_is_not_an_mse_train_checkpoint(cli, tmp_path):
    path = tmp_path / "state.pt"
    torch.save(torch.nn.Linear(1, 1).state_dict(), path)
    refused(cli, path, "not an mse-train checkpoint")


class _Payload:
    """Unpickling this creates the marker file, if anything lets it run."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (exec, (f"open({self.marker!r}, 'w').write('pwned')",))


def test_pickle_that_runs_code_is_refused_and_never_runs(cli, trained, tmp_path):
    marker = tmp_path / "MARKER"
    ckpt = torch.load(trained, weights_only=True)
    ckpt["extra"] = _Payload(str(marker))
    path = tmp_path / "evil.pt"
    torch.save(ckpt, path)
    result = refused(cli, path, "refused", "could run code", "references `exec`")
    assert not marker.exists()
    assert "predict" not in result.stdout
    predict = cli("predict", path, DATA / "linear.csv")
    assert predict.code == 2 and not marker.exists()


def test_legacy_pickle_that_runs_code_never_runs(cli, tmp_path):
    marker = tmp_path / "MARKER"
    path = tmp_path / "evil-legacy.pt"
    path.write_bytes(pickle.dumps(_Payload(str(marker))))
    refused(cli, path)
    assert not marker.exists()


def test_checkpoints_load_with_weights_only(trained):
    for name in ("best.pt", "last.pt"):
        data = torch.load(trained.parent / name, weights_only=True)
        assert data["format"] == "mse-train-checkpoint"
        buffer = io.BytesIO()
        torch.save(data, buffer)  # plain data all the way down: saves and loads again
        buffer.seek(0)
        assert torch.load(buffer, weights_only=True)["epoch"] == data["epoch"]
