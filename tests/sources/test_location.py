"""The Location layer: what the user typed, resolved to files, with names that cannot leave the folder."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from ckptool.errors import UnreadableError, UnsafeFileError
from ckptool.sources import LocalLocation, Location, open_location, register_scheme
from ckptool.sources.location import SCHEMES


def _folder(tmp_path: Path) -> Path:
    d = tmp_path / "model"
    (d / "sub").mkdir(parents=True)
    (d / "a.bin").write_bytes(b"A" * 10)
    (d / "sub" / "b.bin").write_bytes(b"B" * 3)
    (d / ".hidden").write_bytes(b"x")
    (tmp_path / "outside.bin").write_bytes(b"secret")
    return d


def test_a_folder_lists_its_files_and_opens_members(tmp_path: Path) -> None:
    d = _folder(tmp_path)
    loc = open_location(d)
    assert isinstance(loc, LocalLocation) and isinstance(loc, Location)
    assert loc.is_folder and loc.folder == str(d) and loc.name == str(d)
    assert loc.names() == ["a.bin"]  # files only, no dot-files, no recursion
    assert loc.exists("a.bin") and loc.exists("sub/b.bin") and not loc.exists("nope.bin") and not loc.exists("sub")
    with loc.open("sub/b.bin") as src:
        assert src.read(0, 3) == b"BBB" and src.name == os.path.join(str(d), "sub", "b.bin")
    with pytest.raises(UnreadableError, match="is a folder"):
        loc.open()


def test_a_file_resolves_relative_to_its_folder(tmp_path: Path) -> None:
    d = _folder(tmp_path)
    loc = open_location(str(d / "a.bin"))
    assert not loc.is_folder and loc.folder == str(d)
    with loc.open() as src:
        assert src.size == 10
    assert loc.resolve("sub/b.bin") == os.path.join(str(d), "sub", "b.bin")
    assert open_location(loc) is loc  # a Location passes through


@pytest.mark.parametrize(
    ("rel", "why"),
    [("../outside.bin", r"outside the folder \('\.\.'\)"), ("sub/../../outside.bin", r"\.\."),
     ("/etc/passwd", "absolute"), ("", "absolute"), ("a\0.bin", "NUL"), ("..\\outside.bin", r"\.\.")],
)  # fmt: skip
def test_names_that_escape_are_refused(tmp_path: Path, rel: str, why: str) -> None:
    loc = open_location(_folder(tmp_path))
    with pytest.raises(UnsafeFileError, match=why):
        loc.resolve(rel)
    with pytest.raises(UnsafeFileError):
        loc.open(rel)


def test_a_symlink_out_of_the_folder_is_refused(tmp_path: Path) -> None:
    d = _folder(tmp_path)
    (d / "link.bin").symlink_to(tmp_path / "outside.bin")
    (d / "inner.bin").symlink_to(d / "a.bin")  # a link that stays inside is fine
    loc = open_location(d)
    with pytest.raises(UnsafeFileError, match="resolves outside the folder"):
        loc.open("link.bin")
    with loc.open("inner.bin") as src:
        assert src.read(0, 1) == b"A"


def test_missing_paths_say_so(tmp_path: Path) -> None:
    with pytest.raises(UnreadableError, match="no such file"):
        open_location(tmp_path / "nope")


def test_a_registered_scheme_gets_its_strings(tmp_path: Path) -> None:
    d = _folder(tmp_path)
    seen: list[str] = []

    def factory(url: str) -> Location:
        seen.append(url)
        return LocalLocation(d)

    register_scheme("test-scheme://", factory)
    try:
        loc = open_location("test-scheme://org/model")
        assert seen == ["test-scheme://org/model"] and loc.names() == ["a.bin"]
    finally:
        del SCHEMES["test-scheme://"]
