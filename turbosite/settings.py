"""TurboSite settings. Every value comes from the environment; with none set you get the embedded default
(SQLite, local media folder, in-process queue, the `tiny` model). README.md has the table of variables."""

from __future__ import annotations

import secrets
from pathlib import Path

import dj_database_url
from django.core.exceptions import ImproperlyConfigured
from PIL import Image

from turbosite.env import env_bool, env_int, env_list, env_str

BASE_DIR = Path(__file__).resolve().parent.parent
DATA_DIR = Path(env_str("TURBO_DATA_DIR") or BASE_DIR / "data")

DEBUG = env_bool("DEBUG", True)


def _secret_key() -> str:
    key = env_str("SECRET_KEY")
    if key:
        return key
    if not DEBUG:
        raise ImproperlyConfigured("SECRET_KEY must be set when DEBUG is off")
    # Development: one random key per checkout, kept so sessions survive restarts.
    path = DATA_DIR / "secret_key"
    if not path.exists():
        DATA_DIR.mkdir(parents=True, exist_ok=True)
        path.write_text(secrets.token_urlsafe(50))
        path.chmod(0o600)
    return path.read_text().strip()


SECRET_KEY = _secret_key()
ALLOWED_HOSTS = env_list("ALLOWED_HOSTS", ["localhost", "127.0.0.1", "[::1]", "testserver"] if DEBUG else [])
CSRF_TRUSTED_ORIGINS = env_list("CSRF_TRUSTED_ORIGINS", [])

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "whitenoise.runserver_nostatic",
    "django.contrib.staticfiles",
    "rest_framework",
    "rest_framework.authtoken",
    "drf_spectacular",
    "drf_spectacular_sidecar",  # Swagger UI served from our own origin (the CSP allows 'self' only)
    "axes",
    "storages",
    "turbosite.accounts",
    "turbosite.api_keys",
    "generation",
    "generation.webhooks",
    "generation.lifecycle",  # Cancel-After deadlines, Prefer: wait, retention
    "generation.events",  # Server-Sent Events of job changes (Redis pub/sub, or in process when embedded)
]

MIDDLEWARE = [
    "turbosite.api_errors.ApiErrorShapeMiddleware",
    "django.middleware.security.SecurityMiddleware",
    "turbosite.security.SecurityHeadersMiddleware",  # CSP, permissions policy, cross-origin isolation
    "turbosite.static_files.WhiteNoiseMiddleware",  # WhiteNoise, streaming under ASGI too
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    "axes.middleware.AxesMiddleware",
    "turbosite.api_errors.DatabaseUnavailableMiddleware",
]

ROOT_URLCONF = "turbosite.urls"
WSGI_APPLICATION = "turbosite.wsgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ],
        },
    },
]

# Database: SQLite under data/ unless DATABASE_URL names another (PostgreSQL through psycopg 3 in production).
DATABASE_URL = env_str("DATABASE_URL")
if DATABASE_URL:
    DATABASES = {"default": dj_database_url.parse(DATABASE_URL, conn_max_age=env_int("DB_CONN_MAX_AGE", 60),
                                                   conn_health_checks=True)}
    if DATABASES["default"]["ENGINE"] == "django.db.backends.postgresql":
        # A database host that drops packets must fail /readyz and requests quickly, not hang them.
        DATABASES["default"].setdefault("OPTIONS", {})["connect_timeout"] = env_int("DB_CONNECT_TIMEOUT", 5)
        # Under ASGI every request runs in a new thread, and a persistent connection belongs to its thread: each
        # request would open one (and leave it to the garbage collector). A pool per process hands connections
        # across threads instead; it replaces persistent connections (Django requires CONN_MAX_AGE 0 with it).
        DB_POOL_MAX_SIZE = env_int("DB_POOL_MAX_SIZE", 0)
        if DB_POOL_MAX_SIZE > 0:
            DATABASES["default"]["CONN_MAX_AGE"] = 0
            DATABASES["default"]["OPTIONS"]["pool"] = {
                "min_size": 1, "max_size": DB_POOL_MAX_SIZE, "timeout": env_int("DB_CONNECT_TIMEOUT", 5)}
            # CONN_HEALTH_CHECKS (on) makes the pool check a connection before lending it.
else:
    DATA_DIR.mkdir(parents=True, exist_ok=True)
    # The embedded worker thread writes progress while requests write jobs: take the write lock when a transaction
    # starts (IMMEDIATE) so writers wait for each other instead of failing with "database is locked", and let
    # readers run beside a writer (WAL).
    DATABASES = {"default": {"ENGINE": "django.db.backends.sqlite3", "NAME": DATA_DIR / "db.sqlite3",
                             "OPTIONS": {"timeout": 20, "transaction_mode": "IMMEDIATE",
                                         "init_command": "PRAGMA journal_mode=WAL;"}}}
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

# Queue and workers: Redis when REDIS_URL is set, otherwise an in-process broker whose worker thread runs inside the
# web process (turbosite/broker.py, generation/embedded.py). Each job is owned by one worker thread; the reaper
# returns jobs whose heartbeat stopped.
REDIS_URL = env_str("REDIS_URL")
QUEUE_NAMESPACE = env_str("QUEUE_NAMESPACE", "turbosite")  # Redis key prefix for the queues
# Cache: shared by every process of the deployment when Redis is there (the submission throttle must count per
# deployment, not per gunicorn process); short timeouts, and a Redis outage reads as a cache miss, never a 500.
if REDIS_URL:
    CACHES = {"default": {
        "BACKEND": "turbosite.cache.TolerantRedisCache",
        "LOCATION": REDIS_URL,
        "KEY_PREFIX": f"{QUEUE_NAMESPACE}:cache",
        "OPTIONS": {"socket_connect_timeout": 1, "socket_timeout": 1},
    }}
TURBO_EMBEDDED_WORKER = env_bool("TURBO_EMBEDDED_WORKER", True)  # without Redis: run jobs in the web process
TURBO_JOB_TIME_LIMIT_S = env_int("TURBO_JOB_TIME_LIMIT_S", 1800)  # a job that runs longer ends FAILED
TURBO_HEARTBEAT_INTERVAL_S = env_int("TURBO_HEARTBEAT_INTERVAL_S", 10)  # how often a running job's row is touched
TURBO_HEARTBEAT_STALE_S = env_int("TURBO_HEARTBEAT_STALE_S", 120)  # silence after which the reaper takes a job back
TURBO_MAX_ATTEMPTS = env_int("TURBO_MAX_ATTEMPTS", 3)  # lost workers tolerated per job before it is FAILED
TURBO_REAPER_INTERVAL_S = env_int("TURBO_REAPER_INTERVAL_S", 30)
TURBO_QUEUED_RESEND_S = env_int("TURBO_QUEUED_RESEND_S", 300)  # QUEUED this long with an empty queue: message lost
TURBO_PROGRESS_WRITE_INTERVAL_MS = env_int("TURBO_PROGRESS_WRITE_INTERVAL_MS", 1000)  # throttle between row writes

# Files: S3 (MinIO, SeaweedFS, AWS...) when S3_BUCKET is set, otherwise a local folder.
S3_BUCKET = env_str("S3_BUCKET")
S3_ENDPOINT_URL = env_str("S3_ENDPOINT_URL")  # what the servers use
S3_PUBLIC_ENDPOINT_URL = env_str("S3_PUBLIC_ENDPOINT_URL") or S3_ENDPOINT_URL  # what browsers reach; URLs signed for it
S3_ACCESS_KEY_ID = env_str("S3_ACCESS_KEY_ID")
S3_SECRET_ACCESS_KEY = env_str("S3_SECRET_ACCESS_KEY")
S3_REGION = env_str("S3_REGION", "us-east-1")
S3_ADDRESSING_STYLE = env_str("S3_ADDRESSING_STYLE", "path")
MEDIA_ROOT = DATA_DIR / "media"
MEDIA_URL = "/media/"
SIGNED_URL_MAX_AGE = env_int("SIGNED_URL_MAX_AGE", 900)  # seconds an output link stays valid

# Storage waits that fit a web request: each S3 request gives up after TURBO_STORAGE_TIMEOUT_S (connect, and each
# read or write on the socket), botocore does not retry on its own, and generation.storage retries within a total
# deadline per call: TURBO_STORAGE_DEADLINE_S for web requests, TURBO_WORKER_STORAGE_DEADLINE_S for the worker.
TURBO_STORAGE_TIMEOUT_S = env_int("TURBO_STORAGE_TIMEOUT_S", 4)
TURBO_STORAGE_DEADLINE_S = env_int("TURBO_STORAGE_DEADLINE_S", 8)
TURBO_WORKER_STORAGE_DEADLINE_S = env_int("TURBO_WORKER_STORAGE_DEADLINE_S", 120)


def s3_client_config():
    from botocore.config import Config

    return Config(connect_timeout=TURBO_STORAGE_TIMEOUT_S, read_timeout=TURBO_STORAGE_TIMEOUT_S,
                  retries={"mode": "standard", "total_max_attempts": 1},
                  s3={"addressing_style": S3_ADDRESSING_STYLE}, signature_version="s3v4")


if S3_BUCKET:
    _default_storage = {
        "BACKEND": "storages.backends.s3.S3Storage",
        "OPTIONS": {
            "bucket_name": S3_BUCKET,
            "endpoint_url": S3_ENDPOINT_URL or None,
            "access_key": S3_ACCESS_KEY_ID or None,
            "secret_key": S3_SECRET_ACCESS_KEY or None,
            "region_name": S3_REGION,
            "addressing_style": S3_ADDRESSING_STYLE,
            "signature_version": "s3v4",
            "default_acl": None,
            "querystring_auth": True,
            "querystring_expire": SIGNED_URL_MAX_AGE,
            "file_overwrite": True,
            "client_config": s3_client_config(),
        },
    }
else:
    _default_storage = {
        "BACKEND": "django.core.files.storage.FileSystemStorage",
        "OPTIONS": {"location": MEDIA_ROOT, "base_url": MEDIA_URL},
    }

STATIC_URL = "/static/"
STATIC_ROOT = DATA_DIR / "staticfiles"
STATICFILES_DIRS = [BASE_DIR / "static"]
STORAGES = {
    "default": _default_storage,
    "staticfiles": {
        "BACKEND": "django.contrib.staticfiles.storage.StaticFilesStorage"
        if DEBUG
        else "whitenoise.storage.CompressedManifestStaticFilesStorage",
    },
}

# Jobs: what a request gets by default and how much one user may ask for.
TURBO_DEFAULT_MODEL = env_str("TURBO_DEFAULT_MODEL", "tiny")
TURBO_MAX_ACTIVE_JOBS = env_int("TURBO_MAX_ACTIVE_JOBS", 3)  # QUEUED + RUNNING per user; 0 means no limit
TURBO_JOB_CREATE_RATE = env_str("TURBO_JOB_CREATE_RATE", "30/min")  # submissions per user, API and compat routes
TURBO_PAGE_POLL_MS = env_int("TURBO_PAGE_POLL_MS", 1500)  # how often a job page asks the API for progress
# Create requests one web process lets wait for their job at once (each holds a server thread up to 60 s).
TURBO_PREFER_WAIT_MAX_WAITERS = env_int("TURBO_PREFER_WAIT_MAX_WAITERS", 4)
# Finished jobs' files are deleted this many days after they end (the job is marked expired); 0 keeps them.
TURBO_RETENTION_DAYS = env_int("TURBO_RETENTION_DAYS", 30)

# Webhooks (generation/webhooks): deliveries on their own queue, signed, retried on a schedule.
TURBO_WEBHOOK_TIMEOUT_S = env_int("TURBO_WEBHOOK_TIMEOUT_S", 10)  # per attempt: connect, send, read the answer
# Seconds before each retry after a failed attempt (Standard Webhooks' schedule: about a day in all).
TURBO_WEBHOOK_RETRY_SCHEDULE_S = [float(s) for s in env_list("TURBO_WEBHOOK_RETRY_SCHEDULE_S",
                                                             ["5", "300", "1800", "7200", "18000", "36000", "36000"])]
# Networks webhooks may reach although not public (CIDRs). The embedded default allows loopback, for a receiver on
# the same laptop; a deployment with Redis allows nothing private unless told.
TURBO_WEBHOOK_ALLOWED_NETWORKS = env_list("TURBO_WEBHOOK_ALLOWED_NETWORKS",
                                          [] if REDIS_URL else ["127.0.0.0/8", "::1/128"])

# Input limits (generation/image_input.py, generation/prompt_rules.py; docs/hardening.md has the table).
TURBO_MAX_UPLOAD_BYTES = env_int("TURBO_MAX_UPLOAD_BYTES", 20 * 1024 * 1024)
TURBO_MAX_IMAGE_PIXELS = env_int("TURBO_MAX_IMAGE_PIXELS", 40_000_000)
TURBO_MIN_IMAGE_SIDE = env_int("TURBO_MIN_IMAGE_SIDE", 64)
TURBO_MAX_ASPECT_RATIO = 4.0
TURBO_MAX_PROMPT_CHARS = env_int("TURBO_MAX_PROMPT_CHARS", 2000)
TURBO_IMAGE_DECODE_SLOTS = env_int("TURBO_IMAGE_DECODE_SLOTS", 2)  # images decoding at once per web process
# Pillow's own bomb guard matches ours for every decode in the process (it raises at twice this, warns above it).
Image.MAX_IMAGE_PIXELS = TURBO_MAX_IMAGE_PIXELS
# Non-file form fields and JSON bodies: 1 MiB is plenty for a prompt and options.
DATA_UPLOAD_MAX_MEMORY_SIZE = 1024 * 1024
DATA_UPLOAD_MAX_NUMBER_FILES = 4
# Files above 5 MiB go to a temporary file instead of memory; the capped handler stores at most the upload limit.
FILE_UPLOAD_MAX_MEMORY_SIZE = 5 * 1024 * 1024
FILE_UPLOAD_HANDLERS = [
    "turbosite.security.CappedUploadHandler",
    "django.core.files.uploadhandler.MemoryFileUploadHandler",
    "django.core.files.uploadhandler.TemporaryFileUploadHandler",
]

# Inference, read here once and handed to the pipeline by the GPU worker (generation/worker.py); the web side
# never loads a model.
TURBO_MODEL_DIR = env_str("TURBO_MODEL_DIR")  # weights folder (inference/weights.md); unset: only `tiny`
TURBO_DEVICE = env_str("TURBO_DEVICE")  # "" picks cuda when present; CUDA_VISIBLE_DEVICES pins one GPU per process
TURBO_GPUS_PER_JOB = env_int("TURBO_GPUS_PER_JOB", 1)  # run_gpu_worker: GPUs that share one job (sequence parallel)
TURBO_ATTENTION = env_str("TURBO_ATTENTION", "sla")
TURBO_MEMORY_POLICY = env_str("TURBO_MEMORY_POLICY", "auto")
TURBO_LINEARS = env_str("TURBO_LINEARS", "auto")  # fp8, native or auto (fp8 where the GPU has fp8 tensor cores)
TURBO_KERNELS = env_str("TURBO_KERNELS", "auto")  # auto, kernel or reference (turbokernels.dispatch)

# Accounts
AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]
AUTHENTICATION_BACKENDS = [
    "axes.backends.AxesStandaloneBackend",
    "django.contrib.auth.backends.ModelBackend",
]
LOGIN_URL = "login"
LOGIN_REDIRECT_URL = "/"
LOGOUT_REDIRECT_URL = "login"
EMAIL_BACKEND = env_str("EMAIL_BACKEND", "django.core.mail.backends.console.EmailBackend")
DEFAULT_FROM_EMAIL = env_str("DEFAULT_FROM_EMAIL", "TurboSite <noreply@localhost>")

# Login rate limiting (django-axes): lock a username + client address pair after repeated failures. The address is
# the real client's (turbosite.client_ip): X-Forwarded-For counts only when the request comes from a proxy listed in
# TRUSTED_PROXIES, so behind the proxy one attacker cannot lock everyone out, and failures from other addresses
# never lock a user out of the address they log in from. A failure during a lockout does not extend it.
AXES_FAILURE_LIMIT = env_int("AXES_FAILURE_LIMIT", 5)
AXES_COOLOFF_TIME = 0.25  # hours
AXES_LOCKOUT_PARAMETERS = [["username", "ip_address"]]
AXES_RESET_ON_SUCCESS = True
# A locked login answers 429 with Retry-After and a clear message (the API token endpoint says the same).
AXES_LOCKOUT_CALLABLE = "turbosite.accounts.lockout.lockout_response"
AXES_RESET_COOL_OFF_ON_FAILURE_DURING_LOCKOUT = False
AXES_CLIENT_IP_CALLABLE = "turbosite.client_ip.client_ip"
TRUSTED_PROXIES = env_list("TRUSTED_PROXIES", [])  # addresses or CIDR networks of the reverse proxies

REST_FRAMEWORK = {
    "DEFAULT_AUTHENTICATION_CLASSES": [
        # API keys (turbosite/api_keys): `Bearer <key>` first; DRF's legacy `Token` stays for one release.
        "turbosite.api_keys.authentication.ApiKeyAuthentication",
        "rest_framework.authentication.TokenAuthentication",
        "rest_framework.authentication.SessionAuthentication",
    ],
    "DEFAULT_PERMISSION_CLASSES": ["rest_framework.permissions.IsAuthenticated",
                                   "turbosite.api_keys.authentication.ReadOnlyKeys"],
    "DEFAULT_SCHEMA_CLASS": "turbosite.api_errors.ApiSchema",
    # Every API error as {"detail", "code", "field"} (turbosite/api_errors.py).
    "EXCEPTION_HANDLER": "turbosite.api_errors.api_exception_handler",
    "DEFAULT_PAGINATION_CLASS": "rest_framework.pagination.PageNumberPagination",
    "PAGE_SIZE": 20,
    "DEFAULT_THROTTLE_RATES": {"job_create": TURBO_JOB_CREATE_RATE},
}
SPECTACULAR_SETTINGS = {
    "TITLE": "TurboSite API",
    "DESCRIPTION": "Turn one image and a prompt into a short video (Wan2.2-I2V-A14B, TurboDiffusion).",
    "VERSION": "1.0.0",
    "SERVE_INCLUDE_SCHEMA": False,
    "ENUM_NAME_OVERRIDES": {
        "JobStatusEnum": "generation.models.Job.Status",
        "CompatStatusEnum": "generation.compat.views.COMPAT_STATUSES",
        "WebhookEventEnum": "generation.webhooks.models.JobWebhook.Event",
        "WebhookDeliveryStatusEnum": "generation.webhooks.models.WebhookDelivery.Status",
    },
    # API docs without a CDN: Swagger UI from drf-spectacular-sidecar; /api/docs/ is SpectacularSwaggerSplitView so
    # its start-up script is not inline.
    "SWAGGER_UI_DIST": "SIDECAR",
    "SWAGGER_UI_FAVICON_HREF": "SIDECAR",
    "REDOC_DIST": "SIDECAR",
}

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True

# Production hardening: on whenever DEBUG is off (`manage.py check --deploy` stays clean).
if not DEBUG:
    SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
    SECURE_SSL_REDIRECT = env_bool("SECURE_SSL_REDIRECT", True)
    # Load balancers probe over plain HTTP inside the network.
    SECURE_REDIRECT_EXEMPT = [r"^healthz$", r"^readyz$", r"^metrics$"]
    SESSION_COOKIE_SECURE = True
    CSRF_COOKIE_SECURE = True
    SECURE_HSTS_SECONDS = env_int("SECURE_HSTS_SECONDS", 31_536_000)
    SECURE_HSTS_INCLUDE_SUBDOMAINS = True
    SECURE_HSTS_PRELOAD = env_bool("SECURE_HSTS_PRELOAD", True)
SECURE_CONTENT_TYPE_NOSNIFF = True
SECURE_REFERRER_POLICY = "same-origin"
X_FRAME_OPTIONS = "DENY"
SESSION_COOKIE_HTTPONLY = True
# Extra origins allowed to serve images and video (a CDN in front of the bucket), comma-separated.
TURBO_CSP_MEDIA_ORIGINS = env_list("CSP_MEDIA_ORIGINS", [])
# /metrics (generation/metrics.py): staff sessions, or this token as `Authorization: Bearer <token>`.
TURBO_METRICS_TOKEN = env_str("TURBO_METRICS_TOKEN")

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"plain": {"format": "%(asctime)s %(levelname)s %(name)s %(message)s"}},
    "handlers": {"console": {"class": "logging.StreamHandler", "formatter": "plain"}},
    "root": {"handlers": ["console"], "level": env_str("LOG_LEVEL", "INFO")},
    "loggers": {"django.db.backends": {"level": "WARNING"}},
}
