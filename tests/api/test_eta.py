"""ETAs from measured stage costs: a running job's ETA only ever goes down, and a queued job's includes the jobs
ahead of it (a short job behind a long one waits for the long one)."""

from __future__ import annotations

import itertools
from datetime import timedelta

import pytest
from django.utils import timezone

from generation import eta, services
from generation.models import Job
from generation.stages import RUN_ORDER, TIMING_KEYS, Stage

# What one 17-frame, 4-step tiny job measured, stage by stage (seconds).
MEASURED = {"load_model": 30.0, "read_input": 1.0, "text_encode": 2.0, "image_encode": 3.0, "denoise": 40.0,
            "decode": 8.0, "encode": 1.0, "upload": 1.0}
TOTAL = sum(MEASURED.values()) - MEASURED["load_model"]  # a queued job finds the model loaded: 56 s


@pytest.fixture
def history(user, make_job):
    """Three finished runs that measured MEASURED (the first one also loaded the model)."""
    for index in range(3):
        timings = dict(MEASURED) if index == 0 else {k: v for k, v in MEASURED.items() if k != "load_model"}
        job = make_job(user, Job.Status.SUCCEEDED, num_frames=17, num_steps=4)
        Job.objects.filter(id=job.id).update(timings=timings)


def running_job(make_job, user, *, stage: Stage, fraction: float, in_stage_s: float, frames: int = 17,
                now=None) -> Job:
    """A RUNNING job `in_stage_s` seconds into `stage` with `fraction` of it done; earlier stages took MEASURED."""
    now = now or timezone.now()
    before = RUN_ORDER[: RUN_ORDER.index(stage)]
    timings = {TIMING_KEYS[s]: MEASURED[TIMING_KEYS[s]] for s in before if s != Stage.LOADING_MODEL}
    job = make_job(user, Job.Status.RUNNING, num_frames=frames, num_steps=4)
    Job.objects.filter(id=job.id).update(stage=stage, progress=stage.progress(fraction), timings=timings,
                                         started_at=now - timedelta(seconds=sum(timings.values()) + in_stage_s))
    job.refresh_from_db()
    return job


def test_running_eta_is_what_is_left_of_the_stage_plus_the_stages_after(history, make_job, user):
    job = running_job(make_job, user, stage=Stage.DENOISE, fraction=0.5, in_stage_s=20)
    # half of denoise (20 s) + decode 8 + encode 1 + upload 1
    assert services.eta_seconds(job) == pytest.approx(30.0, abs=0.5)
    # Half the steps done after only 5 s: the time spent, not the fraction, says 35 s of denoise remain... but the
    # fraction says 20: the smaller one wins, so a fast stage does not hold the ETA up.
    quick = running_job(make_job, user, stage=Stage.DENOISE, fraction=0.5, in_stage_s=5)
    assert services.eta_seconds(quick) == pytest.approx(30.0, abs=0.5)


def test_eta_never_counts_up_even_when_every_stage_runs_twice_as_long(history, make_job, user):
    """Replays a whole run second by second in which each stage takes twice its measured time, the progress
    moving inside each stage (denoising steps, VAE chunks): the ETA shown at each second never grows."""
    job = make_job(user, Job.Status.RUNNING, num_frames=17, num_steps=4)
    start = timezone.now()
    clock, etas, timings = 0.0, [], {}
    for stage in RUN_ORDER[1:]:  # the model is loaded already
        length = 2 * MEASURED[TIMING_KEYS[stage]]
        for second in range(int(length)):
            fraction = second / length
            Job.objects.filter(id=job.id).update(stage=stage, progress=stage.progress(fraction), timings=timings,
                                                 started_at=start)
            job.refresh_from_db()
            etas.append(eta.eta_seconds(job, now=start + timedelta(seconds=clock + second)))
        clock += length
        timings = {**timings, TIMING_KEYS[stage]: length}
    assert etas[0] == pytest.approx(TOTAL, abs=0.5)
    assert all(later <= earlier for earlier, later in itertools.pairwise(etas)), etas
    assert etas[-1] < 2 and len(etas) == int(2 * TOTAL)


def test_a_stalled_stage_holds_the_eta_at_what_follows_instead_of_raising_it(history, make_job, user):
    """The bug seen: progress sat still for 72 s while decoding and the ETA went 5 s -> 77 s."""
    job = running_job(make_job, user, stage=Stage.DECODE, fraction=0.0, in_stage_s=0)
    now = timezone.now()
    seen = [eta.eta_seconds(job, now=now + timedelta(seconds=s)) for s in (0, 4, 8, 30, 72)]
    assert seen[0] == pytest.approx(10.0, abs=0.5)  # decode 8 + encode 1 + upload 1
    assert seen == sorted(seen, reverse=True)
    assert seen[-1] == pytest.approx(2.0, abs=0.5)  # decode overran: only what comes after it is left


def test_a_short_job_queued_behind_a_long_one_waits_for_it(history, make_job, user, other_user):
    long = running_job(make_job, other_user, stage=Stage.DENOISE, fraction=0.0, in_stage_s=0, frames=161)
    short = make_job(user, Job.Status.QUEUED, num_frames=17, num_steps=4)
    long_left = services.eta_seconds(long)
    # denoise scales with latent frames (41 vs 5), the VAE, encode and upload with frames (161 vs 17)
    assert long_left == pytest.approx(40 * 41 / 5 + (8 + 1 + 1) * 161 / 17, abs=1.0)
    assert services.eta_seconds(short) == pytest.approx(long_left + TOTAL, abs=1.0)


def test_queued_jobs_ahead_count_with_their_own_size(history, make_job, user, other_user):
    big = make_job(other_user, Job.Status.QUEUED, num_frames=81, num_steps=4)
    mine = make_job(user, Job.Status.QUEUED, num_frames=17, num_steps=4)
    big_total = 40 * 21 / 5 + (3 + 8 + 1 + 1) * 81 / 17 + 1 + 2
    assert services.eta_seconds(big) == pytest.approx(big_total, abs=1.0)
    assert services.eta_seconds(mine) == pytest.approx(big_total + TOTAL, abs=1.0)


def test_the_api_gives_each_job_of_a_list_its_eta_from_one_look_at_the_queue(history, make_job, user, token_client,
                                                                             django_assert_max_num_queries):
    running_job(make_job, user, stage=Stage.DENOISE, fraction=0.5, in_stage_s=20)
    for _ in range(5):
        make_job(user, Job.Status.QUEUED, num_frames=17, num_steps=4)
    client = token_client(user)
    client.get("/api/v1/jobs/")  # warm the token lookup and the cost cache
    with django_assert_max_num_queries(15):
        body = client.get("/api/v1/jobs/").json()
    etas = sorted(job["eta_seconds"] for job in body["results"] if job["status"] == "QUEUED")
    # the running job has 30 s left (less the seconds this slow test took), then each queued job takes 56 s
    assert 30 + TOTAL - 10 < etas[0] <= 30 + TOTAL + 0.5
    assert [later - earlier for earlier, later in itertools.pairwise(etas)] == pytest.approx([TOTAL] * 4, abs=0.2)


def test_no_eta_before_anything_was_measured(make_job, user):
    assert services.eta_seconds(make_job(user, Job.Status.QUEUED)) is None
    assert services.eta_seconds(running_job(make_job, user, stage=Stage.DENOISE, fraction=0.2, in_stage_s=3)) is None
