"""Performance figures of the render-farm backend: ``python -m bench`` (``make bench``).

Starts its own PostgreSQL, NATS and Valkey in a temporary directory, and S3 (MiniStack) for
the sections that upload scenes (or uses the servers named by ``RF_TEST_DATABASE_URL`` /
``RF_TEST_NATS_URL`` / ``RF_TEST_REDIS_URL`` / ``RF_TEST_S3_URL``), creates
fresh databases, measures, prints a table with PASS/MISS against each target and writes it
to ``.run/bench.json``. A MISS never fails the run. Every process it starts is stopped on
the way out, also on Ctrl-C, SIGTERM or an error.

1. ``GET /v1/jobs/{id}`` through the gateway vs a bare FastAPI endpoint (separate processes).
2. ``POST /v1/jobs`` end to end (each user's job on a scene it uploaded), with a
   read-your-writes check after every 201.
3. Event store appends, single and batched, vs plain INSERTs.
4. Relay lag from append to a NATS subscriber.
5. Projection rebuild of the jobs read model from zero (``renderctl``'s bulk path), on the
   production layout (one event per job per batch) and an easy one; peak RSS.
6. Render path overhead (jobs on one uploaded scene: its staging reused) and the time to
   stage a fresh scene to the farm; 7. deadline-bridge polling cost.
8. Live projection lag of the jobs projector at 2,000 events/s.
9. Gateway memory under a long GET load.
10. Uploads: a multi-GB sparse file through presigned part URLs (renderctl's client code) vs
    a direct aioboto3 multipart upload to the same S3 server; the gateway's CPU per GB
    uploaded; the time to stage that scene to the farm for a job (and to reuse it).
11. Wallet holds per second through the wallet service's command path (NATS request/reply
    from concurrent clients): on one contended wallet and across 1,000 wallets, p50/p99
    latency, and a check that every wallet's balance row is exact to the minor unit.
12. Estimate latency: ``POST /v1/cost/estimate`` through the gateway and the billing service
    (a ``billing.EstimateCost`` over NATS each), p50 and p99 at 20 concurrent clients.
13. Live cost lag: per farm task of 5 jobs x 20 frames on the real render path, from the
    bridge's ``render.RenderTaskCompleted`` to the job's ``job.JobCostRecorded`` (and its
    envelope's ``cost.so_far_credits``), p50/p95/p99/max, split per hop.
14. Test render at 200 GB: a discrete-event simulation (no servers, a simulated clock) of
    time-to-ready for 200 GB scenes, the naive path against the design on the same draws,
    with the standby pool's size, slow boots and packed scenes (``bench/testrender_sim.py``,
    ``docs/test-render-at-scale.md``). With only sections 14, 16 and 17 selected no server
    is started.
15. Test render overhead: ``POST`` test-render -> ready, minus the render, on a warm worker.
16. Scene check time per 1,000 assets (and repathing) on a Blender-built scene.
17. The scaler over a simulated week: test-render SLA, deadlines, fleet cost against a bound
    (``docs/scaling.md``).
18. The notifier (``docs/notifications.md``, Performance): trigger event -> signed webhook
    latency at a paced 500 events/s over 100 endpoints (nothing lost or twice, signatures
    checked with ``standardwebhooks``), the notifier's CPU per 1,000 notifications, and the
    live feed's fan-out to 1,000 SSE connections (200 users x 5), each hop split.

``--quick`` (``make bench-quick``) runs sections 3, 4, 5, 8, 10 (a 256 MiB file), 11
(3 s runs), 13 (2 jobs x 10 frames) and 14 (2 simulated days instead of 7) with shorter runs.
"""
