"""What only runs on CUDA: the default device, cuDNN and TF32 settings, NCCL, CUDA graphs, the CRD sampler kernel
at full size (CIFAR-100 and ImageNet), pinned-memory transfers, the ImageNet loaders (torchvision, DALI), fused
SGD, resuming on the GPU, and every method under --deterministic.

Skipped without CUDA; `bash scripts/gpu_check.sh` runs it on a GPU machine. Project modules are imported inside
the tests, so that collecting (and skipping) this file on a CPU costs nothing.
"""
import json
from pathlib import Path

import pytest
import torch

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(),
                                reason="needs a CUDA device (bash scripts/gpu_check.sh runs it on a GPU machine)")

TEACHER = "resnet8"
STUDENT = "resnet8"
# (teacher, student) pairs of the paper for the --deterministic sweep: same family, equal widths (FSP, KDSVD),
# a VGG student, and two cross-family pairs whose feature maps differ in size.
PAIRS = [("resnet32x4", "resnet8x4"), ("vgg13", "vgg8"), ("resnet32x4", "ShuffleV1"), ("ResNet50", "MobileNetV2")]


def gpu() -> torch.device:
    return torch.device("cuda", torch.cuda.current_device())


@pytest.fixture(autouse=True)
def restore_process_settings():
    """main() sets process-wide switches (deterministic kernels, cuDNN autotuning, the current device)."""
    saved = (torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled(),
             torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic, torch.backends.cudnn.allow_tf32,
             torch.get_float32_matmul_precision(), torch.cuda.current_device())
    yield
    deterministic, warn_only, benchmark, cudnn_deterministic, cudnn_tf32, precision, device = saved
    torch.use_deterministic_algorithms(deterministic, warn_only=warn_only)
    torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic = benchmark, cudnn_deterministic
    torch.backends.cudnn.allow_tf32 = cudnn_tf32
    torch.set_float32_matmul_precision(precision)
    torch.cuda.set_device(device)


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    """Synthetic CIFAR-100 with 200 train images: 4 batches of 50, or a full and a partial batch of 64."""
    from dataset.synthetic import write_synthetic_cifar100

    root = tmp_path_factory.mktemp("gpu_data")
    write_synthetic_cifar100(root, train_per_class=2, test_per_class=1, seed=0)
    return root


@pytest.fixture(scope="module")
def teacher(tmp_path_factory) -> Path:
    """A random teacher in the original checkpoint format, in a folder that names its architecture."""
    from models import model_dict

    path = tmp_path_factory.mktemp("gpu_teacher") / "models" / f"{TEACHER}_vanilla" / "ckpt_epoch_240.pth"
    path.parent.mkdir(parents=True)
    torch.manual_seed(0)
    torch.save({"epoch": 240, "model": model_dict[TEACHER](num_classes=100).state_dict(), "accuracy": 1.0}, path)
    return path


def common(data: Path, save_root: Path, *extra: str) -> list[str]:
    """No --device anywhere: every run here takes the default device, which must be the GPU."""
    return ["--data_folder", str(data), "--save_root", str(save_root), "--batch_size", "64", "--num_workers", "0",
            "--print_freq", "1", "--seed", "0", "--epochs", "1", *extra]


def teacher_argv(data: Path, save_root: Path, *extra: str) -> list[str]:
    return ["--model", TEACHER, *common(data, save_root, *extra)]


def student_argv(data: Path, teacher: Path, save_root: Path, distill: str, *extra: str) -> list[str]:
    weights = ["-r", "0.1", "-a", "0.9", "-b", "0"] if distill == "kd" else ["-a", "0", "-b", "1"]
    return ["--path_t", str(teacher), "--model_s", STUDENT, "--distill", distill, *weights, "--nce_k", "16",
            "--init_epochs", "1", *common(data, save_root, *extra)]


def run_folder(module, argv: list[str]) -> Path:
    return Path(module.parse_option(argv).save_folder)


def load(path: Path, **kwargs) -> dict:
    return torch.load(path, weights_only=True, **kwargs)


def assert_same_weights(a: dict, b: dict) -> None:
    for part in ("model", "distiller"):
        assert (a[part] is None) == (b[part] is None), part
        for key in a[part] or {}:
            assert torch.equal(a[part][key].cpu(), b[part][key].cpu()), (part, key)


def test_without_a_device_flag_training_runs_on_the_current_cuda_device(data, tmp_path, monkeypatch):
    import train_teacher

    current = torch.cuda.device_count() - 1  # with several GPUs not cuda:0, so that "cuda" must mean the current one
    torch.cuda.set_device(current)
    run, jobs = train_teacher.run, []

    def recording_run(job):
        jobs.append((job.device, next(job.model.parameters()).device))
        return run(job)

    monkeypatch.setattr(train_teacher, "run", recording_run)
    argv = teacher_argv(data, tmp_path)
    assert train_teacher.main(argv) == 0
    assert jobs == [(torch.device("cuda", current), torch.device("cuda", current))]
    assert json.loads((run_folder(train_teacher, argv) / "results.json").read_text())["finished"]


@pytest.mark.parametrize("deterministic", [False, True], ids=["default", "deterministic"])
def test_cudnn_autotuning_is_on_except_under_deterministic(data, tmp_path, deterministic):
    import train_teacher

    torch.backends.cudnn.benchmark = deterministic  # the opposite of what the run must leave
    extra = ["--deterministic"] if deterministic else []
    assert train_teacher.main(teacher_argv(data, tmp_path, *extra)) == 0
    assert torch.backends.cudnn.benchmark is (not deterministic)
    assert torch.are_deterministic_algorithms_enabled() is deterministic


@pytest.mark.parametrize("deterministic", [False, True], ids=["default", "deterministic"])
def test_float32_matmuls_stay_full_precision_and_convolutions_keep_cudnn_tf32(data, tmp_path, deterministic):
    # The project sets no TF32 switch: torch's defaults hold, which BENCHMARKS.md's peak FLOP/s assume
    # (float32 matmuls in full float32, cuDNN convolutions in TF32).
    import train_teacher

    extra = ["--deterministic"] if deterministic else []
    assert train_teacher.main(teacher_argv(data, tmp_path, *extra)) == 0
    assert torch.get_float32_matmul_precision() == "highest"
    assert torch.backends.cudnn.allow_tf32
    generator = torch.Generator(device=gpu()).manual_seed(0)
    a, b = (torch.randn(512, 4096, device=gpu(), generator=generator) for _ in range(2))
    exact = a.double() @ b.double().T
    error = ((a @ b.T).double() - exact).norm() / exact.norm()
    assert error < 1e-5, f"float32 matmul error {error:.1e}: TF32 (about 1e-4 and up) is on"


def test_nccl_process_group_of_one_process_runs_the_collectives_the_scripts_use(tmp_path):
    import torch.distributed as dist

    assert dist.is_nccl_available()
    device = gpu()
    torch.cuda.set_device(device)
    store = dist.FileStore(str(tmp_path / "store"), 1)
    dist.init_process_group("nccl", store=store, rank=0, world_size=1, device_id=device)
    try:
        gradients = torch.arange(4.0, device=device)
        dist.all_reduce(gradients)
        assert gradients.tolist() == [0.0, 1.0, 2.0, 3.0]
        box = [12345]
        dist.broadcast_object_list(box, src=0)  # the seed broadcast
        states: list = [None]
        dist.all_gather_object(states, {"torch": torch.get_rng_state()})  # the RNG states saved for resume
        assert box == [12345] and torch.equal(states[0]["torch"], torch.get_rng_state())
        dist.barrier()
    finally:
        dist.destroy_process_group()


@pytest.mark.parametrize("n, classes, first_draws", [(50000, 100, False), (1281167, 1000, True)],
                         ids=["cifar100-random-keys", "imagenet-first-draws"])
def test_crd_sampler_kernel_at_full_size_draws_distinct_negatives_of_other_classes(n, classes, first_draws):
    from dataset.sampling import ContrastSampler

    k, batch = 16384, 64
    device = gpu()
    cpu_generator = torch.Generator().manual_seed(0)
    labels = (torch.randperm(n, generator=cpu_generator) % classes).to(device)  # CIFAR-100: 500 per class
    sampler = ContrastSampler(labels, k)
    assert (sampler.spare_draws is not None) == first_draws  # the kernel of this pool size
    anchors = torch.randperm(n, generator=cpu_generator)[:batch].to(device)
    generator = torch.Generator(device=device).manual_seed(0)
    for out in (sampler._sample_batched(anchors, labels[anchors], generator),
                sampler.sample(anchors, labels[anchors], generator)):  # what the loader calls
        assert out.shape == (batch, k + 1) and out.dtype == torch.int64 and out.device == device
        assert torch.equal(out[:, 0], anchors)  # exact mode: the positive is the anchor
        negatives = out[:, 1:]
        assert ((negatives >= 0) & (negatives < n)).all()
        own = labels[anchors][:, None]
        assert not (labels[negatives] == own).any(), "a negative of the anchor's own class"
        ordered = negatives.sort(dim=1).values
        assert (ordered[:, 1:] != ordered[:, :-1]).all(), "a negative drawn twice"
        # Uniform over the other classes' samples (CIFAR-100: about 165 +- 13 per class and row), never a prefix.
        counts = torch.zeros(batch, classes, device=device).scatter_add_(
            1, labels[negatives], torch.ones(batch, k, device=device))
        others = counts.masked_select(torch.arange(classes, device=device) != own)
        mean = k / (classes - 1)
        assert abs(others.mean().item() - mean) < 1e-3 * mean
        assert others.min() > mean - 6 * mean ** 0.5 and others.max() < mean + 6 * mean ** 0.5, (
            others.min().item(), others.max().item())


@pytest.mark.parametrize("backend", ["torchvision", "dali"])
def test_imagenet_loaders_on_the_gpu_read_every_image_once_per_epoch(tmp_path, backend):
    if backend == "dali":
        pytest.importorskip("nvidia.dali", reason="NVIDIA DALI (optional) is not installed")
    from dataset import build_loaders
    from dataset.synthetic_imagenet import write_synthetic_imagefolder

    data = write_synthetic_imagefolder(tmp_path / "imagenet", classes=10, train_per_class=2, val_per_class=1,
                                       min_size=36, max_size=56)
    device = gpu()
    train, test, n_data = build_loaders(data, backend, 8, 2, device, instance=True, crd_k=8, seed=1,
                                        dataset="imagenet", image_size=32)
    for epoch in (1, 2):
        train.set_epoch(epoch)
        seen = []
        for batch in train:
            if backend == "dali":  # decoded on the GPU ("mixed"), indices put there by the pipeline
                assert batch.images.device == device and batch.indices.device == device
            else:  # pinned host images, copied by the loop without blocking; the CRD draws on the device
                assert batch.images.is_pinned() and batch.indices.device == device
            assert batch.contrast_idx.device == device and batch.labels.device == device
            seen += batch.indices.tolist()
        assert sorted(seen) == list(range(n_data)), epoch
    assert sum(len(batch) for batch in test) == 10


def test_fused_sgd_is_chosen_on_cuda_and_updates_like_the_per_parameter_loop():
    from types import SimpleNamespace

    from helper.engine import make_optimizer, sgd_kernels

    device = gpu()
    generator = torch.Generator(device=device).manual_seed(0)
    shapes = [(64, 32, 3, 3), (64,), (100, 64)]
    fused_params = [torch.randn(s, device=device, generator=generator).requires_grad_() for s in shapes]
    loop_params = [p.detach().clone().requires_grad_() for p in fused_params]
    assert sgd_kernels(fused_params) == {"fused": True, "foreach": False}
    fused = make_optimizer(fused_params, 0.05, SimpleNamespace(momentum=0.9, weight_decay=5e-4))
    loop = torch.optim.SGD(loop_params, lr=0.05, momentum=0.9, weight_decay=5e-4, foreach=False)
    assert all(group["fused"] for group in fused.param_groups)
    # The float16 loss scaler (GPUs without bf16): the fused kernel unscales and skips inf steps itself.
    scaler = torch.amp.GradScaler("cuda", init_scale=1024.0)
    for step in range(4):
        grads = [torch.randn(s, device=device, generator=generator) for s in shapes]
        if step == 2:
            grads[1][0] = float("inf")  # an overflowed step: nothing may change
        before = [p.detach().clone() for p in fused_params]
        for optimizer in (fused, loop):
            optimizer.zero_grad()
        scaler.scale(sum((p * g).sum() for p, g in zip(fused_params, grads))).backward()  # gradients g * scale
        scaler.step(fused)
        scaler.update()
        if step == 2:
            assert all(torch.equal(p, b) for p, b in zip(fused_params, before))
            continue
        sum((p * g).sum() for p, g in zip(loop_params, grads)).backward()
        loop.step()
        for p, l in zip(fused_params, loop_params):
            torch.testing.assert_close(p, l, rtol=1e-5, atol=1e-6)


def test_resume_on_the_gpu_ends_with_the_uninterrupted_weights(data, teacher, tmp_path):
    # The state holds numpy's RNG keys as a tensor: mapped to the GPU with the rest, it must still reload.
    import train_student

    extra = ("--deterministic", "--seed", "7", "--lr_decay_epochs", "1")
    full = student_argv(data, teacher, tmp_path / "full", "crd", *extra, "--epochs", "2")
    part = student_argv(data, teacher, tmp_path / "part", "crd", *extra)
    assert train_student.main(full) == 0
    assert train_student.main(part) == 0  # stops after epoch 1 ...
    assert train_student.main([*part, "--epochs", "2", "--resume", "auto"]) == 0  # ... and goes on to epoch 2
    resumed = load(run_folder(train_student, part) / "state.pth", map_location="cpu")
    assert resumed["progress"]["epochs_done"] == 2
    assert_same_weights(resumed, load(run_folder(train_student, full) / "state.pth", map_location="cpu"))


def test_compile_reduce_overhead_trains_through_cuda_graphs(data, teacher, tmp_path, monkeypatch, caplog):
    import logging

    from torch._dynamo.utils import counters

    import train_student

    captured, replayed = [], []
    graph = torch.cuda.CUDAGraph
    capture_begin, replay = graph.capture_begin, graph.replay

    def counted_capture_begin(self, *args, **kwargs):
        captured.append(1)
        return capture_begin(self, *args, **kwargs)

    def counted_replay(self):
        replayed.append(1)
        return replay(self)

    monkeypatch.setattr(graph, "capture_begin", counted_capture_begin)
    monkeypatch.setattr(graph, "replay", counted_replay)
    caplog.set_level(logging.WARNING)
    torch._dynamo.reset()
    counters.clear()
    try:
        # Batches of 50: four steps per epoch of one shape, so that graphs are recorded, then replayed.
        argv = student_argv(data, teacher, tmp_path, "kd", "--compile", "reduce-overhead", "--batch_size", "50",
                            "--epochs", "2")
        assert train_student.main(argv) == 0
        skips = counters["inductor"]["cudagraph_skips"]
    finally:
        torch._dynamo.reset()
    fallbacks = [r.getMessage() for r in caplog.records if "--compile" in r.getMessage()]
    assert not fallbacks, fallbacks  # an eager fallback would prove nothing about CUDA graphs
    assert skips == 0, "inductor skipped CUDA graphs (its warning says why)"
    assert captured and replayed, (len(captured), len(replayed))
    state = load(run_folder(train_student, argv) / "state.pth", map_location="cpu")
    assert all(t.isfinite().all() for t in state["model"].values() if t.is_floating_point())


@pytest.mark.parametrize("distill", ["kd", "crd"])
def test_pinned_memory_transfers_of_the_torchvision_backend_give_the_pageable_weights(data, teacher, tmp_path,
                                                                                      monkeypatch, distill):
    # Batch.to copies with non_blocking=True: from pinned memory the copy is asynchronous, and the weights must
    # still come out bit for bit as with synchronous copies from pageable memory.
    import torch.utils.data

    import train_student
    from dataset.batch import Batch

    loader_init, batch_to = torch.utils.data.DataLoader.__init__, Batch.to
    pinned_batches: list[bool] = []

    def run(pin: bool) -> dict:
        def init(self, *args, **kwargs):
            loader_init(self, *args, **{**kwargs, "pin_memory": pin})

        def to(self, device, *args, **kwargs):
            if self.images.device.type == "cpu":
                pinned_batches.append(self.images.is_pinned())
            return batch_to(self, device, *args, **kwargs)

        monkeypatch.setattr(torch.utils.data.DataLoader, "__init__", init)
        monkeypatch.setattr(Batch, "to", to)
        pinned_batches.clear()
        argv = student_argv(data, teacher, tmp_path / f"pin_{pin}", distill, "--data_backend", "torchvision",
                            "--num_workers", "2", "--deterministic", "--epochs", "2")
        assert train_student.main(argv) == 0
        assert pinned_batches and all(p == pin for p in pinned_batches), pinned_batches
        return load(run_folder(train_student, argv) / "state.pth", map_location="cpu")

    assert_same_weights(run(pin=True), run(pin=False))


def test_every_method_steps_under_deterministic_kernels_on_the_gpu(monkeypatch):
    # --deterministic makes ops without a deterministic CUDA kernel raise (adaptive pooling's backward, for
    # one); the CPU tests cannot see that. One forward/backward per method and pair, init stages included.
    import train_student
    from dataset.batch import Batch
    from distiller_zoo import DISTILLERS, build_distiller
    from helper.objectives import DistillObjective, InitObjective
    from helper.util import seed_everything
    from models import model_dict

    monkeypatch.setenv("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    seed_everything(0, deterministic=True)
    device, n_data, k, batch_size = gpu(), 128, 64, 8
    indices = torch.arange(batch_size, device=device)
    contrast = torch.randint(0, n_data, (batch_size, k + 1), device=device)
    contrast[:, 0] = indices
    batch = Batch(torch.randn(batch_size, 3, 32, 32, device=device),
                  torch.randint(0, 100, (batch_size,), device=device), indices, contrast)
    failures, stepped = [], set()
    for method in DISTILLERS:
        for t, s in PAIRS:
            opt = train_student.parse_option(["--path_t", f"unused/{t}_vanilla/ckpt.pth", "--model_s", s,
                                              "--distill", method, "-a", "1", "-b", "1", "--nce_k", str(k)])
            opt.n_data = n_data
            model_t = model_dict[t](num_classes=100).to(device).eval()
            model_s = model_dict[s](num_classes=100).to(device)
            try:
                distiller = build_distiller(opt, model_s, model_t).to(device)
            except (ValueError, NotImplementedError):  # a pair the method cannot compare (FSP, KDSVD widths)
                continue
            model_s.train(), distiller.train()
            try:
                DistillObjective(model_s, model_t, distiller, opt)(batch).loss.backward()
                if distiller.has_init_stage:
                    InitObjective(model_s, model_t, distiller)(batch).loss.backward()
                torch.cuda.synchronize()
                stepped.add(method)
            except RuntimeError as e:
                failures.append(f"{method} {t}->{s}: {str(e).strip().splitlines()[0]}")
    assert not failures, "\n".join(failures)
    assert stepped == set(DISTILLERS)
