"""Accuracy floors of the stateful master patient index on a real database (both engines):
records arrive one by one, each in its own transaction, into the index (candidate lookup in
``mpi_block``, matching, linking, review queue), and the persons the index ends up with are
scored against the generator's ground truth. The benchmark
(bench/mpi/index_eval.py) runs the big populations."""

from __future__ import annotations

from bench.mpi.index_eval import evaluate_febrl_index, evaluate_synthetic_index
from hub.storage.engine import make_engine
from hub.storage.migrate import upgrade


def _engine(db_url):
    engine = make_engine(db_url)
    upgrade(engine)
    return engine


def test_synthetic_population_through_the_index_meets_the_floors(db_url):
    engine = _engine(db_url)
    try:
        # records arrive one per transaction; the store path itself is covered by the HTTP tests
        m = evaluate_synthetic_index(engine, people=600, seed=2026, through_store=False)
    finally:
        engine.dispose()
    assert m.records > 1200 and m.true_pairs > 1000
    assert m.precision >= 0.999, m.report()
    assert m.recall >= 0.97, m.report()
    assert m.review_rate < 0.05, m.report()


def test_febrl4_through_the_index_meets_the_floor(db_url):
    engine = _engine(db_url)
    try:
        m = evaluate_febrl_index(engine, per_transaction=250, first=1000)
    finally:
        engine.dispose()
    assert m.records == 2000 and m.true_pairs == 1000
    assert m.f1 >= 0.99, m.report()
