"""Flyway-compatible checksums and migration discovery (no database).

Expected checksums are not produced by the code under test: they come from the published CRC-32
check values ("123456789" -> 0xCBF43926, the quick brown fox -> 0x414FA339), combined with
Flyway's rule (lines' UTF-8 bytes without terminators, first-line BOM dropped, signed 32-bit).
"""

from __future__ import annotations

import zlib
from pathlib import Path

import pytest

from shared.ledger.migrate import (
    MigrationError,
    default_migrations_dir,
    discover,
    flyway_checksum,
    version_key,
)
from shared.ledger.repository import open_pool

CHECK_123456789 = 0xCBF43926 - (1 << 32)  # the CRC-32 check value, as Java's (int) cast sees it
QUICK_FOX = 0x414FA339


def test_single_line_is_plain_crc32_signed() -> None:
    assert flyway_checksum("123456789") == CHECK_123456789 == -873187034


def test_line_terminators_do_not_count_whatever_their_kind() -> None:
    assert flyway_checksum("1234\n56\r\n789\n") == CHECK_123456789
    assert flyway_checksum("12\r34\r\n\r\n5678\r9") == CHECK_123456789


def test_bom_on_the_first_line_is_dropped() -> None:
    assert flyway_checksum("\ufeff123\n456789\n") == CHECK_123456789


def test_bom_later_in_the_file_is_content() -> None:
    assert flyway_checksum("1234\n\ufeff56789") != CHECK_123456789


def test_positive_checksum_stays_positive() -> None:
    text = "The quick brown fox \njumps over the lazy dog\n"
    assert flyway_checksum(text) == QUICK_FOX == 1095738169


def test_empty_file_and_blank_lines_have_checksum_zero() -> None:
    assert flyway_checksum("") == 0
    assert flyway_checksum("\n\r\n\n") == 0


def _signed(crc: int) -> int:
    return crc - (1 << 32) if crc >= 1 << 31 else crc


def test_non_ascii_is_hashed_as_utf8() -> None:
    # "é" is C3 A9 in UTF-8 (E9 in Latin-1): the UTF-8 bytes are what Flyway feeds to CRC32.
    assert flyway_checksum("caf\u00e9\n") == _signed(zlib.crc32(b"caf\xc3\xa9"))
    assert flyway_checksum("caf\u00e9") != _signed(zlib.crc32(b"caf\xe9"))


def test_other_unicode_line_breaks_are_content() -> None:
    # Java's readLine() splits on \n, \r, \r\n only; Python's str.splitlines() would also split
    # on these, which would silently change the checksum.
    assert flyway_checksum("1234\u2028" + "56789") != CHECK_123456789
    assert flyway_checksum("1234\x0c56789") != CHECK_123456789


def test_version_order_is_numeric_and_ignores_trailing_zeros() -> None:
    versions = ["10", "2", "1.1", "1", "1.0.1"]
    assert sorted(versions, key=version_key) == ["1", "1.0.1", "1.1", "2", "10"]
    assert version_key("1.0") == version_key("1")


def test_discover_follows_flyway_naming(tmp_path: Path) -> None:
    (tmp_path / "V2__add_index.sql").write_text("SELECT 2;\n")
    (tmp_path / "V1_1__fix_things.sql").write_text("SELECT 11;\n")
    (tmp_path / "V10__later.sql").write_text("SELECT 10;\n")
    (tmp_path / "README.md").write_text("not a migration")
    found = discover(tmp_path)
    assert [(m.version, m.description, m.script) for m in found] == [
        ("1.1", "fix things", "V1_1__fix_things.sql"),
        ("2", "add index", "V2__add_index.sql"),
        ("10", "later", "V10__later.sql"),
    ]


@pytest.mark.parametrize("name", ["V1_create.sql", "Vx__bad.sql", "V1__.sql"])
def test_discover_rejects_misnamed_versioned_files(tmp_path: Path, name: str) -> None:
    (tmp_path / name).write_text("SELECT 1;")
    with pytest.raises(MigrationError, match="not a Flyway versioned migration name"):
        discover(tmp_path)


def test_discover_rejects_duplicate_versions(tmp_path: Path) -> None:
    (tmp_path / "V1__a.sql").write_text("SELECT 1;")
    (tmp_path / "V1_0__b.sql").write_text("SELECT 1;")
    with pytest.raises(MigrationError, match="same version"):
        discover(tmp_path)


def test_discover_rejects_non_utf8(tmp_path: Path) -> None:
    (tmp_path / "V1__latin1.sql").write_bytes("SELECT 'é';".encode("latin-1"))
    with pytest.raises(MigrationError, match="UTF-8"):
        discover(tmp_path)


def test_the_project_migrations_are_discoverable() -> None:
    found = discover(default_migrations_dir())
    assert found[0].script == "V1__create_ledger.sql"
    assert found[0].description == "create ledger"


def test_open_pool_makes_no_connection() -> None:
    # Port 1 on loopback has no server: an eager pool would fail or block here.
    pool = open_pool("postgresql://nobody@127.0.0.1:1/none", min_size=1, max_size=1)
    assert pool.closed
