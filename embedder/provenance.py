"""What every written artefact records about its making: a UTC timestamp and library versions."""

from __future__ import annotations

import platform
from datetime import UTC, datetime
from importlib.metadata import PackageNotFoundError, version


def utc_now() -> str:
    """The current time in UTC, ISO 8601 to the second (e.g. 2026-12-01T08:36:06+00:00)."""
    return datetime.now(UTC).isoformat(timespec="seconds")


def library_versions(packages: tuple[str, ...]) -> dict[str, str]:
    """{package: installed version} for `packages`, plus "python"; "not installed" for missing ones."""
    versions = {"python": platform.python_version()}
    for package in packages:
        try:
            versions[package] = version(package)
        except PackageNotFoundError:
            versions[package] = "not installed"
    return versions
