from django.conf import settings
from django.core.files.base import ContentFile
from django.core.files.storage import default_storage


def test_suite_runs_on_real_services(db):
    assert settings.DATABASES["default"]["ENGINE"] == "django.db.backends.postgresql"
    name = default_storage.save("smoke/hello.txt", ContentFile(b"hi"))
    assert default_storage.open(name).read() == b"hi"
    default_storage.delete(name)
