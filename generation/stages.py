"""The stages of a job, in the order a worker runs them: what the row's `stage` holds, what a person reads for each,
and how much of the progress bar each one owns.

One table for the worker (which writes stage and progress), the pages and the API (which show them) and the ETA
(which adds up the measured cost of the stages still to come). Plain Python: the web side imports it without the
model library. The pipeline names its own stages (inference.types.ProgressEvent.stage) with the same values, and the
worker maps them onto this enum.
"""

from __future__ import annotations

from enum import StrEnum


class Stage(StrEnum):
    QUEUED = "queued"
    STARTING = "starting"
    LOADING_MODEL = "loading_model"
    READING_INPUT = "reading_input"
    TEXT_ENCODE = "text_encode"
    IMAGE_ENCODE = "image_encode"
    DENOISE = "denoise"
    DECODE = "decode"
    ENCODING = "encoding"
    UPLOADING = "uploading"
    DONE = "done"
    CANCELED = "canceled"

    @property
    def label(self) -> str:
        """What a person reads while the job is in this stage."""
        return _LABELS[self]

    @property
    def share(self) -> float:
        """The part of the progress bar this stage owns (0 for the states around a run)."""
        return _SHARES.get(self, 0.0)

    @property
    def start(self) -> float:
        """Progress when this stage begins: the shares of the run stages before it."""
        if self in _SHARES:
            return sum(_SHARES[stage] for stage in RUN_ORDER[: RUN_ORDER.index(self)])
        return 1.0 if self == Stage.DONE else 0.0

    def progress(self, fraction: float = 0.0) -> float:
        """Overall progress with `fraction` (0..1) of this stage done."""
        return min(1.0, self.start + self.share * max(0.0, min(1.0, fraction)))

    @classmethod
    def parse(cls, value: str) -> Stage | None:
        try:
            return cls(value)
        except ValueError:
            return None


_LABELS = {
    Stage.QUEUED: "Waiting in the queue",
    Stage.STARTING: "Starting",
    Stage.LOADING_MODEL: "Loading the model",
    Stage.READING_INPUT: "Reading your image",
    Stage.TEXT_ENCODE: "Reading the prompt",
    Stage.IMAGE_ENCODE: "Encoding the image",
    Stage.DENOISE: "Generating frames",
    Stage.DECODE: "Decoding frames",
    Stage.ENCODING: "Encoding the video",
    Stage.UPLOADING: "Saving the video",
    Stage.DONE: "Done",
    Stage.CANCELED: "Canceled",
}

# The stages a worker runs, in order, with their share of the bar. The shares follow what the stages cost on a GPU
# (denoising dominates); the ETA uses measured costs instead, so they only shape the bar.
_SHARES = {
    Stage.LOADING_MODEL: 0.02,
    Stage.READING_INPUT: 0.01,
    Stage.TEXT_ENCODE: 0.03,
    Stage.IMAGE_ENCODE: 0.05,
    Stage.DENOISE: 0.72,
    Stage.DECODE: 0.12,
    Stage.ENCODING: 0.03,
    Stage.UPLOADING: 0.02,
}
RUN_ORDER: tuple[Stage, ...] = tuple(_SHARES)
# The stages inside the pipeline's generate(); the worker runs the others itself.
PIPELINE_STAGES = (Stage.TEXT_ENCODE, Stage.IMAGE_ENCODE, Stage.DENOISE, Stage.DECODE)

# The worker's `timings` keys for each run stage (the pipeline's own stages keep their names).
TIMING_KEYS = {
    Stage.LOADING_MODEL: "load_model",
    Stage.READING_INPUT: "read_input",
    Stage.TEXT_ENCODE: "text_encode",
    Stage.IMAGE_ENCODE: "image_encode",
    Stage.DENOISE: "denoise",
    Stage.DECODE: "decode",
    Stage.ENCODING: "encode",
    Stage.UPLOADING: "upload",
}


def stage_labels() -> dict[str, str]:
    """Every stage value and its label (the pages hand this table to static/js/job_progress.js)."""
    return {stage.value: stage.label for stage in Stage}


def label_for(value: str) -> str:
    stage = Stage.parse(value)
    return stage.label if stage is not None else value
