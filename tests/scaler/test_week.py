"""The week simulation of bench section 17, on a tiny workload."""

from __future__ import annotations

from bench.scaler_bench import (
    POLICIES,
    SEED,
    Params,
    PolicyName,
    clairvoyant_bound_usd,
    generate_week,
    simulate_week,
)


async def test_our_policy_meets_the_sla_on_a_small_workload_and_costs_more_than_the_bound() -> None:
    p = Params(days=0.25, full_jobs_per_hour=1.0, full_tasks=(10, 20))
    week = generate_week(p, SEED)
    assert week == generate_week(p, SEED)
    tests = sum(1 for j in week.jobs if j.test_render)
    assert tests > 10 and len(week.jobs) > tests
    ours = await simulate_week(p, PolicyName.ours, week)
    assert len(ours.test_ready_s) == tests
    assert ours.sla_share >= 0.99
    assert len(ours.full_lateness_s) == len(week.jobs) - tests
    assert ours.cost_usd > clairvoyant_bound_usd(week, POLICIES, 31.5)
    again = await simulate_week(p, PolicyName.ours, week)
    assert again.cost_usd == ours.cost_usd
