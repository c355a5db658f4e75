"""``envship verify --image`` with the locked wheels in a store (``--store`` or
``ENVSHIP_STORE``) through the real CLI entry point: an installed file swapped together
with a rewritten RECORD, which only the locked wheel's own RECORD tells apart."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from envship.cli.main import main
from envship.image import BuiltImage
from envship.ocilayout import OciLayout
from indexlib import _record_hash
from test_image import VENV_SITE, Setup, _no_source_date_epoch, slim_layout, slim_sample
from test_imageinspect import EVIL, ORIGINAL, append_layer, swap_with_its_record

# The fixtures imported from test_image are shared with it (built once per session).
__all__ = ["_no_source_date_epoch", "slim_layout", "slim_sample"]


@pytest.fixture
def swapped(tmp_path: Path, slim_sample: tuple[Setup, BuiltImage, str]) -> str:
    """The slim sample with alpha/__init__.py and alpha's RECORD swapped in a new layer."""
    _, built, ref = slim_sample
    image = OciLayout.open(Path(ref.split(":")[1])).image("slim")
    return append_layer(image, tmp_path / "swapped", swap_with_its_record(built))


def verify_json(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, dict[str, object]]:
    code = main(["verify", "--json", *args])
    out, err = capsys.readouterr()
    assert err == ""
    data = json.loads(out)  # one JSON document, whatever the outcome
    assert isinstance(data, dict)
    return code, data


@pytest.mark.parametrize("how", ["--store", "ENVSHIP_STORE"])
def test_the_wheels_in_the_store_catch_a_file_swapped_with_its_record(
    how: str,
    swapped: str,
    slim_sample: tuple[Setup, BuiltImage, str],
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    setup = slim_sample[0]
    lock = ["--lock", str(setup.lock.path)]
    if how == "--store":
        store = ["--store", str(setup.store.root)]
    else:
        monkeypatch.setenv("ENVSHIP_STORE", str(setup.store.root))
        store = []
    code, data = verify_json(capsys, "--image", swapped, *lock, *store)
    assert code == 1 and data["identical"] is False
    assert data["differences"] == [
        {
            "kind": "changed",
            "name": "alpha",
            "path": f"/{VENV_SITE}/alpha/__init__.py",
            "expected": f"{_record_hash(ORIGINAL)}, size {len(ORIGINAL)}",
            "actual": f"{_record_hash(EVIL)}, size {len(EVIL)}",
        }
    ]
    assert isinstance(data["notes"], list)
    assert not any("installed RECORD only" in n for n in data["notes"])


def test_without_the_wheels_the_note_says_what_was_not_tied(
    tmp_path: Path,
    swapped: str,
    slim_sample: tuple[Setup, BuiltImage, str],
    capsys: pytest.CaptureFixture[str],
) -> None:
    """The same swap in a store without the wheels: the installed RECORDs agree with the
    files, so it is identical, and the note says no locked wheel vouched for them."""
    setup = slim_sample[0]
    empty = tmp_path / "empty-store"
    code, data = verify_json(
        capsys, "--image", swapped, "--lock", str(setup.lock.path), "--store", str(empty)
    )
    assert code == 0 and data["identical"] is True
    notes = data["notes"]
    assert isinstance(notes, list)
    [note] = [n for n in notes if "installed RECORD only" in n]
    assert f"the store {empty} holds none of the 3 locked wheels" in note
