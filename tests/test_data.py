"""CIFAR-100 data: the faithful torchvision path, the device-resident fast path, CRD sampling, files."""
import json
import logging
import pickle
import shutil
import urllib.error
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

import dataset.cifar100 as cifar100
import dataset.sampling as sampling
from dataset import (Batch, CIFAR100InstanceSample, DatasetError, build_loaders, get_cifar100_dataloaders,
                     get_cifar100_dataloaders_sample)
from dataset.cifar100 import ARCHIVE_URL, CIFAR100_MEAN, CIFAR100_STD, FOLDER_NAME, read_split
from dataset.fast import TensorTrainLoader, shard
from dataset.info import CIFAR100
from dataset.sampling import ContrastSampler, distinct_by_first_draws, distinct_by_random_keys, spare_draws
from dataset.synthetic import main as synthetic_main
from dataset.synthetic import write_meta, write_split, write_synthetic_cifar100

BACKENDS = ("tensor", "torchvision")
TRAIN_PER_CLASS = 3  # 300 train images: pool of 297 negatives per class


@pytest.fixture(scope="module")
def root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("data")
    write_synthetic_cifar100(root, train_per_class=TRAIN_PER_CLASS, test_per_class=1, seed=0)
    return root


def loaders(root, backend, batch_size=64, **kwargs):
    kwargs.setdefault("instance", True)
    return build_loaders(root, backend, batch_size, 0, "cpu", **kwargs)


def epoch(loader) -> list[Batch]:
    return list(loader)


def cat(batches, field) -> torch.Tensor:
    return torch.cat([getattr(b, field) for b in batches])


def train_labels(root) -> torch.Tensor:
    return torch.from_numpy(read_split(root / FOLDER_NAME, "train")[1])


def offline(monkeypatch) -> None:
    def fail(*args, **kwargs):
        raise urllib.error.URLError("network unreachable")

    monkeypatch.setattr(cifar100, "download_and_extract_archive", fail)


# Files


def test_synthetic_writer_reproduces_the_reference_files_byte_for_byte(tmp_path):
    reference = reference_folder()
    for split in ("train", "test"):
        entry = pickle.loads((reference / split).read_bytes(), encoding="bytes")
        write_split(tmp_path / split, entry[b"data"].reshape(-1, 3, 32, 32), entry[b"fine_labels"],
                    entry[b"coarse_labels"], [name.decode() for name in entry[b"filenames"]],
                    entry[b"batch_label"].decode())
        assert (tmp_path / split).read_bytes() == (reference / split).read_bytes()
    meta = pickle.loads((reference / "meta").read_bytes(), encoding="bytes")
    write_meta(tmp_path / "meta", [n.decode() for n in meta[b"fine_label_names"]],
               [n.decode() for n in meta[b"coarse_label_names"]])
    assert (tmp_path / "meta").read_bytes() == (reference / "meta").read_bytes()


def reference_folder() -> Path:
    from conftest import reference_file

    return reference_file("cifar100-format/cifar-100-python")


def test_synthetic_files_have_str_keys_under_latin1_and_bytes_keys_under_bytes(root):
    raw = (root / FOLDER_NAME / "train").read_bytes()
    as_str = pickle.loads(raw, encoding="latin1")
    as_bytes = pickle.loads(raw, encoding="bytes")
    assert list(as_str) == ["filenames", "batch_label", "fine_labels", "coarse_labels", "data"]
    assert all(isinstance(key, bytes) for key in as_bytes)
    assert as_str["data"].dtype == np.uint8 and as_str["data"].shape == (300, 3072)
    assert sorted(set(as_str["fine_labels"])) == list(range(100))
    meta = pickle.loads((root / FOLDER_NAME / "meta").read_bytes(), encoding="latin1")
    assert len(meta["fine_label_names"]) == 100 and len(meta["coarse_label_names"]) == 20


def test_synthetic_classes_carry_a_learnable_signal(root):
    images, labels = read_split(root / FOLDER_NAME, "train")
    test_images, test_labels = read_split(root / FOLDER_NAME, "test")
    colour = lambda x: x.reshape(len(x), 3, -1).mean(-1)  # noqa: E731
    centroids = np.stack([colour(images[labels == c]).mean(0) for c in range(100)])
    predicted = ((colour(test_images)[:, None] - centroids[None]) ** 2).sum(-1).argmin(1)
    assert (predicted == test_labels).mean() > 0.1  # chance is 0.01


def test_synthetic_command_line_writes_the_three_files(tmp_path, capsys):
    synthetic_main(["--out", str(tmp_path), "--train-per-class", "1", "--test-per-class", "1", "--seed", "3"])
    assert sorted(p.name for p in (tmp_path / FOLDER_NAME).iterdir()) == ["meta", "test", "train"]
    assert str(tmp_path / FOLDER_NAME) in capsys.readouterr().out


def test_reference_files_load_through_both_paths(tmp_path):
    shutil.copytree(reference_folder(), tmp_path / FOLDER_NAME)
    fast_train, fast_test, n_fast = loaders(tmp_path, "tensor")
    train, test, n_data = build_loaders(tmp_path, "torchvision", 64, 2, "cpu", instance=True)
    assert n_fast == n_data == 200
    assert sorted(cat(epoch(train), "indices").tolist()) == list(range(200))
    fast_batches, batches = epoch(fast_test), epoch(test)
    assert torch.equal(cat(fast_batches, "labels"), cat(batches, "labels"))
    torch.testing.assert_close(cat(fast_batches, "images"), cat(batches, "images"), rtol=0, atol=1e-6)


# Both paths, same batches


def test_both_paths_give_identical_unaugmented_test_batches(root):
    per_backend = {backend: epoch(loaders(root, backend, batch_size=30)[1]) for backend in BACKENDS}
    fast, slow = per_backend["tensor"], per_backend["torchvision"]
    assert [len(b) for b in fast] == [len(b) for b in slow] == [15] * 6 + [10]
    for a, b in zip(fast, slow):
        assert a.images.dtype == b.images.dtype == torch.float32 and a.images.shape == b.images.shape
        assert a.labels.dtype == b.labels.dtype == torch.int64 and torch.equal(a.labels, b.labels)
        assert a.indices is None and b.indices is None
        torch.testing.assert_close(a.images, b.images, rtol=0, atol=1e-6)


@pytest.mark.parametrize("backend", BACKENDS)
def test_train_epochs_cover_every_sample_once_with_labels_matching_indices(root, backend):
    train, _, n_data = loaders(root, backend, batch_size=64)
    batches = epoch(train)
    assert n_data == 300 and len(train) == len(batches) == 5
    assert [len(b) for b in batches] == [64] * 4 + [44]  # last partial batch kept
    indices, labels = cat(batches, "indices"), cat(batches, "labels")
    assert sorted(indices.tolist()) == list(range(300))
    assert torch.equal(labels, train_labels(root)[indices])
    first = batches[0]
    assert first.images.shape == (64, 3, 32, 32) and first.images.dtype == torch.float32
    assert first.labels.dtype == first.indices.dtype == torch.int64 and first.contrast_idx is None


@pytest.mark.parametrize("backend", BACKENDS)
def test_teacher_batches_carry_no_indices(root, backend):
    train, _, _ = loaders(root, backend, instance=False)
    assert next(iter(train)).indices is None


def test_tensor_loader_reshuffles_each_epoch_and_replays_any_epoch_from_its_seed(root):
    train = loaders(root, "tensor", seed=5)[0]
    first, second = epoch(train), epoch(train)  # no set_epoch: each pass moves on by one
    assert not torch.equal(cat(first, "indices"), cat(second, "indices"))
    replay = loaders(root, "tensor", seed=5)[0]
    replay.set_epoch(1)
    again = epoch(replay)
    assert torch.equal(cat(again, "indices"), cat(second, "indices"))
    assert torch.equal(cat(again, "images"), cat(second, "images"))
    other_seed = loaders(root, "tensor", seed=6)[0]
    other_seed.set_epoch(1)
    assert not torch.equal(cat(epoch(other_seed), "indices"), cat(second, "indices"))


# Augmentation: a marker image reveals each sample's crop offset and flip


def marker_image() -> np.ndarray:
    """uint8 (3, 32, 32) with no zero pixel: channel 0 encodes the row, channel 1 the column."""
    rows, cols = np.mgrid[0:32, 0:32]
    return np.stack([1 + 7 * rows, 1 + 7 * cols, np.full_like(rows, 200)]).astype(np.uint8)


def expected_view(image: np.ndarray, top: int, left: int, flip: bool) -> np.ndarray:
    padded = np.pad(image, ((0, 0), (4, 4), (4, 4)))
    view = padded[:, top:top + 32, left:left + 32]
    return view[:, :, ::-1] if flip else view


def decode(images: torch.Tensor) -> list[tuple[int, int, bool]]:
    """(top, left, flip) of each augmented marker image (offsets into the padded image, 0..8), checking
    every pixel against that view."""
    mean = torch.tensor(CIFAR100_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(CIFAR100_STD).view(1, 3, 1, 1)
    pixels = torch.round((images * std + mean) * 255).to(torch.uint8).numpy()
    views = []
    for pixel in pixels:
        centre_row = (int(pixel[0, 16, 16]) - 1) // 7  # the centre is never padding: top + 12
        flip = pixel[1, 16, 17] < pixel[1, 16, 16]
        centre_col = (int(pixel[1, 16, 16]) - 1) // 7
        top, left = centre_row - 12, centre_col - (11 if flip else 12)
        np.testing.assert_array_equal(pixel, expected_view(marker_image(), top, left, flip))
        views.append((top, left, bool(flip)))
    return views


def chi_square(counts: np.ndarray) -> float:
    expected = counts.sum() / counts.size
    return float(((counts - expected) ** 2 / expected).sum())


@pytest.mark.parametrize("backend", BACKENDS)
def test_crops_are_uniform_over_81_offsets_flips_fair_and_samples_independent(tmp_path, backend):
    n = 1620
    folder = tmp_path / FOLDER_NAME
    folder.mkdir()
    labels = np.arange(n) % 100
    for split in ("train", "test"):
        write_split(folder / split, np.broadcast_to(marker_image(), (n, 3, 32, 32)), labels, labels // 5,
                    [f"{i}.png" for i in range(n)], split)
    write_meta(folder / "meta", [f"c{i}" for i in range(100)], [f"s{i}" for i in range(20)])
    torch.manual_seed(0)  # the torchvision path draws from the global RNG
    train = loaders(tmp_path, backend, batch_size=128, seed=0)[0]
    views = [view for batch in train for view in decode(batch.images)]
    offsets = np.zeros((9, 9, 2))
    for top, left, flip in views:
        offsets[top, left, int(flip)] += 1
    # 99.99th percentiles of chi-square with 80 and 161 degrees of freedom
    assert chi_square(offsets.sum(2)) < 136
    assert chi_square(offsets) < 238  # joint with the flip: the flip is independent of the offset
    assert abs(offsets[..., 1].sum() / n - 0.5) < 0.05
    repeats = np.mean([a == b for a, b in zip(views, views[1:])])
    assert repeats < 0.03  # 1/162 expected if neighbours in a batch draw independently


# CRD sampling


def crd_rows(root, backend, **crd) -> tuple[torch.Tensor, torch.Tensor]:
    """(indices, contrast_idx) of a whole epoch."""
    crd.setdefault("crd_k", 100)
    batches = epoch(loaders(root, backend, **crd)[0])
    return cat(batches, "indices"), cat(batches, "contrast_idx")


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("mode", ["exact", "relax"])
def test_crd_positive_comes_first_and_no_negative_shares_the_anchor_class(root, backend, mode):
    labels = train_labels(root)
    indices, contrast = crd_rows(root, backend, crd_k=100, crd_mode=mode)
    assert contrast.shape == (300, 101) and contrast.dtype == torch.int64
    positive, negatives = contrast[:, 0], contrast[:, 1:]
    assert torch.equal(labels[positive], labels[indices])
    if mode == "exact":
        assert torch.equal(positive, indices)
    else:
        assert 0 < (positive == indices).sum() < 300  # a random class member, sometimes the anchor
    assert not (labels[negatives] == labels[indices][:, None]).any()


@pytest.mark.parametrize("backend", BACKENDS)
def test_crd_rows_repeat_a_negative_only_when_k_exceeds_the_pool(root, backend):
    labels = train_labels(root)
    _, exact_fit = crd_rows(root, backend, crd_k=297)
    for row in exact_fit:  # k == pool: each row is the whole pool, no repeats
        assert sorted(row[1:].tolist()) == torch.nonzero(labels != labels[row[0]]).flatten().tolist()
    _, oversized = crd_rows(root, backend, crd_k=400)  # k > pool: 400 uniform draws with replacement
    assert not (labels[oversized[:, 1:]] == labels[oversized[:, :1]]).any()
    distinct = torch.tensor([len(set(row[1:].tolist())) for row in oversized], dtype=torch.float64)
    expected = 297 * (1 - (296 / 297) ** 400)  # 219.9 distinct of the 297 on average, sd 5.5 per row
    assert abs(distinct.mean().item() - expected) < 2  # 6 sd of the mean over 300 rows
    assert ((distinct - expected).abs() < 33).all()


@pytest.mark.parametrize("backend", BACKENDS)
def test_crd_percent_keeps_a_fixed_random_share_of_each_pool(root, backend):
    labels = train_labels(root)
    train = loaders(root, backend, crd_k=100, crd_percent=0.5)[0]
    pools: dict[int, set] = {}
    for _ in range(2):  # two epochs draw from the same pools
        batches = epoch(train)
        for anchor, row in zip(cat(batches, "indices").tolist(), cat(batches, "contrast_idx")[:, 1:]):
            assert len(set(row.tolist())) == 100
            pools.setdefault(int(labels[anchor]), set()).update(row.tolist())
    sizes = [len(pool) for pool in pools.values()]
    assert max(sizes) <= int(297 * 0.5) and sum(sizes) / len(sizes) > 140


def assert_uniform_pairs(pairs: list[tuple[int, int]], members: set[int]) -> None:
    """Every pair two distinct members, and each of the len(members)-choose-2 pairs equally frequent."""
    subsets = [tuple(sorted(pair)) for pair in pairs]
    assert all(a != b and {a, b} <= members for a, b in subsets)
    counts = np.unique(subsets, axis=0, return_counts=True)[1]
    assert len(counts) == len(members) * (len(members) - 1) // 2 and chi_square(counts) < 30


def test_random_keys_give_every_k_subset_the_same_probability():
    generator = torch.Generator().manual_seed(0)
    rows = 20000
    bounds = torch.tensor([5, 3]).repeat(rows // 2)  # width 5; half the rows may only use positions 0..2
    draws = distinct_by_random_keys(bounds, 2, 5, generator)
    for bound in (5, 3):
        assert_uniform_pairs(draws[bounds == bound].tolist(), set(range(bound)))


def test_first_distinct_draws_give_every_k_subset_the_same_probability():
    generator = torch.Generator().manual_seed(0)
    rows = 20000
    bounds = torch.tensor([5, 3]).repeat(rows // 2)
    draws = distinct_by_first_draws(bounds, 2, 30, generator)
    for bound in (5, 3):
        assert_uniform_pairs(draws[bounds == bound].tolist(), set(range(bound)))
    first, second = draws[bounds == 5].T  # and in random order: each value first as often as second
    assert chi_square(torch.bincount(first, minlength=5).numpy()) < 20
    assert chi_square(torch.bincount(second, minlength=5).numpy()) < 20


def test_first_distinct_draws_stop_when_a_row_has_fewer_than_k_distinct_values():
    with pytest.raises(RuntimeError, match="fewer distinct draws than --nce_k"):
        distinct_by_first_draws(torch.tensor([3, 1]), 2, 4, torch.Generator().manual_seed(0))


def test_spare_draws_leave_no_row_short_at_the_sizes_it_accepts():
    assert spare_draws(16384, 49500) is None  # CIFAR-100's pools: random keys over the pool
    assert spare_draws(16384, 1279867) is not None  # ImageNet's: first draws, O(k) per row
    generator = torch.Generator().manual_seed(0)
    for k, n in ((16, 990), (200, 20000)):
        extra = spare_draws(k, n)
        assert extra is not None and extra < 4 * k + 64
        draws = distinct_by_first_draws(torch.full((2000,), n), k, extra, generator)
        assert all(len(set(row)) == k for row in draws.tolist()) and 0 <= int(draws.min()) <= int(draws.max()) < n


def test_batched_sampler_draws_from_large_pools_without_keys_over_the_whole_pool(monkeypatch):
    labels = torch.arange(10).repeat_interleave(400)  # pools of 3,600: k=16 uses the first distinct draws
    sampler = ContrastSampler(labels, k=16, num_classes=10)
    assert sampler.spare_draws is not None
    monkeypatch.setattr("dataset.sampling.distinct_by_random_keys", None)  # would fail if called
    indices = torch.arange(0, 4000, 7)
    contrast = sampler._sample_batched(indices, labels[indices], torch.Generator().manual_seed(0))
    assert torch.equal(contrast[:, 0], indices)
    assert not (labels[contrast[:, 1:]] == labels[indices][:, None]).any()
    assert all(len(set(row)) == 16 for row in contrast[:, 1:].tolist())


def test_cpu_sampler_gives_every_k_subset_of_the_pool_the_same_probability():
    labels = torch.tensor([0] * 3 + [1] * 5)  # pools: class 0 -> the 5 of class 1, class 1 -> the 3 of class 0
    sampler = ContrastSampler(labels, k=2, num_classes=2)
    indices = torch.arange(8).repeat(2500)
    contrast = sampler.sample(indices, labels[indices], torch.Generator().manual_seed(0))
    for c, members in ((0, {3, 4, 5, 6, 7}), (1, {0, 1, 2})):
        assert_uniform_pairs(contrast[labels[indices] == c, 1:].tolist(), members)


def test_cpu_sampler_draws_come_from_the_generator_alone():
    """A replayed epoch draws the same negatives from the same generator seed, whatever the global RNGs."""
    labels = torch.arange(10).repeat_interleave(30)
    sampler = ContrastSampler(labels, k=100, mode="relax", num_classes=10)
    indices = torch.randperm(300, generator=torch.Generator().manual_seed(1))[:64]

    def draw(seed: int) -> torch.Tensor:
        return sampler.sample(indices, labels[indices], torch.Generator().manual_seed(seed))

    torch_state, (_, numpy_keys, numpy_pos, *_) = torch.get_rng_state(), np.random.get_state()
    first = draw(7)
    _, keys_after, pos_after, *_ = np.random.get_state()
    assert torch.equal(torch.get_rng_state(), torch_state)  # the global generators are not advanced
    assert np.array_equal(keys_after, numpy_keys) and pos_after == numpy_pos
    torch.manual_seed(123)
    np.random.seed(123)
    assert torch.equal(draw(7), first)
    other = draw(8)
    assert not torch.equal(other[:, 0], first[:, 0]) and not torch.equal(other[:, 1:], first[:, 1:])


@pytest.mark.parametrize("kernel", ["cpu", "batched"])
@pytest.mark.parametrize("percent", [1.0, 0.8])
def test_contrast_sampler_handles_unbalanced_classes_with_and_without_replacement(monkeypatch, kernel, percent):
    labels = torch.tensor([0] * 2 + [1] * 5 + [2] * 10)
    sampler = ContrastSampler(labels, k=8, mode="relax", percent=percent, num_classes=3)  # class 2's pool < k
    if kernel == "batched":  # the accelerator's kernel, run on the CPU
        monkeypatch.setattr(sampler, "_sample_on_cpu", sampler._sample_batched)
    indices = torch.arange(17).repeat(20)
    contrast = sampler.sample(indices, labels[indices], torch.Generator().manual_seed(0))
    assert torch.equal(labels[contrast[:, 0]], labels[indices])
    assert not (labels[contrast[:, 1:]] == labels[indices][:, None]).any()
    distinct = torch.tensor([len(set(row.tolist())) for row in contrast[:, 1:]])
    assert (distinct[labels[indices] != 2] == 8).all() and (distinct[labels[indices] == 2] <= 7).all()


def test_faithful_sample_dataset_keeps_the_original_item_layout(root):
    train, test, n_data = get_cifar100_dataloaders_sample(batch_size=8, num_workers=0, k=20, mode="exact",
                                                          data_folder=root)
    img, target, index, sample_idx = next(iter(train))
    assert n_data == 300 and img.shape == (8, 3, 32, 32) and sample_idx.shape == (8, 21)
    assert torch.equal(sample_idx[:, 0], index) and len(next(iter(test))) == 2 and test.batch_size == 4
    plain = get_cifar100_dataloaders(batch_size=8, num_workers=0, data_folder=root)
    assert len(plain) == 2 and len(next(iter(plain[0]))) == 2
    dataset = CIFAR100InstanceSample(root, k=20, is_sample=False)
    assert len(dataset[3]) == 3 and dataset[3][2] == 3


# Missing and broken files


@pytest.mark.parametrize("backend", BACKENDS)
def test_missing_data_offline_raises_one_error_saying_where_and_how_to_place_the_files(tmp_path, monkeypatch,
                                                                                      backend):
    offline(monkeypatch)
    with pytest.raises(DatasetError) as error:
        loaders(tmp_path / "nowhere", backend)
    message = str(error.value)
    assert str(tmp_path / "nowhere" / FOLDER_NAME) in message and ARCHIVE_URL in message
    assert "network unreachable" in message and isinstance(error.value.__cause__, urllib.error.URLError)


@pytest.mark.parametrize("backend", BACKENDS)
def test_existing_files_load_without_checksums_or_network(root, monkeypatch, backend):
    offline(monkeypatch)  # the synthetic files do not match the release's md5 sums
    assert loaders(root, backend)[2] == 300


def truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[:5000])


def rewrite(path: Path, **changes) -> None:
    entry = pickle.loads(path.read_bytes(), encoding="latin1")
    entry.update(changes)
    entry = {key: value for key, value in entry.items() if value is not None}
    path.write_bytes(pickle.dumps(entry, protocol=2))


CORRUPTIONS = {
    "truncated pickle": (truncate, "truncated or corrupt"),
    "wrong image shape": (lambda p: rewrite(p, data=np.zeros((300, 3000), np.uint8)), "(N, 3072)"),
    "float images": (lambda p: rewrite(p, data=np.zeros((300, 3072), np.float32)), "uint8"),
    "label out of range": (lambda p: rewrite(p, fine_labels=[100] * 300), "fine label 100"),
    "label count mismatch": (lambda p: rewrite(p, fine_labels=[1] * 299), "299 fine labels"),
    "missing labels": (lambda p: rewrite(p, fine_labels=None), "no 'fine_labels'"),
    "foreign object": (lambda p: p.write_bytes(pickle.dumps({"data": print})), "unexpected object"),
}


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("corruption", CORRUPTIONS)
def test_corrupt_files_raise_a_clear_error_naming_the_file(root, tmp_path, monkeypatch, backend, corruption):
    offline(monkeypatch)
    shutil.copytree(root / FOLDER_NAME, tmp_path / FOLDER_NAME)
    damage, expected = CORRUPTIONS[corruption]
    damage(tmp_path / FOLDER_NAME / "train")
    with pytest.raises(DatasetError) as error:
        loaders(tmp_path, backend)
    assert str(tmp_path / FOLDER_NAME / "train") in str(error.value) and expected in str(error.value)


# Sharding


@pytest.mark.parametrize("world_size", [3, 7])
def test_tensor_train_shards_are_disjoint_equal_sized_and_cover_the_epoch(root, world_size):
    shards = []
    for rank in range(world_size):
        train = loaders(root, "tensor", batch_size=16, seed=2, rank=rank, world_size=world_size)[0]
        train.set_epoch(4)
        shards.append(cat(epoch(train), "indices").tolist())
        assert len(train) == len(epoch(loaders(root, "tensor", batch_size=16, rank=rank,
                                                world_size=world_size)[0]))
    padding = -300 % world_size  # padded like DistributedSampler so every rank runs as many steps
    assert {len(s) for s in shards} == {(300 + padding) // world_size}
    everything = [i for s in shards for i in s]
    assert set(everything) == set(range(300)) and len(everything) - len(set(everything)) == padding


def test_shard_of_a_permutation_is_strided():
    order = torch.tensor([4, 0, 3, 1, 2])
    assert [shard(order, r, 2).tolist() for r in range(2)] == [[4, 3, 2], [0, 1, 4]]


def test_torchvision_train_shards_are_disjoint_and_cover_the_epoch(root):
    shards = [cat(epoch(loaders(root, "torchvision", rank=r, world_size=3)[0]), "indices") for r in range(3)]
    assert sorted(torch.cat(shards).tolist()) == list(range(300))


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("world_size", [3, 7])
def test_test_shards_see_every_sample_exactly_once(root, backend, world_size):
    whole = epoch(loaders(root, backend, batch_size=20)[1])
    images, labels = cat(whole, "images"), cat(whole, "labels")
    for rank in range(world_size):
        part = epoch(loaders(root, backend, batch_size=20, rank=rank, world_size=world_size)[1])
        assert torch.equal(cat(part, "labels"), labels[rank::world_size])
        torch.testing.assert_close(cat(part, "images"), images[rank::world_size], rtol=0, atol=1e-6)


def test_workers_beyond_the_available_cpus_are_capped_once_in_one_line_without_dataloader_warnings(
        root, monkeypatch, caplog):
    import dataset.loaders

    monkeypatch.setattr(dataset.loaders.os, "sched_getaffinity", lambda pid: {0}, raising=False)
    monkeypatch.setattr(dataset.loaders.os, "cpu_count", lambda: 1)  # DataLoader asks one of the two
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a DataLoader warning fails the test
        with caplog.at_level(logging.INFO, logger="repdistiller"):
            train, test, _ = build_loaders(root, "torchvision", 100, 8, "cpu", instance=True)
        assert (train.loader.num_workers, test.loader.num_workers) == (1, 0)
        next(iter(train)), next(iter(test))  # workers start (and DataLoader checks their number) here
    lines = [record.getMessage() for record in caplog.records]
    assert len(lines) == 1 and "--num_workers 8 is more than the 1 CPU " in lines[0], lines


def test_unknown_backend_and_rank_are_refused(root):
    with pytest.raises(ValueError, match="backend"):
        loaders(root, "dali")
    with pytest.raises(ValueError, match="rank"):
        loaders(root, "tensor", rank=2, world_size=2)


def test_tensor_loader_batches_stay_on_the_data_device():
    images = torch.zeros(10, 3, 32, 32, dtype=torch.uint8)
    train = TensorTrainLoader(images, torch.arange(10) % 2, 4, CIFAR100, with_indices=False)
    batch = next(iter(train))
    assert batch.images.device == images.device and batch.indices is None and len(train) == 3


def test_benchmark_quick_data_section_reports_consistent_rates(tmp_path):
    """The data section alone (tests/test_speed.py runs the steps section)."""
    from scripts import benchmark

    report = benchmark.main(["--quick", "--sections", "data", "--num_workers", "0", "--device", "cpu",
                             "--output_dir", str(tmp_path)])
    assert list(report["sections"]) == ["data"]
    data = report["sections"]["data"]["results"]
    assert (data["train_images"], data["batch_size"], data["crd_k"]) == (500, 64, 128)
    speeds, rates = data["loader_images_per_s"], data["crd_sampler_rates"]
    plain, fast, plain_crd, fast_crd = speeds.values()  # torchvision, tensor; then both with CRD sampling
    assert data["tensor_vs_torchvision"] == pytest.approx(fast / plain)
    assert data["tensor_vs_torchvision_with_crd"] == pytest.approx(fast_crd / plain_crd)
    assert (rates["original"], rates["sample"]) == (data["crd_original_samples_per_s"],
                                                    data["crd_sampler_samples_per_s"])
    assert data["crd_speedup"] == pytest.approx(rates["sample"] / rates["original"])
    assert json.loads((tmp_path / "benchmarks.json").read_text()) == report
    markdown = (tmp_path / "BENCHMARKS.md").read_text()
    assert "## Data loading" in markdown and "--quick" in markdown
    for name, speed in speeds.items():  # the table shows the measured numbers
        assert f"| {name} | {speed:,.0f} |" in markdown
    assert f"| {rates['sample']:,.0f} | {data['crd_speedup']:.1f}x |" in markdown
