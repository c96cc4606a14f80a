"""The early warning through the sidecar: a weak group grows from 5 % to 25 % of the traffic over two
weeks while labels come ten days late. The label-free warning fires days before the labeled path
(the error-rate drift detector on confirmed labels) sees anything.

Measured on the simulated stream of agent/simulate/early.py, seed 0 (150 studies a day): the
warning at day 8.25 from the start of the growth, the labeled path at day 21, 1,912 studies later
(bench/early_warning.py measures it over seeds; docs/benchmarks.md).
"""

from __future__ import annotations

from agent.simulate.early import EarlySpec, run_early_warning


def test_the_label_free_warning_fires_days_and_studies_before_the_labeled_path(tmp_path):
    run = run_early_warning(EarlySpec(), tmp_path, seed=0, stop_when_confirmed=True)
    print(
        f"warning at day {run.warned_at}, labeled path at day {run.confirmed_at}: "
        f"{run.lead_days} days and {run.studies_between} studies earlier"
    )
    assert run.warned_at is not None and run.confirmed_at is not None
    assert run.lead_days is not None and run.lead_days >= 5
    assert run.studies_between is not None and run.studies_between >= 500
    # what warned is the weak group, not a slice that happened to move
    assert run.warned_weak_fraction is not None and run.warned_weak_fraction > 0.5
    # every inference of the stream was assigned once the refit had described its slices
    assert run.assigned > 0 and run.buckets_tested >= 10
    last = run.states[-1]
    assert last.number == 1 and last.slices
