"""Config loading: every error names the file, the key path and what was expected."""

from __future__ import annotations

from pathlib import Path

import pytest

from backupd.config.load import load_config
from backupd.errors import ConfigError

GOOD = """
[daemon]
max_concurrent_jobs = 2
[sources.app]
type = "sqlite"
path = "/tmp/app.db"
[destinations.disk]
type = "local"
path = "/tmp/b"
[jobs.nightly]
source = "app"
destinations = ["disk"]
schedule = "30 2 * * *"
retention = { keep_daily = 7 }
"""


def _write(tmp_path: Path, text: str, name: str = "backupd.toml") -> Path:
    p = tmp_path / name
    p.write_text(text)
    return p


def _error(tmp_path: Path, text: str) -> str:
    with pytest.raises(ConfigError) as exc:
        load_config(_write(tmp_path, text))
    assert exc.value.exit_code == 78
    return str(exc.value)


def test_good_config_loads(tmp_path: Path) -> None:
    loaded = load_config(_write(tmp_path, GOOD))
    job = loaded.config.jobs["nightly"]
    assert job.retention.keep_daily == 7 and job.compression == "zstd"
    assert loaded.config.sources["app"].path == "/tmp/app.db"


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        (("keep_daily", "keep_dialy"), "jobs.nightly.retention.keep_dialy: unknown key"),
        (
            ("keep_daily = 7", 'keep_daily = "7"'),
            "jobs.nightly.retention.keep_daily: expected `int | null`, got `str`",
        ),
        (
            ('source = "app"', 'source = "nope"'),
            "jobs.nightly.source: one of the [sources] (app), not 'nope'",
        ),
        (
            ('["disk"]', '["disk", "tape"]'),
            "jobs.nightly.destinations[1]: one of the [destinations] (disk), not 'tape'",
        ),
        (
            ('type = "sqlite"', 'type = "oracle"'),
            "sources.app.type: one of sqlite, postgresql, mysql, mariadb, redis, mongodb, not 'oracle'",
        ),
        (('"30 2 * * *"', '"every night"'), "jobs.nightly.schedule: a cron expression"),
        (
            ("max_concurrent_jobs = 2", "max_concurrent_jobs = 0"),
            "daemon.max_concurrent_jobs: expected `int` >= 1",
        ),
        (("[jobs.nightly]", "[jobs.Nightly]"), "jobs.Nightly: a name of lowercase letters"),
        (("[daemon]", '[daemon]\ntimezone = "Mars/Olympus"'), "daemon.timezone: an IANA time zone"),
        (
            ("keep_daily = 7", 'keep_within = "forever"'),
            "jobs.nightly.retention.keep_within: a duration like",
        ),
    ],
)
def test_errors_name_file_key_and_expectation(tmp_path: Path, change: tuple[str, str], expected: str) -> None:
    message = _error(tmp_path, GOOD.replace(*change))
    assert message.startswith(str(tmp_path / "backupd.toml") + ": ")
    assert expected.lower() in message.lower(), message


def test_syntax_error_and_missing_file(tmp_path: Path) -> None:
    assert "(syntax): valid TOML" in _error(tmp_path, GOOD + "\n[jobs.x\n")
    with pytest.raises(ConfigError, match="file not found"):
        load_config(tmp_path / "absent.toml")


def test_conf_d_is_merged_and_duplicates_refused(tmp_path: Path) -> None:
    main = _write(tmp_path, GOOD)
    (tmp_path / "conf.d").mkdir()
    _write(tmp_path / "conf.d", '[jobs.extra]\nsource = "app"\ndestinations = ["disk"]\n', "10-extra.toml")
    loaded = load_config(main)
    assert set(loaded.config.jobs) == {"nightly", "extra"}
    assert loaded.origin["jobs.extra"] == tmp_path / "conf.d" / "10-extra.toml"
    _write(tmp_path / "conf.d", '[jobs.nightly]\nsource = "app"\ndestinations = ["disk"]\n', "20-dup.toml")
    with pytest.raises(ConfigError) as exc:
        load_config(main)
    assert "20-dup.toml: jobs.nightly: a unique name (already in" in str(exc.value)


def test_bad_key_in_conf_d_names_that_file(tmp_path: Path) -> None:
    main = _write(tmp_path, GOOD)
    (tmp_path / "conf.d").mkdir()
    bad = _write(
        tmp_path / "conf.d",
        '[jobs.extra]\nsource = "app"\ndestinations = ["disk"]\nschedul = "x"\n',
        "x.toml",
    )
    with pytest.raises(ConfigError) as exc:
        load_config(main)
    assert str(exc.value) == f"{bad}: jobs.extra.schedul: unknown key"


def test_decrypt_only_key_cannot_encrypt(tmp_path: Path) -> None:
    text = GOOD.replace(
        "[jobs.nightly]",
        '[encryption.old]\nkey_file = "/k"\ndecrypt_only = true\n[jobs.nightly]\nencryption = "old"',
    )
    assert "jobs.nightly.encryption: a key usable for new backups" in _error(tmp_path, text)


def test_notification_filter_words_are_checked(tmp_path: Path) -> None:
    text = (
        GOOD
        + '[notifications.ops]\ntype = "webhook"\nurl = "http://127.0.0.1:1/x"\nevents = ["failed", "explode"]\n'
    )
    assert "notifications.ops.events" in _error(tmp_path, text)


def test_daemon_section_only_in_the_main_file(tmp_path: Path) -> None:
    main = _write(tmp_path, GOOD)
    (tmp_path / "conf.d").mkdir()
    _write(
        tmp_path / "conf.d",
        '# a comment may mention [daemon]\n[jobs.extra]\nsource = "app"\ndestinations = ["disk"]\n',
        "a.toml",
    )
    assert "extra" in load_config(main).config.jobs
    bad = _write(tmp_path / "conf.d", "[daemon]\nmax_concurrent_jobs = 9\n", "b.toml")
    with pytest.raises(ConfigError) as exc:
        load_config(main)
    assert str(exc.value) == f"{bad}: daemon: [daemon] only in the main file"
