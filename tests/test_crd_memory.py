"""CRD memory bank: undoing the bank writes of a step dropped over a non-finite loss (--skip_nonfinite)."""
from __future__ import annotations

import copy
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from crd import CRDLoss
from crd.memory import Constants

BATCH, K = 4, 32
BUFFERS = ("memory_v1", "memory_v2", "params")


def _opt(n_data: int) -> SimpleNamespace:
    return SimpleNamespace(s_dim=16, t_dim=24, feat_dim=8, nce_k=K, nce_t=0.07, nce_m=0.5, n_data=n_data)


def _inputs(seed: int, n_data: int, offset: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(f_s, f_t, contrast_idx) of one batch; its dataset indices are contrast_idx[:, 0] = offset..offset+B-1."""
    generator = torch.Generator().manual_seed(seed)
    f_s, f_t = torch.randn(BATCH, 16, generator=generator), torch.randn(BATCH, 24, generator=generator)
    contrast_idx = torch.randint(0, n_data, (BATCH, K + 1), generator=generator)
    contrast_idx[:, 0] = torch.arange(offset, offset + BATCH)
    return f_s, f_t, contrast_idx


def _step(crd: CRDLoss, f_s: torch.Tensor, f_t: torch.Tensor,
          contrast_idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(loss, grad of the student features) of one forward and backward."""
    f_s = f_s.clone().requires_grad_(True)
    loss = crd(f_s, f_t, contrast_idx[:, 0], contrast_idx)
    loss.sum().backward()
    return loss.detach(), f_s.grad


def _buffers(crd: CRDLoss) -> dict[str, torch.Tensor]:
    return {name: getattr(crd.contrast, name).clone() for name in BUFFERS}


def _assert_buffers_equal(crd: CRDLoss, expected: dict[str, torch.Tensor]) -> None:
    for name, value in expected.items():
        assert torch.equal(getattr(crd.contrast, name), value), f"{name} differs from the state before the step"


@pytest.mark.parametrize("n_data", [64, 2000], ids=["whole-bank-scoring", "gathered-scoring"])
@pytest.mark.parametrize("first_batch", [True, False], ids=["first-batch-sets-z", "z-already-set"])
def test_restoring_a_snapshot_undoes_a_nan_forward_and_the_next_step_matches(n_data: int, first_batch: bool):
    torch.manual_seed(0)
    crd = CRDLoss(_opt(n_data))
    assert crd.contrast.scores_whole_bank(BATCH, K) == (n_data == 64)
    if not first_batch:
        _step(crd, *_inputs(1, n_data, offset=10))
    reference = copy.deepcopy(crd)  # takes no bad step
    before = _buffers(crd)
    f_s, f_t, contrast_idx = _inputs(2, n_data)
    rows = contrast_idx[:, 0]

    restore = crd.snapshot(rows)
    f_s[1] = float("nan")
    loss = crd(f_s, f_t, rows, contrast_idx)
    assert not torch.isfinite(loss).all()
    assert crd.contrast.memory_v1[rows].isnan().any(), "the bad forward writes NaN rows into the student bank"
    assert not torch.equal(crd.contrast.memory_v2[rows], before["memory_v2"][rows])
    assert first_batch == crd.contrast.params[Constants.slot("Z_v1")].isnan().item()
    restore()

    _assert_buffers_equal(crd, before)
    good = _inputs(3, n_data)
    for actual, expected in zip(_step(crd, *good), _step(reference, *good)):
        torch.testing.assert_close(actual, expected, rtol=0, atol=0)
    _assert_buffers_equal(crd, _buffers(reference))


def test_a_snapshot_saves_only_the_rows_of_its_batch():
    crd = CRDLoss(_opt(64))
    f_s, f_t, contrast_idx = _inputs(0, 64)
    rows = contrast_idx[:, 0]
    restore = crd.snapshot(rows)
    crd(f_s, f_t, rows, contrast_idx)
    crd.contrast.memory_v1[rows.max() + 1] = 0.5  # not written by the forward: the restore leaves it
    restore()
    assert (crd.contrast.memory_v1[rows.max() + 1] == 0.5).all()


def _nan_step_on_rank_0_then_restore(rank: int, world: int, init_file: str) -> None:
    """One rank of a gloo group: both ranks share a bank; rank 0's embeddings are NaN; both restore."""
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        torch.manual_seed(0)  # the same bank on every rank
        crd = CRDLoss(_opt(64))
        before = _buffers(crd)
        f_s, f_t, contrast_idx = _inputs(rank, 64, offset=BATCH * rank)  # each rank its own rows
        rows = contrast_idx[:, 0]
        restore = crd.snapshot(rows)
        if rank == 0:
            f_s[0] = float("nan")
        crd(f_s, f_t, rows, contrast_idx)
        assert crd.contrast.memory_v1[:BATCH].isnan().any(), "every rank writes rank 0's rows"
        restore()
        _assert_buffers_equal(crd, before)
    finally:
        dist.destroy_process_group()


def test_under_several_processes_a_snapshot_covers_the_rows_written_for_the_other_ranks(tmp_path: Path):
    mp.spawn(_nan_step_on_rank_0_then_restore, args=(2, str(tmp_path / "init")), nprocs=2)
