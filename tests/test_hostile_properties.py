"""Property: whatever is done to an image folder, rescue ends with a result or a message.

Hypothesis mutates copies of real image folders (a rescue image and the same
image as Clonezilla writes it): bit flips and overwrites at any offset of any
file, truncations, files swapped, removed or replaced by a symbolic link or a
FIFO, and manifest fields replaced by values of the wrong type or range. Then
the real commands run in a subprocess: ``verify``, ``info`` and ``restore
--verify-first --yes`` onto a disk file. Each must finish within a time bound,
under the memory bound, with exit code 0-3 and no traceback; a restore that
fails leaves the target's bytes as they were. The budget of examples is fixed
(``RESCUE_HYPOTHESIS_EXAMPLES``, default 25 per image kind) and derandomised, so
a CI run is repeatable; on failure hypothesis prints the example and the seed.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from bounded import run_limited
from capabilities import need
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from rescue.cli import main

pytestmark = need("root", "loop")

EXAMPLES = int(os.environ.get("RESCUE_HYPOTHESIS_EXAMPLES") or 25)
TIME_LIMIT = 60.0
RSS_LIMIT = 256 << 20
TARGET_SIZE = 64 << 20


@pytest.fixture(scope="module")
def pristine(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A rescue image and its Clonezilla twin, of a GPT disk file with ext4 and FAT."""
    where = tmp_path_factory.mktemp("pristine")
    disk = where / "disk.img"
    with disk.open("wb") as f:
        f.truncate(48 << 20)
    subprocess.run(
        ["sfdisk", "-q", str(disk)],
        input="label: gpt\nstart=2048, size=61440, type=linux\nstart=63488, size=32768\n",
        text=True, check=True,
    )  # fmt: skip
    subprocess.run(
        ["mkfs.ext4", "-q", "-F", "-E", f"offset={2048 * 512}", str(disk), "30M"], check=True
    )
    subprocess.run(
        ["mkfs.vfat", "--offset", "63488", str(disk), "16384"],
        check=True, capture_output=True,
    )  # fmt: skip
    ours = where / "rescue"
    assert main(["capture", str(disk), str(ours), "--split", "1M"]) == 0
    clonezilla = where / "clonezilla"
    clonezilla.mkdir()
    for f in ours.iterdir():
        if "ptcl-img" not in f.name and f.name != "rescue.json":
            shutil.copy(f, clonezilla / f.name)
    (clonezilla / "clonezilla-img").write_text("Starting /usr/sbin/ocs-sr at 2026-11-24\n")
    for stream in sorted({p.name.split(".zst")[0] for p in ours.glob("*-ptcl-img.zst.*")}):
        parts = sorted(ours.glob(f"{stream}.zst.*"))
        joined = where / f"{stream}.joined"
        with joined.open("wb") as out:
            for part in parts:
                out.write(part.read_bytes())
        subprocess.run(
            f"zstd -q -d -c {joined} | zstd -q -c > {clonezilla / (stream + '.zst')}",
            shell=True, check=True,
        )  # fmt: skip
    return {"rescue": ours, "clonezilla": clonezilla}


def run_bounded(argv: list[str]) -> tuple[int, str, int]:
    """(exit code, stderr, peak RSS in bytes) of the real command, within the time bound."""
    res = run_limited([sys.executable, "-m", "rescue", *argv], dict(os.environ), TIME_LIMIT)
    if res.timed_out:
        pytest.fail(f"rescue {' '.join(argv)} did not finish within {TIME_LIMIT} s (it hangs)")
    return res.code, res.stderr, res.max_rss


MUTATIONS = ("flip", "overwrite", "truncate", "remove", "swap", "symlink", "fifo", "field")
BAD_VALUES = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(1 << 70), max_value=1 << 70),
    st.text(max_size=20),
    st.lists(st.integers(), max_size=3),
    st.dictionaries(st.text(max_size=5), st.integers(), max_size=2),
)


def mutate(folder: Path, data: st.DataObject) -> str:
    """Apply one drawn mutation to ``folder``; returns what was done, for the report."""
    files = sorted(p for p in folder.iterdir() if p.is_file())
    kind = data.draw(st.sampled_from(MUTATIONS), label="mutation")
    victim = data.draw(st.sampled_from(files), label="file")
    size = victim.stat().st_size
    if kind == "field" and (folder / "rescue.json").exists():
        doc = json.loads((folder / "rescue.json").read_text())
        part = data.draw(st.integers(0, len(doc["partitions"]) - 1), label="partition")
        key = data.draw(st.sampled_from(sorted(doc["partitions"][part])), label="field")
        value = data.draw(BAD_VALUES, label="value")
        doc["partitions"][part][key] = value
        (folder / "rescue.json").write_text(json.dumps(doc))
        return f"partitions[{part}].{key} = {value!r}"
    if kind in ("flip", "overwrite") and size:
        offset = data.draw(st.integers(0, size - 1), label="offset")
        with victim.open("r+b") as f:
            f.seek(offset)
            old = f.read(1)[0]
            new = old ^ (1 << data.draw(st.integers(0, 7))) if kind == "flip" else 0xFF - old
            f.seek(offset)
            f.write(bytes([new]))
        return f"{kind} byte {offset} of {victim.name}"
    if kind == "truncate":
        keep = data.draw(st.integers(0, max(0, size - 1)), label="keep")
        os.truncate(victim, keep)
        return f"truncate {victim.name} to {keep}"
    if kind == "remove":
        victim.unlink()
        return f"remove {victim.name}"
    if kind == "swap":
        others = [f for f in files if f != victim] or [victim]
        other = data.draw(st.sampled_from(others), label="other")
        if other == victim:
            return "nothing to swap with"
        tmp = folder / ".swap"
        victim.rename(tmp)
        other.rename(victim)
        tmp.rename(other)
        return f"swap {victim.name} and {other.name}"
    if kind == "symlink":
        outside = folder.parent / f"outside-{victim.name}"
        shutil.copy(victim, outside)
        victim.unlink()
        victim.symlink_to(outside)
        return f"{victim.name} is a link out of the folder"
    victim.unlink()
    os.mkfifo(victim)
    return f"{victim.name} is a FIFO"


def check_folder(folder: Path, target: Path, what: str) -> None:
    before = hashlib.sha256(target.read_bytes()).hexdigest()
    for argv in (
        ["verify", str(folder)],
        ["info", str(folder)],
        ["restore", str(folder), str(target), "--verify-first", "--yes"],
    ):
        code, err, rss = run_bounded(argv)
        context = f"{what}: rescue {' '.join(argv[:1])} -> {code}\n{err}"
        assert code in (0, 1, 2, 3), context
        assert "Traceback" not in err, context
        assert rss <= RSS_LIMIT, f"{context}\npeak RSS {rss >> 20} MiB"
        if argv[0] == "restore" and code not in (0, 3):
            after = hashlib.sha256(target.read_bytes()).hexdigest()
            assert after == before, f"{context}\nthe target was written before the error"


@pytest.mark.parametrize("kind", ["rescue", "clonezilla"])
def test_any_damage_ends_in_a_message_or_a_result(
    pristine: dict[str, Path], tmp_path_factory: pytest.TempPathFactory, kind: str
) -> None:
    @settings(
        max_examples=EXAMPLES,
        deadline=None,
        derandomize=True,
        database=None,
        print_blob=True,
        suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
    )
    @given(data=st.data())
    def one(data: st.DataObject) -> None:
        work = tmp_path_factory.mktemp("case")
        folder = work / "image"
        shutil.copytree(pristine[kind], folder)
        target = work / "target.img"
        target.write_bytes(b"\xa5" * TARGET_SIZE)
        what = mutate(folder, data)
        try:
            check_folder(folder, target, what)
        finally:
            shutil.rmtree(work, ignore_errors=True)

    one()


def test_the_pristine_images_restore(pristine: dict[str, Path], tmp_path: Path) -> None:
    """The property holds for the right reason: unmutated, both images restore and verify."""
    for kind, folder in pristine.items():
        target = tmp_path / f"{kind}.img"
        target.write_bytes(b"\xa5" * TARGET_SIZE)
        for argv in (["verify", str(folder)], ["restore", str(folder), str(target), "--yes"]):
            code, err, rss = run_bounded(argv)
            assert code == 0, (kind, argv, err)
            assert rss <= RSS_LIMIT
