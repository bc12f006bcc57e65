"""Padding-free packing helpers."""
from __future__ import annotations

import pytest
import torch

from inform_fast.packing import block_diagonal_mask, pack_sequences, packed_last_token_indices, packed_sequence_ids


def test_pack_sequences_layout():
    packed = pack_sequences([[5, 6, 7], torch.tensor([8]), [9, 10]])
    assert packed["input_ids"].tolist() == [[5, 6, 7, 8, 9, 10]]
    assert packed["position_ids"].tolist() == [[0, 1, 2, 0, 0, 1]]
    assert packed["cu_seqlens"].dtype == torch.int32 and packed["cu_seqlens"].tolist() == [0, 3, 4, 6]
    assert packed["max_seqlen"] == 3
    assert packed_last_token_indices(packed["position_ids"]).tolist() == [2, 3, 5]
    assert packed_sequence_ids(packed["position_ids"]).tolist() == [0, 0, 0, 1, 2, 2]


def test_pad_to_multiple_adds_one_filler_sequence():
    packed = pack_sequences([[5, 6, 7], [8, 9]], pad_to_multiple_of=4, pad_token_id=1)
    assert packed["input_ids"].tolist() == [[5, 6, 7, 8, 9, 1, 1, 1]]
    assert packed["position_ids"].tolist() == [[0, 1, 2, 0, 1, 0, 1, 2]]
    assert packed["cu_seqlens"].tolist() == [0, 3, 5]
    assert packed_last_token_indices(packed["position_ids"]).tolist() == [2, 4, 7]
    exact = pack_sequences([[5, 6, 7, 8]], pad_to_multiple_of=4)
    assert exact["input_ids"].shape == (1, 4)


def test_block_diagonal_mask_matches_loops():
    position_ids = torch.tensor([[0, 1, 2, 0, 0, 1]])
    seq = [0, 0, 0, 1, 2, 2]
    for causal in (True, False):
        mask = block_diagonal_mask(position_ids, torch.float32, causal=causal)
        assert mask.shape == (1, 1, 6, 6)
        for i in range(6):
            for j in range(6):
                allowed = seq[i] == seq[j] and (j <= i or not causal)
                assert (mask[0, 0, i, j] == 0) == allowed
                if not allowed:
                    assert mask[0, 0, i, j] == torch.finfo(torch.float32).min
    assert block_diagonal_mask(position_ids, torch.bfloat16).dtype == torch.bfloat16


@pytest.mark.parametrize(
    "sequences, name",
    [([], "sequences"), ([[1, 2], []], r"sequences\[1\]"), ([torch.ones(2, 2, dtype=torch.long)], r"sequences\[0\]"), ([torch.ones(3)], r"sequences\[0\]")],
)
def test_pack_sequences_errors(sequences, name):
    with pytest.raises(ValueError, match=name):
        pack_sequences(sequences)
    with pytest.raises(ValueError, match="pad_to_multiple_of"):
        pack_sequences([[1]], pad_to_multiple_of=0)


@pytest.mark.parametrize("position_ids", [torch.tensor([[1, 2]]), torch.tensor([[0, 2]]), torch.tensor([[0, 1], [0, 1]]), torch.tensor([[0.0, 1.0]])])
def test_bad_position_ids(position_ids):
    with pytest.raises(ValueError, match="position_ids"):
        packed_last_token_indices(position_ids)
