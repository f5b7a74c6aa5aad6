"""`ckptool labels` and the shipped ImageNet-1k class list."""

from __future__ import annotations

import hashlib
import importlib.util
import json
from pathlib import Path

import pytest

from ckptool.errors import UnreadableError, UsageError
from ckptool.labels import IMAGENET_SHA256, imagenet_labels, read_labels

DATA = Path(__file__).resolve().parent.parent / "ckptool" / "data" / "imagenet_labels.txt"


def test_shipped_file_is_the_derived_list() -> None:
    # The hash was computed on the list derived from the timm wheel (see ckptool/labels.py); any edit breaks it.
    assert hashlib.sha256(DATA.read_bytes()).hexdigest() == IMAGENET_SHA256


def test_standard_index_order() -> None:
    labels = imagenet_labels()
    assert len(labels) == 1000
    assert labels[:3] == ["tench", "goldfish", "great white shark"]
    assert labels[999] == "toilet tissue"
    # a few well-known indices of the standard (torchvision / timm) order
    assert labels[207] == "golden retriever"
    assert labels[281] == "tabby"
    assert labels[340] == "zebra"
    assert labels[954] == "banana"
    # torchvision's list repeats two names (two different synsets each); the derived list keeps them
    assert labels[134] == labels[517] == "crane"
    assert labels[638] == labels[639] == "maillot"
    assert all(label and label == label.strip() and "," not in label for label in labels)


def test_labels_returns_a_copy() -> None:
    a = imagenet_labels()
    a[0] = "changed"
    assert imagenet_labels()[0] == "tench"


@pytest.mark.skipif(importlib.util.find_spec("timm") is None, reason="timm not installed (not a dependency)")
def test_matches_timm_when_installed() -> None:  # pragma: no cover - only where timm happens to be installed
    from timm.data import ImageNetInfo

    info = ImageNetInfo()
    assert [info.index_to_description(i).split(", ")[0] for i in range(1000)] == imagenet_labels()


def test_cli_plain(cli) -> None:
    r = cli("labels")
    assert r.exit_code == 0
    lines = r.stdout.splitlines()
    assert len(lines) == 1000
    assert lines[0] == "tench"
    assert lines[999] == "toilet tissue"


def test_cli_output_is_a_labels_file(cli, tmp_path: Path) -> None:
    """`ckptool labels > f` writes what `predict --labels f` reads: line i is class i."""
    f = tmp_path / "names.txt"
    f.write_text(cli("labels").stdout)
    assert read_labels(f) == imagenet_labels()


def test_cli_json(cli) -> None:
    r = cli("labels", "--json")
    assert r.exit_code == 0
    assert json.loads(r.stdout) == {"labels": imagenet_labels()}


def test_script_json(script) -> None:
    r = script("labels", "--json")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["labels"][1] == "goldfish"


def test_read_labels(tmp_path: Path) -> None:
    f = tmp_path / "l.txt"
    f.write_text("cat\n  dog \nbird\n\n\n", encoding="utf-8")
    assert read_labels(f) == ["cat", "dog", "bird"]
    f.write_text("cat\n\nbird\n", encoding="utf-8")
    with pytest.raises(UsageError, match="blank line at line 2"):
        read_labels(f)
    f.write_text("\n\n", encoding="utf-8")
    with pytest.raises(UsageError, match="empty"):
        read_labels(f)
    f.write_bytes(b"\xff\xfe\x00bad")
    with pytest.raises(UsageError, match="UTF-8"):
        read_labels(f)
    with pytest.raises(UnreadableError, match="no such label file"):
        read_labels(tmp_path / "missing.txt")
    with pytest.raises(UnreadableError, match="directory"):
        read_labels(tmp_path)
