"""The shared argument checks: what passes, what raises, and the wording."""

import numpy as np
import pytest

from llmds._checks import check_bool, check_choice, check_float, check_int, check_token_ids
from llmds.errors import ValidationError


@pytest.mark.parametrize("v", [0, 5, np.int64(5), np.uint8(5)])
def test_check_int_accepts_python_and_numpy_ints(v):
    assert check_int("n", v, 0) == int(v) and type(check_int("n", v)) is int


@pytest.mark.parametrize("v", [True, np.bool_(True), 1.0, "1", None, np.array([1])])
def test_check_int_rejects_non_ints(v):
    with pytest.raises(ValidationError, match="n must be an int"):
        check_int("n", v)


def test_check_int_bounds_and_wording():
    with pytest.raises(ValidationError, match=r"^n must be an int >= 1, got 0$"):
        check_int("n", 0, 1)
    with pytest.raises(ValidationError, match=r"in \[1, 3\], got 4"):
        check_int("n", 4, 1, 3)
    assert check_int("n", 3, 1, 3) == 3


def test_check_float_interval_ends():
    assert check_float("p", 1, 0, 1, low_open=True) == 1.0
    for bad in (0.0, 1.5, float("nan"), float("inf"), True, "0.5"):
        with pytest.raises(ValidationError, match=r"p must be a finite number in \(0, 1\]"):
            check_float("p", bad, 0, 1, low_open=True)
    assert check_float("x", np.float32(0.25)) == 0.25


def test_bool_choice_token_ids():
    assert check_bool("b", False) is False
    with pytest.raises(ValidationError):
        check_bool("b", 0)
    assert check_choice("m", "l2", ("l2", "ip")) == "l2"
    with pytest.raises(ValidationError, match="one of"):
        check_choice("m", "x", ("l2", "ip"))
    assert check_token_ids("ids", np.array([3, 1])) == [3, 1]
    for bad in ("abc", [1, -1], [1, 2.0], 5):
        with pytest.raises(ValidationError):
            check_token_ids("ids", bad)
    with pytest.raises(ValidationError, match="vocabulary size 10"):
        check_token_ids("ids", [10], vocab_size=10)


def test_check_float_infinite_on_request():
    assert check_float("s", float("inf"), finite=False) == float("inf")
    assert check_float("s", -float("inf"), finite=False) == -float("inf")
    assert check_float("s", np.float64(2.5), 0, finite=False) == 2.5
    for bad in (float("nan"), True, "1"):
        with pytest.raises(ValidationError, match=r"s must be a number \(not NaN\)"):
            check_float("s", bad, finite=False)
    with pytest.raises(ValidationError, match="must be a finite number"):
        check_float("s", float("inf"))


def test_unpaired_surrogate_names_the_code_point_and_its_index():
    from llmds._checks import unpaired_surrogate

    assert unpaired_surrogate("plain ascii") is None and unpaired_surrogate("é 😀") is None
    assert unpaired_surrogate("ab\ud800c") == ("holds an unpaired UTF-16 surrogate (U+D800 at index 2); "
                                              "send valid Unicode")
