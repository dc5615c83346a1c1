"""The scripts' wrapper: only the project's UserError is printed as one line; any other exception is a bug
and keeps its traceback."""
import pytest

from cli.app import cli
from dataset import DatasetError
from distiller_zoo import MethodError
from helper.checkpoint import CheckpointError
from helper.errors import UserError


@pytest.mark.parametrize("error", [UserError("bad input; do this"), DatasetError("bad input; do this"),
                                   CheckpointError("bad input; do this"), MethodError("bad input; do this")])
def test_a_user_error_prints_one_line_and_exits_1(error, capsys):
    @cli
    def main(argv=None):
        raise error

    assert main([]) == 1
    assert capsys.readouterr().err == "error: bad input; do this\n"


@pytest.mark.parametrize("error", [ValueError("an internal bug"), RuntimeError("a torch failure"),
                                   KeyError("missing")])
def test_any_other_exception_keeps_its_traceback(error):
    @cli
    def main(argv=None):
        raise error

    with pytest.raises(type(error)):
        main([])
