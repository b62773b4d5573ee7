"""The capped upload handler: an oversized file is counted, not stored, and rejected by name."""

from __future__ import annotations

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from django.test import RequestFactory

from generation.image_input import ImageRejected, normalise_upload
from tests import images
from turbosite.security import OversizedUpload


def posted_file(data: bytes, name: str = "big.png"):
    request = RequestFactory().post("/upload", {"image": SimpleUploadedFile(name, data, "image/png"),
                                                "prompt": "a cat"})
    return request.FILES["image"], request.POST


@pytest.mark.parametrize("in_memory", [True, False])
def test_file_under_the_limit_arrives_whole(settings, in_memory):
    data = images.noise_png()
    settings.TURBO_MAX_UPLOAD_BYTES = len(data)
    settings.FILE_UPLOAD_MAX_MEMORY_SIZE = len(data) * 2 if in_memory else 1000  # else spooled to a temporary file
    upload, fields = posted_file(data)
    assert type(upload).__name__ == ("InMemoryUploadedFile" if in_memory else "TemporaryUploadedFile")
    assert not isinstance(upload, OversizedUpload)
    assert upload.read() == data and fields["prompt"] == "a cat"
    assert normalise_upload(upload).size == (128, 128)


def test_file_over_the_limit_is_counted_but_not_kept(settings):
    data = images.noise_png((256, 256))
    settings.TURBO_MAX_UPLOAD_BYTES = 10_000
    settings.FILE_UPLOAD_MAX_MEMORY_SIZE = 1_000  # would otherwise go to a temporary file on disk
    upload, fields = posted_file(data)
    assert isinstance(upload, OversizedUpload)
    assert upload.size == len(data) and upload.read() == b""
    assert fields["prompt"] == "a cat"  # the rest of the form still arrives
    with pytest.raises(ImageRejected) as info:
        normalise_upload(upload)
    assert info.value.code == "too_large"
    assert f"{len(data) / 1048576:.1f} MB" in info.value.message


def test_default_limits_from_settings(settings):
    assert settings.TURBO_MAX_UPLOAD_BYTES == 20 * 1024 * 1024
    assert settings.TURBO_MAX_IMAGE_PIXELS == 40_000_000
    assert settings.FILE_UPLOAD_HANDLERS[0] == "turbosite.security.CappedUploadHandler"
    assert settings.DATA_UPLOAD_MAX_MEMORY_SIZE <= settings.TURBO_MAX_UPLOAD_BYTES
