"""Small files that declare big images: decoded at reduced size where the format allows (JPEG draft), shrunk to
what the largest output needs before anything else, stored that size, and at most TURBO_IMAGE_DECODE_SLOTS decode
at once per process. Peak memory is measured in a fresh process (Pillow's buffers are not Python objects)."""

from __future__ import annotations

import io
import threading
import time

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from PIL import Image

from generation import image_input, models_catalog
from tests.django_process import child_env, run_json

SIDE = 6000  # 36 megapixels: under the 40-megapixel limit, so it is accepted

MEASURE = """
import resource
from generation.image_input import normalise_bytes
from tests.factories import png_bytes
normalise_bytes(png_bytes(300, 300))  # imports and first-use allocations happen before the measurement
data = open(PATH, "rb").read()
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
out = normalise_bytes(data, max_short_side=SHORT)
grown = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024
print(json.dumps({"grown_mb": grown, "size": list(out.size), "mode": out.mode}))
"""


def _encoded(fmt: str) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (SIDE, SIDE), (30, 120, 200)).save(buffer, format=fmt)
    return buffer.getvalue()


@pytest.mark.parametrize(("fmt", "limit_mb"), [
    ("JPEG", 40),    # draft mode decodes at 1/4 scale: about 7 MB instead of 108 MB
    ("PNG", 170),    # no reduced decode for PNG: one full-size decode (108 MB), then only the shrunk copy
])
def test_a_huge_image_in_a_small_file_is_decoded_small_or_once(tmp_path, fmt, limit_mb):
    path = tmp_path / f"big.{fmt.lower()}"
    path.write_bytes(_encoded(fmt))
    assert path.stat().st_size < 1_000_000  # a small upload
    short = models_catalog.largest_output_side()
    code = f"PATH = {str(path)!r}\nSHORT = {short}\n" + MEASURE
    result = run_json(code, child_env(tmp_path), timeout=120)
    assert result["size"] == [short, short] and result["mode"] == "RGB"
    assert result["grown_mb"] < limit_mb, result


def test_the_stored_input_is_shrunk_to_what_the_largest_output_needs(token_client, user, monkeypatch):
    from generation.models import Job
    from generation.storage import read_bytes

    monkeypatch.setattr("generation.services.enqueue_job", lambda job_id: None)
    upload = SimpleUploadedFile("wide.jpg", _encoded("JPEG"), content_type="image/jpeg")
    response = token_client(user).post("/api/v1/jobs/", {"image": upload, "prompt": "big", "model": "tiny",
                                                         "num_frames": 5}, format="multipart")
    assert response.status_code == 201, response.content
    job = Job.objects.get()
    stored = Image.open(io.BytesIO(read_bytes(job.input_image.name)))
    assert stored.size == (models_catalog.largest_output_side(),) * 2
    assert models_catalog.largest_output_side() == 1280  # 720p's long side
    from generation.storage import delete_quietly

    delete_quietly(job.input_image.name)


def test_decodes_at_once_per_process_are_capped(settings, monkeypatch):
    settings.TURBO_IMAGE_DECODE_SLOTS = 2
    running = 0
    most = 0
    lock = threading.Lock()
    real_decode = image_input._decode

    def slow_decode(image):
        nonlocal running, most
        with lock:
            running += 1
            most = max(most, running)
        time.sleep(0.2)
        try:
            real_decode(image)
        finally:
            with lock:
                running -= 1

    monkeypatch.setattr(image_input, "_decode", slow_decode)
    buffer = io.BytesIO()
    Image.new("RGB", (200, 200), (1, 2, 3)).save(buffer, format="PNG")
    results: list[tuple[int, int]] = []
    threads = [threading.Thread(target=lambda: results.append(image_input.normalise_bytes(buffer.getvalue()).size))
               for _ in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert results == [(200, 200)] * 6
    assert most == 2


def test_a_request_that_waits_too_long_for_a_slot_is_told_to_come_back(settings, monkeypatch):
    settings.TURBO_IMAGE_DECODE_SLOTS = 1
    monkeypatch.setattr(image_input, "DECODE_WAIT_S", 0.2)
    with image_input.decode_slot(), pytest.raises(image_input.DecoderBusy):
        image_input.normalise_bytes(b"irrelevant: never decoded")


def test_the_web_side_knows_the_output_sizes_the_models_make():
    from inference.configs import MODELS as CONFIGS

    for name, spec in models_catalog.MODELS.items():
        for resolution in spec.resolutions:
            assert max(CONFIGS[name].resolutions[resolution]) <= models_catalog.OUTPUT_LONG_SIDE[resolution]
    real = CONFIGS["wan2.2-i2v-a14b"].resolutions
    assert {key: max(size) for key, size in real.items()} == models_catalog.OUTPUT_LONG_SIDE
