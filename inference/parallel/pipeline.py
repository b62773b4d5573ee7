"""`ParallelI2VPipeline`: the I2V pipeline run by every rank of a group on one job.

Every rank loads the whole model (both experts, the VAE, the text encoder) on its own GPU and is handed the same
request. Text encoding runs on every rank (it is short and saves a broadcast); the image encode and the decode are
split into slabs (`inference.parallel.vae`); each denoising step runs the experts sequence-parallel
(`inference.parallel.dit`) and every rank applies the same sampler update to the same gathered velocity, so the
latents stay identical everywhere. Only rank 0 reports progress, asks whether to cancel (its answer is broadcast, so
all ranks stop at the same point) and feeds the mp4 encoder.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

from inference.parallel.dit import sequence_parallel
from inference.parallel.group import ParallelGroup
from inference.parallel.vae import ParallelVAE
from inference.pipeline import FrameSink, I2VPipeline
from inference.types import CancelHook, GenerationRequest, GenerationResult, ProgressCallback


class ParallelI2VPipeline(I2VPipeline):
    """An I2VPipeline whose `generate` every rank of `group` calls together with the same request."""

    group: ParallelGroup

    @classmethod
    def load(cls, model: str, weights_dir: str | Path | None = None, *, group: ParallelGroup,  # type: ignore[override]
             **options: Any) -> ParallelI2VPipeline:
        """I2VPipeline.load on this rank's device (`group.device`), then joined to `group`."""
        options["device"] = str(group.device)
        pipeline = super().load(model, weights_dir, **options)
        assert isinstance(pipeline, ParallelI2VPipeline)
        return pipeline.join(group)

    def join(self, group: ParallelGroup) -> ParallelI2VPipeline:
        """Run this pipeline's jobs over `group` from now on (the VAE wrapped, the device name counting GPUs)."""
        if self.config.dit.num_heads % group.world:
            raise ValueError(f"model {self.config.name} has {self.config.dit.num_heads} attention heads, which do "
                             f"not split over {group.world} GPUs")
        self.group = group
        self.vae = ParallelVAE(self.vae, group)
        self.device_name = f"{group.world} x {self.device_name}"
        return self

    def generate(
        self,
        request: GenerationRequest,
        progress: ProgressCallback | None = None,
        should_cancel: CancelHook | None = None,
        frame_sink: FrameSink | None = None,
    ) -> GenerationResult:
        """Every rank calls this with the same request; the callbacks of ranks other than 0 are ignored. Timings
        are this rank's own; with a `timed` group they include the communication counters."""
        group = self.group
        first = group.is_first
        group.reset_stats()
        result = super().generate(
            request,
            progress if first else None,
            _collective_cancel(group, should_cancel if first else None),
            frame_sink if first else None,
        )
        if group.timed:
            result.timings.update(group.stats.as_dict())
        return result

    def _denoising(self) -> contextlib.AbstractContextManager[None]:
        """Both experts' attention sequence-parallel over the group while the steps run."""
        stack = contextlib.ExitStack()
        for expert in self.experts.values():
            stack.enter_context(sequence_parallel(expert, self.group))
        return stack


def _collective_cancel(group: ParallelGroup, should_cancel: CancelHook | None) -> Callable[[], bool]:
    """A cancel hook that every rank calls at the same points: rank 0's answer, broadcast. If rank 0's own hook
    raises, the others are told to stop before rank 0 re-raises, so no rank is left waiting in a collective."""

    def ask() -> bool:
        error: BaseException | None = None
        answer = False
        if should_cancel is not None:
            try:
                answer = bool(should_cancel())
            except BaseException as exc:  # re-raised below, once the other ranks were released
                error, answer = exc, True
        answer = group.broadcast_flag(answer)
        if error is not None:
            raise error
        return answer

    return ask
