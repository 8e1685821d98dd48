"""Network shares: URLs, mounting, secrets, errors, and a capture to a real SSH server and back.

The SSH tests run a real OpenSSH server on 127.0.0.1 (``share_servers.SshServer``)
for a temporary user and mount it with the real sshfs, through the real command
line. This kernel has no CIFS and no NFS client, so SMB and NFS are tested as far
as this machine allows: the exact argument lists, the version fallback and the
error mapping, fed with the tools' own messages as data, plus a real smbd
answering smbclient and the real mount.cifs against it. Mounting them for real
belongs in the live system under QEMU.
"""

from __future__ import annotations

import errno
import json
import os
import random
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from capabilities import need
from conftest import DiskFactory
from diskbench import PartSpec, fill_tree, rescue_command, tree_digest
from share_servers import SMBD, SSHD, SambaServer, SshServer, free_port

from rescue import kernel, system
from rescue.cli import build_parser
from rescue.errors import EXIT_FAILED, EXIT_REFUSED, BadInputError
from rescue.image.names import CAPTURE_MAP
from rescue.shares import mounts, nfs, smb, ssh
from rescue.shares.errors import (
    ClientMissingError,
    ConnectionDroppedError,
    DialectRefusedError,
    ServerUnreachableError,
    ShareAuthError,
    ShareError,
    ShareFullError,
    ShareNotFoundError,
)
from rescue.shares.hostkeys import HostKey, HostKeyError, ensure_known
from rescue.shares.location import parse_location

# --- URLs ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "want"),
    [
        ("smb://OFFICE;anna@nas.local/backup/pc1/img",
         {"scheme": "smb", "domain": "OFFICE", "user": "anna", "host": "nas.local",
              "path": ("backup", "pc1", "img")}),
        ("smb://192.168.1.5/Public%20Files/img",
         {"scheme": "smb", "user": None, "host": "192.168.1.5", "path": ("Public Files", "img")}),
        ("smb://anna@nas:1445/share/img?vers=3.0",
         {"port": 1445, "version": "3.0", "path": ("share", "img")}),
        ("nfs://filer/srv/images/pc1",
         {"scheme": "nfs", "host": "filer", "path": ("srv", "images", "pc1"), "version": None}),
        ("nfs://[fd00::5]/export/img?vers=3", {"host": "fd00::5", "version": "3"}),
        ("ssh://tech@10.0.0.2:2222/data/images/pc1",
         {"scheme": "ssh", "user": "tech", "port": 2222, "path": ("data", "images", "pc1"),
              "home_relative": False}),
        ("ssh://tech@[::1]/~/images/pc1",
         {"host": "::1", "home_relative": True, "path": ("images", "pc1")}),
        ("SSH://tech@host//double//slashes/", {"scheme": "ssh", "path": ("double", "slashes")}),
    ],
)  # fmt: skip
def test_good_urls_parse_into_their_parts(url: str, want: dict[str, object]) -> None:
    loc = parse_location(url)
    for key, value in want.items():
        assert getattr(loc, key) == value, key
    assert parse_location(loc.url()) == loc  # the normalised form reads back the same


@pytest.mark.parametrize(
    ("url", "says"),
    [
        ("ftp://host/x", "ftp:// is not supported"),
        ("/local/path", "does not start with smb://"),
        ("smb://host", "not followed by a path"),
        ("smb://host/", "needs the share's name"),
        ("nfs://host/", "needs the export's path"),
        ("ssh://host/data", "needs the user name"),
        ("ssh://a@b@host/x", "more than one '@'"),
        ("ssh://tech@host:99999/x", "between 1 and 65535"),
        ("ssh://tech@host:22/x?vers=3", "take no options"),
        ("nfs://host/x?vers=5", "vers=5 is not one of"),
        ("nfs://host/x?timeo=1", "the only option is ?vers="),
        ("smb://-oguest@host/share/x", "user name"),
        ("smb://anna,uid=0@host/share/x", "user name"),
        ("smb://host/sh,are/x", "share name"),
        ("smb://host/share/../etc", "may not hold '..'"),
        ("smb://[zz::1]/share/x", "not an IPv6 address"),
        ("smb://300.1.1.1/share/x", "not an IPv4 address"),
        ("smb://host/share/a%0Ab", "control character"),
        ("ssh://tech@host/x#frag", "no '#' part"),
        ("ssh://tech@-oProxyCommand=x/x", "is not [USER@]HOST[:PORT]"),
    ],
)
def test_bad_urls_are_refused_with_the_valid_forms(url: str, says: str) -> None:
    with pytest.raises(BadInputError) as caught:
        parse_location(url)
    text = str(caught.value)
    assert says in text
    assert "Valid forms:" in text and "ssh://USER@HOST[:PORT]/PATH" in text
    assert caught.value.exit_code == EXIT_REFUSED


@pytest.mark.parametrize(
    "url", ["ssh://tech:Hunter2@host/x", "smb://DOM;anna:Hunter2@nas/share/x",
            "ssh://tech:Hunter2@a@host/x"],
)  # fmt: skip
def test_a_password_in_the_url_is_refused_and_not_repeated(url: str) -> None:
    with pytest.raises(BadInputError) as caught:
        parse_location(url)
    text = str(caught.value)
    assert "Hunter2" not in text
    assert "password" in text or "not a share location" in text
    if url.count("@") == 1:
        assert "--password-file" in text


def test_the_image_folder_is_split_from_the_folder_that_is_mounted() -> None:
    holder, name = parse_location("smb://nas/share/pcs/pc1").split_image()
    assert (holder.share, holder.path, name) == ("share", ("share", "pcs"), "pc1")
    with pytest.raises(BadInputError, match="inside the share"):
        parse_location("smb://nas/share").split_image()
    with pytest.raises(BadInputError, match="inside the export"):
        parse_location("nfs://filer/export").split_image()


def test_password_file_and_passphrase_file_do_not_collide() -> None:
    """``--password-file`` (a share's password) is new beside ``--passphrase-file PART=FILE``
    (disk encryption keys): each keeps its own value, and an abbreviation of both is refused."""
    parser = build_parser()
    args = parser.parse_args([
        "capture", "/dev/sda", "ssh://u@h/x", "--password-file", "/p",
        "--passphrase-file", "/dev/sda2=/k",
    ])  # fmt: skip
    assert args.password_file == Path("/p")
    assert args.passphrase_file == ["/dev/sda2=/k"]
    assert args.image_dir == "ssh://u@h/x"  # a str: Path() would fold the //
    with pytest.raises(SystemExit):
        parser.parse_args(["capture", "/dev/sda", "x", "--pass", "/p"])


def test_credentials_hide_the_password() -> None:
    creds = mounts.Credentials(password=b"Hunter2")
    assert "Hunter2" not in repr(creds) and "Hunter2" not in str(creds)


# --- SMB: arguments, fallback and errors (no CIFS client in this kernel) ------------------

# mount.cifs's own words (cifs-utils 7.0 prints "mount error(N): strerror(N)" and a pointer to
# its manual page); the last one is what it printed on this machine, whose kernel lacks cifs.
CIFS_SAID = {
    "auth": "mount error(13): Permission denied\nRefer to the mount.cifs(8) manual page "
    "(e.g. man mount.cifs) and kernel log messages (dmesg)\n",
    "missing": "mount error(2): No such file or directory\nRefer to the mount.cifs(8) manual "
    "page (e.g. man mount.cifs) and kernel log messages (dmesg)\n",
    "dialect": "mount error(95): Operation not supported\nRefer to the mount.cifs(8) manual "
    "page (e.g. man mount.cifs) and kernel log messages (dmesg)\n",
    "down": "mount error(112): Host is down\nRefer to the mount.cifs(8) manual page "
    "(e.g. man mount.cifs) and kernel log messages (dmesg)\n",
    "refused": "mount error(111): could not connect to 10.0.0.9Unable to find suitable address.\n",
    "noroute": "mount error(113): No route to host\n",
    "no-kernel": "mount error: cifs filesystem not supported by the system\nmount error(19): "
    "No such device\nRefer to the mount.cifs(8) manual page (e.g. man mount.cifs) and kernel "
    "log messages (dmesg)\n",
}


def test_cifs_arguments_hold_no_password_and_no_injected_option() -> None:
    loc = parse_location("smb://OFFICE;anna@[fd00::7]:1445/backup/pcs")
    argv = smb.cifs_argv(loc, Path("/run/x"), version="3.1.1", read_only=True)
    assert argv[:3] == ["mount.cifs", "//fd00::7/backup/pcs", "/run/x"]
    assert argv[3] == "-o"
    assert argv[4].split(",") == [
        "vers=3.1.1", "username=anna", "domain=OFFICE", "ip=fd00::7", "port=1445",
        "ro", "nosuid", "nodev", "noexec",
    ]  # fmt: skip
    guest = smb.cifs_argv(parse_location("smb://nas/pub/x"), Path("/m"), version="3.0",
                          read_only=False)  # fmt: skip
    assert "guest" in guest[4].split(",") and "rw" in guest[4].split(",")
    assert not any("pass" in a for a in argv + guest)


class FakeTools:
    """Stands in for system.run where the kernel cannot mount: answers with given messages
    and keeps what each call was given (argv, environment, the secret on PASSWD_FD)."""

    def __init__(self, answers: list[tuple[int, str]]) -> None:
        self.answers = list(answers)
        self.calls: list[dict[str, object]] = []

    def __call__(self, argv, **kw):  # type: ignore[no-untyped-def]
        env = kw.get("env") or {}
        secret = None
        if "PASSWD_FD" in env:
            fd = int(env["PASSWD_FD"])
            assert fd in kw.get("pass_fds", ())
            secret = os.read(fd, 4096)
        self.calls.append({"argv": list(argv), "env": dict(env), "secret": secret})
        code, said = self.answers.pop(0)
        return subprocess.CompletedProcess(argv, code, b"", said.encode())


def _fake(monkeypatch: pytest.MonkeyPatch, answers: list[tuple[int, str]]) -> FakeTools:
    fake = FakeTools(answers)
    monkeypatch.setattr(mounts.system, "run", fake)
    monkeypatch.setattr(mounts.system, "require", lambda tool, package=None: tool)
    return fake


def test_smb_falls_back_through_the_dialects_and_passes_the_password_on_a_pipe(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    fake = _fake(monkeypatch, [(32, CIFS_SAID["dialect"]), (32, CIFS_SAID["down"]), (0, "")])
    loc = parse_location("smb://anna@nas/backup/pcs")
    mounts.attach(loc, Path("/m"), mounts.Credentials(password=b"Hunter2"), read_only=False)
    tried = [c["argv"][4].split(",")[0] for c in fake.calls]  # type: ignore[index]
    assert tried == ["vers=3.1.1", "vers=3.0", "vers=2.1"]
    for call in fake.calls:
        assert call["secret"] == b"Hunter2"
        assert "Hunter2" not in " ".join(call["argv"])  # type: ignore[arg-type]
        assert "Hunter2" not in json.dumps(call["env"])
        assert set(call["env"]) == {"PASSWD_FD"}  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("said", "error", "tries", "words"),
    [
        ("auth", ShareAuthError, 1, "refused anna"),
        ("missing", ShareNotFoundError, 1, "does not exist"),
        ("refused", ServerUnreachableError, 1, "Could not reach"),
        ("noroute", ServerUnreachableError, 1, "Could not reach"),
        ("no-kernel", ClientMissingError, 1, "cannot mount SMB"),
        ("dialect", DialectRefusedError, 3, "none of the dialects 3.1.1, 3.0, 2.1"),
        ("down", DialectRefusedError, 3, "SMB1"),
    ],
)
def test_smb_errors_in_words(
    monkeypatch: pytest.MonkeyPatch, said: str, error: type, tries: int, words: str
) -> None:
    """Only a refused dialect moves on to the next one; any other failure stops at once."""
    fake = _fake(monkeypatch, [(32, CIFS_SAID[said])] * 3)
    loc = parse_location("smb://anna@nas/backup/pcs")
    with pytest.raises(error) as caught:
        mounts.attach(loc, Path("/m"), mounts.Credentials(password=b"pw"), read_only=False)
    assert len(fake.calls) == tries
    assert words in str(caught.value)


def test_smb_version_from_the_url_is_the_only_one_tried(monkeypatch: pytest.MonkeyPatch) -> None:
    fake = _fake(monkeypatch, [(32, CIFS_SAID["dialect"])])
    with pytest.raises(DialectRefusedError, match=r"dialects 2\.1 "):
        mounts.attach(parse_location("smb://nas/pub/x?vers=2.1"), Path("/m"),
                      mounts.Credentials(), read_only=True)  # fmt: skip
    assert len(fake.calls) == 1
    assert "guest" in fake.calls[0]["argv"][4]  # type: ignore[index]
    assert fake.calls[0]["env"] == {}  # a guest sends no password at all


@need("root")
@pytest.mark.skipif(not SMBD.exists(), reason="samba (smbd) is not installed")
@pytest.mark.skipif(system.which("smbclient") is None, reason="smbclient is not installed")
def test_list_shares_asks_a_real_smbd_with_the_password_on_a_pipe(tmp_path: Path) -> None:
    server = SambaServer(tmp_path / "smb", user=True)
    try:
        server.start()
        right, wrong = tmp_path / "right.txt", tmp_path / "wrong.txt"
        right.write_text(server.password + "\n")
        wrong.write_text("not-the-password\n")
        url = f"smb://{server.user}@127.0.0.1:{server.port}"
        listed = rescue_command("list-shares", url, "--password-file", str(right))
        assert listed.returncode == 0, listed.stderr
        assert listed.stdout.split() == [f"{url}/images"]
        refused = rescue_command("list-shares", url, "--password-file", str(wrong))
        assert refused.returncode == EXIT_REFUSED and "refused" in refused.stderr
        assert server.password not in refused.stderr + listed.stderr
        guest = rescue_command("list-shares", f"smb://127.0.0.1:{server.port}")
        assert guest.returncode == 0 and "/images" in guest.stdout, guest.stderr
        no_share = rescue_command("capture", "/dev/null", f"smb://127.0.0.1:{server.port}")
        assert no_share.returncode == EXIT_REFUSED and "followed by a path" in no_share.stderr
        closed = rescue_command("list-shares", f"smb://127.0.0.1:{free_port()}")
        assert closed.returncode == EXIT_FAILED and "Could not reach" in closed.stderr
    finally:
        server.stop()


@need("root")
@pytest.mark.skipif(not SMBD.exists(), reason="samba (smbd) is not installed")
@pytest.mark.skipif(system.which("smbclient") is None, reason="smbclient is not installed")
@pytest.mark.skipif(system.which("mount.cifs") is None, reason="cifs-utils is not installed")
def test_a_real_smbd_answers_and_mount_cifs_meets_it(tmp_path: Path) -> None:
    """smbd from tests/share_servers.py starts on 127.0.0.1 and lists its share to smbclient;
    the real mount.cifs then mounts it where the kernel has CIFS (the live system), and on a
    kernel without it (this machine) fails with the error that says so."""
    server = SambaServer(tmp_path / "smb")
    try:
        server.start()
        assert "images" in server.list_shares()
        loc = parse_location(f"smb://127.0.0.1:{server.port}/images")
        mnt = tmp_path / "mnt"
        mnt.mkdir()
        if kernel.kernel_supports("cifs"):
            mounts.attach(loc, mnt, mounts.Credentials(), read_only=False)
            (mnt / "hello").write_text("hi")
            mounts.detach(mnt, "kernel")
            assert (server.share / "hello").read_text() == "hi"
        else:
            with pytest.raises(ClientMissingError, match="cannot mount SMB shares"):
                mounts.attach(loc, mnt, mounts.Credentials(), read_only=False)
    finally:
        server.stop()
    assert server.helpers() == []


# --- NFS: arguments, fallback and errors (no NFS client in this kernel) ------------------

# mount.nfs's own words (nfs-utils 2.6), as it prints them for each failure.
NFS_SAID = {
    "version": "mount.nfs: Protocol not supported\n",
    "denied": "mount.nfs: access denied by server while mounting filer:/srv/images\n",
    "missing": "mount.nfs: mounting filer:/srv/nothere failed, reason given by server: "
    "No such file or directory\n",
    "refused": "mount.nfs: Connection refused\n",
    "timeout": "mount.nfs: Connection timed out\n",
    "no-kernel": "mount.nfs: No such device\n",
}


def test_nfs_arguments() -> None:
    argv = nfs.nfs_argv(parse_location("nfs://[fd00::5]/srv/images"), Path("/m"), version="3",
                        read_only=True)  # fmt: skip
    assert argv[:3] == ["mount.nfs", "[fd00::5]:/srv/images", "/m"]
    opts = argv[4].split(",")
    assert opts[:4] == ["vers=3", "soft", "timeo=150", "retrans=2"]
    assert "nolock" in opts and "ro" in opts and "noexec" in opts


@pytest.mark.parametrize(
    ("answers", "error", "tries"),
    [
        ([NFS_SAID["version"]] * 3, DialectRefusedError, 3),
        ([NFS_SAID["denied"]], ShareAuthError, 1),
        ([NFS_SAID["missing"]], ShareNotFoundError, 1),
        ([NFS_SAID["refused"]], ServerUnreachableError, 1),
        ([NFS_SAID["version"], NFS_SAID["timeout"]], ServerUnreachableError, 2),
        ([NFS_SAID["no-kernel"]], ClientMissingError, 1),
    ],
)
def test_nfs_falls_back_within_version_4_and_names_its_errors(
    monkeypatch: pytest.MonkeyPatch, answers: list[str], error: type, tries: int
) -> None:
    fake = _fake(monkeypatch, [(32, a) for a in answers])
    with pytest.raises(error):
        mounts.attach(parse_location("nfs://filer/srv/images"), Path("/m"),
                      mounts.Credentials(), read_only=False)  # fmt: skip
    versions = [c["argv"][4].split(",")[0] for c in fake.calls]  # type: ignore[index]
    assert versions == ["vers=4.2", "vers=4.1", "vers=4.0"][:tries]


def test_nfs_mounts_at_the_first_version_the_server_takes(monkeypatch: pytest.MonkeyPatch) -> None:
    fake = _fake(monkeypatch, [(32, NFS_SAID["version"]), (0, "")])
    mounts.attach(parse_location("nfs://filer/srv/images"), Path("/m"), mounts.Credentials(),
                  read_only=False)  # fmt: skip
    assert [c["argv"][4].split(",")[0] for c in fake.calls] == ["vers=4.2", "vers=4.1"]  # type: ignore[index]


# --- a capture's write errors on a share -------------------------------------------------


@pytest.mark.parametrize(
    "code", [errno.ENOTCONN, errno.EIO, errno.ESTALE, errno.ECONNRESET, mounts.ERESTARTSYS]
)
def test_a_dropped_connection_names_the_resume_command(code: int) -> None:
    err = mounts.writing_error(OSError(code, os.strerror(code)), source="/dev/sda",
                               image="ssh://tech@nas/images/pc1")  # fmt: skip
    assert isinstance(err, ConnectionDroppedError)
    assert err.exit_code == EXIT_FAILED
    assert "dropped" in err.message and "Unknown error" not in err.message
    assert "rescue capture /dev/sda --resume ssh://tech@nas/images/pc1" in str(err)


def test_a_full_share_is_said_so() -> None:
    err = mounts.writing_error(OSError(errno.ENOSPC, "No space left on device"),
                               source="/dev/sda", image="smb://nas/pub/pc1")  # fmt: skip
    assert isinstance(err, ShareFullError)
    assert "full" in err.message and "--resume smb://nas/pub/pc1" in str(err)
    other = mounts.writing_error(OSError(errno.EROFS, "Read-only file system"), source="/dev/sda",
                                 image="smb://nas/pub/pc1")  # fmt: skip
    assert type(other) is ShareError and "Read-only" in other.message


# --- SSH: arguments and errors -----------------------------------------------------------


def test_sshfs_arguments() -> None:
    loc = parse_location("ssh://tech@[::1]:2222/data/images")
    argv = ssh.sshfs_argv(loc, Path("/m"), known_hosts=Path("/run/kh"), log_file=Path("/run/l"),
                          password=True, identity=None, read_only=True)  # fmt: skip
    assert argv[-3:] == ["--", "tech@[::1]:/data/images", "/m"]
    opts = [argv[i + 1] for i, a in enumerate(argv) if a == "-o"]
    for want in ("StrictHostKeyChecking=yes", "UserKnownHostsFile=/run/kh",
                 "GlobalKnownHostsFile=/dev/null", "password_stdin", "ro", "ServerAliveInterval=5",
                 "Ciphers=aes128-gcm@openssh.com\\,aes256-gcm@openssh.com\\,"
                 "chacha20-poly1305@openssh.com\\,aes128-ctr"):  # fmt: skip
        assert want in opts
    keyed = ssh.sshfs_argv(parse_location("ssh://tech@h/~/x"), Path("/m"),
                           known_hosts=Path("/k"), log_file=Path("/l"), password=False,
                           identity=Path("/root/my,key"), read_only=False)  # fmt: skip
    assert "IdentityFile=/root/my\\,key" in keyed and "BatchMode=yes" in keyed
    assert keyed[-2] == "tech@h:x"  # under the home
    assert "password_stdin" not in keyed


@pytest.mark.parametrize(
    ("log", "said", "error"),
    [
        ("tech@127.0.0.1: Permission denied (publickey,password).\n",
         "read: Connection reset by peer\n", ShareAuthError),
        ("No ED25519 host key is known for [127.0.0.1]:2222 and you have requested strict "
         "checking.\nHost key verification failed.\n", "read: Connection reset by peer\n",
         HostKeyError),
        ("ssh: connect to host 127.0.0.1 port 2299: Connection refused\n",
         "read: Connection reset by peer\n", ServerUnreachableError),
        ("", "tech@127.0.0.1:/nothere: No such file or directory\n", ShareNotFoundError),
    ],
)  # fmt: skip
def test_ssh_errors_in_words(log: str, said: str, error: type) -> None:
    """ssh's log (``-E``) and sshfs's stderr, as they were on this machine for each failure."""
    assert isinstance(ssh.failure(parse_location("ssh://tech@127.0.0.1/x"), said, log), error)


# --- against a real sshd ------------------------------------------------------------------

_LACKS = [
    what
    for what, ok in (
        ("root", os.geteuid() == 0),
        ("FUSE", Path("/dev/fuse").exists()),
        ("sshd (openssh-server)", SSHD.exists()),
        ("sshfs", system.which("sshfs") is not None),
    )
    if not ok
]
real_ssh = pytest.mark.skipif(bool(_LACKS), reason=f"this machine lacks: {', '.join(_LACKS)}")


@pytest.fixture(scope="module")
def sshd() -> Iterator[SshServer]:
    if _LACKS:
        pytest.skip(f"this machine lacks: {', '.join(_LACKS)}")
    server = SshServer()
    try:
        server.setup()
        yield server
    finally:
        server.teardown()
    assert subprocess.run(["id", server.user], capture_output=True, check=False).returncode != 0


@pytest.fixture
def share_env(tmp_path: Path) -> dict[str, str]:
    """rescue's share folder (known_hosts, records) for this test alone."""
    return {mounts.RUN_DIR_ENV: str(tmp_path / "run")}


@pytest.fixture
def password_file(tmp_path: Path, sshd: SshServer) -> Path:
    path = tmp_path / "password.txt"
    path.write_text(sshd.password + "\nsecond line is ignored\n")
    path.chmod(0o600)
    return path


def _share_mounts(run_dir: Path) -> list[str]:
    return [m.mountpoint for m in kernel.mount_table() if m.fstype == "fuse.sshfs"
            and (m.mountpoint.startswith(str(run_dir)) or "rsq" in m.source)]  # fmt: skip


def _every_process(what: str) -> bytes:
    """``/proc/PID/<what>`` (cmdline, environ) of every process, joined."""
    out = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                out.append((entry / what).read_bytes())
            except OSError:
                continue
    return b"\n".join(out)


def _files_holding(root: Path, needle: bytes) -> list[Path]:
    return [p for p in root.rglob("*") if p.is_file() and needle in p.read_bytes()]


@real_ssh
@pytest.mark.parametrize("login", ["password", "key"])
def test_mount_share_and_unmount(
    sshd: SshServer, share_env: dict[str, str], password_file: Path, tmp_path: Path, login: str
) -> None:
    (sshd.root / "hello.txt").write_text("from the server")
    mnt = tmp_path / "mnt"
    how = ["--password-file", str(password_file)] if login == "password" else [
        "--identity", str(sshd.client_key)]  # fmt: skip
    res = rescue_command("mount-share", sshd.url(sshd.root), str(mnt), *how,
                         "--host-key", sshd.fingerprint(), env=share_env)  # fmt: skip
    assert res.returncode == 0, res.stderr
    assert f"rescue unmount {mnt}" in res.stdout
    try:
        assert kernel.mounted_at(mnt) is not None
        assert (mnt / "hello.txt").read_text() == "from the server"
        (mnt / "back.txt").write_text("from rescue")
        assert (sshd.root / "back.txt").read_text() == "from rescue"
        running = [m for m in kernel.mount_table() if m.mountpoint == str(mnt)]
        assert running and running[0].fstype == "fuse.sshfs"  # sshfs and ssh run now:
        assert sshd.password.encode() not in _every_process("cmdline")
        assert sshd.password.encode() not in _every_process("environ")
        run_dir = Path(share_env[mounts.RUN_DIR_ENV])
        assert run_dir.stat().st_mode & 0o777 == 0o700
        assert _files_holding(run_dir, sshd.password.encode()) == []
        assert sshd.fingerprint() in subprocess.run(
            ["ssh-keygen", "-l", "-E", "sha256", "-f", str(run_dir / "known_hosts")],
            capture_output=True, text=True, check=True).stdout  # fmt: skip
    finally:
        res = rescue_command("unmount", str(mnt), env=share_env)
    assert res.returncode == 0, res.stderr
    assert kernel.mounted_at(mnt) is None
    again = rescue_command("unmount", str(mnt), env=share_env)
    assert again.returncode == EXIT_REFUSED and "leaves other mounts alone" in again.stderr


@need("root")
def test_unmount_leaves_a_mount_it_did_not_make(tmp_path: Path, share_env: dict[str, str]) -> None:
    other = tmp_path / "tmpfs"
    other.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "none", str(other)], check=True)
    try:
        res = rescue_command("unmount", str(other), env=share_env)
        assert res.returncode == EXIT_REFUSED
        assert "Neither an image (rescue mount) nor a share (rescue mount-share)" in res.stderr
        assert kernel.mounted_at(other) is not None
    finally:
        subprocess.run(["umount", str(other)], check=True)


@real_ssh
def test_wrong_password_unknown_key_missing_folder_and_no_server(
    sshd: SshServer, share_env: dict[str, str], tmp_path: Path, password_file: Path
) -> None:
    """Each failure in its words and with its exit code, and nothing left mounted."""
    mnt = tmp_path / "mnt"
    fp = sshd.fingerprint()
    pw = ["--password-file", str(password_file)]

    unknown = rescue_command("mount-share", sshd.url(sshd.root), str(mnt), *pw, env=share_env)
    assert unknown.returncode == EXIT_REFUSED, unknown.stderr
    assert "is not known to rescue" in unknown.stderr and fp in unknown.stderr
    assert "--host-key SHA256:" in unknown.stderr

    other_key = subprocess.run(
        ["ssh-keygen", "-l", "-E", "sha256", "-f", f"{sshd.client_key}.pub"],
        capture_output=True, text=True, check=True).stdout.split()[1]  # fmt: skip
    wrong_key = rescue_command("mount-share", sshd.url(sshd.root), str(mnt), *pw,
                               "--host-key", other_key, env=share_env)  # fmt: skip
    assert wrong_key.returncode == EXIT_REFUSED
    assert f"offers none of the key {other_key}" in wrong_key.stderr

    bad = tmp_path / "bad.txt"
    bad.write_text("not-the-password\n")
    wrong = rescue_command("mount-share", sshd.url(sshd.root), str(mnt), "--password-file",
                           str(bad), "--host-key", fp, env=share_env)  # fmt: skip
    assert wrong.returncode == EXIT_REFUSED, wrong.stderr
    assert "refused" in wrong.stderr and "wrong password or key" in wrong.stderr

    missing = rescue_command("mount-share", sshd.url(sshd.root / "nothere"), str(mnt), *pw,
                             env=share_env)  # the key is known now  # fmt: skip
    assert missing.returncode == EXIT_REFUSED, missing.stderr
    assert "does not exist on the server" in missing.stderr

    nobody = f"ssh://{sshd.user}@127.0.0.1:{free_port()}/x"  # nothing listens there
    gone = rescue_command("mount-share", nobody, str(mnt), *pw, env=share_env)
    assert gone.returncode == EXIT_FAILED, gone.stderr
    assert "did not answer" in gone.stderr

    for res in (unknown, wrong_key, wrong, missing, gone):
        assert "Traceback" not in res.stderr
    assert kernel.mounted_at(mnt) is None


@pytest.fixture
def small_disk(loop_disk_factory: DiskFactory, tmp_path: Path) -> tuple[str, dict[str, str]]:
    disk = loop_disk_factory(96, "gpt", [PartSpec(None, "ext4", label="data")])
    mnt = disk.mount(0, tmp_path / "fill")
    fill_tree(mnt, 7, 6)
    digest = tree_digest(mnt)
    disk.umount(mnt)
    return disk.path, digest


@real_ssh
@need("root", "loop")
def test_capture_to_ssh_then_verify_info_and_restore(
    sshd: SshServer, share_env: dict[str, str], tmp_path: Path, password_file: Path,
    small_disk: tuple[str, dict[str, str]], loop_disk_factory: DiskFactory,
) -> None:  # fmt: skip
    """A real capture to an ssh:// URL, verified and described from the URL, restored from
    the share (through mount-share: restore takes a local folder for now), file for file."""
    source, digest = small_disk
    url = sshd.url(sshd.root / "pc1")
    login = ["--password-file", str(password_file), "--host-key", sshd.fingerprint()]
    res = rescue_command("--debug", "capture", source, url, *login, env=share_env)
    assert res.returncode == 0, res.stderr
    assert f"Image complete: {url}" in res.stdout
    assert "sshfs" in res.stderr  # --debug shows the calls ...
    assert sshd.password not in res.stderr + res.stdout  # ... never the password
    image = sshd.root / "pc1"
    assert (image / "rescue.json").exists()
    assert _files_holding(image, sshd.password.encode()) == []
    assert _share_mounts(Path(share_env[mounts.RUN_DIR_ENV])) == []  # unmounted after

    checked = rescue_command("--debug", "verify", url, *login[:2], env=share_env)
    assert checked.returncode == 0, checked.stderr
    assert "Image intact" in checked.stdout
    assert sshd.password not in checked.stderr
    info = rescue_command("info", url, "--json", *login[:2], env=share_env)
    assert info.returncode == 0, info.stderr
    assert json.loads(info.stdout)["partitions"][0]["label"] == "data"

    browse = tmp_path / "browse"  # rescue mount of the URL: the share stays up while mounted
    res = rescue_command("mount", url, str(browse), *login[:2], env=share_env)
    assert res.returncode == 0, res.stderr
    run_dir = Path(share_env[mounts.RUN_DIR_ENV])
    try:
        assert tree_digest(browse) == digest
        assert len(_share_mounts(run_dir)) == 1
    finally:
        res = rescue_command("unmount", str(browse), env=share_env)
    assert res.returncode == 0, res.stderr
    assert f"Unmounted the share {sshd.url(sshd.root)}" in res.stdout
    assert _share_mounts(run_dir) == [] and kernel.mounted_at(browse) is None
    wrong = rescue_command("mount", sshd.url(sshd.root / "no-image"), str(browse), *login[:2],
                           env=share_env)  # fmt: skip
    assert wrong.returncode != 0 and "Traceback" not in wrong.stderr
    assert _share_mounts(run_dir) == [] and not list((run_dir / "mounted").glob("*.json"))

    target = loop_disk_factory(96, None, [])
    mnt = tmp_path / "share"
    res = rescue_command("mount-share", sshd.url(sshd.root), str(mnt), "--read-only", *login[:2],
                         env=share_env)  # fmt: skip
    assert res.returncode == 0, res.stderr
    try:
        res = rescue_command("restore", str(mnt / "pc1"), target.path, "--yes")
        assert res.returncode == 0, res.stderr
    finally:
        assert rescue_command("unmount", str(mnt), env=share_env).returncode == 0
    target.rescan()
    back = target.mount(0, tmp_path / "back")
    assert tree_digest(back) == digest


def _wait_for_checkpoint(image: Path, proc: subprocess.Popen[str], seconds: float = 60) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        assert proc.poll() is None, "the capture ended before the server went away"
        try:
            doc = json.loads((image / CAPTURE_MAP).read_text())
        except (OSError, ValueError):
            doc = {}
        if doc.get("checkpoint") or doc.get("done"):
            return
        time.sleep(0.02)
    raise AssertionError("the capture made no checkpoint")


@real_ssh
@need("root", "loop")
def test_server_killed_mid_capture_then_resume_finishes(
    sshd: SshServer, share_env: dict[str, str], tmp_path: Path, password_file: Path,
    loop_disk_factory: DiskFactory,
) -> None:  # fmt: skip
    """The server dies mid-capture: the capture stops with the dropped-connection error that
    names --resume; once sshd is back, the resume finishes an image identical to a capture
    that was never interrupted."""
    disk = loop_disk_factory(300, "gpt", [PartSpec(None, "ext4")])
    mnt = disk.mount(0, tmp_path / "fill")
    rng = random.Random(5)
    for i in range(5):
        (mnt / f"data{i}.bin").write_bytes(rng.randbytes(40 << 20))
    disk.umount(mnt)

    url = sshd.url(sshd.root / "pc2")
    login = ["--password-file", str(password_file), "--host-key", sshd.fingerprint()]
    env = {**os.environ, **share_env, "RESCUE_CHECKPOINT_SECONDS": "0.1"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "rescue", "capture", disk.path, url, "--split", "30M", *login],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL, text=True,
        env=env,
    )  # fmt: skip
    try:
        _wait_for_checkpoint(sshd.root / "pc2", proc)
        sshd.kill()
        out, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        if sshd.proc is None:
            sshd.start()
    assert proc.returncode == EXIT_FAILED, out + err
    assert "The connection to the share holding" in err and "dropped" in err
    assert f"rescue capture {disk.path} --resume {url}" in err
    assert "Traceback" not in err
    assert _share_mounts(Path(share_env[mounts.RUN_DIR_ENV])) == []

    res = rescue_command("capture", disk.path, "--resume", url, "--password-file",
                         str(password_file), env=share_env)  # fmt: skip
    assert res.returncode == 0, res.stderr
    checked = rescue_command("verify", url, "--password-file", str(password_file), env=share_env)
    assert checked.returncode == 0, checked.stderr

    clean = tmp_path / "clean"
    res = rescue_command("capture", disk.path, str(clean), "--split", "30M")
    assert res.returncode == 0, res.stderr
    streams = sorted(p.name for p in clean.iterdir() if "-ptcl-img" in p.name)
    assert streams
    for name in streams:
        assert (sshd.root / "pc2" / name).read_bytes() == (clean / name).read_bytes(), name


@real_ssh
def test_host_key_confirmed_on_a_terminal_is_kept_and_checked_after(
    sshd: SshServer, tmp_path: Path
) -> None:
    """The real scan: a key the technician does not confirm is refused and not kept; one
    confirmed is kept, and a later --host-key that differs from it is refused."""
    known = tmp_path / "known_hosts"
    shown: list[str] = []

    def answer(yes: bool):  # type: ignore[no-untyped-def]
        def confirm(entry: str, keys: list[HostKey]) -> bool:
            shown.extend(k.fingerprint for k in keys)
            assert entry == f"[127.0.0.1]:{sshd.port}"
            return yes

        return confirm

    with pytest.raises(HostKeyError, match="not known to rescue"):
        ensure_known(known, "127.0.0.1", sshd.port, expected=None, confirm=answer(False))
    assert shown == [sshd.fingerprint()]
    assert not known.exists() or known.read_text() == ""
    ensure_known(known, "127.0.0.1", sshd.port, expected=None, confirm=answer(True))
    assert f"[127.0.0.1]:{sshd.port} ssh-ed25519 " in known.read_text()
    ensure_known(known, "127.0.0.1", sshd.port, expected=sshd.fingerprint(), confirm=None)
    other = "SHA256:" + "A" * 43
    with pytest.raises(HostKeyError, match="already knows"):
        ensure_known(known, "127.0.0.1", sshd.port, expected=other, confirm=None)
    with pytest.raises(HostKeyError, match="not an SSH key fingerprint"):
        ensure_known(known, "127.0.0.1", sshd.port, expected="MD5:12:34", confirm=None)


@real_ssh
def test_unmount_of_a_share_whose_server_died(
    sshd: SshServer, share_env: dict[str, str], tmp_path: Path, password_file: Path
) -> None:
    mnt = tmp_path / "mnt"
    login = ["--password-file", str(password_file), "--host-key", sshd.fingerprint()]
    res = rescue_command("mount-share", sshd.url(sshd.root), str(mnt), *login, env=share_env)
    assert res.returncode == 0, res.stderr
    try:
        sshd.kill()
        # the dead connection shows once ssh's keepalives notice it (about 15 s); names
        # never asked for before go to the server, not to sshfs's cache
        deadline = time.monotonic() + 90
        asked = 0
        while time.monotonic() < deadline:
            asked += 1
            try:
                os.stat(mnt / f"never-seen-{asked}")
            except FileNotFoundError:
                pass
            except OSError as exc:
                assert exc.errno in mounts.DROPPED
                break
            time.sleep(0.2)
        else:
            raise AssertionError("the mount still answers with its server gone")
        res = rescue_command("unmount", str(mnt), env=share_env)
        assert res.returncode == 0, res.stderr
        assert kernel.mounted_at(mnt) is None
    finally:
        if kernel.mounted_at(mnt) is not None:
            subprocess.run(["fusermount3", "-u", "-z", str(mnt)], check=False)
        if sshd.proc is None:
            sshd.start()


@real_ssh
def test_a_private_mount_left_by_a_killed_command_is_swept(
    sshd: SshServer, share_env: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A command killed with SIGKILL cannot unmount its share: the next one does."""
    for key, value in share_env.items():
        monkeypatch.setenv(key, value)
    dead = subprocess.Popen(["true"])
    dead.wait()  # a process id nobody has any more
    creds = mounts.Credentials(password=sshd.password.encode(), host_key=sshd.fingerprint())
    left = mounts.run_dir() / f"mnt-{dead.pid}-left"
    left.mkdir()
    mounts.attach(parse_location(sshd.url(sshd.root)), left, creds, read_only=True)
    ours = mounts.run_dir() / f"mnt-{os.getpid()}-ours"
    ours.mkdir()
    mounts.attach(parse_location(sshd.url(sshd.root)), ours, creds, read_only=True)
    try:
        with mounts.private_share(parse_location(sshd.url(sshd.root)), creds,
                                  read_only=True) as folder:  # fmt: skip
            assert kernel.mounted_at(folder) is not None
            assert kernel.mounted_at(left) is None and not left.exists()
            assert kernel.mounted_at(ours) is not None  # its command (this one) still runs
        assert kernel.mounted_at(folder) is None and not folder.exists()
    finally:
        for m in (left, ours):
            if kernel.mounted_at(m) is not None:
                mounts.detach(m, "fuse")
            if m.exists():
                m.rmdir()


@real_ssh
@need("root", "loop")
def test_the_capture_screen_mounts_an_ssh_share_and_captures_onto_it(
    sshd: SshServer, small_disk: tuple[str, dict[str, str]], tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    """The destination list's "network share" entry: F2, the URL and password typed, the
    unknown host key confirmed (y), the capture goes to the server; the app unmounts it."""
    import asyncio  # noqa: PLC0415

    from textual.widgets import Input, OptionList  # noqa: PLC0415

    from rescue.tui.app import RescueApp  # noqa: PLC0415
    from rescue.tui.jobs import ConfirmScreen, JobScreen  # noqa: PLC0415
    from rescue.tui.share import ShareDialog, unmount_all  # noqa: PLC0415

    monkeypatch.setenv(mounts.RUN_DIR_ENV, str(tmp_path / "run"))
    disk, _digest = small_disk
    app = RescueApp(smart=lambda _p: None, find_images=list, network=list, hotplug=False)

    async def go() -> None:
        async with app.run_test(size=(120, 40)) as pilot:
            await pilot.pause(0.3)
            table = app.screen.query_one("#disks")
            keys = [row.value for row in table.rows]  # type: ignore[attr-defined]
            table.move_cursor(row=keys.index(disk))  # type: ignore[attr-defined]
            await pilot.press("c")
            await pilot.pause(0.3)
            dests = app.screen.query_one("#dests", OptionList)
            dests.highlighted = dests.option_count - 1
            await pilot.press("f2")
            await pilot.pause()
            assert isinstance(app.screen, ShareDialog)
            app.screen.query_one("#share-url", Input).value = sshd.url(sshd.root)
            app.screen.query_one("#share-password", Input).value = sshd.password
            app.screen.query_one("#share-url", Input).focus()
            await pilot.press("enter")
            deadline = time.monotonic() + 30
            while not isinstance(app.screen, ConfirmScreen):
                assert time.monotonic() < deadline, "no host key question"
                await pilot.pause(0.1)
            assert sshd.fingerprint() in str(app.screen._question)
            await pilot.press("y")
            while isinstance(app.screen, ShareDialog | ConfirmScreen):
                assert time.monotonic() < deadline, "the share did not mount"
                await pilot.pause(0.1)
            dest = app.screen.query_one("#dest", Input).value
            assert dest.startswith(str(tmp_path / "run"))
            app.screen.query_one("#name", Input).value = "from-the-screen"
            await pilot.press("ctrl+s")
            while not isinstance(app.screen, JobScreen):
                await pilot.pause(0.1)
            job = app.screen
            while job.outcome is None:
                assert time.monotonic() < deadline + 120, "the capture did not finish"
                await pilot.pause(0.2)
            assert job.outcome == "ok", job.message

    asyncio.run(go())
    assert (sshd.root / "from-the-screen" / "rescue.json").is_file()
    assert unmount_all() == []
    assert _share_mounts(tmp_path / "run") == []
    assert sshd.password.encode() not in b"".join(
        p.read_bytes() for p in (sshd.root / "from-the-screen").iterdir()
    )
