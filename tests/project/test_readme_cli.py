"""The README's first CLI example runs as written from a checkout: started from the repository root (where the
folder kernels/ sits beside Hugging Face's `kernels` in site-packages), it loads the text encoder through
transformers and writes the tiny model's mp4 from the sample image the project ships."""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
from pathlib import Path

from tests.project.lockfile import ROOT


def readme_generate_command() -> list[str]:
    section = (ROOT / "README.md").read_text().split("## The model without the site", 1)[1]
    block = re.search(r"```sh\n(.*?)```", section, re.DOTALL).group(1)
    command = block.split("\n.venv/bin/python -m inference models")[0].replace("\\\n", " ")
    argv = shlex.split(command)
    assert argv[:4] == [".venv/bin/python", "-m", "inference", "generate"], argv
    return argv


def test_readme_cli_example_makes_an_mp4_from_the_shipped_sample(tmp_path: Path):
    argv = readme_generate_command()
    image = argv[argv.index("--image") + 1]
    assert (ROOT / image).is_file() and not image.startswith(".."), "the example must use a file of the repository"
    out = tmp_path / "out.mp4"
    argv[0] = sys.executable  # the environment under test, which `make install` put at .venv/bin/python
    argv[argv.index("--out") + 1] = str(out)
    done = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    data = out.read_bytes()
    assert data[4:8] == b"ftyp" and len(data) > 10_000
