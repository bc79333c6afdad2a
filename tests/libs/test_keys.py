"""Object keys and the paths built from them: one rule, checked where keys come in and again
where a path is joined."""

from __future__ import annotations

from pathlib import Path

import pytest

from contracts.text import TextRefused, check_line, check_lines, check_secret, printable
from deploy.farm.plugins import RenderError, resolve
from libs.keys import MAX_KEY_LENGTH, KeyRefused, check_key, confined_path


@pytest.mark.parametrize(
    "key",
    [
        "",
        "/etc/passwd",
        "..",
        ".",
        "../x",
        "a/../../x",
        "a/./b",
        "a//b",
        "a/",
        "a\\b",
        "a\x00b",
        "a\nb",
        "a b",
        "k" * (MAX_KEY_LENGTH + 1),
        "/".join(["s"] * 33),
        "s" * 256,
        "caf\u00e9.blend",
    ],
)
def test_a_key_that_is_not_a_plain_relative_key_is_refused(key: str) -> None:
    with pytest.raises(KeyRefused):
        check_key(key)


@pytest.mark.parametrize("key", ["a", "scenes/shot_010/main.blend", "a/..b/c..", "x!_.*'()-/y"])
def test_a_plain_relative_key_is_kept_as_it_is(key: str) -> None:
    assert check_key(key) == key


def test_a_confined_path_is_the_plain_join_under_the_root(tmp_path: Path) -> None:
    assert str(confined_path(tmp_path, "a/b.blend")) == f"{tmp_path}/a/b.blend"
    assert str(confined_path("/mnt/scenes", "a/b.blend")) == "/mnt/scenes/a/b.blend"


def test_a_key_through_a_symlink_out_of_the_root_is_refused(tmp_path: Path) -> None:
    root = tmp_path / "scenes"
    root.mkdir()
    (root / "link").symlink_to("/etc")
    with pytest.raises(KeyRefused, match="outside"):
        confined_path(root, "link/passwd")


def test_the_local_farm_keeps_relative_paths_under_its_root(tmp_path: Path) -> None:
    assert resolve("out/frame.png", tmp_path) == tmp_path / "out" / "frame.png"
    assert resolve("/abs/scene.blend", tmp_path) == Path("/abs/scene.blend")
    for bad in ("../outside.png", "a/../../outside.png", "a\x00b"):
        with pytest.raises(RenderError):
            resolve(bad, tmp_path)


@pytest.mark.parametrize("text", ["a\x00", "\x01", "\x1b[31m", "\x7f", "\x9b", "\ud800", "\r"])
def test_one_line_text_refuses_control_characters_and_surrogates(text: str) -> None:
    with pytest.raises(TextRefused):
        check_line(text)


def test_multi_line_text_allows_only_tab_and_newline() -> None:
    assert check_lines("a\tb\nc") == "a\tb\nc"
    for text in ("a\x00", "a\rb", "\ud800"):
        with pytest.raises(TextRefused):
            check_lines(text)


def test_a_secret_refuses_only_nul_and_surrogates() -> None:
    assert check_secret("p\x01ss word\t") == "p\x01ss word\t"
    for text in ("p\x00", "\udc00"):
        with pytest.raises(TextRefused):
            check_secret(text)


def test_printable_escapes_what_a_store_cannot_hold() -> None:
    assert printable("/v1/jobs/a\x00\ud800b") == "/v1/jobs/a\\x00\\ud800b"
    assert len(printable("x" * 5000)) == 2000
