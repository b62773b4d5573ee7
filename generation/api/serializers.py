"""Request and response shapes of the v1 API. Parameter *rules* live in generation.services (one place for the
messages); these serializers parse types and describe the shapes for the OpenAPI schema. Every bound and choice
they carry comes from generation.limits, read again for each serializer (`TableFields`)."""

from __future__ import annotations

from drf_spectacular.utils import extend_schema_field
from rest_framework import serializers
from rest_framework.fields import empty

from generation import eta, models_catalog, services, storage
from generation.limits import from_table, limit, remake_table_fields
from generation.models import Job
from turbosite import api_errors


class FormBooleanField(serializers.BooleanField):
    """A boolean whose absence from a multipart form means "use the default", not False (DRF's HTML rule)."""

    default_empty_html = empty


# A serializer mixin. (No docstring: drf-spectacular would show it as every serializer's description.)
# Fields declared with limits.from_table are made again for each serializer, and so for each request and each
# OpenAPI schema, from the limits table as it is then.
class TableFields:
    def get_fields(self) -> dict[str, serializers.Field]:
        fields = super().get_fields()  # type: ignore[misc]  # a mixin: the serializer comes next
        remake_table_fields(fields, self._declared_fields)
        return fields


# Fields whose bounds, choices and help come from the limits table (used by the API and the compatibility routes).

def prompt_field() -> serializers.CharField:
    return serializers.CharField(allow_blank=True, trim_whitespace=False,
                                 help_text="What should happen in the video. Stripped; at most "
                                           f"{limit('prompt').maximum} characters.")


def seed_field() -> serializers.IntegerField:
    allowed = limit("seed")
    return serializers.IntegerField(required=False, allow_null=True, min_value=allowed.minimum,
                                    max_value=allowed.maximum,
                                    help_text="Random seed; a random one is chosen (and returned) when absent.")


def num_steps_field() -> serializers.IntegerField:
    allowed = limit("num_steps")
    return serializers.IntegerField(required=False, default=allowed.default, min_value=allowed.minimum,
                                    max_value=allowed.maximum,
                                    help_text=f"Sampling steps, {allowed.minimum} to {allowed.maximum}.")


def resolution_field(**kwargs) -> serializers.ChoiceField:
    return serializers.ChoiceField(choices=limit("resolution").choices, **kwargs)


def num_frames_field() -> serializers.IntegerField:
    allowed = limit("num_frames")
    field = serializers.IntegerField(
        required=False, allow_null=True, min_value=1,
        help_text=f"{allowed.step}k+1 frames, up to the model's max_frames (see /models/); the model's default when "
                  "absent.")
    # Shown in the schema, checked by generation.services alone: its message names the model's own maximum.
    field.min_value, field.max_value = allowed.minimum, models_catalog.largest_max_frames()
    return field


def resize_mode_field() -> serializers.ChoiceField:
    allowed = limit("resize_mode")
    return serializers.ChoiceField(
        choices=allowed.choices, required=False, default=allowed.default,
        help_text="How the image meets the video size: stretch it to the size (the model's own preprocessing, "
                  "default), crop its centre to the size's aspect ratio, or pad it with black bars (fit inside).")


def loras_field() -> serializers.ListField:
    count, strength = limit("loras"), limit("lora_strength")
    return serializers.ListField(
        child=serializers.CharField(max_length=100), required=False, allow_empty=True,
        help_text=f"Up to {count.maximum} installed LoRAs (see /models/), each `name` or `name:strength` (strength "
                  f"{strength.minimum:g} to {strength.maximum:g}; the LoRA's default strength when left out); repeat "
                  "the field for several.")


class JobCreateSerializer(TableFields, serializers.Serializer):
    image = serializers.FileField(help_text="The still image to animate (JPEG, PNG, WebP, GIF or BMP).")
    prompt = from_table(prompt_field)
    seed = from_table(seed_field)
    num_steps = from_table(num_steps_field)
    resolution = from_table(lambda: resolution_field(required=False, allow_null=True,
                                                     help_text="Target resolution; the model's default when absent."))
    num_frames = from_table(num_frames_field)
    adaptive_resolution = FormBooleanField(required=False, default=True,
                                           help_text="Keep the image's aspect ratio at the target area.")
    ode = FormBooleanField(required=False, default=False, help_text="Deterministic ODE sampling instead of SDE.")
    resize_mode = from_table(resize_mode_field)
    loras = from_table(loras_field)
    model = serializers.CharField(required=False, allow_blank=True, allow_null=True,
                                  help_text="Model name from /models/; the deployment's default when absent.")
    webhook_url = serializers.CharField(
        required=False, allow_blank=True, allow_null=True, max_length=2000,
        help_text="http(s) URL that receives signed POSTs (Standard Webhooks headers webhook-id, "
                  "webhook-timestamp, webhook-signature) whose body is this job as GET /jobs/{id}/ shows it. "
                  "Its host must resolve to a public address.")
    webhook_events = serializers.ListField(
        child=serializers.CharField(), required=False, allow_empty=True,
        help_text="Which events to send: start, progress, completed (repeat the field or comma-separate; "
                  "default completed). completed is sent for every end: succeeded, failed or canceled.")


class LoraChoiceSerializer(serializers.Serializer):
    name = serializers.CharField()
    strength = serializers.FloatField()


class JobParametersSerializer(TableFields, serializers.Serializer):
    prompt = serializers.CharField()
    seed = serializers.IntegerField()
    num_steps = serializers.IntegerField()
    resolution = from_table(resolution_field)
    num_frames = serializers.IntegerField()
    adaptive_resolution = serializers.BooleanField()
    ode = serializers.BooleanField()
    resize_mode = serializers.CharField()
    loras = LoraChoiceSerializer(many=True)
    model = serializers.CharField()


def absolute_url(request, url: str) -> str:
    # Local-folder links are site paths; S3 links are already absolute.
    return request.build_absolute_uri(url) if request is not None and url.startswith("/") else url


class JobListSerializer(serializers.ListSerializer):
    """A page of jobs: the queue positions of the whole page are read in one query, not one per job."""

    def to_representation(self, data):
        jobs = list(data.all() if hasattr(data, "all") else data)
        self.child.context["queue_positions"] = services.queue_positions(jobs)
        return super().to_representation(jobs)


class JobSerializer(serializers.ModelSerializer):
    """A job as its owner sees it. Links are made here, and only ever for the requester's own jobs (the views'
    querysets are filtered by owner before an object reaches this serializer)."""

    status = serializers.ChoiceField(choices=Job.Status.choices, read_only=True)
    parameters = JobParametersSerializer(source="*", read_only=True)
    queue_position = serializers.SerializerMethodField()
    eta_seconds = serializers.SerializerMethodField()
    output_url = serializers.SerializerMethodField()
    poster_url = serializers.SerializerMethodField()
    input_url = serializers.SerializerMethodField()
    timings = serializers.DictField(child=serializers.FloatField(), read_only=True)
    expired_at = serializers.SerializerMethodField(
        help_text="When retention (TURBO_RETENTION_DAYS) deleted the job's files; null while they are kept.")

    class Meta:
        model = Job
        fields = ["id", "status", "progress", "stage", "queue_position", "eta_seconds", "timings", "error",
                  "parameters", "created_at", "started_at", "finished_at", "width", "height", "frames", "fps",
                  "bytes", "retry_of", "output_url", "poster_url", "input_url", "expired_at"]
        read_only_fields = fields
        list_serializer_class = JobListSerializer

    def _estimate(self) -> eta.QueueEstimate:
        # One look at the queue per request: a page of the job list asks for many ETAs.
        return self.context.setdefault("_queue_estimate", eta.QueueEstimate())

    def _position(self, job: Job) -> int | None:
        """From the page's positions (JobListSerializer puts them in the context), else this job's own."""
        positions = self.context.get("queue_positions")
        if positions is not None and job.id in positions:
            return positions[job.id]
        return services.queue_position(job)

    @extend_schema_field(serializers.IntegerField(allow_null=True))
    def get_queue_position(self, job: Job) -> int | None:
        if job.status != Job.Status.QUEUED:
            return None
        return self._position(job)

    @extend_schema_field(serializers.FloatField(allow_null=True))
    def get_eta_seconds(self, job: Job) -> float | None:
        if job.is_finished:
            return None
        return self._estimate().for_job(job)

    def _link(self, name: str, download_name: str | None = None) -> str | None:
        if not name:
            return None
        return absolute_url(self.context.get("request"), storage.signed_url(name, download_name=download_name))

    @extend_schema_field(serializers.URLField(allow_null=True))
    def get_output_url(self, job: Job) -> str | None:
        if job.status != Job.Status.SUCCEEDED:
            return None
        return self._link(job.output_video.name)

    @extend_schema_field(serializers.URLField(allow_null=True))
    def get_poster_url(self, job: Job) -> str | None:
        if job.status != Job.Status.SUCCEEDED:
            return None
        return self._link(job.poster.name)

    @extend_schema_field(serializers.DateTimeField(allow_null=True))
    def get_expired_at(self, job: Job) -> str | None:
        expiry = getattr(job, "expiry", None)
        return serializers.DateTimeField().to_representation(expiry.expired_at) if expiry else None

    @extend_schema_field(serializers.URLField(allow_null=True))
    def get_input_url(self, job: Job) -> str | None:
        return self._link(job.input_image.name)


class LoraSerializer(serializers.Serializer):
    name = serializers.CharField()
    title = serializers.CharField()
    description = serializers.CharField()
    experts = serializers.ListField(child=serializers.CharField(), help_text="Experts it changes: high, low.")
    default_strength = serializers.FloatField()


class ModelSerializer(serializers.Serializer):
    name = serializers.CharField()
    installed = serializers.BooleanField()
    missing = serializers.ListField(child=serializers.CharField(), help_text="Weight files not found.")
    default_frames = serializers.IntegerField()
    max_frames = serializers.IntegerField()
    fps = serializers.IntegerField()
    resolutions = serializers.ListField(child=serializers.CharField())
    default_resolution = serializers.CharField()
    default = serializers.BooleanField(help_text="The model used when a request names none.")
    loras = LoraSerializer(many=True, help_text="LoRAs installed for this model; name them in a job's `loras`.")


class TokenRequestSerializer(serializers.Serializer):
    username = serializers.CharField()
    password = serializers.CharField(style={"input_type": "password"})


class TokenResponseSerializer(serializers.Serializer):
    token = serializers.CharField(help_text="Send as `Authorization: Token <token>`.")


ErrorSerializer = api_errors.ErrorSerializer  # every API error has this one shape
