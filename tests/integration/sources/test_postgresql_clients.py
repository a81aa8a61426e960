"""Choosing the pg_dump that matches the server, with fake client installations.

Each fake ``<root>/<major>/bin`` holds stub ``pg_dump``/``psql`` scripts: pg_dump reports its
version, psql answers the adapter's version query as a server of the test's choosing would.
No server is involved; these are fast and run everywhere.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from backupd.config.model import PostgresSource
from backupd.errors import ClientTooOld, SourceError
from backupd.sources.postgresql import (
    PgClient,
    PostgresAdapter,
    choose_client,
    conninfo,
    discover_clients,
    pgpass_escape,
    version_from_num,
)

from .helpers import fake_tool, make_ctx


def install(root: Path, major: str, version: str, server_num: int = 150004) -> Path:
    """A fake client install: pg_dump of ``version``; psql answering as server ``server_num``."""
    bin_dir = root / major / "bin"
    fake_tool(bin_dir, "pg_dump", f'echo "pg_dump (PostgreSQL) {version} (Debian {version}-1)"')
    server_text = ".".join(map(str, version_from_num(server_num)))
    fake_tool(bin_dir, "psql", f"cat >/dev/null; printf '%s\\037%s\\n' {server_num} '{server_text} (fake)'")
    return bin_dir


def client(version: tuple[int, ...]) -> PgClient:
    return PgClient(Path(f"/x/{version[0]}/bin"), version, ".".join(map(str, version)))


def test_version_numbers():
    assert version_from_num(150004) == (15, 4)
    assert version_from_num(160010) == (16, 10)
    assert version_from_num(90624) == (9, 6, 24)
    assert client((9, 6, 24)).major == (9, 6)
    assert client((15, 4)).major == (15,)


def test_same_major_wins_over_newer():
    clients = [client((14, 9)), client((15, 2)), client((15, 7)), client((17, 1))]
    assert choose_client(150004, clients).version == (15, 7)


def test_newest_newer_major_when_none_matches():
    clients = [client((13, 1)), client((16, 3)), client((17, 0))]
    assert choose_client(150004, clients).version == (17, 0)


def test_only_older_clients_are_refused():
    with pytest.raises(ClientTooOld) as caught:
        choose_client(160002, [client((15, 7)), client((14, 2))])
    message = str(caught.value)
    assert "15.7" in message and "16.2" in message and "postgresql-client-16" in message


def test_nine_six_is_its_own_major():
    assert choose_client(90624, [client((9, 5, 1)), client((9, 6, 2)), client((10, 1))]).version == (9, 6, 2)
    with pytest.raises(ClientTooOld):
        choose_client(90624, [client((9, 5, 25))])


def test_no_client_at_all():
    with pytest.raises(SourceError, match="no pg_dump"):
        choose_client(150004, [])


def test_discover_reads_versions_from_each_bin_dir(tmp_path):
    install(tmp_path, "13", "13.16")
    install(tmp_path, "15", "15.8")
    (tmp_path / "16" / "bin").mkdir(parents=True)  # a major with no pg_dump is ignored
    found = sorted(discover_clients(None, tmp_path), key=lambda c: c.version)
    assert [(c.version, c.bin_dir) for c in found] == [
        ((13, 16), tmp_path / "13" / "bin"),
        ((15, 8), tmp_path / "15" / "bin"),
    ]
    # A configured bin_dir is the only candidate.
    assert [c.version for c in discover_clients(str(tmp_path / "13" / "bin"), tmp_path)] == [(13, 16)]


def adapter(tmp_path: Path, root: Path, bin_dir: str | None = None) -> PostgresAdapter:
    config = PostgresSource(host="127.0.0.1", port=1, bin_dir=bin_dir)
    return PostgresAdapter("pg-fake", config, make_ctx(tmp_path), lib_root=root)


def test_adapter_refuses_server_16_with_only_client_15(tmp_path):
    root = tmp_path / "lib"
    install(root, "15", "15.8", server_num=160002)
    with pytest.raises(ClientTooOld, match=r"16\.2"):
        adapter(tmp_path, root).test()


def test_adapter_picks_the_matching_major_by_asking_the_server(tmp_path):
    root = tmp_path / "lib"
    for major, version in (("14", "14.13"), ("16", "16.4"), ("17", "17.0")):
        install(root, major, version, server_num=160002)
    a = adapter(tmp_path, root)
    info = a.test()
    assert info.version == "16.2"
    assert a._client is not None and a._client.bin_dir == root / "16" / "bin"


def test_adapter_checks_a_pinned_bin_dir_too(tmp_path):
    root = tmp_path / "lib"
    install(root, "15", "15.8", server_num=160002)
    install(root, "17", "17.0", server_num=160002)
    with pytest.raises(ClientTooOld):
        adapter(tmp_path, root, bin_dir=str(root / "15" / "bin")).test()
    assert adapter(tmp_path, root, bin_dir=str(root / "17" / "bin")).test().version == "16.2"


def test_quoting_helpers():
    assert conninfo("a'b\\c") == "dbname='a\\'b\\\\c'"
    assert pgpass_escape("p:w\\d") == "p\\:w\\\\d"
