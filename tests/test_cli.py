"""Every command line in scripts/*.sh parses with the scripts' own parsers; bad flags fail clearly."""
import shlex
import subprocess
from pathlib import Path

import pytest

import train_student
import train_teacher
from distiller_zoo import DISTILLERS

SCRIPTS = Path(__file__).resolve().parents[1] / "scripts"


def shell_lines(text: str):
    """(first line number, command) of a shell script, continuation lines (ending in a backslash) joined."""
    start, parts = None, []
    for number, line in enumerate(text.splitlines(), start=1):
        start = start or number
        if line.endswith("\\"):
            parts.append(line[:-1])
            continue
        yield start, " ".join([*parts, line])
        start, parts = None, []


def script_commands():
    for script in sorted(SCRIPTS.glob("*.sh")):
        for number, line in shell_lines(script.read_text()):
            words = shlex.split(line, comments=True)
            if words and words[0] == "torchrun":  # torchrun [its flags] train_*.py ...: read from the script on
                words = ["python", *words[next((i for i, w in enumerate(words) if w.endswith(".py")), 0):]]
            if len(words) >= 2 and words[0].startswith("python") and words[1] in ("train_student.py",
                                                                                   "train_teacher.py"):
                yield pytest.param(words[1], [w for w in words[2:] if w != "$@"],
                                   id=f"{script.name}:{number}")


COMMANDS = list(script_commands())


def test_the_run_scripts_hold_commands():
    scripts = {c.id.split(":")[0] for c in COMMANDS}
    assert {"run_cifar_distill.sh", "run_cifar_vanilla.sh", "run_imagenet.sh"} <= scripts


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


def parse_error(module, argv, capsys) -> str:
    """stderr of a parse that must fail with argparse's exit code 2."""
    with pytest.raises(SystemExit) as exc:
        module.parse_option(argv)
    assert exc.value.code == 2
    return capsys.readouterr().err


@pytest.mark.parametrize("module,argv,needles", [
    (train_student, ["--path_t", "x/resnet8_vanilla/a.pth", "-a", "0", "--distill", "magic"],
     ["--distill", "'magic'", "'crd'", "'kd'", "'reviewkd'"]),
    (train_student, ["--path_t", "x/resnet8_vanilla/a.pth", "-a", "0", "--model_s", "resnet9"],
     ["--model_s", "'resnet9'", "'resnet8x4'", "'ShuffleV2'"]),
    (train_teacher, ["--model", "resnet9"], ["--model", "'resnet9'", "'resnet32x4'"]),
    (train_student, ["--path_t", "x/resnet8_vanilla/a.pth", "-a", "0", "--modle_s", "resnet8"],
     ["unrecognized arguments: --modle_s resnet8", "did you mean --model_s?"]),
    (train_student, ["-a", "0"], ["--path_t is required", "fetch_pretrained_teachers.sh"]),
])
def test_bad_flag_is_one_line_naming_the_flag_and_the_fix_then_see_help(module, argv, needles, capsys):
    err = parse_error(module, argv, capsys)
    script = f"{module.__name__}.py"
    assert err.count("\n") == 1, err  # no usage block
    assert err.startswith("error: ") and err.rstrip().endswith(f"; see python {script} --help")
    for needle in needles:
        assert needle in err, (needle, err)


@pytest.mark.parametrize("module", [train_student, train_teacher])
def test_help_names_the_script_shows_defaults_and_has_a_text_for_every_flag(module):
    parser = module.get_args_parser()
    assert parser.prog == f"{module.__name__}.py"
    text = parser.format_help()
    assert text.startswith(f"usage: {module.__name__}.py ")
    for action in parser._actions:
        assert action.help, f"{action.option_strings} has no help text"
        if action.default not in (None, False) and action.option_strings and action.dest != "help":
            assert parser._get_formatter()._get_help_string(action).count("%(default)") == 1, action.dest
    assert "--tb_freq" in text and "accepted for compatibility" in text
    assert "(default: 240)" in text and "(default: 0.05)" in text and "(default: ./save)" in text


def test_student_help_marks_the_required_flags_and_lists_each_method_with_its_weights():
    parser = train_student.get_args_parser()
    by_flag = {flag: action for action in parser._actions for flag in action.option_strings}
    for flag in ("--path_t", "-a"):
        assert by_flag[flag].help.startswith("(required"), flag
    assert by_flag["-b"].help.startswith("(required, except for --distill kd)")
    assert "(default: 16384)" in parser.format_help()  # a method's own flag (--nce_k)
    listed = by_flag["--distill"].help.splitlines()[1:]
    assert [line.split()[0] for line in listed] == sorted(DISTILLERS)
    for line in listed:
        name = line.split()[0]
        assert DISTILLERS[name].paper_weights and DISTILLERS[name].paper_weights in line


def test_paper_weights_in_help_are_those_of_run_cifar_distill_sh():
    """Each method's listed weights are the -r/-a/-b of its line in scripts/run_cifar_distill.sh."""
    seen = set()
    for param in COMMANDS:
        script, argv = param.values
        if not param.id.startswith("run_cifar_distill.sh") or "--logit_stand" in argv:
            continue
        method = argv[argv.index("--distill") + 1]
        weights = " ".join(f"{flag} {argv[argv.index(flag) + 1]}" for flag in ("-r", "-a", "-b"))
        assert weights in DISTILLERS[method].paper_weights, (method, weights)
        seen.add(method)
    assert seen == set(DISTILLERS) - {"kdsvd"}  # KDSVD is not in the paper's table


@pytest.mark.parametrize("script", ["run_cifar_vanilla.sh", "run_cifar_distill.sh"])
@pytest.mark.parametrize("activated", [False, True])
def test_run_scripts_use_the_project_venv_unless_an_environment_is_active(tmp_path, script, activated):
    """The README's run scripts work in a shell where .venv is not activated (the quick start's situation):
    their `python` is ./.venv's, unless the user activated an environment of their own."""
    repo = tmp_path / "repo"
    (repo / "scripts").mkdir(parents=True)
    for name in (script, "use_venv.sh"):
        (repo / "scripts" / name).write_text((SCRIPTS / name).read_text())

    def fake_python(path: Path, label: str) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(f'#!/bin/sh\necho "{label} $*" >> "{tmp_path}/calls"\n')
        path.chmod(0o755)

    fake_python(repo / ".venv" / "bin" / "python", "venv")
    fake_python(tmp_path / "elsewhere" / "python", "path")
    env = {"PATH": f"{tmp_path / 'elsewhere'}:/usr/bin:/bin", "HOME": str(tmp_path)}
    if activated:
        env["VIRTUAL_ENV"] = str(tmp_path / "elsewhere")
    done = subprocess.run(["bash", str(repo / "scripts" / script), "--epochs", "1"], env=env, cwd=tmp_path,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    calls = (tmp_path / "calls").read_text().splitlines()
    expected = [c for c in COMMANDS if c.id.startswith(script)]
    assert len(calls) == len(expected)
    for call in calls:
        assert call.startswith("path " if activated else "venv "), call
        assert call.endswith("--epochs 1") and ".py " in call
