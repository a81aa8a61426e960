"""``backupd``: the daemon's command line. Reads the config, then runs the daemon in the
foreground (systemd Type=notify), or only checks the config."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from backupd import __version__
from backupd.config.load import DEFAULT_CONFIG, load_config
from backupd.errors import EXIT_CONFIG, ConfigError


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="backupd", description="Database backup daemon.")
    p.add_argument("--config", type=Path, default=None, help=f"config file (default {DEFAULT_CONFIG})")
    p.add_argument(
        "--check-config", action="store_true", help="validate the config and exit 0, or 78 if invalid"
    )
    p.add_argument("--demo", type=Path, metavar="DIR", help="run the self-contained demo under DIR")
    p.add_argument("--version", action="version", version=f"backupd {__version__}")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.demo is not None:
        from backupd.demo import prepare_demo

        config_path = args.config or prepare_demo(args.demo)
    else:
        config_path = args.config or DEFAULT_CONFIG
    try:
        loaded = load_config(config_path)
    except ConfigError as exc:
        print(f"backupd: configuration error: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    if args.check_config:
        print(f"{config_path}: ok ({len(loaded.config.jobs)} jobs)")
        return 0
    from backupd.daemon import Daemon

    return Daemon(config_path, loaded).run()


if __name__ == "__main__":
    raise SystemExit(main())
