"""`python -m inference`: generate a video from the command line, or list models and their weights."""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from PIL import Image

from inference.configs import MODELS, TINY, get_config
from inference.types import (
    RESIZE_MODES,
    GenerationCanceled,
    GenerationRequest,
    InferenceInputError,
    ProgressEvent,
    WeightsError,
)

EXIT_BAD_INPUT = 2
EXIT_INTERRUPTED = 130
_POSTER_FORMATS = {".jpg": "JPEG", ".jpeg": "JPEG", ".png": "PNG"}


def environment_switches() -> dict[str, str]:
    """The switches a shell may set for the CLI, read here once and passed down as option defaults (the site reads
    the same variables in turbosite/settings.py and hands them to the pipeline the same way)."""
    return {
        "weights": os.environ.get("TURBO_MODEL_DIR", "").strip(),
        "linears": os.environ.get("TURBO_LINEARS", "").strip() or "auto",
        "kernels": os.environ.get("TURBO_KERNELS", "").strip() or "auto",
    }


def build_parser() -> argparse.ArgumentParser:
    env = environment_switches()
    parser = argparse.ArgumentParser(prog="python -m inference", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)

    gen = commands.add_parser("generate", help="turn one image and a prompt into an mp4")
    gen.add_argument("--image", required=True, help="input image file")
    gen.add_argument("--prompt", required=True, help="what should happen in the video")
    gen.add_argument("--out", required=True, type=Path, help="output .mp4 path")
    gen.add_argument("--model", default=TINY.name, help=f"one of {', '.join(MODELS)} (default {TINY.name})")
    gen.add_argument("--steps", type=int, default=4, help="denoising steps, 1-4 (default 4)")
    gen.add_argument("--resolution", default=None, help="480p or 720p (default: the model's)")
    gen.add_argument("--frames", type=int, default=None, help="frame count 4k+1 (default: the model's)")
    gen.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    gen.add_argument("--ode", action="store_true", help="deterministic ODE steps instead of SDE")
    gen.add_argument("--attention", default="sla", help="sla or dense (default sla)")
    gen.add_argument("--weights", default=env["weights"] or None, help="weights folder (default: $TURBO_MODEL_DIR)")
    gen.add_argument("--poster", type=Path, default=None, help="also write the first frame (.jpg or .png)")
    gen.add_argument(
        "--no-adaptive", action="store_true", help="use the fixed resolution instead of the image's aspect"
    )
    gen.add_argument(
        "--resize-mode", default=RESIZE_MODES[0], choices=RESIZE_MODES,
        help="how the image meets the video size: stretch it (the reference's way, default), centre-crop it, or "
        "fit it inside with black bars (pad)",
    )
    gen.add_argument("--device", default=None, help="torch device (default: cuda if available, else cpu)")
    gen.add_argument("--memory-policy", default="auto", help="auto, resident, offload or stream (default auto)")
    gen.add_argument("--linears", default=env["linears"], help="auto, fp8 or native (default $TURBO_LINEARS or auto)")
    gen.add_argument("--kernels", default=env["kernels"], choices=("auto", "kernel", "reference"),
                     help="kernel backend (default $TURBO_KERNELS or auto)")

    models = commands.add_parser("models", help="list models and whether their weights are installed")
    models.add_argument("--weights", default=env["weights"] or None, help="weights folder (default: $TURBO_MODEL_DIR)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.command == "models":
            return _list_models(args.weights)
        return _generate(args)
    except (InferenceInputError, WeightsError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except GenerationCanceled as exc:
        print(f"canceled: {exc}", file=sys.stderr)
        return EXIT_INTERRUPTED
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED


def _generate(args: argparse.Namespace) -> int:
    # Heavy imports stay here so that `--help` and `models` answer instantly.
    from tqdm import tqdm

    from inference.pipeline import I2VPipeline, resolve_request
    from inference.video import write_mp4, write_poster

    try:
        config = get_config(args.model)
    except ValueError as exc:
        raise InferenceInputError(str(exc)) from None
    poster_format = None
    if args.poster is not None:
        poster_format = _POSTER_FORMATS.get(args.poster.suffix.lower())
        if poster_format is None:
            raise InferenceInputError(
                f"poster {str(args.poster)!r}: unsupported extension; use one of {', '.join(_POSTER_FORMATS)}"
            )
    # Reject bad knobs before minutes of weight loading.
    resolve_request(config, seed=args.seed, num_steps=args.steps, resolution=args.resolution, num_frames=args.frames)
    image = _open_image(args.image)
    request = GenerationRequest(
        image=image,
        prompt=args.prompt,
        seed=args.seed,
        num_steps=args.steps,
        resolution=args.resolution,
        num_frames=args.frames,
        adaptive_resolution=not args.no_adaptive,
        ode=args.ode,
        resize_mode=args.resize_mode,
    )

    started = time.perf_counter()
    pipeline = I2VPipeline.load(
        args.model, args.weights, device=args.device, attention=args.attention, memory_policy=args.memory_policy,
        linears=args.linears, kernels=args.kernels,
    )
    load_seconds = time.perf_counter() - started

    with tqdm(total=100, unit="%", bar_format="{l_bar}{bar}| {elapsed}<{remaining}", file=sys.stderr) as bar:

        def on_progress(event: ProgressEvent) -> None:
            label = event.stage if event.step is None else f"{event.stage} {event.step}/{event.total_steps}"
            bar.set_description_str(label)
            bar.update(round(event.progress * 100) - bar.n)

        result = pipeline.generate(request, progress=on_progress)

    args.out.parent.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    write_mp4(result.frames, args.out, result.fps)
    timings = {"load": load_seconds, **result.timings, "write_mp4": time.perf_counter() - started}
    if args.poster is not None:
        write_poster(result.frames[0], args.poster, poster_format)

    print(
        f"wrote {args.out}: {result.num_frames} frames, {result.width}x{result.height}, {result.fps} fps, "
        f"seed {args.seed}, on {result.device_name}"
    )
    print(format_timings(timings, result.peak_memory_bytes))
    return 0


def _open_image(path: str) -> Image.Image:
    from inference.image import load_image

    if not Path(path).is_file():
        raise InferenceInputError(f"image {path!r} not found")
    return load_image(path)  # unreadable files raise InferenceInputError naming the file


def format_timings(timings: dict[str, float], peak_memory_bytes: int | None) -> str:
    """A two-column table of stage seconds, their total, and the GPU memory peak."""
    width = max(len(name) for name in [*timings, "peak GPU memory"])
    lines = [f"{'stage':<{width}}  seconds", f"{'-' * width}  -------"]
    lines += [f"{name:<{width}}  {seconds:7.2f}" for name, seconds in timings.items()]
    lines.append(f"{'total':<{width}}  {sum(timings.values()):7.2f}")
    peak = "n/a (cpu)" if peak_memory_bytes is None else f"{peak_memory_bytes / 2**30:.2f} GiB"
    lines.append(f"{'peak GPU memory':<{width}}  {peak}")
    return "\n".join(lines)


def _list_models(weights_dir: str | None) -> int:
    from inference.checkpoint import weights_status

    folder = weights_dir
    rows = [("model", "resolution", "frames", "weights")]
    for config in MODELS.values():
        if config.random_weights:
            status = "built in (seeded random weights)"
        elif not folder:
            status = "not installed (set TURBO_MODEL_DIR or pass --weights)"
        else:
            report = weights_status(config, Path(folder))
            missing = list(report["missing"])
            status = f"installed in {folder}" if not missing else f"missing in {folder}: {', '.join(map(str, missing))}"
        resolutions = ", ".join(config.resolutions)
        rows.append(
            (config.name, f"{resolutions} (default {config.default_resolution})", str(config.default_frames), status)
        )
    widths = [max(len(row[i]) for row in rows) for i in range(3)]
    for row in rows:
        print("  ".join(cell.ljust(widths[i]) for i, cell in enumerate(row[:3])) + "  " + row[3])
    return 0
