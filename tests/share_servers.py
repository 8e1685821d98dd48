"""Real share servers for the tests, in user space, bound to 127.0.0.1 only.

:class:`SshServer` runs OpenSSH's sshd with its own host key and configuration
in a temporary folder, for a temporary user (made with useradd, its password
set through chpasswd on stdin, removed afterwards) who logs in with a password
or a key. :class:`SambaServer` runs smbd with its own smb.conf on a port of its
own (guests, or a temporary user with a password). :class:`GaneshaServer` runs
the user-space NFS server nfs-ganesha, NFSv4 over TCP only, exporting one folder.
Every process is ended by its PID (and its children found through /proc), never
by name.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

SSHD = Path("/usr/sbin/sshd")
SMBD = Path("/usr/sbin/smbd")
GANESHA = Path("/usr/bin/ganesha.nfsd")
LOOPBACK = "127.0.0.1"


def free_port() -> int:
    with socket.socket() as s:
        s.bind((LOOPBACK, 0))
        return int(s.getsockname()[1])


def wait_for_port(port: int, proc: subprocess.Popen[bytes], seconds: float = 20) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"the server exited at once (status {proc.returncode})")
        with socket.socket() as s, contextlib.suppress(OSError):
            s.settimeout(0.5)
            s.connect((LOOPBACK, port))
            return
        time.sleep(0.05)
    raise RuntimeError(f"nothing answers on {LOOPBACK}:{port}")


def descendants(pid: int) -> list[int]:
    """Every process below ``pid`` (from /proc's parent links), deepest last."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rpartition(")")[2].split()[1])
        children.setdefault(ppid, []).append(int(entry.name))
    out: list[int] = []
    todo = [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            out.append(child)
            todo.append(child)
    return out


def end_process(proc: subprocess.Popen[bytes], sig: int = signal.SIGTERM) -> None:
    """End ``proc`` and everything it started, by PID."""
    for pid in [*reversed(descendants(proc.pid)), proc.pid]:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, sig)
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.kill(proc.pid, signal.SIGKILL)
        proc.wait()


class SshServer:
    """sshd on 127.0.0.1 for one temporary user; ``root`` is a folder the user may write."""

    def __init__(self) -> None:
        # not under pytest's folders: they are 0700, and the user must reach its folders
        self.base = Path(tempfile.mkdtemp(prefix="rescue-sshd-"))
        os.chmod(self.base, 0o755)
        self.user = f"rsq{secrets.token_hex(4)}"
        self.password = f"pw-{secrets.token_hex(12)}"
        self.port = free_port()
        self.home = self.base / "home"
        self.root = self.base / "srv"
        self.host_key = self.base / "ssh_host_ed25519_key"
        self.client_key = self.base / "id_ed25519"
        self.config = self.base / "sshd_config"
        self.log = self.base / "sshd.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self._user_made = False

    def setup(self) -> None:
        for key in (self.host_key, self.client_key):
            subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)],
                           check=True)  # fmt: skip
        subprocess.run(
            ["useradd", "--no-create-home", "--home-dir", str(self.home), "--shell", "/bin/sh",
             self.user], check=True,
        )  # fmt: skip
        self._user_made = True
        subprocess.run(["chpasswd"], input=f"{self.user}:{self.password}\n".encode(), check=True)
        for folder in (self.home, self.root):
            folder.mkdir(exist_ok=True)
            shutil.chown(folder, self.user, self.user)
        authorized = self.base / "authorized_keys"
        authorized.write_text(Path(f"{self.client_key}.pub").read_text())
        self.config.write_text(
            f"ListenAddress {LOOPBACK}\n"
            f"Port {self.port}\n"
            f"HostKey {self.host_key}\n"
            f"PidFile {self.base / 'sshd.pid'}\n"
            f"AuthorizedKeysFile {authorized}\n"
            f"AllowUsers {self.user}\n"
            "PasswordAuthentication yes\n"
            "KbdInteractiveAuthentication no\n"
            "PubkeyAuthentication yes\n"
            "UsePAM yes\n"
            "PermitRootLogin no\n"
            "StrictModes no\n"
            "Subsystem sftp internal-sftp\n"
        )
        Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)  # sshd's privilege-separation folder
        self.start()

    def start(self) -> None:
        self.proc = subprocess.Popen(
            [str(SSHD), "-D", "-f", str(self.config), "-E", str(self.log)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        wait_for_port(self.port, self.proc)

    def kill(self) -> None:
        """The server dies with every session it serves (SIGKILL, no goodbye)."""
        if self.proc is not None:
            end_process(self.proc, signal.SIGKILL)
            self.proc = None

    def stop(self) -> None:
        if self.proc is not None:
            end_process(self.proc)
            self.proc = None

    def teardown(self) -> None:
        self.stop()
        if self._user_made:
            # anything still running as the user (an sftp session) would keep userdel from working
            for _ in range(50):
                res = subprocess.run(["userdel", self.user], capture_output=True, check=False)
                if res.returncode == 0:
                    break
                time.sleep(0.1)
            self._user_made = False
        shutil.rmtree(self.base, ignore_errors=True)

    def fingerprint(self) -> str:
        out = subprocess.run(["ssh-keygen", "-l", "-E", "sha256", "-f", f"{self.host_key}.pub"],
                             capture_output=True, text=True, check=True).stdout  # fmt: skip
        return out.split()[1]

    def url(self, path: Path | str) -> str:
        return f"ssh://{self.user}@{LOOPBACK}:{self.port}{path}"


class SambaServer:
    """smbd on 127.0.0.1 with its own smb.conf, one guest-writable share named ``images``."""

    def __init__(self, base: Path, *, user: bool = False) -> None:
        """With ``user``, a temporary user (``self.user``, ``self.password``) may log in;
        the share takes guests either way."""
        self.base = base
        self.port = free_port()
        self.share = base / "share"
        self.config = base / "smb.conf"
        self.proc: subprocess.Popen[bytes] | None = None
        self.user = f"rsm{secrets.token_hex(4)}" if user else None
        self.password = f"pw-{secrets.token_hex(12)}"
        self._user_made = False

    def start(self) -> None:
        for sub in ("private", "lock", "state", "cache", "pid", "log", "share"):
            (self.base / sub).mkdir(parents=True, exist_ok=True)
        os.chmod(self.share, 0o777)
        b = self.base
        self.config.write_text(
            "[global]\n"
            f"  interfaces = {LOOPBACK}\n"
            "  bind interfaces only = yes\n"
            f"  smb ports = {self.port}\n"
            "  disable netbios = yes\n"
            "  server role = standalone server\n"
            "  map to guest = Bad User\n"
            "  server min protocol = SMB2_10\n"
            f"  private dir = {b / 'private'}\n"
            f"  lock directory = {b / 'lock'}\n"
            f"  state directory = {b / 'state'}\n"
            f"  cache directory = {b / 'cache'}\n"
            f"  pid directory = {b / 'pid'}\n"
            f"  ncalrpc dir = {b / 'state' / 'ncalrpc'}\n"
            f"  log file = {b / 'log' / 'smbd.log'}\n"
            f"  passdb backend = tdbsam:{b / 'private' / 'passdb.tdb'}\n"
            "  load printers = no\n"
            "  printcap name = /dev/null\n"
            "[images]\n"
            f"  path = {self.share}\n"
            "  read only = no\n"
            "  guest ok = yes\n"
        )
        self.proc = subprocess.Popen(
            [str(SMBD), "--foreground", "--no-process-group", f"--configfile={self.config}"],
            stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            start_new_session=True,  # smbd signals its whole process group when it stops
        )  # fmt: skip
        wait_for_port(self.port, self.proc)
        if self.user is not None and not self._user_made:
            subprocess.run(["useradd", "--no-create-home", "--shell", "/usr/sbin/nologin",
                            self.user], check=True)  # fmt: skip
            self._user_made = True
            subprocess.run(
                ["smbpasswd", "-c", str(self.config), "-s", "-a", self.user],
                input=f"{self.password}\n{self.password}\n".encode(), check=True,
                capture_output=True,
            )  # fmt: skip

    def list_shares(self) -> str:
        """What ``smbclient -L`` lists as guest."""
        res = subprocess.run(
            ["smbclient", "-L", LOOPBACK, "-p", str(self.port), "-N", "-s", str(self.config)],
            capture_output=True, text=True, check=False, timeout=30,
        )  # fmt: skip
        return res.stdout + res.stderr

    def helpers(self) -> list[int]:
        """samba-dcerpcd and its rpcd_* workers: smbd starts them on demand and they leave
        its process tree; they are known by this server's own configuration file."""
        found = []
        mark = f"--configfile={self.config}".encode()
        for entry in Path("/proc").iterdir():
            if entry.name.isdigit():
                with contextlib.suppress(OSError):
                    if mark in (entry / "cmdline").read_bytes().split(b"\0"):
                        found.append(int(entry.name))
        return found

    def stop(self) -> None:
        self.kill()
        if self._user_made and self.user is not None:
            subprocess.run(["userdel", self.user], check=False, capture_output=True)
            self._user_made = False

    def kill(self) -> None:
        """End smbd and its helpers, keeping the user and the share: ``start`` brings the
        same server back on the same port (a server that went away and came back)."""
        if self.proc is not None:
            end_process(self.proc)
            self.proc = None
        for sig in (signal.SIGTERM, signal.SIGKILL):
            for pid in self.helpers():
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, sig)
            deadline = time.monotonic() + 5
            while self.helpers() and time.monotonic() < deadline:
                time.sleep(0.05)


class GaneshaServer:
    """nfs-ganesha on 127.0.0.1 (NFSv4 over TCP, no rpcbind, no grace period), exporting
    ``self.export`` as ``/export`` read-write for root."""

    def __init__(self, base: Path) -> None:
        self.base = base
        self.port = free_port()
        self.export = base / "export"
        self.config = base / "ganesha.conf"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        for sub in ("export", "recovery"):
            (self.base / sub).mkdir(parents=True, exist_ok=True)
        plugins = next(
            (str(p) for p in Path("/usr/lib").glob("*/ganesha") if p.is_dir()), "/usr/lib/ganesha"
        )
        self.config.write_text(
            "NFS_CORE_PARAM {\n"
            "  Protocols = 4;\n"
            f"  NFS_Port = {self.port};\n"
            f"  Bind_addr = {LOOPBACK};\n"
            "  Enable_NLM = false;\n"
            "  Enable_RQUOTA = false;\n"
            "  Enable_UDP = false;\n"
            f'  Plugins_Dir = "{plugins}";\n'
            "}\n"
            "NFSV4 {\n"
            "  Graceless = true;\n"
            "  RecoveryBackend = fs;\n"
            f'  RecoveryRoot = "{self.base / "recovery"}";\n'
            "}\n"
            "EXPORT {\n"
            "  Export_Id = 1;\n"
            f'  Path = "{self.export}";\n'
            '  Pseudo = "/export";\n'
            "  Access_Type = RW;\n"
            "  Squash = No_Root_Squash;\n"
            "  Protocols = 4;\n"
            "  Transports = TCP;\n"
            "  SecType = sys;\n"
            "  FSAL { Name = VFS; }\n"
            "}\n"
            "LOG { Default_Log_Level = EVENT; }\n"
        )
        self.proc = subprocess.Popen(
            [str(GANESHA), "-F", "-f", str(self.config), "-L", str(self.base / "ganesha.log"),
             "-p", str(self.base / "ganesha.pid")],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            start_new_session=True,
        )  # fmt: skip
        wait_for_port(self.port, self.proc)

    def stop(self) -> None:
        if self.proc is not None:
            end_process(self.proc)
            self.proc = None

    def kill(self) -> None:
        """The server goes away; ``start`` brings it back on the same port, same export."""
        self.stop()
