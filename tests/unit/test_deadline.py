import pytest

from recstack.core.deadline import Deadline
from recstack.core.errors import DeadlineExceeded


def test_unbounded():
    d = Deadline.none()
    assert d.remaining() is None
    assert d.budget(0.5) is None
    assert d.budget(0.5, cap=3.0) == 3.0
    d.check("anything")


def test_expired_raises_naming_stage():
    with pytest.raises(DeadlineExceeded, match="before rank"):
        Deadline.after(-1.0).check("rank")


def test_budget_is_a_share_of_what_is_left():
    d = Deadline.after(100.0)
    share = d.budget(0.25)
    assert share is not None and 24.0 < share <= 25.0
    assert d.budget(1.0, cap=1.0) == 1.0
    assert Deadline.after(-5).budget() == 0.0
