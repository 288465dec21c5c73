"""Client-side tensors: recycled arrays are reused only once nothing references them."""

import numpy as np
import torch

from mixers.trainer.client import RecycledArrays, train_tensors


def test_an_array_is_reused_only_after_its_tensors_and_views_are_gone():
    pool = RecycledArrays(capacity=4)
    toks = np.arange(12, dtype=np.int32).reshape(3, 4)
    ids, labels = train_tensors(toks, pool)
    ids_ptr, labels_ptr = ids.data_ptr(), labels.data_ptr()
    view = ids[1:]  # a view keeps the storage, and so the array, alive
    ids2, labels2 = train_tensors(toks + 100, pool)
    assert not ({ids2.data_ptr(), labels2.data_ptr()} & {ids_ptr, labels_ptr})
    assert ids.tolist() == toks.tolist() and labels.tolist() == toks.tolist()
    del ids, labels  # `labels` is free now; `ids` is still held by `view`
    ids3, _ = train_tensors(toks + 200, pool)
    assert ids3.data_ptr() == labels_ptr and view.tolist() == toks[1:].tolist()
    del view
    ids4, labels4 = train_tensors(toks + 300, pool)
    assert ids_ptr in {ids4.data_ptr(), labels4.data_ptr()}
    assert ids4.dtype == torch.int64 and ids4.tolist() == (toks + 300).tolist() and labels4.tolist() == ids4.tolist()
    assert ids3.tolist() == (toks + 200).tolist() and ids2.tolist() == (toks + 100).tolist()


def test_freed_arrays_are_reused_and_a_full_pool_still_hands_out_fresh_arrays():
    pool = RecycledArrays(capacity=2)
    toks = np.ones((2, 3), np.uint16)
    a, b = train_tensors(toks, pool)
    ptrs = {a.data_ptr(), b.data_ptr()}
    del a, b
    c, d = train_tensors(toks * 2, pool)
    assert {c.data_ptr(), d.data_ptr()} == ptrs  # the same memory, no new allocation
    e, f = train_tensors(toks * 3, pool)  # pool full and in use: fresh arrays, nothing overwritten
    assert not ({e.data_ptr(), f.data_ptr()} & ptrs)
    assert c.tolist() == [[2] * 3] * 2 and e.tolist() == [[3] * 3] * 2 and len(pool._arrays) == 2
    g, _ = train_tensors(np.ones((5, 3), np.int32), pool)  # another shape: fresh, correct
    assert tuple(g.shape) == (5, 3) and g.sum().item() == 15


def test_without_a_pool_every_call_allocates():
    toks = np.arange(6, dtype=np.int32).reshape(2, 3)
    ids, labels = train_tensors(toks)
    assert ids.dtype == torch.int64 and ids.data_ptr() != labels.data_ptr() and ids.tolist() == toks.tolist()


def test_messages_of_varying_rows_share_pooled_arrays_as_views():
    """A grouped stream's messages hold 1..k steps: smaller ones take the first rows of a larger array."""
    pool = RecycledArrays(capacity=4)
    big = np.arange(8 * 3, dtype=np.uint16).reshape(8, 3)
    a, b = train_tensors(big, pool)
    ptrs = {a.data_ptr(), b.data_ptr()}
    del a, b
    c, d = train_tensors(big[:2] + 1, pool)  # two rows: views of the freed 8-row arrays
    assert {c.data_ptr(), d.data_ptr()} == ptrs and tuple(c.shape) == (2, 3)
    e, _ = train_tensors(big[:5], pool)  # the 8-row arrays are held through the views: not reused
    assert e.data_ptr() not in ptrs and tuple(e.shape) == (5, 3)
    assert c.tolist() == (big[:2] + 1).tolist() and d.tolist() == c.tolist() and e.tolist() == big[:5].tolist()
