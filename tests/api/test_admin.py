"""The operators' admin for jobs: filters, search, actions, read-only details with previews, the queue page."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.utils import timezone

from generation.models import Job

CHANGELIST = "/admin/generation/job/"


def listed_ids(response) -> set[str]:
    return {str(job.id) for job in response.context["cl"].result_list}


@pytest.fixture
def jobs(user, other_user, make_job) -> dict[str, Job]:
    return {
        "done": make_job(user, Job.Status.SUCCEEDED, prompt="a lighthouse at dusk"),
        "failed": make_job(user, Job.Status.FAILED, model="wan2.2-i2v-a14b"),
        "queued": make_job(other_user, Job.Status.QUEUED, prompt="<script>alert('x')</script> kites"),
        "running": make_job(other_user, Job.Status.RUNNING, worker="gpu-b:1", progress=0.25),
    }


def test_changelist_filters_and_search(admin_client, jobs, other_user):
    assert listed_ids(admin_client.get(CHANGELIST)) == {str(j.id) for j in jobs.values()}
    assert listed_ids(admin_client.get(CHANGELIST, {"status__exact": "FAILED"})) == {str(jobs["failed"].id)}
    assert listed_ids(admin_client.get(CHANGELIST, {"model__exact": "wan2.2-i2v-a14b"})) == {str(jobs["failed"].id)}
    assert listed_ids(admin_client.get(CHANGELIST, {"owner__id__exact": other_user.id})) == {
        str(jobs["queued"].id), str(jobs["running"].id)}
    tomorrow = str(timezone.now() + timedelta(days=1))  # as the date filter's own links send it
    assert len(listed_ids(admin_client.get(CHANGELIST, {"created_at__lt": tomorrow}))) == 4
    assert listed_ids(admin_client.get(CHANGELIST, {"q": "lighthouse"})) == {str(jobs["done"].id)}
    assert listed_ids(admin_client.get(CHANGELIST, {"q": str(jobs["running"].id)})) == {str(jobs["running"].id)}
    assert listed_ids(admin_client.get(CHANGELIST, {"q": "bob"})) == {str(jobs["queued"].id), str(jobs["running"].id)}


def test_prompts_are_escaped(admin_client, jobs):
    page = admin_client.get(f"{CHANGELIST}{jobs['queued'].id}/change/").content.decode()
    assert "&lt;script&gt;alert(" in page and "<script>alert(" not in page


def test_change_page_is_read_only_with_previews_and_timings(admin_client, jobs):
    page = admin_client.get(f"{CHANGELIST}{jobs['done'].id}/change/").content.decode()
    assert "<video src=\"http://localhost:" in page and "X-Amz-Signature" in page
    assert "<th>denoise</th><td>1.50</td>" in page
    assert 'name="status"' not in page and 'name="timings"' not in page and 'name="prompt"' not in page
    assert admin_client.get(f"{CHANGELIST}add/").status_code == 403


def act(admin_client, action: str, *selected: Job):
    return admin_client.post(CHANGELIST, {"action": action, "_selected_action": [str(j.id) for j in selected]},
                             follow=True)


def test_cancel_action(admin_client, jobs):
    response = act(admin_client, "cancel_jobs", jobs["queued"], jobs["running"], jobs["done"])
    assert "Canceled 2 job(s); 1 had already finished." in response.content.decode()
    states = {key: Job.objects.get(id=job.id).status for key, job in jobs.items()}
    assert states == {"done": "SUCCEEDED", "failed": "FAILED", "queued": "CANCELED", "running": "CANCELED"}


def test_retry_action_makes_new_jobs(admin_client, jobs, enqueued, django_capture_on_commit_callbacks):
    with django_capture_on_commit_callbacks(execute=True):
        act(admin_client, "retry_jobs", jobs["done"])
    new = Job.objects.get(retry_of=jobs["done"])
    assert new.status == Job.Status.QUEUED and new.seed == jobs["done"].seed and enqueued == [str(new.id)]


def test_requeue_action(admin_client, jobs, enqueued, django_capture_on_commit_callbacks):
    with django_capture_on_commit_callbacks(execute=True):
        response = act(admin_client, "requeue_jobs", jobs["running"], jobs["queued"], jobs["done"])
    assert "Requeued 2 job(s); 1 finished" in response.content.decode()
    running = Job.objects.get(id=jobs["running"].id)
    assert running.status == Job.Status.QUEUED and running.worker == ""
    assert sorted(enqueued) == sorted([str(jobs["running"].id), str(jobs["queued"].id)])
    assert Job.objects.get(id=jobs["done"].id).status == Job.Status.SUCCEEDED


def test_queue_page_shows_depth_running_jobs_and_worker_heartbeats(admin_client, jobs):
    Job.objects.filter(id=jobs["running"].id).update(heartbeat_at=timezone.now() - timedelta(minutes=10))
    response = admin_client.get(f"{CHANGELIST}queue/")
    assert response.status_code == 200
    context = response.context
    assert context["queued_in_db"] == 1
    assert context["broker_depth"] is not None  # the real Redis broker answered
    assert [j.id for j in context["running_jobs"]] == [jobs["running"].id] and context["running_jobs"][0].is_stale
    workers = {w["worker"]: w for w in context["workers"]}
    assert workers["gpu-b:1"]["running"] == 1 and workers["gpu-b:1"]["is_stale"]
    assert workers["gpu-host:0"]["finished"] == 2 and not workers["gpu-host:0"]["is_stale"]
    page = response.content.decode()
    assert "gpu-b:1" in page and "(stale)" in page and str(jobs["running"].id) in page
    assert 'href="/admin/generation/job/queue/"' in admin_client.get(CHANGELIST).content.decode()


def test_admin_pages_need_staff(client, user):
    client.force_login(user)
    assert client.get(f"{CHANGELIST}queue/").status_code == 302
    assert client.get(CHANGELIST).status_code == 302


@pytest.mark.django_db(transaction=True)  # the send happens at commit, which only a real transaction has
def test_requeue_reports_an_unreachable_queue(admin_client, jobs, monkeypatch):
    def unreachable(job_id):
        raise ConnectionError("redis down")

    monkeypatch.setattr("generation.services.enqueue_job", unreachable)
    page = act(admin_client, "requeue_jobs", jobs["running"]).content.decode()
    assert "could not reach the queue" in page and "redis down" in page
    assert Job.objects.get(id=jobs["running"].id).status == Job.Status.QUEUED


def test_queue_page_explains_every_message_and_every_queued_job(admin_client, jobs, user, make_job):
    """It once showed "2 messages" beside "1 queued job" with nothing to say why: now each message is accounted
    for, against the real Redis queue."""
    from generation import queue
    from turbosite import broker

    canceled = make_job(user, Job.Status.CANCELED)
    unsent = make_job(user, Job.Status.QUEUED)
    queued = jobs["queued"]
    try:
        for job_id in (queued.id, canceled.id, queued.id):  # a canceled job's message stays until a worker drops it
            queue.enqueue_job(job_id)
        response = admin_client.get(f"{CHANGELIST}queue/")
        match = response.context["messages_match"]
        assert match == {"messages": 3, "for_queued_jobs": 1, "duplicates": 1, "for_other_jobs": 1,
                         "queued_without_message": 1}
        assert response.context["broker_depth"] == 3 and response.context["queued_in_db"] == 2
        # The rows add up: messages = queued + copies + others; queued jobs = with a message + without one.
        assert match["messages"] == match["for_queued_jobs"] + match["duplicates"] + match["for_other_jobs"]
        assert response.context["queued_in_db"] == match["for_queued_jobs"] + match["queued_without_message"]
        page = response.content.decode()
        for cell, value in (("broker-depth", 3), ("messages-for-queued", 1), ("messages-duplicate", 1),
                            ("messages-stale", 1), ("queued-in-db", 2), ("queued-without-message", 1)):
            assert f'id="{cell}">{value}</td>' in page, cell
    finally:
        broker.ensure_broker().flush(broker.GPU_QUEUE)
    assert unsent.status == Job.Status.QUEUED
