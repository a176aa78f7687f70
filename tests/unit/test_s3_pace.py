"""S3Sink's rule for two pieces (``stream._Pace``): a part is split only while its whole upload
would still run when the last part's (in pieces) ends; until that can be judged, it is split."""

from __future__ import annotations

from bundler.s3.stream import _Pace


def _paced(estimate: int, interval: float, cuts: int) -> _Pace:
    now = [0.0]
    pace = _Pace(clock=lambda: now[0])
    pace.estimate = estimate
    for _ in range(cuts):
        pace.cut()
        now[0] += interval
    return pace


def test_split_until_it_can_be_judged():
    assert _Pace().worth_splitting(0)  # nothing known
    pace = _paced(10, 1.0, 3)
    assert pace.worth_splitting(0)  # no upload timed yet
    pace.sent_whole(4.0)
    assert not pace.worth_splitting(0)
    no_estimate = _paced(0, 1.0, 3)
    no_estimate.sent_whole(4.0)
    assert no_estimate.worth_splitting(0)


def test_only_the_parts_still_in_flight_at_the_end_are_split():
    # a part every second, a whole upload takes 4 s: the last part (in pieces) ends ~2 s after
    # it is cut, so parts cut less than 2 s before it would end later whole
    pace = _paced(10, 1.0, 5)
    pace.sent_whole(4.0)
    assert [i for i in range(10) if pace.worth_splitting(i)] == [8, 9]
    pace.sent_whole(8.0)  # slower streams: more of the last parts
    assert [i for i in range(10) if pace.worth_splitting(i)] == [6, 7, 8, 9]
