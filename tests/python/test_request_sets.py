"""The benchmarks' request sets (perf/requests.py): the candidate mixes and the sets built from them.

A mix decides how many candidates each auction holds, so a wrong draw would silently benchmark another workload:
the ads mix must stay inside 100-700 and cover it, a fixed mix must hold exactly N, the default keeps its heavy
tail, and every draw is the same for the same seed (the engine-only run rebuilds the set in another process).
"""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest

from perf import requests as request_sets
from perf.requests import MAX_CANDIDATES, Mix, QueryMix, distinct_queries


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("lognormal", Mix()),
        ("ads", Mix("uniform", 100, 700)),
        ("uniform:5-9", Mix("uniform", 5, 9)),
        ("fixed:200", Mix("fixed", 200, 200)),
    ],
)
def test_mixes_parse_and_print_back(text: str, expected: Mix) -> None:
    mix = Mix.parse(text)
    assert mix == expected and Mix.parse(mix.label) == mix


@pytest.mark.parametrize("text", ["fixed:0", "fixed:-3", "uniform:9-5", "uniform:0-5", "uniform:5", "zipf", "fixed:x"])
def test_a_bad_mix_is_refused_naming_it(text: str) -> None:
    with pytest.raises(ValueError, match=f"candidate mix {text!r}|fixed:"):
        Mix.parse(text)


def test_the_ads_mix_stays_inside_100_to_700_and_covers_it() -> None:
    counts = Mix.parse("ads").counts(20_000, seed=7)
    assert counts.min() >= 100 and counts.max() <= 700
    assert counts.min() < 110 and counts.max() > 690  # both ends are drawn, not just the middle
    assert 380 < float(np.median(counts)) < 420


def test_the_default_mix_keeps_its_heavy_tail() -> None:
    counts = Mix().counts(20_000, seed=1)
    assert 90 <= float(np.median(counts)) <= 110 and 700 <= float(np.percentile(counts, 99)) <= 1400
    assert counts.min() >= 1 and counts.max() <= MAX_CANDIDATES


def test_draws_repeat_for_a_seed_and_differ_between_seeds() -> None:
    mix = Mix.parse("ads")
    assert np.array_equal(mix.counts(100, seed=3), mix.counts(100, seed=3))
    assert not np.array_equal(mix.counts(100, seed=3), mix.counts(100, seed=4))


def test_a_fixed_mix_builds_every_request_with_exactly_n_rows() -> None:
    built = request_sets.build("ctr", 5, mix=Mix.fixed(50))
    assert list(built.candidates) == [50] * 5
    assert all(feed["dense"].shape == (50, 13) and feed["sparse"].shape == (50, 26) for feed in built.feeds)
    # Beyond the default mix's cap too: the overload bench's heavy tenant sends 2048 rows.
    assert request_sets.build("ctr", 2, candidates=2048).candidates.tolist() == [2048, 2048]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("texts", QueryMix()),
        ("zipf", QueryMix(10_000, 1.0)),
        ("zipf:500", QueryMix(500)),
        ("zipf:50:1.2", QueryMix(50, 1.2)),
    ],
)
def test_query_mixes_parse_and_print_back(text: str, expected: QueryMix) -> None:
    mix = QueryMix.parse(text)
    assert mix == expected and QueryMix.parse(mix.label) == mix


@pytest.mark.parametrize("text", ["zipf:0", "zipf:10:0", "zipf:x", "zipf:1:2:3", "uniform"])
def test_a_bad_query_mix_is_refused_naming_it(text: str) -> None:
    with pytest.raises(ValueError, match=f"query mix {text!r}"):
        QueryMix.parse(text)


def test_the_zipf_mix_draws_distinct_queries_with_a_heavy_head() -> None:
    queries = distinct_queries(10_000)
    assert len(set(queries)) == 10_000
    stream = QueryMix(10_000, 1.0).draw(20_000, seed=5)
    counts = sorted(Counter(stream).values(), reverse=True)
    # Zipf s=1 over 10,000: the top query has 1/H(10,000) ~ 10 % of the draws, and most queries are seen rarely.
    assert 0.07 < counts[0] / len(stream) < 0.14 and counts[0] > 1.6 * counts[1]
    assert len(counts) > 2_000 and stream == QueryMix(10_000, 1.0).draw(20_000, seed=5)
    with pytest.raises(ValueError, match="at most"):
        distinct_queries(10**7)
    with pytest.raises(ValueError, match="for relevance requests"):
        request_sets.build("ctr", 2, queries=QueryMix(100))


def test_a_bench_run_names_and_describes_its_mixes() -> None:
    from dataclasses import replace

    from perf.bench import MODES, _mix_suffix
    from perf.report import _mix_text

    full = MODES["full"]
    assert _mix_suffix(full) == ""  # the default run keeps its file names
    ads = replace(full, mix=Mix.parse("ads").label, queries=QueryMix.parse("zipf").label)
    assert _mix_suffix(ads) == "-uniform-100-700-zipf-10000-1"
    text = _mix_text({"settings": {"mix": ads.mix, "queries": ads.queries}})
    assert "100-700 candidates, uniform" in text and "`zipf:10000:1`" in text
    assert "lognormal (median 100" in _mix_text({"settings": {"mix": "lognormal", "queries": "texts"}})
