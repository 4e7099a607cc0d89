"""Choosing the device batch from the GPU's memory: checked by hand on fake memory sizes."""

import pytest

from nanochat.common.errors import NanochatError
from nanochat.train.batch_choice import choose_device_batch

GiB = 2**30


def test_d26_fits_an_80gb_card_as_well_as_a_141gb_one():
    # d26 at T=2048: ~2.4 GiB of activations a row (what the dry run's estimate gives), 30 GiB of state;
    # 256 rows per process per step (524,288 tokens / 2048 on one GPU)
    h100 = choose_device_batch(256, 30 * GiB, 2.4 * GiB, 80 * GiB)
    h200 = choose_device_batch(256, 30 * GiB, 2.4 * GiB, 141 * GiB)
    # 0.85 x 80 - 30 = 38 GiB -> 15 rows fit -> largest divisor of 256 is 8; 0.85 x 141 - 30 = 89.85 -> 37 -> 32
    assert h100.device_batch_size == 8 and h200.device_batch_size == 32
    assert "8 rows" in h100.reason and "15 rows" in h100.reason


def test_the_total_batch_is_kept_divisible():
    # 96 rows a step, room for 40: the largest divisor of 96 that is <= 40 is 32
    assert choose_device_batch(96, 0, 1 * GiB, 40 / 0.85 * GiB).device_batch_size == 32
    # room for more than the step has: all of it, capped by max_rows
    assert choose_device_batch(48, 0, 1, 10 * GiB).device_batch_size == 48
    assert choose_device_batch(512, 0, 1, 10 * GiB, max_rows=128).device_batch_size == 128


def test_a_model_that_fits_no_row_is_refused_with_the_fixes():
    with pytest.raises(NanochatError, match="--activation-checkpointing"):
        choose_device_batch(256, 70 * GiB, 2.4 * GiB, 80 * GiB)
