"""The Debian package: build it, install it, run the daemon as its unit would, purge it.

The slow test changes the machine: it installs the package (replacing an installed
backupd), creates user backupd, writes under /etc/backupd, /var/lib/backupd, /run/backupd
and /srv/backupd-pkgtest, and purges the package at the end. So it runs only in CI
(``CI=true``, where it must pass) or with ``BACKUPD_TEST_PACKAGE=1``, which says that this
machine may be used that way. It needs root, apt, dpkg-dev, and network access to Debian's
and PyPI's package indexes (build dependencies, Python dependencies).

There is no systemd as PID 1 here, so the test plays its part for backupd.socket and
backupd.service, taking every value from the installed unit files: it creates the state,
cache and runtime directories with the units' owners and modes, binds the control socket
with SocketMode=/SocketGroup= and hands it over through LISTEN_FDS/LISTEN_PID, connects
stderr to journald's stream socket with $JOURNAL_STREAM, listens on $NOTIFY_SOCKET for
READY=1/WATCHDOG=1, and starts ExecStart= as User=/Group= with UMask= through setpriv.
The seccomp, namespace and capability settings are not applied (no service manager); they
are checked statically by test_units.py.
"""

from __future__ import annotations

import grp
import json
import os
import pwd
import re
import shlex
import shutil
import signal
import socket
import sqlite3
import stat
import subprocess
import tempfile
import tomllib
from collections.abc import Iterator
from pathlib import Path

import pytest

from backupd import catalog
from backupd.config.load import load_config
from tests.fixtures.common import IN_CI, unavailable, wait_for
from tests.fixtures.journald import Journald
from tests.system.test_units import parse_unit

REPO = Path(__file__).resolve().parents[2]
PACKAGING = REPO / "packaging"
UNIT_DIRS = (Path("/lib/systemd/system"), Path("/usr/lib/systemd/system"))
STATE = Path("/var/lib/backupd")
SOURCE_DIR = Path("/srv/backupd-pkgtest")
CONF_D = Path("/etc/backupd/conf.d")
KEY = Path("/etc/backupd/keys/pkgtest.key")
DEBIAN_PYTHON = Path("/usr/bin/python3")
ENABLED = IN_CI or os.environ.get("BACKUPD_TEST_PACKAGE") == "1"
APT_ENV = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}


# --- quick checks of the packaging files ---------------------------------------------------
@pytest.mark.timeout(30)
def test_default_config_is_valid() -> None:
    loaded = load_config(PACKAGING / "backupd.toml", extra=[])
    assert loaded.config.jobs == {}


@pytest.mark.timeout(30)
def test_default_config_example_is_valid(tmp_path: Path) -> None:
    # The commented example in the shipped config must be a working config once uncommented.
    lines = (PACKAGING / "backupd.toml").read_text().splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("# [sources."))
    example = [re.sub(r"^# ?", "", line) for line in lines[start:] if line.startswith("#")]
    text = "\n".join(line for line in lines[:start]) + "\n" + "\n".join(example) + "\n"
    config = tmp_path / "backupd.toml"
    config.write_text(text)
    loaded = load_config(config, extra=[])
    assert set(loaded.config.jobs) == {"app-db-nightly"}


@pytest.mark.timeout(30)
def test_maintainer_scripts_parse() -> None:
    for script in ("backupd.postinst", "backupd.prerm", "backupd.postrm"):
        path = PACKAGING / "debian" / script
        assert path.read_text().startswith("#!/bin/sh\n"), script
        assert "#DEBHELPER#" in path.read_text(), script
        subprocess.run(["sh", "-n", str(path)], check=True, timeout=10)
    subprocess.run(["bash", "-n", str(PACKAGING / "build-deb")], check=True, timeout=10)
    assert os.access(PACKAGING / "build-deb", os.X_OK)
    assert os.access(PACKAGING / "debian" / "rules", os.X_OK)


# --- the whole package -----------------------------------------------------------------------
def _run(
    argv: list[str], *, timeout: float = 120, env: dict[str, str] | None = None, check: bool = True
) -> subprocess.CompletedProcess[str]:
    """Given a command, run it and return the CompletedProcess; fail showing its output."""
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, env=env, check=False)
    if check and proc.returncode != 0:
        pytest.fail(
            f"{shlex.join(argv)} exited {proc.returncode}\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}"
        )
    return proc


def _installed() -> bool:
    proc = subprocess.run(
        ["dpkg-query", "-W", "-f=${Status}", "backupd"], capture_output=True, text=True, check=False
    )
    return proc.returncode == 0 and "installed" in proc.stdout.split()


def _purge_all() -> None:
    """Remove the package and everything this test leaves, so that it can run again."""
    if _installed():
        subprocess.run(
            ["apt-get", "purge", "-y", "backupd"], env=APT_ENV, capture_output=True, timeout=300, check=False
        )
    for path in (STATE, Path("/var/cache/backupd"), Path("/run/backupd"), Path("/etc/backupd"), SOURCE_DIR):
        shutil.rmtree(path, ignore_errors=True)


def _unit(name: str) -> dict[str, dict[str, list[str]]]:
    for directory in UNIT_DIRS:
        if (directory / name).is_file():
            return parse_unit(directory / name)
    pytest.fail(f"unit {name} not installed in {UNIT_DIRS}")


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.lstat().st_mode)


@pytest.fixture
def clean_machine() -> Iterator[None]:
    if not ENABLED:
        pytest.skip("changes the machine; runs in CI or with BACKUPD_TEST_PACKAGE=1")
    if os.geteuid() != 0:
        unavailable("root (installing a package)")
    for tool in ("apt-get", "dpkg-buildpackage", "setpriv"):
        if shutil.which(tool) is None:
            unavailable(f"executable {tool!r}")
    _purge_all()
    yield
    _purge_all()


class FakeManager:
    """Does for backupd what systemd would do with the installed backupd.socket and
    backupd.service, reading the settings from the unit files."""

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.service = _unit("backupd.service")["Service"]
        self.socket_unit = _unit("backupd.socket")["Socket"]
        self.user = pwd.getpwnam(self.service["User"][0])
        self.group = grp.getgrnam(self.service["Group"][0])
        self.socket_path = Path(self.socket_unit["ListenStream"][0])
        self.proc: subprocess.Popen[str] | None = None
        self.notify: socket.socket | None = None
        self.messages: list[str] = []

    def _one(self, key: str, default: str) -> str:
        return self.service.get(key, [default])[-1]

    def make_directories(self) -> dict[str, str]:
        """Create State/Cache/RuntimeDirectory= as systemd does; return their env variables."""
        env = {}
        for kind, base in (("State", "/var/lib"), ("Cache", "/var/cache"), ("Runtime", "/run")):
            names = self.service.get(f"{kind}Directory", [])
            if not names:
                continue
            path = Path(base) / names[0]
            path.mkdir(parents=True, exist_ok=True)
            os.chown(path, self.user.pw_uid, self.group.gr_gid)
            path.chmod(int(self._one(f"{kind}DirectoryMode", "0755"), 8))
            env[f"{kind.upper()}_DIRECTORY"] = str(path)
        env["CONFIGURATION_DIRECTORY"] = "/etc/" + self.service["ConfigurationDirectory"][0]
        return env

    def bind_socket(self) -> socket.socket:
        """Bind the control socket as backupd.socket would (before the service starts)."""
        self.socket_path.parent.mkdir(parents=True, exist_ok=True)
        self.socket_path.unlink(missing_ok=True)
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.bind(str(self.socket_path))
        os.chown(self.socket_path, 0, grp.getgrnam(self.socket_unit["SocketGroup"][0]).gr_gid)
        self.socket_path.chmod(int(self.socket_unit["SocketMode"][0], 8))
        sock.listen(64)
        return sock

    def journal_stream(self) -> socket.socket:
        """Connect to journald's stream socket as systemd does for StandardError=journal."""
        stream = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        stream.connect("/run/systemd/journal/stdout")
        stream.shutdown(socket.SHUT_RD)
        # identifier, unit, priority, level prefix, forward to syslog, kmsg, console
        stream.sendall(b"backupd\n\n6\n1\n0\n0\n0\n")
        return stream

    def start(self, watchdog_sec: float) -> None:
        env_dirs = self.make_directories()
        listener = self.bind_socket()
        stream = self.journal_stream()
        self.notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        notify_path = self.tmp / "notify.sock"
        self.tmp.chmod(0o755)
        self.notify.bind(str(notify_path))
        notify_path.chmod(0o666)
        self.notify.settimeout(0.2)
        st = os.fstat(stream.fileno())
        env = {
            "PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
            "LANG": "C.UTF-8",
            "HOME": self.user.pw_dir,
            "USER": self.user.pw_name,
            "LOGNAME": self.user.pw_name,
            "SHELL": self.user.pw_shell,
            "JOURNAL_STREAM": f"{st.st_dev}:{st.st_ino}",
            "NOTIFY_SOCKET": str(notify_path),
            "WATCHDOG_USEC": str(int(watchdog_sec * 1_000_000)),
            "LISTEN_FDS": "1",
            "LISTEN_FDNAMES": "backupd.socket",
            **env_dirs,
        }
        exec_start = shlex.split(self.service["ExecStart"][0])
        setpriv = [
            "setpriv",
            f"--reuid={self.user.pw_uid}",
            f"--regid={self.group.gr_gid}",
            "--init-groups",
            "--no-new-privs",
            "--inh-caps=-all",
            "--bounding-set=-all",
            "--",
        ]
        # LISTEN_PID/WATCHDOG_PID must name the daemon's own pid, known only after fork:
        # a small Debian-python wrapper puts the socket on fd 3, sets them and the umask, and
        # execs setpriv, which execs the daemon, all in the same process.
        wrapper = (
            "import os, sys\n"
            "os.dup2(int(sys.argv[1]), 3)\n"
            "os.set_inheritable(3, True)\n"
            "os.environ['LISTEN_PID'] = os.environ['WATCHDOG_PID'] = str(os.getpid())\n"
            "os.umask(int(sys.argv[2], 8))\n"
            "os.execvp(sys.argv[3], sys.argv[3:])\n"
        )
        argv = [
            str(DEBIAN_PYTHON),
            "-c",
            wrapper,
            str(listener.fileno()),
            self._one("UMask", "0022"),
            *setpriv,
            *exec_start,
        ]
        self.proc = subprocess.Popen(
            argv,
            env=env,
            pass_fds=(listener.fileno(),),
            stdin=subprocess.DEVNULL,
            stdout=stream.fileno(),
            stderr=stream.fileno(),
            text=True,
        )
        listener.close()
        stream.close()

    def receive(self) -> None:
        """Collect sd_notify messages that arrived so far."""
        assert self.notify is not None
        while True:
            try:
                data = self.notify.recv(4096)
            except (TimeoutError, BlockingIOError):
                return
            self.messages.extend(data.decode().splitlines())

    def wait_message(self, message: str, timeout: float) -> None:
        def seen() -> bool:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise AssertionError(f"backupd exited {self.proc.returncode} before {message}")
            self.receive()
            return message in self.messages

        wait_for(seen, timeout, f"sd_notify {message}")

    def stop(self, timeout: float) -> int:
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout=timeout)
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
                self.proc.wait(timeout=30)
            if self.notify is not None:
                self.receive()
                self.notify.close()


# Slow (a .deb build, minutes): skipped unless enabled, see the module docstring.
@pytest.mark.slow
@pytest.mark.timeout(900)
def test_build_install_run_purge(clean_machine: None, journald: Journald, tmp_path: Path) -> None:
    # --- build, with Debian's python3 and lintian ---------------------------------------------
    # BACKUPD_TEST_DEB names an already built .deb (CI may build once; a developer may
    # iterate on the rest); the build and its lintian check are then skipped.
    prebuilt = os.environ.get("BACKUPD_TEST_DEB")
    if prebuilt:
        debs = [Path(prebuilt)]
    else:
        out = tmp_path / "out"
        build = _run([str(PACKAGING / "build-deb"), "--install-deps", str(out)], timeout=700, env=APT_ENV)
        debs = sorted(out.glob("backupd_*.deb"))
        assert len(debs) == 1, build.stdout[-2000:]
        # build-deb fails on a lintian error (the override for /opt is in the package).
        assert "lintian not installed" not in build.stderr
        assert "E: backupd" not in build.stdout
    version = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["version"]
    arch = _run(["dpkg", "--print-architecture"]).stdout.strip()
    assert debs[0].name == f"backupd_{version}_{arch}.deb"

    # --- install --------------------------------------------------------------------------
    install = _run(["apt-get", "install", "-y", str(debs[0])], env=APT_ENV, timeout=300, check=False)
    if install.returncode != 0:  # stale package lists on a fresh machine
        _run(["apt-get", "update", "-qq"], env=APT_ENV, timeout=300)
        _run(["apt-get", "install", "-y", str(debs[0])], env=APT_ENV, timeout=300)
    assert Path("/usr/bin/backupd").resolve() == Path("/opt/venvs/backupd/bin/backupd")
    assert Path("/opt/venvs/backupd/bin/python").resolve() == DEBIAN_PYTHON.resolve()
    venv_version = _run(["/opt/venvs/backupd/bin/python", "-c", "import sys; print(sys.version)"]).stdout
    debian_version = _run([str(DEBIAN_PYTHON), "-c", "import sys; print(sys.version)"]).stdout
    assert venv_version == debian_version
    # Every module of the package imports inside the venv, with the stripped extension
    # modules from the wheels and Debian's python3-systemd.
    _run(
        [
            "/opt/venvs/backupd/bin/python",
            "-c",
            "import importlib, pkgutil, backupd, backupctl\n"
            "for pkg in (backupd, backupctl):\n"
            "    for m in pkgutil.walk_packages(pkg.__path__, pkg.__name__ + '.'):\n"
            "        if not m.name.endswith('__main__'):\n"
            "            importlib.import_module(m.name)\n"
            "import msgspec, zstandard, brotli, nacl.bindings, bcrypt, cryptography.hazmat.bindings._rust\n"
            "import systemd.journal\n"
            "assert systemd.journal.__file__.startswith('/opt/venvs/backupd/'), systemd.journal.__file__\n",
        ]
    )
    backupd_user = pwd.getpwnam("backupd")
    assert backupd_user.pw_dir == str(STATE) and backupd_user.pw_uid < 1000
    assert grp.getgrnam("backupd-admin")
    etc = Path("/etc/backupd")
    assert (_mode(etc / "keys"), (etc / "keys").stat().st_uid) == (0o700, backupd_user.pw_uid)
    assert (_mode(etc / "secrets"), (etc / "secrets").stat().st_gid) == (0o750, backupd_user.pw_gid)
    assert (
        "/etc/backupd/backupd.toml" in _run(["dpkg-query", "--control-show", "backupd", "conffiles"]).stdout
    )
    listed = _run(["journalctl", "--list-catalog"]).stdout
    assert all(mid in listed for mid in catalog.MESSAGE_IDS.values()), "catalog not compiled by the trigger"
    for unit in (
        "backupd.service",
        "backupd.socket",
        "backupd-run@pkgtest.service",
        "backupd-run@pkgtest.timer",
    ):
        verify = _run(["systemd-analyze", "verify", "--man=no", unit], check=False)
        assert verify.returncode == 0 and not verify.stderr.strip(), verify.stderr

    # --- the documented commands ---------------------------------------------------------------
    check = _run(["backupd", "--check-config"])
    assert "ok" in check.stdout
    assert _run(["backupctl", "--version"]).stdout.split() == ["backupctl", version]
    bad = Path("/etc/backupd/conf.d/bad.toml")
    bad.write_text("[jobs.x]\nsource = 'missing'\ndestinations = ['missing']\n")
    assert _run(["backupd", "--check-config"], check=False).returncode == 78
    bad.unlink()

    # --- a job: SQLite source, encrypted, into the state directory -----------------------------
    SOURCE_DIR.mkdir(parents=True)
    db = SOURCE_DIR / "app.db"
    with sqlite3.connect(db) as conn:
        conn.execute("create table t (id integer primary key, v text)")
        conn.executemany("insert into t (v) values (?)", [(f"row {i}",) for i in range(1000)])
    conn.close()
    # The daemon needs the directory too (journal files beside the database).
    for path in (SOURCE_DIR, db):
        os.chown(path, backupd_user.pw_uid, backupd_user.pw_gid)
    _run(["runuser", "-u", "backupd", "--", "backupctl", "key", "generate", str(KEY)])
    assert (_mode(KEY), KEY.stat().st_uid) == (0o600, backupd_user.pw_uid)
    (CONF_D / "test.toml").write_text(
        f"""
[sources.pkgtest-db]
type = "sqlite"
path = "{db}"

[destinations.pkgtest-disk]
type = "local"
path = "{STATE}/backups"

[encryption.pkgtest]
key_file = "{KEY}"

[jobs.pkgtest]
source = "pkgtest-db"
destinations = ["pkgtest-disk"]
encryption = "pkgtest"
"""
    )
    assert "1 jobs" in _run(["backupd", "--check-config"]).stdout

    # The notify socket must be reachable by user backupd: not under pytest's 0700 tmp_path.
    notify_dir = Path(tempfile.mkdtemp(prefix="backupd-notify-", dir="/tmp"))
    manager = FakeManager(notify_dir)
    manager.start(watchdog_sec=4)
    try:
        manager.wait_message("READY=1", 60)
        sock = manager.socket_path
        ctl = ["backupctl", "--socket", str(sock)]
        run = _run([*ctl, "run", "pkgtest", "--wait"], timeout=300, check=False)
        assert run.returncode == 0, run.stdout + run.stderr
        history = json.loads(_run([*ctl, "history", "--json"]).stdout)
        text = json.dumps(history)
        assert "pkgtest" in text and "succeeded" in text, text
        manager.wait_message("WATCHDOG=1", 30)
        # ExecReload= as systemd runs it: "+" means as root, outside the sandbox; the client
        # finds the socket at its default path, the unit's ListenStream=.
        exec_reload = manager.service["ExecReload"][0]
        assert exec_reload.startswith("+")
        _run(shlex.split(exec_reload[1:]))
        manager.wait_message("RELOADING=1", 30)
        # Files: socket, state directory, backup object and sidecar.
        assert (_mode(sock), sock.stat().st_gid) == (0o660, grp.getgrnam("backupd-admin").gr_gid)
        assert stat.S_ISSOCK(sock.stat().st_mode)
        assert (_mode(STATE), STATE.stat().st_uid) == (0o700, backupd_user.pw_uid)
        stored = [p for p in (STATE / "backups").rglob("*") if p.is_file()]
        assert any(p.name.endswith(".bkd") for p in stored), stored
        assert any(p.name.endswith(".meta.json") for p in stored), stored
        for path in stored:
            assert _mode(path) == 0o600, f"{path} is {oct(_mode(path))}"
            assert path.stat().st_uid == backupd_user.pw_uid
        for path in STATE.rglob("*"):
            if path.is_file():
                assert _mode(path) & 0o077 == 0, f"{path} is {oct(_mode(path))}"
        # The daemon logged to the journal (it found $JOURNAL_STREAM) with the job's field.
        entries = journald.wait({"JOB": "pkgtest", "_UID": str(backupd_user.pw_uid)}, timeout=30)
        ids = {e.get("MESSAGE_ID") for e in entries} - {None}
        assert ids <= set(catalog.MESSAGE_IDS.values()), ids
        assert {catalog.STARTED, catalog.SUCCEEDED} <= ids, ids
        # journalctl -x explains the entry from the installed catalog, fields filled in.
        since = f"--since=@{journald.since:.6f}"
        explained = _run(
            ["journalctl", "-x", "--no-pager", since, f"MESSAGE_ID={catalog.SUCCEEDED}", "JOB=pkgtest"]
        ).stdout
        assert "Subject: Backup job pkgtest succeeded" in explained, explained
    finally:
        code = manager.stop(timeout=90)
        shutil.rmtree(notify_dir, ignore_errors=True)
    assert code == 0, f"backupd exited {code} on SIGTERM"
    assert "STOPPING=1" in manager.messages

    # --- purge ---------------------------------------------------------------------------------
    (CONF_D / "test.toml").unlink()
    purge = _run(["apt-get", "purge", "-y", "backupd"], env=APT_ENV, timeout=300)
    assert not _installed()
    assert not Path("/usr/bin/backupd").exists() and not Path("/usr/bin/backupctl").exists()
    assert not Path("/opt/venvs/backupd").exists()
    assert not Path("/etc/backupd/backupd.toml").exists()
    assert not CONF_D.exists() and not Path("/etc/backupd/secrets").exists()
    # Kept by policy: the state (with local backups) and the keys, without which nothing
    # encrypted can be restored; the message says how to remove the state.
    assert STATE.is_dir() and any((STATE / "backups").rglob("*.bkd"))
    assert KEY.is_file()
    assert "rm -rf /var/lib/backupd" in purge.stdout + purge.stderr
    assert not any(
        mid in _run(["journalctl", "--list-catalog"]).stdout for mid in catalog.MESSAGE_IDS.values()
    )
    pwd.getpwnam("backupd")  # the system user stays, as Debian packages leave them
