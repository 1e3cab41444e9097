"""The training command line (launch/train.py): bad flags refused before any compute."""
import pytest

from tests.helpers.runs import run_train


@pytest.mark.parametrize("args,message", [
    (["--depth", "2", "--steps", "5", "--ratio", "2"], "not allowed with argument"),
    (["--depth", "2"], "one of the arguments --steps --tokens --ratio is required"),
    (["--depth", "0", "--steps", "5"], "expected a positive integer, got '0'"),
    (["--depth", "2", "--steps", "5", "--preset", "huge"], "invalid choice: 'huge'"),
    (["--depth", "2", "--tokens", "lots"], "expected a token count"),
    (["--depth", "2", "--ratio", "-1"], "expected a positive finite number"),
])
def test_bad_cli_flags_are_refused_before_compute(tmp_path, args, message):
    p = run_train(args, tmp_path / "bad", check=False, timeout=60)
    assert p.returncode == 2 and message in p.stderr, p.stderr
