"""`python -m inference`: a real subprocess writes a decodable mp4; bad input exits 2 with a one-line reason."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from inference.cli import format_timings, main
from inference.configs import A14B, TINY
from inference.image import load_image, target_size
from inference.video import probe_video

REPO = Path(__file__).resolve().parents[2]
SAMPLE = REPO.parent / "shared" / "samples" / "i2v_input_0.jpg"


@pytest.fixture(scope="module")
def input_image(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if SAMPLE.is_file():
        return SAMPLE
    path = tmp_path_factory.mktemp("img") / "input.png"
    y, x = np.mgrid[0:96, 0:160]
    pixels = np.stack([x * 255 // 159, y * 255 // 95, np.full_like(x, 60)], axis=-1).astype(np.uint8)
    Image.fromarray(pixels, "RGB").save(path)
    return path


def _run(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "inference", *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, **(env or {})},
    )


def test_generate_writes_mp4_with_right_frames_size_and_fps(input_image: Path, tmp_path: Path) -> None:
    out = tmp_path / "video.mp4"
    poster = tmp_path / "poster.jpg"
    done = _run(
        "generate", "--model", "tiny", "--image", str(input_image), "--prompt", "a boat drifts on a calm lake",
        "--out", str(out), "--frames", "9", "--steps", "2", "--seed", "5", "--poster", str(poster),
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    width, height = target_size(TINY, load_image(input_image).size, "480p", adaptive=True)
    assert probe_video(out) == (9, width, height, TINY.fps)
    with Image.open(poster) as img:
        assert img.size == (width, height)
    for stage in ("load", "text_encode", "image_encode", "denoise", "decode", "write_mp4", "total", "peak GPU memory"):
        assert stage in done.stdout
    assert "wrote" in done.stdout and f"9 frames, {width}x{height}" in done.stdout


@pytest.mark.parametrize(
    ("args", "named"),
    [
        (["--frames", "18"], "18"),
        (["--resolution", "1080p"], "1080p"),
        (["--steps", "9"], "9"),
        (["--model", "wan9"], "wan9"),
        (["--poster", "p.gif"], "p.gif"),
    ],
)
def test_bad_input_exits_2_with_one_line(
    input_image: Path, tmp_path: Path, args: list[str], named: str, capsys: pytest.CaptureFixture[str]
) -> None:
    code = main(["generate", "--image", str(input_image), "--prompt", "x", "--out", str(tmp_path / "o.mp4"), *args])
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert err.startswith("error: ") and named in err
    assert len(err.splitlines()) == 1
    assert not (tmp_path / "o.mp4").exists()


def test_bad_frames_through_the_real_entry_point(input_image: Path, tmp_path: Path) -> None:
    done = _run(
        "generate", "--image", str(input_image), "--prompt", "x", "--out", str(tmp_path / "o.mp4"), "--frames", "18"
    )
    assert done.returncode == 2
    assert "error:" in done.stderr and "18" in done.stderr
    assert "Traceback" not in done.stderr


def test_missing_image_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    missing = tmp_path / "nope.jpg"
    assert main(["generate", "--image", str(missing), "--prompt", "x", "--out", str(tmp_path / "o.mp4")]) == 2
    assert str(missing) in capsys.readouterr().err


def test_full_model_without_weights_exits_2_naming_files(
    input_image: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["generate", "--model", A14B.name, "--weights", str(tmp_path), "--image", str(input_image)]
    assert main([*argv, "--prompt", "x", "--out", str(tmp_path / "o.mp4")]) == 2
    err = capsys.readouterr().err
    assert A14B.high_noise_file in err and A14B.vae_file in err


def test_models_lists_every_model_and_weight_status(tmp_path: Path) -> None:
    done = _run("models", env={"TURBO_MODEL_DIR": str(tmp_path)})
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    tiny_line = next(line for line in lines if line.startswith(TINY.name))
    full_line = next(line for line in lines if line.startswith(A14B.name))
    assert "built in" in tiny_line
    assert "missing" in full_line and A14B.low_noise_file in full_line and str(tmp_path) in full_line


def test_models_reports_installed_files(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    for name in (A14B.high_noise_file, A14B.low_noise_file, A14B.vae_file, A14B.text_encoder_file):
        (tmp_path / name).write_bytes(b"")
    (tmp_path / A14B.tokenizer_dir).mkdir(parents=True)
    (tmp_path / A14B.tokenizer_dir / "spiece.model").write_bytes(b"")
    assert main(["models", "--weights", str(tmp_path)]) == 0
    full_line = next(line for line in capsys.readouterr().out.splitlines() if line.startswith(A14B.name))
    assert "installed" in full_line and "missing" not in full_line


def test_timing_table_totals_and_peak() -> None:
    table = format_timings({"denoise": 1.5, "decode": 0.25}, 3 * 2**30)
    assert "total" in table and "1.75" in table and "3.00 GiB" in table
    assert "n/a (cpu)" in format_timings({"denoise": 1.0}, None)


@pytest.mark.parametrize("mode", ["stretch", "crop", "pad"])
def test_resize_mode_reaches_the_request(
    input_image: Path, tmp_path: Path, mode: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from inference import pipeline as pipeline_module
    from inference.types import GenerationCanceled

    seen = []

    class Recorder:
        def generate(self, request, progress=None):
            seen.append(request)
            raise GenerationCanceled("stop here")

    monkeypatch.setattr(pipeline_module.I2VPipeline, "load", classmethod(lambda cls, *a, **k: Recorder()))
    code = main(["generate", "--image", str(input_image), "--prompt", "x", "--out", str(tmp_path / "o.mp4"),
                 "--resize-mode", mode])
    assert code == 130 and [r.resize_mode for r in seen] == [mode]


def test_unknown_resize_mode_is_a_usage_error(input_image: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["generate", "--image", str(input_image), "--prompt", "x", "--out", "o.mp4", "--resize-mode", "fill"])
    assert exited.value.code == 2 and "'fill'" in capsys.readouterr().err
