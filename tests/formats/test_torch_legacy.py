"""torch legacy files (``_use_new_zipfile_serialization=False``): reader and scan on files built here."""

from __future__ import annotations

from pathlib import Path

import torch

from ckptool import open_checkpoint
from ckptool.scan import scan


def model_and_optimizer(path: Path) -> Path:
    """resemblyzer's pretrained.pt layout: the model's and the optimizer's tensors in one legacy file."""
    torch.manual_seed(0)
    m = torch.nn.Sequential(torch.nn.Linear(8, 6), torch.nn.LSTM(6, 4))
    opt = torch.optim.Adam(m.parameters())
    out, _ = m[1](m[0](torch.randn(3, 2, 8)))
    out.sum().backward()
    opt.step()
    torch.save(
        {"model_state": m.state_dict(), "optimizer_state": opt.state_dict(), "step": 1},
        path,
        _use_new_zipfile_serialization=False,
    )
    return path


def test_reader_records_every_storage_not_only_the_state_dicts(tmp_path: Path) -> None:
    path = model_and_optimizer(tmp_path / "pretrained.pt")
    with open_checkpoint(path) as ck:
        assert ck.state_dict_key == "model_state"
        used = {t.storage.key for t in ck if t.storage is not None}
        assert used < set(ck.storages)  # the optimizer's exp_avg / exp_avg_sq storages are there too
        last = max(s.source.offset + s.source.nbytes for s in ck.storages.values() if s.source is not None)
        assert last == path.stat().st_size
        assert not any("after the last storage" in n for n in ck.notes)


def test_scan_of_model_plus_optimizer_reports_no_trailing_data(tmp_path: Path) -> None:
    report = scan(model_and_optimizer(tmp_path / "pretrained.pt"))
    assert [f.kind for f in report.findings] == []
    assert report.safe and report.values_checked


def test_real_trailing_bytes_are_still_a_finding(tmp_path: Path) -> None:
    path = model_and_optimizer(tmp_path / "pretrained.pt")
    with open(path, "ab") as fh:
        fh.write(b"\0" * 100)
    report = scan(path)
    assert [f.kind for f in report.findings] == ["trailing-data"]
    assert "100 bytes" in report.findings[0].message
