"""The multipart part-size schedule: S3's limits hold for every allowed configuration."""

from __future__ import annotations

import pytest

from backupd.storage.parts import (
    MAX_OBJECT,
    MAX_PART,
    MAX_PARTS,
    MIN_PART,
    GiB,
    MiB,
    TiB,
    default_grow_every,
    max_object_size,
    part_size_for,
)

pytestmark = pytest.mark.timeout(30)


def schedule(initial: int, max_parts: int = MAX_PARTS, grow_every: int | None = None) -> list[int]:
    return [part_size_for(n, initial, max_parts, grow_every) for n in range(1, max_parts + 1)]


@pytest.mark.parametrize("initial", [MIN_PART, 8 * MiB, 16 * MiB, 100 * MiB, 1 * GiB, MAX_PART])
def test_five_tib_fits_in_ten_thousand_parts(initial: int) -> None:
    sizes = schedule(initial)
    assert len(sizes) == MAX_PARTS
    assert sum(sizes) >= 5 * TiB
    assert max(sizes) <= MAX_PART
    assert min(sizes) >= MIN_PART  # every part may be a non-last part
    assert sizes == sorted(sizes)  # parts never shrink
    assert max_object_size(initial, MAX_PARTS) == MAX_OBJECT


def test_defaults_keep_parts_small_for_ordinary_backups() -> None:
    every = default_grow_every(8 * MiB, MAX_PARTS)
    assert every == 1089
    sizes = schedule(8 * MiB)
    assert set(sizes[:every]) == {8 * MiB} and sizes[every] == 16 * MiB
    # the interval is the largest that still reaches 5 TiB: one more part per step falls short
    assert sum(schedule(8 * MiB, grow_every=every + 1)) < 5 * TiB


def test_size_doubles_every_n_parts_and_is_capped() -> None:
    sizes = schedule(MIN_PART, max_parts=24, grow_every=2)
    assert [s // MiB for s in sizes[:7]] == [5, 5, 10, 10, 20, 20, 40]
    assert sizes[19] == 2560 * MiB and sizes[-1] == MAX_PART  # 5 MiB << 11 is capped at 5 GiB
    assert max_object_size(MIN_PART, 24, 2) == sum(sizes)


def test_a_small_part_limit_cannot_reach_five_tib() -> None:
    assert default_grow_every(MIN_PART, 100) == 1  # grow as fast as possible
    assert max_object_size(MIN_PART, 100) < 5 * TiB
    assert max_object_size(MIN_PART, 100) == sum(schedule(MIN_PART, 100, 1))


def test_a_large_initial_part_never_needs_to_grow() -> None:
    assert default_grow_every(600 * MiB, MAX_PARTS) == MAX_PARTS
    assert set(schedule(600 * MiB)) == {600 * MiB}


@pytest.mark.parametrize(
    ("part_number", "initial", "max_parts", "grow_every"),
    [
        (0, MIN_PART, 10, 1),
        (11, MIN_PART, 10, 1),
        (1, MIN_PART - 1, 10, 1),
        (1, MAX_PART + 1, 10, 1),
        (1, MIN_PART, MAX_PARTS + 1, 1),
        (1, MIN_PART, 10, 0),
    ],
)
def test_out_of_range_arguments_are_refused(
    part_number: int, initial: int, max_parts: int, grow_every: int
) -> None:
    with pytest.raises(ValueError):
        part_size_for(part_number, initial, max_parts, grow_every)
