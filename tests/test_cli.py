"""Every command line in scripts/*.sh parses with the scripts' own parsers; bad flags fail clearly."""
import shlex
from pathlib import Path

import pytest

import train_student
import train_teacher

SCRIPTS = Path(__file__).resolve().parents[1] / "scripts"


def script_commands():
    for script in sorted(SCRIPTS.glob("*.sh")):
        for number, line in enumerate(script.read_text().splitlines(), start=1):
            words = shlex.split(line, comments=True)
            if len(words) >= 2 and words[0].startswith("python") and words[1] in ("train_student.py",
                                                                                   "train_teacher.py"):
                yield pytest.param(words[1], [w for w in words[2:] if w != "$@"],
                                   id=f"{script.name}:{number}")


COMMANDS = list(script_commands())


def test_the_run_scripts_hold_commands():
    scripts = {c.id.split(":")[0] for c in COMMANDS}
    assert {"run_cifar_distill.sh", "run_cifar_vanilla.sh"} <= scripts


@pytest.mark.parametrize("script,argv", COMMANDS)
def test_script_line_parses(script, argv):
    module = train_student if script == "train_student.py" else train_teacher
    opt = module.parse_option(argv)
    assert opt.model_name


def test_original_readme_command_gives_the_original_folder_name():
    opt = train_student.parse_option(
        "--path_t ./save/models/resnet32x4_vanilla/ckpt_epoch_240.pth --distill crd --model_s resnet8x4 "
        "-a 0 -b 0.8 --trial 1".split())
    assert opt.model_t == "resnet32x4"
    assert opt.model_name == "S:resnet8x4_T:resnet32x4_cifar100_crd_r:1_a:0.0_b:0.8_1"
    assert opt.save_folder.endswith("save/student_model/S:resnet8x4_T:resnet32x4_cifar100_crd_r:1_a:0.0_b:0.8_1")
    assert opt.lr_decay_epochs == [150, 180, 210] and opt.nce_k == 16384 and opt.kd_T == 4


def test_teacher_folder_name_and_small_model_learning_rate():
    opt = train_teacher.parse_option(["--model", "ShuffleV1"])
    assert opt.learning_rate == 0.01
    assert opt.model_name == "ShuffleV1_cifar100_lr_0.01_decay_0.0005_trial_0"
    assert train_teacher.parse_option(["--model", "ResNet50"]).model == "ResNet50"


@pytest.mark.parametrize("argv,needle", [
    (["--distill", "crd", "-a", "0", "-b", "0.8"], "--path_t"),
    (["--path_t", "x/resnet8_vanilla/a.pth", "-b", "1"], "--alpha"),
    (["--path_t", "x/resnet8_vanilla/a.pth", "--distill", "hint", "-a", "0"], "--beta"),
    (["--path_t", "x/mystery/a.pth", "-a", "0", "-b", "1", "--distill", "hint"], "--model_t"),
    (["--path_t", "x/resnet8_vanilla/a.pth", "-a", "0", "-b", "1", "--batch_size", "0"], "--batch_size"),
    (["--path_t", "x/resnet8_vanilla/a.pth", "-a", "0", "-b", "1", "--epochs", "-3"], "--epochs"),
    (["--path_t", "x/resnet8_vanilla/a.pth", "-a", "0", "-b", "1", "--learning_rate", "0"], "--learning_rate"),
    (["--path_t", "x/resnet8_vanilla/a.pth", "-a", "0", "-b", "1", "--lr_decay_epochs", "150;180"],
     "--lr_decay_epochs"),
    (["--path_t", "x/resnet8_vanilla/a.pth", "-a", "0", "-b", "1", "--model_s", "resnet9"], "resnet9"),
    (["--path_t", "x/resnet8_vanilla/a.pth", "-a", "0", "-b", "1", "--distill", "magic"], "magic"),
])
def test_bad_flags_exit_with_a_message_naming_the_flag(argv, needle, capsys):
    with pytest.raises(SystemExit) as exc:
        train_student.parse_option(argv)
    assert exc.value.code == 2
    assert needle in capsys.readouterr().err
