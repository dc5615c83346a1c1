"""--dataset imagenet end to end on a tiny ImageFolder of real JPEGs: the torchvision-compatible models, the
loaders (ImageFolder, and DALI's CPU mode where installed), torchvision teachers, the recipe defaults, both
scripts with resume, two processes under torchrun, and the bad inputs."""
from __future__ import annotations

import copy
import functools
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import torchvision

import train_student
import train_teacher
from cli.build import load_teacher
from conftest import ROOT, epochs_trained, load, resumed_after, student_options, tiny_batch
from dataset import build_loaders
from dataset.imagenet import ImageFolder, check_layout
from dataset.info import dataset_info
from dataset.synthetic_imagenet import write_synthetic_imagefolder
from distiller_zoo import build_distiller
from models import imagenet_model_dict
from test_methods import distill_step

SIZE = "32"  # --image_size: 32x32 crops keep every run to seconds
TORCHVISION_RESNET = {"ResNet18": torchvision.models.resnet18, "ResNet34": torchvision.models.resnet34,
                      "ResNet50": torchvision.models.resnet50}
RESNET34_FILE = "resnet34-b627a593.pth"  # torchvision's file name for ResNet34_Weights.IMAGENET1K_V1
RESNET18_FILE = "resnet18-f37072fd.pth"  # and for ResNet18_Weights.IMAGENET1K_V1


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    """10 classes x (2 train + 1 val) JPEGs of 36..56 pixels. Read it, never write into it."""
    return write_synthetic_imagefolder(tmp_path_factory.mktemp("imagenet"), classes=10, train_per_class=2,
                                       val_per_class=1, min_size=36, max_size=56)


@pytest.fixture(scope="module")
def resnet34_file(tmp_path_factory) -> Path:
    """A torchvision ResNet34 state_dict saved as torchvision publishes it (a plain dict, its file name)."""
    return torchvision_file(tmp_path_factory.mktemp("torchvision") / RESNET34_FILE, torchvision.models.resnet34)


@pytest.fixture(scope="module")
def resnet18_file(tmp_path_factory) -> Path:
    """The same for ResNet18 (the cheaper teacher of the runs that test something else)."""
    return torchvision_file(tmp_path_factory.mktemp("torchvision") / RESNET18_FILE, torchvision.models.resnet18)


def torchvision_file(path: Path, build) -> Path:
    with torch.random.fork_rng():
        torch.manual_seed(3)
        torch.save(build().state_dict(), path)
    return path


def common(data: Path, save: Path, *extra: str) -> list[str]:
    return ["--dataset", "imagenet", "--data_folder", str(data), "--save_root", str(save), "--image_size", SIZE,
            "--batch_size", "20", "--num_workers", "0", "--learning_rate", "0.05", "--device", "cpu", "--seed", "1",
            *extra]


def run(module, argv: list[str], capsys) -> str:
    assert module.main(argv) == 0
    return capsys.readouterr().out


def results(opt) -> dict:
    return json.loads((Path(opt.save_folder) / "results.json").read_text())


# Models

@pytest.mark.parametrize("name", list(TORCHVISION_RESNET))
def test_resnet_state_dict_is_torchvisions_key_for_key_and_gives_its_logits(name):
    ours, theirs = imagenet_model_dict[name]().eval(), TORCHVISION_RESNET[name]().eval()
    assert [(k, v.shape) for k, v in ours.state_dict().items()] == \
           [(k, v.shape) for k, v in theirs.state_dict().items()]
    theirs.load_state_dict(ours.state_dict(), strict=True)
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        feats, logits = ours(x, is_feat=True)
        torch.testing.assert_close(logits, theirs(x), rtol=0, atol=0)
    assert len(feats) == 6 and feats[-1].shape == (2, ours.fc.in_features)  # stem, 4 stages, pooled


@pytest.mark.parametrize("name", list(imagenet_model_dict))
def test_features_are_relu_of_preact_features_and_halve_per_stage(name):
    model = imagenet_model_dict[name](num_classes=10).eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        feats, logits = model(x, is_feat=True)
        pre, logits_pre = model(x, is_feat=True, preact=True)
    torch.testing.assert_close(logits, logits_pre, rtol=0, atol=0)
    assert [f.shape[-1] for f in feats[1:-1]] == [16, 8, 4, 2]  # 64 / 4 ... 64 / 32
    for f, p in zip(feats[1:-1], pre[1:-1]):
        assert (p < 0).any()  # a real pre-activation
        torch.testing.assert_close(f, p.relu(), rtol=0, atol=0)


def test_mobilenetv1_has_mdistillers_layout():
    model = imagenet_model_dict["MobileNetV1"]()
    assert sum(p.numel() for p in model.parameters()) == 4231976  # MobileNetV1 1.0 at 1000 classes
    assert {k.split(".")[0] for k in model.state_dict()} == {"model", "fc"}
    assert model.state_dict()["model.13.3.weight"].shape == (1024, 1024, 1, 1)


@functools.cache
def _pristine(name: str) -> torch.nn.Module:
    with torch.random.fork_rng():
        torch.manual_seed(0)
        return imagenet_model_dict[name]()


def fresh(name: str) -> torch.nn.Module:
    """A new copy of ``name`` (each built once: initialising 25M parameters is most of a step's time)."""
    return copy.deepcopy(_pristine(name))


METHODS = ["kd", "attention", "similarity", "correlation", "vid", "rkd", "pkt", "crd", "dkd", "dist"]
# Every method on ResNet34 -> ResNet18; on ResNet50 -> MobileNetV1 those whose modules depend on the maps'
# shapes (the logit and pooled-vector methods build the same way for any pair).
CASES = [("ResNet34", "ResNet18", m) for m in METHODS] + \
        [("ResNet50", "MobileNetV1", m) for m in ("attention", "similarity", "correlation", "vid", "crd")]


@pytest.mark.parametrize("teacher,student,method", CASES, ids=[f"{m}-{t}-{s}" for t, s, m in CASES])
def test_every_imagenet_method_takes_a_finite_step_on_the_papers_pairs(method, teacher, student):
    model_t, model_s = fresh(teacher).eval(), fresh(student)
    opt = student_options(method, teacher, student, dataset="imagenet", image_size=32, print_freq=1)
    distiller = build_distiller(opt, model_s, model_t)
    before = [p.detach().clone() for p in model_s.parameters()]
    result = distill_step(distiller, model_s, model_t, opt, tiny_batch())
    assert torch.isfinite(torch.tensor(result.loss))
    assert any(not torch.equal(b, p) for b, p in zip(before, model_s.parameters()))
    assert all(p.grad is None for p in model_t.parameters())


def test_methods_are_built_from_images_of_the_runs_size():
    model_t, model_s = fresh("ResNet34"), fresh("ResNet18")
    seen = []
    model_s.register_forward_pre_hook(lambda module, args: seen.append(tuple(args[0].shape)))
    build_distiller(student_options("crd", "ResNet34", "ResNet18", dataset="imagenet", image_size=48), model_s, model_t)
    assert seen == [(2, 3, 48, 48)]
    info = dataset_info(SimpleNamespace(dataset="imagenet", image_size=48))
    assert info.image_shape == (3, 48, 48) and info.test_resize == 55  # 256/224 of it, as 256 is of 224


# Recipe defaults

def test_imagenet_recipe_defaults_and_command_line_overrides():
    opt = train_student.parse_option(["--dataset", "imagenet", "--path_t", RESNET34_FILE, "--model_s", "ResNet18",
                                      "--distill", "crd", "-a", "0", "-b", "0.8", "--device", "cpu"])
    assert (opt.epochs, opt.learning_rate, opt.lr_decay_epochs, opt.weight_decay, opt.momentum, opt.batch_size,
            opt.nce_k, opt.feat_dim, opt.data_backend, opt.model_t) == \
           (100, 0.1, [30, 60, 90], 1e-4, 0.9, 256, 16384, 128, "torchvision", "ResNet34")
    given = train_teacher.parse_option(["--dataset", "imagenet", "--model", "ResNet18", "--epochs", "3",
                                        "--weight_decay", "5e-4", "--batch_size", "64", "--lr_decay_epochs", "2",
                                        "--device", "cpu"])
    assert (given.epochs, given.weight_decay, given.lr_decay_epochs) == (3, 5e-4, [2])
    assert given.learning_rate == pytest.approx(0.1 * 64 / 256)  # linear scaling of the recipe's rate
    explicit = train_teacher.parse_option(["--dataset", "imagenet", "--model", "ResNet18", "--learning_rate", "0.3",
                                           "--batch_size", "64", "--device", "cpu"])
    assert explicit.learning_rate == 0.3
    cifar = train_teacher.parse_option(["--model", "resnet8", "--device", "cpu"])
    assert (cifar.epochs, cifar.learning_rate, cifar.weight_decay, cifar.batch_size) == (240, 0.05, 5e-4, 64)


def test_learning_rate_scales_with_the_global_batch_under_torchrun(monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "8")
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("LOCAL_RANK", "0")
    argv = ["--dataset", "imagenet", "--model", "ResNet18", "--device", "cpu"]
    assert train_teacher.parse_option([*argv, "--batch_size", "32"]).learning_rate == pytest.approx(0.1)
    assert train_teacher.parse_option(argv).learning_rate == pytest.approx(0.8)  # 8 x 256 images per step


# Loaders

def test_imagefolder_loader_batches_every_sample_once_with_contrast_indices(data):
    train, test, n_data = build_loaders(data, "torchvision", 8, 0, "cpu", instance=True, crd_k=8, seed=1,
                                        dataset="imagenet", image_size=32)
    targets = torch.tensor(train.dataset.targets)
    assert n_data == 20 and len(train) == 3 and train.dataset.classes == [f"n{c:08d}" for c in range(10)]
    seen = []
    for batch in train:
        assert batch.images.shape[1:] == (3, 32, 32) and batch.contrast_idx.shape == (len(batch), 9)
        assert torch.equal(batch.labels, targets[batch.indices])
        assert torch.equal(batch.contrast_idx[:, 0], batch.indices)  # 'exact': the positive is the sample
        negatives = targets[batch.contrast_idx[:, 1:]]
        assert (negatives != batch.labels[:, None]).all()
        seen += batch.indices.tolist()
    assert sorted(seen) == list(range(20))
    val = [b for b in test]
    assert sum(len(b) for b in val) == 10 and val[0].images.shape[1:] == (3, 32, 32)


def test_validation_classes_keep_the_training_indices_when_some_are_missing(data, tmp_path):
    folder = copy_of(data, tmp_path)
    shutil.rmtree(folder / "val" / "n00000000")
    _, test, _ = build_loaders(folder, "torchvision", 8, 0, "cpu", instance=False, dataset="imagenet", image_size=32)
    assert [int(Path(path).parent.name[1:]) for path, _ in test.dataset.samples] == test.dataset.targets
    assert sorted(set(test.dataset.targets)) == list(range(1, 10))


def test_an_epoch_replays_from_seed_and_epoch(data):
    def epoch_indices(epoch, images=None):
        # Two workers: their augmentation seeds must follow (seed, epoch) too, not only the sampler's order.
        train, _, _ = build_loaders(data, "torchvision", 8, 2, "cpu", instance=True, seed=1, dataset="imagenet",
                                    image_size=32)
        train.set_epoch(epoch)
        batches = list(train)
        if images is not None:
            images.append(torch.cat([b.images for b in batches]))
        return torch.cat([b.indices for b in batches])

    images = []
    assert torch.equal(epoch_indices(3, images), epoch_indices(3, images))
    assert torch.equal(images[0], images[1])  # the same crops and flips
    assert not torch.equal(epoch_indices(3), epoch_indices(4))


def dali_order(data, seed: int, epochs: int, **shards) -> list[list[int]]:
    """The training indices a DALI loader yields, per epoch (each batch checked to be non-empty)."""
    train, _, _ = build_loaders(data, "dali", 3 if shards else 8, 2, "cpu", instance=True, seed=seed,
                                dataset="imagenet", image_size=32, **shards)
    orders = []
    for epoch in range(1, epochs + 1):
        train.set_epoch(epoch)
        batches = [batch.indices.tolist() for batch in train]
        assert len(batches) == len(train) and all(batches), [len(b) for b in batches]
        orders.append([i for batch in batches for i in batch])
    return orders


def test_dali_cpu_pipeline_reads_every_sample_with_its_label(data):
    pytest.importorskip("nvidia.dali", reason="NVIDIA DALI (optional) is not installed")
    train, test, n_data = build_loaders(data, "dali", 8, 2, "cpu", instance=True, crd_k=8, seed=1,
                                        dataset="imagenet", image_size=32)
    targets = torch.tensor(ImageFolder(Path(data) / "train", check_layout(data)).targets)
    seen = []
    for batch in train:
        assert batch.images.shape[1:] == (3, 32, 32) and batch.images.dtype == torch.float32
        assert torch.equal(batch.labels, targets[batch.indices])
        assert batch.contrast_idx.shape == (len(batch), 9)
        seen += batch.indices.tolist()
    assert sorted(seen) == list(range(n_data)) and len(train) == 3
    assert sum(len(b) for b in test) == 10


def test_dali_epochs_each_read_every_sample_once_in_an_order_set_by_the_seed(data):
    pytest.importorskip("nvidia.dali", reason="NVIDIA DALI (optional) is not installed")
    orders = dali_order(data, seed=1, epochs=3)
    n_data = len(orders[0])
    for order in orders:  # the last partial batch does not spill into the next (reshuffled) epoch
        assert sorted(order) == list(range(n_data))
    assert orders[1] != orders[2]  # reshuffled after every epoch
    assert dali_order(data, seed=2, epochs=3)[1:] != orders[1:]  # ... in an order --seed sets


def test_dali_shards_have_equal_lengths_no_empty_batch_and_cover_the_sets(data):
    pytest.importorskip("nvidia.dali", reason="NVIDIA DALI (optional) is not installed")
    world_size = 3
    trained = [dali_order(data, seed=1, epochs=1, rank=rank, world_size=world_size)[0] for rank in range(world_size)]
    assert len({len(order) for order in trained}) == 1  # every rank takes the same number of steps
    n_data = 20
    assert set().union(*map(set, trained)) == set(range(n_data))
    tested = []
    for rank in range(world_size):  # validation: every image exactly once over the ranks
        _, test, _ = build_loaders(data, "dali", 6, 2, "cpu", instance=False, seed=1, dataset="imagenet",
                                   image_size=32, rank=rank, world_size=world_size)
        batches = [len(batch) for batch in test]
        assert all(batches), batches
        tested.append(sum(batches))
    assert sum(tested) == 10


def test_dali_backend_without_dali_says_how_to_install_it(data, save_root, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "nvidia.dali", None)  # an import of it fails, installed or not
    argv = ["--model", "MobileNetV1", "--epochs", "1", "--data_backend", "dali", *common(data, save_root)]
    assert train_teacher.main(argv) == 1
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "pip install nvidia-dali-cuda120" in err and "--data_backend torchvision" in err


# Both scripts end to end

@pytest.fixture
def save_root(tmp_path) -> Path:
    return tmp_path / "save"


def test_teacher_trains_and_resumes(data, save_root, capsys):
    argv = ["--model", "MobileNetV1", "--save_freq", "1", *common(data, save_root)]
    run(train_teacher, [*argv, "--epochs", "1"], capsys)
    log = run(train_teacher, [*argv, "--epochs", "2", "--resume", "auto"], capsys)
    assert resumed_after(log) == (0, 1) and epochs_trained(log) == [2]
    opt = train_teacher.parse_option([*argv, "--epochs", "2"])
    done = results(opt)
    assert done["finished"] and done["epochs_done"] == 2 and done["last_acc_top5"] is not None
    assert done["opt"]["dataset"] == "imagenet" and done["opt"]["image_size"] == 32
    assert {"ckpt_epoch_1.pth", "ckpt_epoch_2.pth", "MobileNetV1_last.pth"} <= set(os.listdir(opt.save_folder))


def test_kd_student_of_a_torchvision_resnet34_file_loads_into_torchvisions_resnet18(data, save_root, resnet34_file,
                                                                                   capsys):
    argv = ["--path_t", str(resnet34_file), "--model_s", "ResNet18", "--distill", "kd", "-r", "0.5", "-a", "0.5",
            "--kd_T", "1", "--epochs", "1", *common(data, save_root)]
    run(train_student, argv, capsys)
    opt = train_student.parse_option(argv)
    assert opt.model_t == "ResNet34" and results(opt)["finished"]

    # The teacher the script loads is torchvision's ResNet34 with that file's weights.
    teacher = load_teacher(opt, torch.device("cpu")).eval()
    reference = torchvision.models.resnet34().eval()
    reference.load_state_dict(torch.load(resnet34_file, weights_only=True), strict=True)
    images = tiny_batch().images
    with torch.no_grad():
        torch.testing.assert_close(teacher(images), reference(images), rtol=0, atol=0)

    # The student's checkpoint is a torchvision ResNet18 state_dict.
    state = load(Path(opt.save_folder) / "ResNet18_last.pth")["model"]
    ours, theirs = imagenet_model_dict["ResNet18"]().eval(), torchvision.models.resnet18().eval()
    ours.load_state_dict(state, strict=True)
    theirs.load_state_dict(state, strict=True)
    with torch.no_grad():
        torch.testing.assert_close(ours(images), theirs(images), rtol=0, atol=0)


def test_crd_student_of_torchvision_weights_by_name_resumes_where_it_stopped(data, save_root, resnet18_file, tmp_path,
                                                                             capsys, monkeypatch):
    hub = tmp_path / "torch_home"
    (hub / "hub" / "checkpoints").mkdir(parents=True)
    shutil.copy(resnet18_file, hub / "hub" / "checkpoints" / RESNET18_FILE)  # torch's cache: no download
    monkeypatch.setenv("TORCH_HOME", str(hub))
    argv = ["--path_t", "torchvision:ResNet18_Weights.IMAGENET1K_V1", "--model_s", "MobileNetV1", "--distill", "crd",
            "-a", "0", "-b", "0.8", "--nce_k", "16", "--deterministic", "--lr_decay_epochs", "1",
            *common(data, save_root)]
    run(train_student, [*argv, "--epochs", "2", "--trial", "full"], capsys)
    run(train_student, [*argv, "--epochs", "1", "--trial", "cut"], capsys)
    log = run(train_student, [*argv, "--epochs", "2", "--trial", "cut", "--resume", "auto"], capsys)
    assert resumed_after(log) == (0, 1) and epochs_trained(log) == [2]
    full, cut = (train_student.parse_option([*argv, "--epochs", "2", "--trial", t]) for t in ("full", "cut"))
    assert full.model_t == "ResNet18" and results(full)["finished"]
    a, b = load(Path(full.save_folder) / "state.pth"), load(Path(cut.save_folder) / "state.pth")
    for part in ("model", "distiller"):  # the student and CRD's memory banks
        assert a[part].keys() == b[part].keys()
        for key in a[part]:
            torch.testing.assert_close(a[part][key], b[part][key], rtol=0, atol=0, msg=f"{part}.{key}")


def test_two_processes_under_torchrun_keep_the_same_crd_banks(data, tmp_path, resnet18_file):
    out = tmp_path / "ranks"
    out.mkdir()
    argv = ["--path_t", str(resnet18_file), "--model_s", "MobileNetV1", "--distill", "crd", "-a", "0", "-b", "0.8",
            "--nce_k", "16", "--epochs", "1", "--dist_timeout", "1", *common(data, tmp_path / "save")]
    argv[argv.index("--batch_size") + 1] = "10"
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
               "tests/rank_states.py", "student", str(out), *argv]
    done = subprocess.run(command, cwd=ROOT, env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    ranks = [load(out / f"rank{r}.pth") for r in range(2)]
    for part in ("model", "distiller"):
        for key, value in ranks[0][part].items():
            torch.testing.assert_close(value, ranks[1][part][key], rtol=0, atol=0, msg=f"{part}.{key}")
    assert ranks[0]["distiller"]["crd.contrast.memory_v1"].shape[0] == 20  # one bank row per training image
    opt = train_student.parse_option(argv)
    done_json = results(opt)
    assert done_json["finished"] and done_json["opt"]["world_size"] == 2
    assert done.stdout.count(" * Acc@1") == 2  # teacher and epoch 1, printed by rank 0 alone


# Bad inputs: one line naming the problem and the fix

def fails(module, argv: list[str], capsys) -> str:
    assert module.main(argv) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err, err
    return err


def copy_of(data: Path, tmp_path: Path) -> Path:
    copy = tmp_path / "data"
    shutil.copytree(data, copy)
    return copy


def test_a_flat_val_folder_is_refused_with_the_command_that_sorts_it(data, tmp_path, save_root, capsys):
    folder = copy_of(data, tmp_path)
    lines = []
    for image in sorted((folder / "val").glob("*/*.JPEG")):  # as ILSVRC2012_img_val.tar extracts
        lines.append(f"{image.stem},{image.parent.name} 1 2 3 4")
        image.rename(folder / "val" / image.name)
    for class_folder in (folder / "val").iterdir():
        if class_folder.is_dir():
            class_folder.rmdir()
    labels = tmp_path / "LOC_val_solution.csv"
    labels.write_text("ImageId,PredictionString\n" + "\n".join(lines) + "\n")
    argv = ["--model", "MobileNetV1", "--epochs", "1", *common(folder, save_root)]
    err = fails(train_teacher, argv, capsys)
    assert "val holds 10 images directly" in err and "scripts/imagenet_val_folders.py" in err
    python, script, val, label_file = err.split("sort them into class folders with: ")[1].split(" (")[0].split()
    assert (python, val, label_file) == ("python", str(folder / "val"), "LOC_val_solution.csv")
    subprocess.run([sys.executable, script, val, str(labels)], cwd=ROOT, check=True, capture_output=True)
    assert check_layout(folder) == check_layout(data)
    assert sorted(p.relative_to(folder) for p in folder.rglob("*.JPEG")) == \
           sorted(p.relative_to(data) for p in data.rglob("*.JPEG"))
    assert build_loaders(folder, "torchvision", 8, 0, "cpu", instance=False, dataset="imagenet", image_size=32)[2] == 20


@pytest.mark.parametrize("damage,needle", [
    ("no_folder", "does not exist"),
    ("no_val", "has no val/ folder"),
    ("flat_train", "train holds 1 images directly"),
    ("unknown_val_class", "val has class folders that train/ lacks (n99999999)"),
    ("empty_class", "every class folder needs at least one image"),
    ("bad_jpeg", "cannot read image"),
])
def test_bad_layouts_fail_with_one_line(damage, needle, data, tmp_path, save_root, capsys):
    folder = copy_of(data, tmp_path)
    if damage == "no_folder":
        folder = tmp_path / "missing"
    elif damage == "no_val":
        shutil.rmtree(folder / "val")
    elif damage == "flat_train":
        shutil.copy(next((folder / "train" / "n00000000").iterdir()), folder / "train" / "loose.JPEG")
    elif damage == "unknown_val_class":
        shutil.copytree(folder / "val" / "n00000000", folder / "val" / "n99999999")
    elif damage == "empty_class":
        shutil.rmtree(folder / "train" / "n00000003")
        (folder / "train" / "n00000003").mkdir()
    else:
        (folder / "train" / "n00000002" / "n00000002_train_0001.JPEG").write_bytes(b"not a jpeg")
    argv = ["--model", "MobileNetV1", "--epochs", "1", *common(folder, save_root)]
    if damage == "bad_jpeg":
        argv[argv.index("--num_workers") + 1] = "1"  # the error crosses a worker process
    err = fails(train_teacher, argv, capsys)
    assert needle in err
    if damage == "bad_jpeg":
        assert "n00000002_train_0001.JPEG" in err and "delete or replace" in err


def test_teacher_weights_that_torchvision_does_not_have_are_refused(data, save_root, capsys):
    argv = ["--path_t", "torchvision:ResNet34_Weights.NOPE", "--model_s", "ResNet18", "--distill", "kd", "-a", "0.5",
            "--epochs", "1", *common(data, save_root)]
    assert "torchvision has no weights 'ResNet34_Weights.NOPE'" in fails(train_student, argv, capsys)


def test_a_failed_download_says_where_to_put_the_file(data, save_root, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "empty_home"))

    def offline(url, dst, *args, **kwargs):
        raise OSError("network is unreachable")

    monkeypatch.setattr(torch.hub, "download_url_to_file", offline)
    argv = ["--path_t", "torchvision:ResNet34_Weights.IMAGENET1K_V1", "--model_s", "ResNet18", "--distill", "kd",
            "-a", "0.5", "--epochs", "1", *common(data, save_root)]
    err = fails(train_student, argv, capsys)
    cached = tmp_path / "empty_home" / "hub" / "checkpoints" / RESNET34_FILE
    assert "network is unreachable" in err and str(cached) in err


def test_cifar_models_and_sizes_are_refused_for_imagenet_and_back(capsys):
    with pytest.raises(SystemExit):
        train_teacher.parse_option(["--dataset", "imagenet", "--model", "resnet32x4", "--device", "cpu"])
    assert "is not among the imagenet networks" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        train_teacher.parse_option(["--model", "ResNet18", "--device", "cpu"])
    assert "is not among the cifar100 networks" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        train_teacher.parse_option(["--dataset", "imagenet", "--model", "ResNet18", "--data_backend", "tensor",
                                    "--device", "cpu"])
    assert "--data_backend tensor cannot read --dataset imagenet" in capsys.readouterr().err
