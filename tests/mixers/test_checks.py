"""The one number checker: what counts as an integer or a finite number, and how a refusal reads."""

import math

import pytest

from mixers.checks import check_int, check_number, int_range, is_int, is_number, number_range


def test_bools_are_not_numbers_and_integers_are_finite():
    assert is_int(3) and not is_int(True) and not is_int(3.0)
    assert is_number(2.5) and is_number(10**400) and not is_number(False)
    assert not is_number(math.inf) and not is_number(math.nan) and not is_number("1")


def test_refusals_name_the_thing_the_range_and_the_value():
    assert int_range() == "an integer" and int_range(1) == "an integer >= 1"
    assert int_range(0, 3) == "an integer in [0, 3]"
    assert number_range(0.0, 1.0) == "a finite number in [0.0, 1.0)" and number_range() == "a finite number"
    assert check_int(4, "x", 1) == 4 and check_number(1, "x", 0.0) == 1.0
    with pytest.raises(ValueError, match=r"^aioli: `lp_steps` must be an integer >= 1, got 0$"):
        check_int(0, "aioli: `lp_steps`", 1)
    with pytest.raises(ValueError, match=r"^dga: `eps` must be a finite number in \[0.0, 1.0\), got 1.0$"):
        check_number(1.0, "dga: `eps`", 0.0, 1.0)

    class Refused(ValueError):
        pass

    with pytest.raises(Refused, match=r"^ticket field `rank` must be an integer >= 0, got True$"):
        check_int(True, "ticket field `rank`", 0, error=Refused)
