"""The test-render simulation (bench section 14): what its figures rest on."""

from __future__ import annotations

from dataclasses import replace

import pytest

from bench.testrender_sim import (
    DEADLINE_S,
    FrameDraw,
    FullJob,
    Params,
    RenderRequest,
    Source,
    Strategy,
    UploadState,
    Workload,
    generate_workload,
    simulate,
)

HOUR = 3600.0


def frames(*render_s: float, cold_boot_s: float = 120.0) -> tuple[FrameDraw, ...]:
    return tuple(
        FrameDraw(cold_boot_s=cold_boot_s, dispatch_s=5.0, preempt_s=10.0, load_s=8.0, render_s=r)
        for r in render_s
    )


def staged_long_ago(draws: tuple[FrameDraw, ...], size_gb: float = 200.0) -> RenderRequest:
    """A 200 GB scene uploaded hours before the simulation starts: on farm storage."""
    return RenderRequest(
        index=0,
        t_request=0.0,
        size_gb=size_gb,
        needed_gb=12.0,
        files=2000,
        uplink_gb_s=0.125,
        upload_start=-10 * HOUR,
        state=UploadState.long_ago,
        frames=draws,
        stream_gb_s=0.0875,
    )


def test_a_seed_draws_the_same_workload_and_the_same_results_every_time() -> None:
    p = Params(days=0.5, warmup_hours=2.0)
    work = generate_workload(p, 5)
    assert work == generate_workload(p, 5)
    assert work != generate_workload(p, 6)
    for strategy in Strategy:
        first, again = simulate(p, strategy, work, 5), simulate(p, strategy, work, 5)
        assert first.results == again.results
        assert first.preempted_worker_s == again.preempted_worker_s
        assert first.results, "the half day measured some test renders"


def test_a_staged_scene_on_warm_workers_is_ready_after_its_slowest_frame_and_the_overhead() -> None:
    p = Params(standby=3)
    draws = frames(60.0, 45.0, 30.0)
    work = Workload(start=-HOUR, end=HOUR, tests=(staged_long_ago(draws),), full_jobs=())

    (result,) = simulate(p, Strategy.ours, work).results

    slowest = max(f.dispatch_s + f.load_s + f.render_s for f in draws)
    assert result.ttr_s == pytest.approx(slowest + p.overhead_s)
    assert result.staged_s == 0.0
    assert result.sources == (Source.standby,) * 3


def test_ours_is_never_slower_than_naive_on_the_same_draws() -> None:
    base = Params(days=1.0, warmup_hours=4.0)
    work = generate_workload(base, 3)
    naive = {r.index: r.ttr_s for r in simulate(base, Strategy.naive, work).results}
    assert len(naive) > 100
    for standby in (0, 1, 2):
        ours = simulate(replace(base, standby=standby), Strategy.ours, work).results
        assert {r.index for r in ours} == naive.keys()
        slower = [r for r in ours if r.ttr_s > naive[r.index] + 1e-6]
        assert slower == [], f"standby {standby}"


def busy_fleet(tasks: int = 60, task_s: float = 4 * HOUR) -> FullJob:
    """A full render that keeps every fleet worker on long tasks from the start on."""
    return FullJob(t_arrival=-HOUR, scene_gb=1.0, stream_gb_s=0.0875, task_s=(task_s,) * tasks)


def test_with_no_standby_and_a_busy_fleet_a_test_render_preempts_full_render_tasks() -> None:
    """Cold boots slower than the budget: the deadline guard interrupts full-render tasks."""
    p = Params(standby=0, fleet_max=6)
    draws = frames(60.0, 45.0, 30.0, cold_boot_s=900.0)
    work = Workload(-HOUR, HOUR, (staged_long_ago(draws),), (busy_fleet(),))

    run = simulate(p, Strategy.ours, work)
    (result,) = run.results
    assert result.sources == (Source.preempted,) * 3
    assert result.ttr_s < DEADLINE_S
    assert run.preempted_worker_s > 0.0

    (unguarded,) = simulate(replace(p, interruptible_percent=0.0), Strategy.ours, work).results
    assert unguarded.sources == (Source.cold,) * 3
    assert unguarded.ttr_s > DEADLINE_S


def test_the_naive_path_stages_the_whole_scene_before_it_boots() -> None:
    p = Params()
    draws = frames(60.0, 45.0, 30.0)
    work = Workload(-HOUR, HOUR, (staged_long_ago(draws),), ())

    (result,) = simulate(p, Strategy.naive, work).results

    link_gb_s = p.link_gbps / 8.0
    assert result.staged_s == pytest.approx(200.0 / link_gb_s)
    slowest = max(f.cold_boot_s + f.dispatch_s + f.load_s + f.render_s for f in draws)
    assert result.ttr_s == pytest.approx(200.0 / link_gb_s + slowest + p.overhead_s)
    assert result.sources == (Source.cold,) * 3
