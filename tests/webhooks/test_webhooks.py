"""Signed webhooks against a real HTTP receiver on loopback, delivered by a Dramatiq worker thread on the
"webhooks" queue of the real Redis: signatures verify, failures and timeouts are retried on the schedule, a
success is never sent again, redirects are not followed, and addresses that are not public are refused."""

from __future__ import annotations

import base64
import hashlib
import hmac
import uuid

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from django.urls import reverse

from generation.models import Job
from generation.webhooks import netguard, services, signing
from generation.webhooks.models import JobWebhook, WebhookDelivery
from tests.factories import png_bytes
from turbosite import broker

pytestmark = pytest.mark.django_db(transaction=True)


def create(client, **fields):
    data = {"image": SimpleUploadedFile("in.png", png_bytes(), content_type="image/png"),
            "prompt": "a red square drifts", "num_frames": 5, **fields}
    return client.post(reverse("api:job-list"), data, format="multipart")


def verify(secret: str, received) -> bool:
    """Standard Webhooks verification, written from the spec (not with our signing module)."""
    key = base64.b64decode(secret.removeprefix("whsec_"))
    content = f"{received.headers['webhook-id']}.{received.headers['webhook-timestamp']}.".encode() + received.body
    expected = base64.b64encode(hmac.new(key, content, hashlib.sha256).digest()).decode()
    return any(sig == f"v1,{expected}" for sig in received.headers["webhook-signature"].split())


def drain(worker) -> None:
    """Wait until Redis holds no webhook message and the worker has finished what it took."""
    broker.ensure_broker().join(broker.WEBHOOK_QUEUE, timeout=20_000)
    worker.join()


def finish(job_id: str, status: str = Job.Status.SUCCEEDED) -> Job:
    job = Job.objects.get(id=job_id)
    assert job.claim(worker="test-gpu:0")
    if status == Job.Status.SUCCEEDED:
        assert job.succeed()
    elif status == Job.Status.FAILED:
        assert job.fail("The model ran out of memory; choose 480p.")
    else:
        assert job.cancel()
    return job


def test_standard_webhooks_reference_signature():
    # The example from the Standard Webhooks specification's test suite.
    key = base64.b64decode("MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw")
    assert signing.sign(key, "msg_p5jXN8AQM9LWM0D4loKWxJek", 1614265330, b'{"test": 2432232314}') == \
        "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="


def test_completed_is_delivered_signed_with_the_job_as_the_api_shows_it(user, token_client, receiver,
                                                                        webhook_worker):
    client = token_client(user)
    response = create(client, webhook_url=receiver.url)
    assert response.status_code == 201, response.content
    job_id = response.json()["id"]
    finish(job_id)
    [delivery] = receiver.wait_for(1)
    secret = client.get(reverse("api:webhook-secret")).json()["secret"]
    assert secret.startswith("whsec_")
    assert verify(secret, delivery)
    assert delivery.headers["webhook-id"].startswith("msg_")
    assert delivery.headers["content-type"] == "application/json"
    assert delivery.headers["turbosite-event"] == "completed"
    assert delivery.path == "/hooks/turbo"
    body, shown = delivery.json(), client.get(reverse("api:job-detail", args=[job_id])).json()
    links = {"output_url", "poster_url", "input_url"}
    assert {k: v for k, v in body.items() if k not in links} == {k: v for k, v in shown.items() if k not in links}
    assert body["status"] == "SUCCEEDED"
    assert body["input_url"].startswith("http")
    # A tampered body fails verification.
    delivery.body = delivery.body.replace(b"SUCCEEDED", b"FAILED")
    assert not verify(secret, delivery)


def test_a_500_is_retried_and_a_success_is_never_sent_again(user, token_client, receiver, webhook_worker,
                                                            wait_until):
    receiver.script = [500]
    client = token_client(user)
    job_id = create(client, webhook_url=receiver.url).json()["id"]
    finish(job_id, Job.Status.FAILED)
    first, second = receiver.wait_for(2)
    assert first.headers["webhook-id"] == second.headers["webhook-id"]
    assert second.json()["status"] == "FAILED"
    delivery = WebhookDelivery.objects.get(job_id=job_id)
    wait_until(lambda: WebhookDelivery.objects.get(id=delivery.id).status == WebhookDelivery.Status.SUCCEEDED)

    # The same message again (a duplicate delivery by the broker): nothing is sent.
    services.send_delivery(delivery.id)
    services.send_delivery(delivery.id)
    log = client.get(reverse("api:job-webhooks", args=[job_id])).json()
    assert log["url"] == receiver.url and log["events"] == ["completed"]
    [entry] = log["deliveries"]
    assert entry["webhook_id"] == first.headers["webhook-id"]
    assert entry["event"] == "completed" and entry["status"] == "succeeded" and entry["attempts"] == 2
    assert [a["status_code"] for a in entry["attempt_log"]] == [500, 200]
    assert all(a["latency_ms"] >= 0 for a in entry["attempt_log"])
    drain(webhook_worker)
    assert len(receiver.received) == 2


def test_a_timeout_is_retried(user, token_client, receiver, webhook_worker, wait_until):
    receiver.script = [(2.5, 200)]  # stalls past the one-second timeout
    client = token_client(user)
    job_id = create(client, webhook_url=receiver.url).json()["id"]
    finish(job_id, Job.Status.CANCELED)
    receiver.wait_for(2)
    wait_until(lambda: WebhookDelivery.objects.get(job_id=job_id).status == WebhookDelivery.Status.SUCCEEDED)
    [entry] = client.get(reverse("api:job-webhooks", args=[job_id])).json()["deliveries"]
    first, second = entry["attempt_log"]
    assert first["status_code"] is None and first["error"] == "timed out"
    assert first["latency_ms"] >= 900
    assert second["status_code"] == 200 and second["error"] == ""


def test_retries_stop_after_the_schedule_and_on_410(user, token_client, receiver, webhook_worker, wait_until):
    receiver.script = [503, 503, 503, 503, 503]
    client = token_client(user)
    job_id = create(client, webhook_url=receiver.url).json()["id"]
    finish(job_id)
    wait_until(lambda: WebhookDelivery.objects.get(job_id=job_id).status == WebhookDelivery.Status.FAILED)
    delivery = WebhookDelivery.objects.get(job_id=job_id)
    assert delivery.attempts == 4  # the first attempt and the schedule's three retries
    assert delivery.last_status_code == 503

    receiver.received.clear()
    receiver.script = [410]
    second = create(client, webhook_url=receiver.url).json()["id"]
    finish(second)
    wait_until(lambda: WebhookDelivery.objects.get(job_id=second).status == WebhookDelivery.Status.FAILED)
    assert WebhookDelivery.objects.get(job_id=second).attempts == 1


def test_redirects_are_not_followed(user, token_client, receiver, webhook_worker, wait_until, settings):
    settings.TURBO_WEBHOOK_RETRY_SCHEDULE_S = []
    receiver.script = [302]
    client = token_client(user)
    job_id = create(client, webhook_url=receiver.url).json()["id"]
    finish(job_id)
    wait_until(lambda: WebhookDelivery.objects.get(job_id=job_id).status == WebhookDelivery.Status.FAILED)
    drain(webhook_worker)
    assert [r.path for r in receiver.received] == ["/hooks/turbo"]  # /elsewhere was never asked for
    assert WebhookDelivery.objects.get(job_id=job_id).last_status_code == 302


def test_start_progress_and_completed_in_order(user, token_client, receiver, webhook_worker, wait_until):
    client = token_client(user)
    job_id = create(client, webhook_url=receiver.url, webhook_events=["start", "progress", "completed"]).json()["id"]
    job = Job.objects.get(id=job_id)
    assert job.claim(worker="test-gpu:0")
    receiver.wait_for(1)
    assert job.report_progress(progress=0.5, stage="denoise")
    receiver.wait_for(2)
    assert job.succeed()
    received = receiver.wait_for(3)
    assert [r.headers["turbosite-event"] for r in received] == ["start", "progress", "completed"]
    assert [r.json()["status"] for r in received] == ["RUNNING", "RUNNING", "SUCCEEDED"]
    assert received[1].json()["progress"] == 0.5
    assert len({r.headers["webhook-id"] for r in received}) == 3
    # A job taken back and started again does not announce its start twice.
    drain(webhook_worker)
    assert WebhookDelivery.objects.filter(job_id=job_id, event="start").count() == 1


def test_progress_is_not_retried(user, token_client, receiver, webhook_worker, wait_until):
    receiver.script = [500]
    client = token_client(user)
    job_id = create(client, webhook_url=receiver.url, webhook_events="progress").json()["id"]
    job = Job.objects.get(id=job_id)
    job.claim(worker="test-gpu:0")
    job.report_progress(progress=0.3, stage="denoise")
    wait_until(lambda: WebhookDelivery.objects.filter(job_id=job_id, status="failed").exists())
    assert WebhookDelivery.objects.get(job_id=job_id).attempts == 1


@pytest.mark.parametrize("url", [
    "http://127.0.0.1:9/hook",
    "http://localhost:9/hook",
    "http://10.1.2.3/hook",
    "http://192.168.0.10/hook",
    "http://169.254.169.254/latest/meta-data/",
    "http://100.100.100.200/",
    "http://[::1]:9/hook",
    "http://[::ffff:127.0.0.1]/hook",
    "http://[fd00:ec2::254]/",
    "http://0.0.0.0/",
])
def test_an_address_that_is_not_public_is_a_400_at_create(user, token_client, settings, url):
    settings.TURBO_WEBHOOK_ALLOWED_NETWORKS = []
    response = create(token_client(user), webhook_url=url)
    assert response.status_code == 400, response.content
    body = response.json()
    assert body["field"] == "webhook_url" and body["code"] == "webhook_url_refused"
    assert "not public" in body["detail"]
    assert not Job.objects.exists()


@pytest.mark.parametrize(("url", "message"), [
    ("ftp://example.com/hook", "http:// or https://"),
    ("http://user:secret@example.com/hook", "user name or password"),
    ("http://no-such-host.invalid/hook", "cannot be resolved"),
    ("not a url", "http:// or https://"),
])
def test_malformed_webhook_urls_are_a_400(user, token_client, url, message):
    response = create(token_client(user), webhook_url=url)
    assert response.status_code == 400
    assert response.json()["field"] == "webhook_url" and message in response.json()["detail"]
    assert not Job.objects.exists()


def test_unknown_events_and_events_without_url_are_a_400(user, token_client, receiver, webhook_settings):
    client = token_client(user)
    response = create(client, webhook_url=receiver.url, webhook_events=["completed", "exploded"])
    assert response.status_code == 400 and response.json()["field"] == "webhook_events"
    response = create(client, webhook_events=["start"])
    assert response.status_code == 400 and response.json()["field"] == "webhook_url"
    assert not Job.objects.exists()


def test_the_address_is_checked_again_at_delivery(user, token_client, receiver, webhook_worker, wait_until,
                                                  settings):
    client = token_client(user)
    job_id = create(client, webhook_url=receiver.url).json()["id"]
    settings.TURBO_WEBHOOK_ALLOWED_NETWORKS = []  # the host now resolves somewhere deliveries may not go
    finish(job_id)
    wait_until(lambda: WebhookDelivery.objects.get(job_id=job_id).status == WebhookDelivery.Status.FAILED)
    [attempt] = WebhookDelivery.objects.get(job_id=job_id).attempt_log.all()
    assert attempt.status_code is None and "not public" in attempt.error
    assert receiver.received == []


def test_the_embedded_default_allows_loopback_and_redis_deployments_do_not():
    from django.test.utils import override_settings

    with override_settings(TURBO_WEBHOOK_ALLOWED_NETWORKS=["127.0.0.0/8", "::1/128"]):
        assert netguard.address_allowed(netguard.ipaddress.ip_address("127.0.0.1"))
        assert not netguard.address_allowed(netguard.ipaddress.ip_address("10.0.0.1"))
    with override_settings(TURBO_WEBHOOK_ALLOWED_NETWORKS=[]):
        assert not netguard.address_allowed(netguard.ipaddress.ip_address("127.0.0.1"))
        assert netguard.address_allowed(netguard.ipaddress.ip_address("93.184.215.14"))


def test_another_users_delivery_log_is_a_404(user, other_user, token_client, receiver, webhook_settings):
    job_id = create(token_client(user), webhook_url=receiver.url).json()["id"]
    assert JobWebhook.objects.filter(job_id=job_id).exists()
    assert token_client(other_user).get(reverse("api:job-webhooks", args=[job_id])).status_code == 404
    assert token_client(user).get(reverse("api:job-webhooks", args=[uuid.uuid4()])).status_code == 404


def test_rotating_the_secret_changes_the_signature_key(user, token_client, client, receiver, webhook_worker):
    api = token_client(user)
    before = api.get(reverse("api:webhook-secret")).json()["secret"]
    client.force_login(user)
    page = client.get(reverse("account")).content.decode()
    assert before in page
    response = client.post(reverse("webhook-secret-rotate"))
    assert response.status_code == 302
    after = api.get(reverse("api:webhook-secret")).json()["secret"]
    assert after != before and after in client.get(reverse("account")).content.decode()
    rotated = api.post(reverse("api:webhook-secret-rotate")).json()["secret"]
    assert rotated not in (before, after)

    job_id = create(api, webhook_url=receiver.url).json()["id"]
    finish(job_id)
    [delivery] = receiver.wait_for(1)
    assert verify(rotated, delivery) and not verify(after, delivery)


def test_admin_lists_deliveries_with_attempts(user, token_client, admin_client, receiver, webhook_worker,
                                              wait_until):
    receiver.script = [500]
    job_id = create(token_client(user), webhook_url=receiver.url).json()["id"]
    finish(job_id)
    wait_until(lambda: WebhookDelivery.objects.get(job_id=job_id).status == WebhookDelivery.Status.SUCCEEDED)
    delivery = WebhookDelivery.objects.get(job_id=job_id)
    listing = admin_client.get(reverse("admin:webhooks_webhookdelivery_changelist")).content.decode()
    assert delivery.webhook_id in listing
    page = admin_client.get(reverse("admin:webhooks_webhookdelivery_change", args=[delivery.id])).content.decode()
    assert "500" in page and "200" in page


def test_openapi_documents_webhooks(api_client):
    schema = api_client.get(reverse("schema"), HTTP_ACCEPT="application/vnd.oai.openapi+json").json()
    create_body = schema["paths"]["/api/v1/jobs/"]["post"]["requestBody"]["content"]["multipart/form-data"]
    properties = schema["components"]["schemas"][create_body["schema"]["$ref"].rsplit("/", 1)[1]]["properties"]
    assert {"webhook_url", "webhook_events"} <= set(properties)
    assert "get" in schema["paths"]["/api/v1/jobs/{id}/webhooks/"]
    assert "post" in schema["paths"]["/api/v1/webhooks/secret/rotate/"]
