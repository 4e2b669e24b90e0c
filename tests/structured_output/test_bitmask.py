"""The packed bitmask and `apply_token_bitmask` against a numpy reference and llguidance's own applier."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from pagedjax.structured_output import (allocate_bitmask, apply_token_bitmask, bitmask_width, token_ids_row,
                                        unpack_bitmask)


def reference_apply(logits: np.ndarray, bitmask: np.ndarray) -> np.ndarray:
    """float64 reference, bit by bit with Python integers: token t is bit t % 32 of word t // 32."""
    out = logits.astype(np.float64).copy()
    for s in range(logits.shape[0]):
        for t in range(logits.shape[1]):
            if not (int(bitmask[s, t // 32]) >> (t % 32)) & 1:
                out[s, t] = -np.inf
    return out


def random_bitmask(rng, rows, vocab, density):
    bits = rng.random((rows, bitmask_width(vocab) * 32)) < density
    return np.packbits(bits, axis=1, bitorder="little").view(np.int32)


@pytest.mark.parametrize("vocab", [1, 31, 32, 33, 100, 517])
@pytest.mark.parametrize("rows", [1, 3])
def test_apply_matches_reference(vocab, rows):
    rng = np.random.default_rng(vocab * 10 + rows)
    logits = rng.standard_normal((rows, vocab)).astype(np.float32)
    bitmask = random_bitmask(rng, rows, vocab, 0.5)
    bitmask[0, 0] |= np.int32(-2**31)  # bit 31 (the sign bit) set in the first word
    out = np.asarray(apply_token_bitmask(jnp.asarray(logits), jnp.asarray(bitmask)))
    np.testing.assert_array_equal(out, reference_apply(logits, bitmask).astype(np.float32))


def test_bfloat16_logits_keep_their_dtype_and_values():
    rng = np.random.default_rng(1)
    logits = jnp.asarray(rng.standard_normal((2, 70)), jnp.bfloat16)
    bitmask = random_bitmask(rng, 2, 70, 0.3)
    out = apply_token_bitmask(logits, jnp.asarray(bitmask))
    assert out.dtype == jnp.bfloat16
    expected = reference_apply(np.asarray(logits.astype(jnp.float32)), bitmask)
    np.testing.assert_array_equal(np.asarray(out.astype(jnp.float32)), expected.astype(np.float32))


def test_all_ones_rows_leave_logits_bitwise_unchanged():
    rng = np.random.default_rng(2)
    logits = rng.standard_normal((4, 300)).astype(np.float32)
    logits[1, 5] = np.inf
    logits[2, 7] = np.nan
    bitmask = allocate_bitmask(4, 300)
    bitmask[3] = token_ids_row([0, 299], 300)
    out = np.asarray(apply_token_bitmask(jnp.asarray(logits), jnp.asarray(bitmask)))
    assert out[:3].tobytes() == logits[:3].tobytes()
    assert np.isfinite(out[3]).sum() == 2 and out[3, 0] == logits[3, 0] and out[3, 299] == logits[3, 299]


def test_compiles_once_for_any_masks():
    rng = np.random.default_rng(3)
    logits = jnp.asarray(rng.standard_normal((3, 97)), jnp.float32)
    apply_token_bitmask(logits, jnp.asarray(allocate_bitmask(3, 97))).block_until_ready()
    before = apply_token_bitmask._cache_size()
    for density in (0.0, 0.1, 0.9, 1.0):
        apply_token_bitmask(logits, jnp.asarray(random_bitmask(rng, 3, 97, density))).block_until_ready()
    assert apply_token_bitmask._cache_size() == before


def test_inside_a_jitted_sampler():
    @jax.jit
    def greedy(logits, bitmask):
        return jnp.argmax(apply_token_bitmask(logits, bitmask), axis=-1)

    logits = jnp.asarray(np.arange(2 * 40, dtype=np.float32).reshape(2, 40))
    bitmask = np.stack([token_ids_row([3, 17], 40), allocate_bitmask(1, 40)[0]])
    np.testing.assert_array_equal(np.asarray(greedy(logits, jnp.asarray(bitmask))), [17, 39])


def test_matches_llguidance_applier():
    import llguidance.numpy

    rng = np.random.default_rng(4)
    logits = rng.standard_normal((3, 77)).astype(np.float32)
    bitmask = random_bitmask(rng, 3, 77, 0.4)
    ours = np.asarray(apply_token_bitmask(jnp.asarray(logits), jnp.asarray(bitmask)))
    theirs_np = logits.copy()
    llguidance.numpy.apply_token_bitmask_inplace(theirs_np, bitmask.copy())
    np.testing.assert_array_equal(ours, theirs_np)


def test_token_ids_row_and_unpack_roundtrip():
    ids = [0, 1, 31, 32, 63, 64, 128, 129]
    row = token_ids_row(ids, 130)
    assert row.dtype == np.int32 and row.shape == (bitmask_width(130),) == (5,)
    assert np.flatnonzero(unpack_bitmask(row[None], 130)[0]).tolist() == ids
    assert row[0] == np.int32(-2**31 | 0b11)  # bits 0, 1 and 31 of the first word


@pytest.mark.parametrize("logits_shape, mask_shape, mask_dtype", [
    ((2, 64), (2, 3), jnp.int32),     # one word too many
    ((2, 64), (1, 2), jnp.int32),     # rows differ
    ((2, 64), (2, 2), jnp.uint32),    # wrong dtype
    ((64,), (2,), jnp.int32),         # 1-D logits
])
def test_apply_rejects_bad_shapes(logits_shape, mask_shape, mask_dtype):
    with pytest.raises(ValueError, match="bitmask|logits"):
        apply_token_bitmask(jnp.zeros(logits_shape), jnp.zeros(mask_shape, mask_dtype))


def test_allocate_validates():
    assert allocate_bitmask(0, 5).shape == (0, 1)
    with pytest.raises(ValueError, match="vocab_size"):
        allocate_bitmask(2, 0)
    with pytest.raises(ValueError, match="num_rows"):
        allocate_bitmask(-1, 10)
