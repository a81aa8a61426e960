"""The systemd files in systemd/: they load cleanly, keep the hardening score, and the journal
catalog, sysusers and tmpfiles files are accepted by the systemd tools that install them."""

from __future__ import annotations

import re
import shutil
import stat
import subprocess
import uuid
from pathlib import Path

import pytest

from backupd import catalog
from tests.fixtures.common import require_tool

REPO = Path(__file__).resolve().parents[2]
SYSTEMD = REPO / "systemd"
UNITS = ("backupd.service", "backupd.socket", "backupd-run@.service", "backupd-run@.timer")
# Units that run code, and the highest "systemd-analyze security" exposure each may have.
MAX_EXPOSURE = {"backupd.service": 1.5, "backupd-run@.service": 1.5}
SYSTEM_UNIT_DIRS = ("/lib/systemd/system", "/usr/lib/systemd/system")


def parse_unit(path: Path) -> dict[str, dict[str, list[str]]]:
    """Given a unit file, return section -> key -> values in order (keys repeat in units)."""
    sections: dict[str, dict[str, list[str]]] = {}
    current: dict[str, list[str]] | None = None
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("[") and line.endswith("]"):
            current = sections.setdefault(line[1:-1], {})
            continue
        assert current is not None, f"{path}: {line!r} outside a section"
        key, _, value = line.partition("=")
        current.setdefault(key.strip(), []).append(value.strip())
    return sections


@pytest.fixture(scope="module")
def analyze_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A root directory for ``systemd-analyze verify --root``: systemd's own units (for
    sysinit.target and friends), ours under /etc/systemd/system, and stub executables at
    /usr/bin/backupd and /usr/bin/backupctl, since verify checks that ExecStart= exists.
    The stubs live only in this root, so the host's /usr/bin stays untouched."""
    require_tool("systemd-analyze")
    root = tmp_path_factory.mktemp("analyze-root")
    system_dir = next((Path(d) for d in SYSTEM_UNIT_DIRS if Path(d, "sysinit.target").exists()), None)
    if system_dir is None:
        pytest.fail("systemd's unit directory with sysinit.target not found")
    shutil.copytree(system_dir, root / "usr/lib/systemd/system", symlinks=True)
    (root / "usr/bin").mkdir(parents=True)
    for name in ("backupd", "backupctl"):
        stub = root / "usr/bin" / name
        stub.write_text("#!/bin/sh\nexit 0\n")
        stub.chmod(0o755)
    unit_dir = root / "etc/systemd/system"
    unit_dir.mkdir(parents=True)
    for unit in UNITS:
        shutil.copy(SYSTEMD / unit, unit_dir / unit)
    return root


def _instance(unit: str) -> str:
    """Given a unit name, return it with an instance name if it is a template."""
    return unit.replace("@.", "@nightly-pg.")


@pytest.mark.timeout(60)
@pytest.mark.parametrize("unit", UNITS)
def test_verify_is_clean(analyze_root: Path, unit: str) -> None:
    # verify exits 0 even for unknown keys or unparsable values (it only warns), so any
    # output at all fails the test.
    proc = subprocess.run(
        ["systemd-analyze", "verify", "--man=no", f"--root={analyze_root}", _instance(unit)],
        capture_output=True,
        text=True,
        timeout=50,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "" and proc.stderr.strip() == "", proc.stdout + proc.stderr


@pytest.mark.timeout(60)
def test_verify_catches_a_missing_executable(analyze_root: Path, tmp_path: Path) -> None:
    # The check above is only worth something if verify looks at ExecStart= inside the root.
    root = tmp_path / "root"
    shutil.copytree(analyze_root, root, symlinks=True)
    (root / "usr/bin/backupctl").unlink()
    proc = subprocess.run(
        ["systemd-analyze", "verify", "--man=no", f"--root={root}", "backupd-run@x.service"],
        capture_output=True,
        text=True,
        timeout=50,
    )
    assert "/usr/bin/backupctl" in proc.stderr


@pytest.mark.timeout(60)
@pytest.mark.parametrize("unit", sorted(MAX_EXPOSURE))
def test_security_exposure(unit: str) -> None:
    require_tool("systemd-analyze")
    proc = subprocess.run(
        ["systemd-analyze", "security", "--offline=true", "--no-pager", str(SYSTEMD / unit)],
        capture_output=True,
        text=True,
        timeout=50,
    )
    match = re.search(r"Overall exposure level for \S+: (\d+(?:\.\d+)?)", proc.stdout)
    assert match, proc.stdout + proc.stderr
    exposure = float(match.group(1))
    print(f"{unit}: exposure {exposure}")
    assert exposure <= MAX_EXPOSURE[unit], proc.stdout


@pytest.mark.timeout(30)
def test_service_contract() -> None:
    # What the daemon, backupctl and the package rely on (DESIGN §9, §12).
    service = parse_unit(SYSTEMD / "backupd.service")["Service"]
    assert service["Type"] == ["notify"]
    assert service["NotifyAccess"] == ["main"]
    assert service["ExecStart"] == ["/usr/bin/backupd --config /etc/backupd/backupd.toml"]
    assert service["ExecReload"] == ["+/usr/bin/backupctl reload"]
    assert service["RestartPreventExitStatus"] == ["78"]
    assert service["User"] == ["backupd"]
    assert service["StateDirectory"] == ["backupd"] and service["StateDirectoryMode"] == ["0700"]
    assert service["RuntimeDirectory"] == ["backupd"]
    # Without this, stopping the service deletes the socket file of the listening socket unit.
    assert service["RuntimeDirectoryPreserve"] == ["yes"]
    assert service["UMask"] == ["0077"]
    unit = parse_unit(SYSTEMD / "backupd.service")["Unit"]
    assert "backupd.socket" in " ".join(unit["Requires"])
    sock = parse_unit(SYSTEMD / "backupd.socket")["Socket"]
    assert sock["ListenStream"] == ["/run/backupd/control.sock"]
    assert sock["SocketMode"] == ["0660"]
    assert sock["SocketGroup"] == ["backupd-admin"]
    run = parse_unit(SYSTEMD / "backupd-run@.service")["Service"]
    assert run["Type"] == ["oneshot"]
    assert run["ExecStart"] == ["/usr/bin/backupctl run %i --wait"]
    timer = parse_unit(SYSTEMD / "backupd-run@.timer")["Timer"]
    assert timer["Persistent"] == ["true"]
    assert timer["OnCalendar"] == ["daily"]


def _catalog_ids(text: str) -> list[str]:
    return re.findall(r"^-- ([0-9a-f]{32})\s*$", text, flags=re.M)


@pytest.mark.timeout(30)
def test_catalog_ids_are_fixed_uuid4_and_match_constants() -> None:
    ids = list(catalog.MESSAGE_IDS.values())
    assert len(set(ids)) == len(ids), "a MESSAGE_ID is used twice"
    for name, value in catalog.MESSAGE_IDS.items():
        assert getattr(catalog, name) == value
        assert uuid.UUID(hex=value).version == 4 and uuid.UUID(hex=value).hex == value, name
    in_file = _catalog_ids((SYSTEMD / "backupd.catalog").read_text())
    assert len(set(in_file)) == len(in_file), "a catalog section is duplicated"
    assert sorted(in_file) == sorted(ids)


@pytest.mark.timeout(60)
def test_catalog_compiles_with_journalctl(tmp_path: Path) -> None:
    journalctl = require_tool("journalctl")
    catalog_dir = tmp_path / "usr/lib/systemd/catalog"
    catalog_dir.mkdir(parents=True)
    shutil.copy(SYSTEMD / "backupd.catalog", catalog_dir / "backupd.catalog")
    update = subprocess.run(
        [journalctl, f"--root={tmp_path}", "--update-catalog"], capture_output=True, text=True, timeout=30
    )
    # journalctl rejects the whole file on a syntax error (exit 1 and a message on stderr).
    assert update.returncode == 0 and update.stderr.strip() == "", update.stderr
    assert (tmp_path / "var/lib/systemd/catalog/database").is_file()
    listed = subprocess.run(
        [journalctl, f"--root={tmp_path}", "--list-catalog"], capture_output=True, text=True, timeout=30
    )
    assert listed.returncode == 0, listed.stderr
    shown = {line.split()[0]: line for line in listed.stdout.splitlines() if line.strip()}
    assert set(shown) == set(catalog.MESSAGE_IDS.values())
    assert all(" backupd: " in line for line in shown.values())
    # A substitution field survives into the compiled catalog text.
    dumped = subprocess.run(
        [journalctl, f"--root={tmp_path}", "--dump-catalog", catalog.FAILED],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert "@JOB@" in dumped.stdout and "@STEP@" in dumped.stdout, dumped.stdout + dumped.stderr


@pytest.mark.timeout(60)
def test_sysusers_and_tmpfiles_in_a_root(tmp_path: Path) -> None:
    sysusers = require_tool("systemd-sysusers")
    tmpfiles = require_tool("systemd-tmpfiles")
    (tmp_path / "etc").mkdir()
    subprocess.run(
        [sysusers, f"--root={tmp_path}", str(SYSTEMD / "backupd.sysusers")],
        check=True,
        capture_output=True,
        timeout=30,
    )
    passwd = {
        line.split(":")[0]: line.split(":") for line in (tmp_path / "etc/passwd").read_text().splitlines()
    }
    groups = {
        line.split(":")[0]: line.split(":") for line in (tmp_path / "etc/group").read_text().splitlines()
    }
    assert passwd["backupd"][5] == "/var/lib/backupd"
    assert passwd["backupd"][6] in ("/usr/sbin/nologin", "/sbin/nologin")
    assert int(passwd["backupd"][2]) < 1000, "backupd must be a system user"
    assert "backupd-admin" in groups and "backupd" in groups
    uid, gid = int(passwd["backupd"][2]), int(groups["backupd"][2])
    proc = subprocess.run(
        [tmpfiles, f"--root={tmp_path}", "--create", str(SYSTEMD / "backupd.tmpfiles")],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert proc.returncode == 0, proc.stderr
    expected = {
        "etc/backupd": (0o755, 0, 0),
        "etc/backupd/conf.d": (0o755, 0, 0),
        "etc/backupd/keys": (0o700, uid, gid),
        "etc/backupd/secrets": (0o750, 0, gid),
    }
    for rel, (mode, owner, group) in expected.items():
        st = (tmp_path / rel).stat()
        assert (stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid) == (mode, owner, group), rel
