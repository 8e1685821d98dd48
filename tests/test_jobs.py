"""Unattended jobs: the job file's checks, the disk rules, and real jobs on real loop disks.

The job drive is a loop disk with an ext4 filesystem labelled RESCUE, the disks the
rules pick are loop disks given serials through a udev rule (the same property,
ID_SERIAL_SHORT, a real disk's serial reaches rescue by). Rules never pick loop
devices on a rescue system (its live image is one), so these tests turn on the
rule matcher's test hook: ``allow_loop=True`` in the core, the environment variable
``RESCUE_TEST_HOOK_JOB_LOOP_DISKS=1`` for the real CLI.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import os
import time
from pathlib import Path

import pytest
from capabilities import need
from conftest import DiskFactory
from diskbench import LoopDisk, PartSpec, disk_digest, rescue_command
from job_fixtures import (
    Serials,
    file_hashes,
    image_on,
    logs_on,
    mine,
    mounted_sources,
    tag,
    write_on,
)

from rescue.devices import Disk
from rescue.errors import EXIT_REFUSED, BadInputError, ImageDamagedError, RefusedError
from rescue.operations.job_finding import (
    JobRef,
    cmdline_job,
    find_jobs,
    jobs_at_start,
    open_job,
    parse_ref,
)
from rescue.operations.job_rules import (
    ALLOW_LOOP_ENV,
    RuleMatchError,
    parse_rule,
    parse_size,
    pick_disk,
)
from rescue.operations.jobs import parse_job, plan_job, run_job
from rescue.operations.restore import describe_target
from rescue.operations.source import resolve_source
from rescue.operations.verify import verify

pytest_plugins = ("job_fixtures",)  # the fixtures serials, source, job_drive, target

# --- the job file's checks (no disks needed) -----------------------------------------


def parse(text: str, root: Path) -> object:
    return parse_job(
        text, file=root / "rescue-job.toml", root=root, device=None, shown_as="JOBFILE"
    )


RESTORE = 'action = "restore"\nimage = "images/pc"\ntarget = "internal"\n'


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (RESTORE + 'targte = "x"\n', "JOBFILE: unknown key(s) 'targte'. A restore job takes:"),
        ('action = "resotre"\nimage = "x"\n', "key 'action': 'resotre' is not one of"),
        ('image = "x"\n', "the key 'action' is missing"),
        (
            'action = "restore"\nimage = "x"\ntarget = "biggest"\n',
            "key 'target': 'biggest' is not a rule rescue knows",
        ),
        (
            'action = "restore"\nimage = "x"\ntarget = "size:lots"\n',
            "key 'target': 'lots' is not a size",
        ),
        (
            'action = "restore"\nimage = "/images/pc"\ntarget = "internal"\n',
            "key 'image': '/images/pc' is an absolute path",
        ),
        (
            'action = "restore"\nimage = "images/../../etc"\ntarget = "internal"\n',
            'leads out of the filesystem holding the job file (by "..")',
        ),
        (RESTORE + 'passphrase_file = "/root/key"\n', "keys never go in a job file"),
        (
            RESTORE + 'source = "internal"\n',
            "key 'source': belongs to capture jobs, not to a restore job",
        ),
        ('action = "verify"\nimage = 3\n', "key 'image': must be a string in quotes, not a number"),
        (RESTORE + 'after = "halt"\n', "key 'after': 'halt' is not one of"),
        (RESTORE + 'new_ids = "yes"\n', "key 'new_ids': must be true or false"),
        (
            'action = "capture"\nimage = "c"\nsource = "internal"\n',
            "a capture job needs the key 'name'",
        ),
        (
            'action = "capture"\nimage = "c"\nsource = "internal"\nname = "pc-{host}"\n',
            "{host} is not a placeholder",
        ),
        (
            'action = "capture"\nimage = "c"\nsource = "internal"\nname = "a/b"\n',
            "is not a folder name",
        ),
        ('action = "verify"\nimage = \'x\n', "JOBFILE is not a valid TOML file"),
    ],
)
def test_a_bad_job_file_is_refused_naming_file_and_key(
    tmp_path: Path, text: str, message: str
) -> None:
    with pytest.raises(BadInputError) as err:
        parse(text, tmp_path)
    assert message in str(err.value)


def test_a_symbolic_link_out_of_the_drive_is_refused(tmp_path: Path) -> None:
    root = tmp_path / "drive"
    (root / "images").mkdir(parents=True)
    (root / "images" / "pc").symlink_to(tmp_path)  # leads out of the drive's root
    with pytest.raises(BadInputError) as err:
        parse(RESTORE, root)
    assert "key 'image': 'images/pc' leads out of the filesystem" in str(err.value)
    assert "through a symbolic link" in str(err.value)
    (root / "images" / "pc").unlink()
    (root / "images" / "pc").symlink_to(root / "images")  # inside: fine
    job = parse(RESTORE, root)
    assert job.image_dir == (root / "images").resolve()


def test_a_good_job_file_reads_as_written(tmp_path: Path) -> None:
    text = (
        'action = "capture"\nimage = "captures/lab"\nname = "pc-{serial}-{date}-{time}"\n'
        'source = "size:500G"\nafter = "poweroff"\n'
    )
    job = parse(text, tmp_path)
    assert job.action == "capture" and job.after == "poweroff"
    assert job.rule.size == 500 * 10**9
    assert job.image_dir == tmp_path.resolve() / "captures" / "lab"
    assert parse(RESTORE, tmp_path).after == "shell"


def test_sizes_are_decimal_unless_binary_is_written() -> None:
    assert parse_size("500G") == 500 * 10**9
    assert parse_size("1.5T") == 15 * 10**11
    assert parse_size("476GiB") == 476 * 2**30
    assert parse_size("256 MB") == 256 * 10**6
    for bad in ("", "G", "12X", "-3G", "0"):
        with pytest.raises(ValueError, match="not a size"):
            parse_size(bad)
    assert parse_rule("serial:WD-ABC123", "w").serial == "WD-ABC123"
    with pytest.raises(BadInputError, match="gives no serial"):
        parse_rule("serial:", "w")


def test_the_kernel_command_line_names_a_job() -> None:
    line = "BOOT_IMAGE=/live/vmlinuz boot=live quiet rescue.job=RESCUE:/jobs/lab.toml splash\n"
    assert cmdline_job(line) == JobRef("RESCUE", "jobs/lab.toml")
    assert cmdline_job("quiet splash") is None
    assert cmdline_job('rescue.job="LAB STICK:/a b.toml" x') == JobRef("LAB STICK", "a b.toml")
    assert cmdline_job("rescue.job=A:/x.toml rescue.job=B:y.toml") == JobRef("B", "y.toml")
    assert cmdline_job("rescue.job=RESCUE") == JobRef("RESCUE", "rescue-job.toml")
    assert str(JobRef("RESCUE", "jobs/lab.toml")) == "RESCUE:/jobs/lab.toml"
    with pytest.raises(BadInputError, match="without"):
        cmdline_job("rescue.job=RESCUE:/../etc/passwd")
    with pytest.raises(BadInputError, match="names no filesystem label"):
        parse_ref(":/x.toml")


# --- real disks ----------------------------------------------------------------------


@need("root", "loop")
def test_rules_pick_one_disk_or_list_what_they_saw(
    loop_disk_factory: DiskFactory, serials: Serials
) -> None:
    a = loop_disk_factory(72, None, [])
    b = loop_disk_factory(72, None, [])
    c = loop_disk_factory(80, None, [])
    serials(a, f"{tag()}-A")
    serials(c, f"{tag()}-C")
    disks = mine(a, b, c)
    assert pick_disk(parse_rule(f"serial:{tag()}-C", "w"), disks, allow_loop=True).path == c.path
    # 80 MiB = 83.886 MB: within 1% of 83.5M, not of 82M
    assert pick_disk(parse_rule("size:83.5M", "w"), disks, allow_loop=True).path == c.path
    assert pick_disk(parse_rule("size:80MiB", "w"), disks, allow_loop=True).path == c.path
    with pytest.raises(RuleMatchError) as none:
        pick_disk(parse_rule("size:82M", "w"), disks, where="JOB, key 'target'", allow_loop=True)
    text = str(none.value)
    assert "JOB, key 'target': the rule 'size:82M' matches no disk" in text
    for d in (a, b, c):
        assert d.path in text
    assert f"serial {tag()}-A" in text and "(83886080 bytes)" in text
    assert "% off the size" in text
    with pytest.raises(RuleMatchError) as two:
        pick_disk(parse_rule("size:72MiB", "w"), disks, allow_loop=True)
    text = str(two.value)
    assert "matches 2 disks, and a job never guesses" in text
    assert f"{a.path}, serial {tag()}-A" in text and f"{b.path}, " in text
    assert text.count(": matches") == 2
    assert {d.path for d in two.value.seen} == {a.path, b.path, c.path}
    with pytest.raises(RuleMatchError, match="a loop device"):  # no test hook: never a loop
        pick_disk(parse_rule(f"serial:{tag()}-C", "w"), disks, allow_loop=False)
    # internal: not the disk holding the job file, not a removable one
    with pytest.raises(RuleMatchError, match="matches 3 disks"):
        pick_disk(parse_rule("internal", "w"), disks, allow_loop=True)
    usb = [dataclasses.replace(d, transport="usb") if d.path == b.path else d for d in disks]
    picked = pick_disk(parse_rule("internal", "w"), usb, job_disk=a.path, allow_loop=True)
    assert picked.path == c.path


@need("root", "loop", "partclone")
def test_a_restore_job_from_a_rescue_stick(
    source: LoopDisk, job_drive: LoopDisk, target: LoopDisk, serials: Serials, tmp_path: Path
) -> None:
    serials(target, f"{tag()}-T")
    image_on(job_drive, source, tmp_path, "images/pc")
    write_on(job_drive, tmp_path, {"rescue-job.toml": (
        f'action = "restore"\nimage = "images/pc"\ntarget = "serial:{tag()}-T"\n'
        'after = "poweroff"\n'
    )})  # fmt: skip
    disks = mine(source, job_drive, target)
    found = find_jobs(disks)
    assert [(str(f.ref), f.device, f.problem) for f in found] == [
        ("RESCUE:/rescue-job.toml", job_drive.parts[0], None)
    ]
    assert found[0].summary == f"restore images/pc onto serial:{tag()}-T then poweroff"
    assert job_drive.parts[0] not in mounted_sources()  # looked at, and unmounted

    asked = []
    with open_job(JobRef("RESCUE", "rescue-job.toml"), disks) as job:
        assert job_drive.parts[0] in mounted_sources()  # read-write for the job's duration
        result = run_job(job, disks, allow_loop=True, confirm=asked.append)
    assert job_drive.parts[0] not in mounted_sources()
    assert len(asked) == 1 and asked[0].disk.path == target.path
    assert result.exit_code == 0 and result.after == "poweroff"
    assert result.log.name.startswith("rescue-job-") and result.log.parent.name == "images"

    target.rescan()
    want = file_hashes(source.mount(0, tmp_path / "a", "ro"))
    got = file_hashes(target.mount(0, tmp_path / "b", "ro"))
    assert len(want) > 20 and got == want
    (log,) = logs_on(job_drive, tmp_path, "images")
    assert "job RESCUE:/rescue-job.toml" in log and "action: restore" in log
    assert f"disk: {target.path}" in log and f"serial {tag()}-T" in log
    assert "(117440512 bytes)" in log and "started: " in log and "ended: " in log
    assert "result: ok: restored /images/pc onto" in log
    assert "PATH=" not in log and "HOME=" not in log  # never the environment


@need("root", "loop")
def test_the_console_waits_for_the_drive_the_kernel_command_line_names(
    job_drive: LoopDisk, tmp_path: Path
) -> None:
    """At boot a USB drive shows up after the console starts. The drive here is real and
    attached; the lister leaves it out of its first three answers, as it would be before
    its disk had appeared."""
    write_on(job_drive, tmp_path, {"jobs/lab.toml": 'action = "verify"\nimage = "img"\n'})
    answers = 0

    def late() -> list[Disk]:
        nonlocal answers
        answers += 1
        return mine(job_drive) if answers > 3 else []

    cmdline = "quiet rescue.job=RESCUE:/jobs/lab.toml"
    found = jobs_at_start(late, cmdline, wait=30)
    assert answers == 4
    assert [(str(f.ref), f.device, f.problem) for f in found] == [
        ("RESCUE:/jobs/lab.toml", job_drive.parts[0], None)
    ]
    # never there: said after the wait, with the labels seen
    answers = -1000
    started = time.monotonic()
    (missing,) = jobs_at_start(late, cmdline, wait=2)
    assert 2 <= time.monotonic() - started < 10
    assert missing.problem is not None and "No filesystem is labelled 'RESCUE'" in missing.problem
    # no job on the command line: no wait
    started = time.monotonic()
    assert jobs_at_start(late, "quiet", wait=30) == []
    assert time.monotonic() - started < 5


@need("root", "loop", "partclone")
def test_a_capture_job_names_the_image_by_serial_and_date(
    source: LoopDisk, job_drive: LoopDisk, serials: Serials, tmp_path: Path
) -> None:
    serials(source, f"{tag()} S/1")  # made safe for a folder name
    write_on(job_drive, tmp_path, {"rescue-job.toml": (
        'action = "capture"\nimage = "captures"\nname = "pc-{serial}-{date}"\n'
        f'source = "serial:{tag()} S/1"\n'
    )})  # fmt: skip
    disks = mine(source, job_drive)
    assert next(d for d in disks if d.path == source.path).serial == f"{tag()} S/1"
    with open_job(JobRef("RESCUE", "rescue-job.toml"), disks) as job:
        result = run_job(job, disks, allow_loop=True)
        image = result.plan.image_dir
        assert image.name == f"pc-{tag()}_S_1-{dt.date.today():%Y-%m-%d}"
        report = verify(image)
        assert report.streams_checked == 1
        logs = sorted(image.parent.glob("rescue-job-*.log"))
        assert len(logs) == 1 and "result: ok: captured" in logs[0].read_text()
    assert result.exit_code == 0 and result.after == "shell"


@need("root", "loop", "partclone")
def test_a_verify_job_and_a_damaged_image(
    source: LoopDisk, job_drive: LoopDisk, tmp_path: Path
) -> None:
    image_on(job_drive, source, tmp_path, "images/pc")
    write_on(job_drive, tmp_path, {"v.toml": 'action = "verify"\nimage = "images/pc"\n'})
    disks = mine(source, job_drive)
    with open_job(JobRef("RESCUE", "v.toml"), disks) as job:
        result = run_job(job, disks)
        assert "is intact: " in result.summary
        stream = sorted(result.plan.image_dir.glob("*ptcl-img.zst*"))[0]
        with stream.open("r+b") as f:
            f.seek(stream.stat().st_size // 2)
            byte = f.read(1)
            f.seek(-1, os.SEEK_CUR)
            f.write(bytes([byte[0] ^ 0xFF]))
        with pytest.raises(ImageDamagedError) as err:
            run_job(job, disks)
    logs = logs_on(job_drive, tmp_path, "images")  # two in one second: the second is -2
    assert len(logs) == 2
    assert sum("result: ok: /images/pc is intact" in log for log in logs) == 1
    failed = [log for log in logs if "result: failed: " in log]
    assert len(failed) == 1 and err.value.message in failed[0]


@need("root", "loop", "partclone")
def test_a_job_never_writes_to_the_drive_holding_it(
    source: LoopDisk, job_drive: LoopDisk, serials: Serials, tmp_path: Path
) -> None:
    serials(job_drive, f"{tag()}-J")
    image_on(job_drive, source, tmp_path, "images/pc")
    write_on(job_drive, tmp_path, {"rescue-job.toml": (
        f'action = "restore"\nimage = "images/pc"\ntarget = "serial:{tag()}-J"\n'
    )})  # fmt: skip
    disks = mine(source, job_drive)
    before = disk_digest(source.path)
    with open_job(JobRef("RESCUE", "rescue-job.toml"), disks) as job:
        with pytest.raises(RefusedError) as err:
            plan_job(job, disks, allow_loop=True)
        assert f"Refusing to write to {job_drive.path}: it holds the job file " in str(err.value)
        with pytest.raises(RefusedError):
            run_job(job, disks, allow_loop=True)
        # internal never even picks it: here it leaves only the source disk
        internal = dataclasses.replace(job, rule=parse_rule("internal", "w"))
        assert plan_job(internal, disks, allow_loop=True).disk.path == source.path
    (log,) = logs_on(job_drive, tmp_path, "images")
    assert "result: failed: Refusing to write to" in log
    assert disk_digest(source.path) == before


@need("root", "loop", "partclone")
def test_the_real_command_dry_run_then_yes(
    source: LoopDisk, job_drive: LoopDisk, target: LoopDisk, serials: Serials, tmp_path: Path
) -> None:
    serials(target, f"{tag()}-T")
    image_on(job_drive, source, tmp_path, "images/pc")
    write_on(job_drive, tmp_path, {"jobs/lab.toml": (
        f'action = "restore"\nimage = "images/pc"\ntarget = "serial:{tag()}-T"\n'
        'after = "reboot"\n'
    )})  # fmt: skip
    stick = job_drive.mount(0, tmp_path / "usb")
    job = str(stick / "jobs" / "lab.toml")
    hook = {ALLOW_LOOP_ENV: "1", "COLUMNS": "200"}
    blank = disk_digest(target.path)

    res = rescue_command("job", job, "--dry-run", env=hook)
    assert res.returncode == 0, res.stderr
    assert "action: restore" in res.stdout and "image: /images/pc" in res.stdout
    assert f"target: {target.path}, serial {tag()}-T, " in res.stdout
    assert "(117440512 bytes) (picked by the rule 'serial:" in res.stdout
    assert "after: reboot: restart the machine when the job has succeeded" in res.stdout
    assert "Dry run: nothing was written." in res.stderr

    res = rescue_command("job", job, "--dry-run", "--json", env=hook)
    plan = json.loads(res.stdout.splitlines()[-1])
    assert plan["event"] == "plan" and plan["disk"]["serial"] == f"{tag()}-T"

    res = rescue_command("job", job, env=hook)  # no terminal, no --yes: described, refused
    assert res.returncode == EXIT_REFUSED, res.stderr
    assert f"{target.path} (a disk)" in res.stderr and "no terminal to confirm on" in res.stderr
    res = rescue_command("job", job, "--dry-run", env={"COLUMNS": "200"})  # no test hook
    assert res.returncode == EXIT_REFUSED and "a loop device (rules never pick one)" in res.stderr
    assert disk_digest(target.path) == blank
    assert not list((stick / "images").glob("*.log")) or all(
        "result: failed: Not writing to" in p.read_text() for p in (stick / "images").glob("*.log")
    )

    res = rescue_command("job", job, "--yes", env=hook)
    assert res.returncode == 0, res.stderr
    assert "Job done: restored /images/pc onto" in res.stdout
    assert "After: reboot: restart the machine" in res.stdout  # printed, not done
    # two runs in one second: the second log is ...-HHMMSS-2.log, which sorts first
    logs = list((stick / "images").glob("rescue-job-*.log"))
    assert len(logs) == 2
    assert any("result: ok: restored /images/pc" in p.read_text() for p in logs)
    job_drive.umount(stick)
    target.rescan()
    want = file_hashes(source.mount(0, tmp_path / "a", "ro"))
    assert file_hashes(target.mount(0, tmp_path / "b", "ro")) == want


@need("root", "loop")
def test_the_real_command_finds_a_job_by_label(job_drive: LoopDisk, tmp_path: Path) -> None:
    write_on(job_drive, tmp_path, {"rescue-job.toml": 'action = "verify"\nimage = "nowhere"\n'})
    res = rescue_command("job", "--find")
    assert res.returncode == 0, res.stderr
    assert f"RESCUE:/rescue-job.toml on {job_drive.parts[0]} (label RESCUE)" in res.stdout
    assert "verify nowhere then shell" in res.stdout
    res = rescue_command("job", "RESCUE:/rescue-job.toml", "--dry-run")
    assert res.returncode == EXIT_REFUSED
    assert "there is no folder /nowhere on the job's drive" in res.stderr
    assert job_drive.parts[0] not in mounted_sources()
    res = rescue_command("job", "RESCUE:/rescue-job.toml")  # runs: the failure is logged
    assert res.returncode == EXIT_REFUSED and "no folder /nowhere" in res.stderr
    (log,) = logs_on(job_drive, tmp_path, ".")  # at the root: no folder made for it
    assert "result: failed: RESCUE:/rescue-job.toml, key 'image': there is no folder" in log
    assert job_drive.parts[0] not in mounted_sources()


@need("root", "loop", "udev")
def test_a_confirmation_names_the_serial_udev_knows(
    loop_disk_factory: DiskFactory, serials: Serials
) -> None:
    # a SATA disk's serial is in udev's database only (ata_id), not in sysfs: what every
    # confirmation names must come from there too, for the disk and for its partitions
    disk = loop_disk_factory(64, "gpt", [PartSpec(None, "ext4")])
    serial = f"{tag()}-CONFIRM"
    serials(disk, serial)
    for path in (disk.path, disk.parts[0]):
        source = resolve_source(path)
        assert source.serial == serial, path
        assert f"serial {serial}" in describe_target(source)
