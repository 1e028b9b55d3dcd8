"""Settings for LLM Server, read from the environment through django-environ.

Every setting has a development default so that `make run` works with no configuration at all.
`DJANGO_ENV=production` switches to production mode, which refuses to start on an unsafe secret
or Fernet key, a missing host list or DEBUG on, with a sentence saying what to set.  Each setting is documented in
docs/operations.md ("Configuration") and `.env.example`.
"""

import os
from pathlib import Path

import environ
from cryptography.fernet import Fernet
from django.core.exceptions import ImproperlyConfigured
from django.utils.translation import gettext_lazy as _

from llmserver.environment import number, origins, price, tokens_by_model_prefix

BASE_DIR = Path(__file__).resolve().parent.parent

env = environ.Env()
# A local `.env` is a convenience for development; real deployments set the environment.
# Variables already in the environment win over the file. DOTENV_FILE names another file, or,
# empty, none: what the tests and benches give the servers they start, so that a developer's
# `.env` (an upstream key, limits) does not reach them.
DOTENV_FILE = os.environ.get("DOTENV_FILE", str(BASE_DIR / ".env"))
if DOTENV_FILE:
    environ.Env.read_env(DOTENV_FILE, overwrite=False)


DJANGO_ENV = env.str("DJANGO_ENV", default="development")
if DJANGO_ENV not in ("development", "production"):
    raise ImproperlyConfigured(
        f"DJANGO_ENV must be 'development' or 'production', not {DJANGO_ENV!r}."
    )
IS_PRODUCTION = DJANGO_ENV == "production"

# Only ever used when nothing is configured in development; production refuses it below.
DEVELOPMENT_SECRET_KEY = "django-insecure-development-only-do-not-use-in-production"
SECRET_KEY = env.str("SECRET_KEY", default=DEVELOPMENT_SECRET_KEY)
DEBUG = env.bool("DEBUG", default=not IS_PRODUCTION)
ALLOWED_HOSTS = env.list(
    "ALLOWED_HOSTS", default=[] if IS_PRODUCTION else ["127.0.0.1", "localhost", "[::1]", "testserver"]
)

if IS_PRODUCTION:
    # The same test as Django's own deploy check (security.W009).
    if (
        SECRET_KEY == DEVELOPMENT_SECRET_KEY
        or SECRET_KEY.startswith("django-insecure")
        or len(SECRET_KEY) < 50
        or len(set(SECRET_KEY)) < 5
    ):
        raise ImproperlyConfigured(
            "SECRET_KEY is missing or unsafe for production: set SECRET_KEY to a random string of at "
            "least 50 characters (for example the output of `python -c \"import secrets; "
            "print(secrets.token_urlsafe(64))\"`)."
        )
    if not ALLOWED_HOSTS:
        raise ImproperlyConfigured(
            "ALLOWED_HOSTS is empty in production: set ALLOWED_HOSTS to the comma-separated host "
            "names this server answers to (for example `llm.example.com`)."
        )
    if DEBUG:
        raise ImproperlyConfigured("DEBUG must be off in production: unset DEBUG or set DEBUG=false.")

# Keys that encrypt stored upstream credentials (Fernet; the first encrypts, every one decrypts,
# so a new key goes first and an old one stays until `manage.py reencrypt_upstream_credentials`
# has run). Deliberately not SECRET_KEY: leaking one must not give away the other.
DEVELOPMENT_FIELD_ENCRYPTION_KEY = "ZGV2ZWxvcG1lbnQtb25seS1rZXktZG8tbm90LXVzZT0="
FIELD_ENCRYPTION_KEYS = env.list(
    "FIELD_ENCRYPTION_KEYS", default=[] if IS_PRODUCTION else [DEVELOPMENT_FIELD_ENCRYPTION_KEY]
)
if IS_PRODUCTION and (not FIELD_ENCRYPTION_KEYS or DEVELOPMENT_FIELD_ENCRYPTION_KEY in FIELD_ENCRYPTION_KEYS):
    raise ImproperlyConfigured(
        "FIELD_ENCRYPTION_KEYS is missing or unsafe for production: set it to one or more comma-separated "
        "Fernet keys, newest first (generate one with `python -c \"from cryptography.fernet import Fernet; "
        "print(Fernet.generate_key().decode())\"`)."
    )
for _key in FIELD_ENCRYPTION_KEYS:
    try:
        Fernet(_key)
    except ValueError:
        raise ImproperlyConfigured(
            "FIELD_ENCRYPTION_KEYS holds a value that is not a Fernet key (32 url-safe base64-encoded "
            "bytes); generate one with `python -c \"from cryptography.fernet import Fernet; "
            "print(Fernet.generate_key().decode())\"`."
        ) from None

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "rest_framework",
    "corsheaders",
    "drf_spectacular",
    "drf_spectacular_sidecar",
    # The project package is an app too, so that its management commands (`serve`) are found.
    "llmserver",
    "chat",
    "monitoring",
]

# Every middleware here is async-capable: one sync-only middleware would send every request
# through Django's single shared sync thread and serialise the whole server.
# Django's standard middleware, each run in the event loop rather than hopping to a worker thread
# (llmserver/http/middleware.py says why and what it measured).
MIDDLEWARE = [
    "llmserver.http.request_id.RequestIdMiddleware",
    "monitoring.metrics.RequestMetricsMiddleware",
    # Before anything that may answer: preflights are answered here, and every answer gets its CORS headers.
    "corsheaders.middleware.CorsMiddleware",
    "llmserver.http.middleware.SecurityMiddleware",
    "llmserver.http.middleware.SessionMiddleware",
    "llmserver.http.middleware.LocaleMiddleware",
    "llmserver.http.middleware.CommonMiddleware",
    "llmserver.http.middleware.CsrfViewMiddleware",
    "llmserver.http.middleware.AuthenticationMiddleware",
    "llmserver.http.middleware.MessageMiddleware",
    "llmserver.http.middleware.XFrameOptionsMiddleware",
]

ROOT_URLCONF = "llmserver.urls"

# Django's own security checks look for its middleware by dotted path, so they would not see
# ours (subclasses of Django's, above) and would report them missing. llmserver/checks.py runs
# those checks again with each of ours named as the Django class it extends, so nothing they
# check is lost.
SILENCED_SYSTEM_CHECKS = ["security.W001", "security.W002", "security.W003"]

# --- HTTPS (production) ---------------------------------------------------------------------
# Production assumes TLS, ended here or at a proxy trusted through FORWARDED_ALLOW_IPS (uvicorn
# then takes the scheme from X-Forwarded-Proto). Plain HTTP is redirected, except the liveness and
# readiness probes, which load balancers and the image's HEALTHCHECK call without TLS, and
# /metrics, which a Prometheus on the private network scrapes without TLS (it needs an admin key
# or METRICS_PUBLIC; publish it through the TLS proxy only).
SECURE_SSL_REDIRECT = env.bool("SECURE_SSL_REDIRECT", default=IS_PRODUCTION)
SECURE_REDIRECT_EXEMPT = [r"^api/v1/system/(health|ready)$", r"^metrics$"]
SECURE_HSTS_SECONDS = number("SECURE_HSTS_SECONDS", 31536000 if IS_PRODUCTION else 0, minimum=0)
SECURE_HSTS_INCLUDE_SUBDOMAINS = env.bool("SECURE_HSTS_INCLUDE_SUBDOMAINS", default=IS_PRODUCTION)
SECURE_HSTS_PRELOAD = env.bool("SECURE_HSTS_PRELOAD", default=IS_PRODUCTION)
SESSION_COOKIE_SECURE = IS_PRODUCTION
CSRF_COOKIE_SECURE = IS_PRODUCTION
# The origins allowed to post to the admin and the playground over HTTPS from another host name
# (a proxy's), for example https://llm.example.com.
CSRF_TRUSTED_ORIGINS = env.list("CSRF_TRUSTED_ORIGINS", default=[])
X_FRAME_OPTIONS = "DENY"

# --- CORS -----------------------------------------------------------------------------------
# Browser apps call /api/ and /v1/ with their key in a header, never a cookie: any origin may
# (CORS_ALLOWED_ORIGINS narrows it), never with credentials. The admin answers no other origin.
CORS_URLS_REGEX = r"^/(api|v1)/"
CORS_ALLOWED_ORIGINS = origins("CORS_ALLOWED_ORIGINS")
CORS_ALLOW_ALL_ORIGINS = not CORS_ALLOWED_ORIGINS
CORS_ALLOW_CREDENTIALS = False
# What clients send (OpenAI's SDKs add their x-stainless-* headers), and what a page may read.
CORS_ALLOW_HEADERS = ["accept", "accept-language", "authorization", "content-type", "idempotency-key",
                      "openai-beta", "openai-organization", "openai-project", "x-request-id", "x-session-id",
                      "x-upstream-api-key", *(f"x-stainless-{name}" for name in (
                          "arch", "async", "helper-method", "lang", "os", "package-version", "raw-response",
                          "read-timeout", "retry-count", "runtime", "runtime-version", "stream-helper", "timeout"))]
CORS_EXPOSE_HEADERS = ["X-Request-Id", "X-Session-Id", "X-Message-Id", "Retry-After", "Idempotent-Replayed"]

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

WSGI_APPLICATION = "llmserver.wsgi.application"
ASGI_APPLICATION = "llmserver.asgi.application"

# --- Database -------------------------------------------------------------------------------
DATABASES = {"default": env.db("DATABASE_URL", default=f"sqlite:///{BASE_DIR / 'db.sqlite3'}")}
if DATABASES["default"]["ENGINE"] == "django.db.backends.sqlite3":
    import sqlite3

    # A chat turn's statements use RETURNING (chat/turns/sql.py), which SQLite has since 3.35 (2021).
    if sqlite3.sqlite_version_info < (3, 35):
        raise ImproperlyConfigured(
            f"SQLite 3.35 or later is needed; this Python's is {sqlite3.sqlite_version}. "
            "Use a newer Python build, or PostgreSQL (DATABASE_URL)."
        )
    # Safe under concurrent writers (several worker processes): WAL lets readers run beside the
    # writer; BEGIN IMMEDIATE takes the write lock at the start of a transaction instead of
    # failing half-way through an upgrade from a read lock; the busy timeout makes a writer
    # wait for the lock instead of raising "database is locked" at once.
    DATABASES["default"].setdefault("OPTIONS", {}).update(
        {
            "transaction_mode": "IMMEDIATE",
            "timeout": number("SQLITE_BUSY_TIMEOUT_SECONDS", 20, minimum=0),
            "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;",
        }
    )
    # SQLite takes one writer at a time: more steps at once only wait on its lock.
    DATABASE_CONCURRENT_STEPS = 4
elif DATABASES["default"]["ENGINE"] == "django.db.backends.postgresql":
    # Under ASGI, Django runs each request's database work in a thread of its own, and a thread
    # keeps its own connection: persistent connections (CONN_MAX_AGE) would pile up one per
    # thread until PostgreSQL refuses more. A pool per worker process bounds them instead, and
    # saves the connect on every request.
    DATABASES["default"]["CONN_MAX_AGE"] = 0
    _pool_min_size = number("DATABASE_POOL_MIN_SIZE", 2, minimum=0)
    _pool_max_size = number("DATABASE_POOL_MAX_SIZE", 10, minimum=1)
    if _pool_max_size < _pool_min_size:
        raise ImproperlyConfigured(
            f"DATABASE_POOL_MAX_SIZE ({_pool_max_size}) must be at least DATABASE_POOL_MIN_SIZE ({_pool_min_size})."
        )
    DATABASES["default"].setdefault("OPTIONS", {})["pool"] = {
        "min_size": _pool_min_size,
        "max_size": _pool_max_size,
        # A request that cannot get a connection in this time fails rather than waits forever.
        "timeout": number("DATABASE_POOL_TIMEOUT_SECONDS", 10.0, minimum=0.001),
    }
    # With a pool, Django checks each connection as it leaves the pool (psycopg_pool's
    # check_connection): one whose backend was terminated (a database restart, a failover,
    # pg_terminate_backend) is replaced there, instead of failing the step that was handed it.
    DATABASES["default"]["CONN_HEALTH_CHECKS"] = True
    # As many database steps at once as the pool has connections; the others wait their turn in
    # the event loop (llmserver/db.py), not in a thread holding a place in the pool's queue.
    DATABASE_CONCURRENT_STEPS = _pool_max_size
else:
    DATABASE_CONCURRENT_STEPS = 4
# How long a request waits for its turn at the database before it is answered 503 server_busy
# (with Retry-After): under a burst, requests queue here rather than fail.
DATABASE_QUEUE_TIMEOUT_SECONDS = number("DATABASE_QUEUE_TIMEOUT_SECONDS", 30.0, minimum=0.001, maximum=3600)

DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

# One process: the local-memory cache. Several processes or instances: Redis (REDIS_URL), so that
# they share it. CACHE_URL takes any URL django-environ understands and wins over REDIS_URL.
REDIS_URL = env.str("REDIS_URL", default="")
if env.str("CACHE_URL", default=""):
    CACHES = {"default": env.cache_url("CACHE_URL")}
elif REDIS_URL:
    # A Redis that accepts connections but never answers must not hold a request for long: every
    # cache error is a miss (llmserver/cache.py), and it comes after this many seconds at most.
    _redis_timeout = number("REDIS_TIMEOUT_SECONDS", 0.5, minimum=0.001, maximum=60)
    CACHES = {
        "default": {
            "BACKEND": "django.core.cache.backends.redis.RedisCache",
            "LOCATION": REDIS_URL,
            "OPTIONS": {"socket_timeout": _redis_timeout, "socket_connect_timeout": _redis_timeout},
        }
    }
else:
    CACHES = {"default": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache"}}

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]

# --- Internationalisation -------------------------------------------------------------------
# Error sentences are translated; the original team wrote in Korean, so Korean ships with
# English. LocaleMiddleware picks the language from Accept-Language.
LANGUAGE_CODE = "en"
LANGUAGES = [("en", _("English")), ("ko", _("Korean"))]
LOCALE_PATHS = [BASE_DIR / "locale"]
USE_I18N = True
TIME_ZONE = "UTC"
USE_TZ = True

# --- Static files ---------------------------------------------------------------------------
# Served by the ASGI application itself (see asgi.py): only the admin and the API docs use them.
STATIC_URL = "static/"
STATIC_ROOT = BASE_DIR / "staticfiles"

# --- Request limits -------------------------------------------------------------------------
# Bodies above this size get 413 before they are read (llmserver/http/body_limit.py). Room for one
# image at CHAT_MAX_IMAGE_BYTES in base64 (a third larger) and the rest of a request.
MAX_REQUEST_BYTES = number("MAX_REQUEST_BYTES", 8 * 1024 * 1024, minimum=1)
DATA_UPLOAD_MAX_MEMORY_SIZE = MAX_REQUEST_BYTES
CHAT_MAX_MESSAGE_CHARS = number("CHAT_MAX_MESSAGE_CHARS", 100_000, minimum=1)
CHAT_MAX_MEMORY_FACTS = number("CHAT_MAX_MEMORY_FACTS", 100, minimum=0)
CHAT_MAX_HISTORY_IMPORT = number("CHAT_MAX_HISTORY_IMPORT", 500, minimum=0)
# One image of a message (a data URL's decoded bytes); stored once per key however often it is sent.
CHAT_MAX_IMAGE_BYTES = number("CHAT_MAX_IMAGE_BYTES", 5 * 1024 * 1024, minimum=1)
CHAT_MAX_PROMPT_IMAGE_BYTES = number("CHAT_MAX_PROMPT_IMAGE_BYTES", 20 * 1024 * 1024, minimum=0)  # replayed per turn

# --- Serving --------------------------------------------------------------------------------
SERVER_HOST = env.str("SERVER_HOST", default="127.0.0.1")
SERVER_PORT = number("SERVER_PORT", 5601, minimum=1, maximum=65535)
WEB_CONCURRENCY = number("WEB_CONCURRENCY", 1, minimum=1)
ACCESS_LOG = env.bool("ACCESS_LOG", default=True)
FORWARDED_ALLOW_IPS = env.str("FORWARDED_ALLOW_IPS", default="127.0.0.1")
GRACEFUL_SHUTDOWN_SECONDS = number("GRACEFUL_SHUTDOWN_SECONDS", 30, minimum=0)
# The cache (Redis with REDIS_URL) holds only what can be lost: free_mode verdicts. When it fails,
# those are checked again on each request and /ready says "degraded" but stays ready; with this
# on, /ready fails instead (for a deployment whose load balancer must drop an instance then).
CACHE_REQUIRED = env.bool("CACHE_REQUIRED", default=False)

# --- Upstream model -------------------------------------------------------------------------
OPENAI_API_KEY = env.str("OPENAI_API_KEY", default="")
OPENAI_BASE_URL = env.str("OPENAI_BASE_URL", default="")
# With neither set, the offline provider answers (see chat/providers/offline.py).
# Empty means gpt-4o-mini with an upstream, `offline` without (chat.providers.default_model).
LLM_DEFAULT_MODEL = env.str("LLM_DEFAULT_MODEL", default="")
LLM_TIMEOUT_SECONDS = number("LLM_TIMEOUT_SECONDS", 60.0, minimum=0.001, maximum=86_400)
LLM_MAX_RETRIES = number("LLM_MAX_RETRIES", 2, minimum=0, maximum=10)
LLM_MODEL_LIST_SECONDS = number("LLM_MODEL_LIST_SECONDS", 300.0, minimum=0, maximum=86_400)  # upstream's /models kept


# Context windows for models the built-in table does not know (local models, new releases),
# by name prefix: `LLM_CONTEXT_WINDOWS=llama3=8192;qwen2.5=32768` (django-environ separates
# typed dict entries with semicolons); the default covers everything else.
LLM_CONTEXT_WINDOWS = tokens_by_model_prefix("LLM_CONTEXT_WINDOWS")
LLM_DEFAULT_CONTEXT_WINDOW = number("LLM_DEFAULT_CONTEXT_WINDOW", 8192, minimum=1)
# The most a turn may ask a model to write (`max_tokens`), the same way: operator table, built-in
# table (chat/turns/prompt.py), default. A larger request is refused before it costs anything.
LLM_MAX_OUTPUT_TOKENS = tokens_by_model_prefix("LLM_MAX_OUTPUT_TOKENS")
LLM_DEFAULT_MAX_OUTPUT_TOKENS = number("LLM_DEFAULT_MAX_OUTPUT_TOKENS", 4096, minimum=1)
# free_mode checks a caller's own upstream key with one cheap call and remembers the verdict this
# long, under a keyed hash of the key (never the key itself).
BYOK_VERDICT_CACHE_SECONDS = number("BYOK_VERDICT_CACHE_SECONDS", 300, minimum=0)

# A turn's session is leased while the turn runs (chat/sessions/lease.py), and the lease is
# renewed while upstream works: a lease whose process died (a restart, a crash) is free again
# after this many seconds without renewal, and that turn's usage record is closed as interrupted.
CHAT_TURN_LEASE_SECONDS = number("CHAT_TURN_LEASE_SECONDS", 20.0, minimum=3, maximum=3600)

# --- Limits ---------------------------------------------------------------------------------
# Server-wide defaults for keys that set none of their own; 0 means no limit.
LIMIT_REQUESTS_PER_MINUTE = number("LIMIT_REQUESTS_PER_MINUTE", 0, minimum=0)
LIMIT_TOKENS_PER_DAY = number("LIMIT_TOKENS_PER_DAY", 0, minimum=0)
LIMIT_MONTHLY_BUDGET_USD = number("LIMIT_MONTHLY_BUDGET_USD", 0.0, minimum=0, maximum=1_000_000_000)


# A key with a budget may use only models with a known price (ModelPrice): a model with no price
# would cost nothing and never be stopped. With these set, a model without a price of its own
# costs this much instead (USD per million tokens), and a key with a budget may use it.
UNPRICED_MODEL_INPUT_PER_MILLION = price("UNPRICED_MODEL_INPUT_PER_MILLION")
UNPRICED_MODEL_OUTPUT_PER_MILLION = price("UNPRICED_MODEL_OUTPUT_PER_MILLION")
if (UNPRICED_MODEL_INPUT_PER_MILLION is None) != (UNPRICED_MODEL_OUTPUT_PER_MILLION is None):
    raise ImproperlyConfigured(
        "Set both UNPRICED_MODEL_INPUT_PER_MILLION and UNPRICED_MODEL_OUTPUT_PER_MILLION, or neither."
    )

# --- Client keys ----------------------------------------------------------------------------
# `last_used_at` is written at most this often per key, not on every request.
API_KEY_LAST_USED_INTERVAL_SECONDS = number("API_KEY_LAST_USED_INTERVAL_SECONDS", 60, minimum=0)

# --- REST framework -------------------------------------------------------------------------
REST_FRAMEWORK = {
    "DEFAULT_AUTHENTICATION_CLASSES": ["chat.keys.authentication.ApiKeyAuthentication"],
    "DEFAULT_PERMISSION_CLASSES": ["chat.keys.authentication.HasClientKey"],
    "DEFAULT_RENDERER_CLASSES": [
        "rest_framework.renderers.JSONRenderer",
        "rest_framework.renderers.BrowsableAPIRenderer",
    ],
    "DEFAULT_PARSER_CLASSES": ["llmserver.http.parsers.StorableJSONParser"],
    "EXCEPTION_HANDLER": "llmserver.http.handlers.api_exception_handler",
    "DEFAULT_CONTENT_NEGOTIATION_CLASS": "llmserver.http.negotiation.ContentNegotiation",
    "DEFAULT_SCHEMA_CLASS": "drf_spectacular.openapi.AutoSchema",
}

SPECTACULAR_SETTINGS = {
    "TITLE": "LLM Server API",
    "DESCRIPTION": (
        "A self-hosted chat server: it stores each conversation, builds the prompt from stored "
        "history, calls the upstream model and records every token spent."
    ),
    "VERSION": "0.1.0",
    "SERVE_INCLUDE_SCHEMA": False,
    # Assets from drf-spectacular-sidecar, served locally: no CDN.
    "SWAGGER_UI_DIST": "SIDECAR",
    "SWAGGER_UI_FAVICON_HREF": "SIDECAR",
    "REDOC_DIST": "SIDECAR",
    "COMPONENT_SPLIT_REQUEST": True,
    "POSTPROCESSING_HOOKS": [
        "drf_spectacular.hooks.postprocess_schema_enums",
        "llmserver.http.schema.document_common_answers",
    ],
}

# --- Monitoring -----------------------------------------------------------------------------
# Several worker processes keep their metrics in files under PROMETHEUS_MULTIPROC_DIR
# (llmserver/prometheus.py). prometheus_client opens them as each metric is created, when the apps
# load, so a directory the operator names must exist before then.
if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
    Path(os.environ["PROMETHEUS_MULTIPROC_DIR"]).mkdir(parents=True, exist_ok=True)
# /metrics needs an admin key unless this is on (for a scraper on a private network).
METRICS_PUBLIC = env.bool("METRICS_PUBLIC", default=False)

# --- Logging --------------------------------------------------------------------------------
LOG_LEVEL = env.str("LOG_LEVEL", default="INFO").upper()
if LOG_LEVEL not in ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"):
    raise ImproperlyConfigured(f"LOG_LEVEL must be DEBUG, INFO, WARNING, ERROR or CRITICAL, not {LOG_LEVEL!r}.")
LOG_FILE = env.str("LOG_FILE", default=str(BASE_DIR / "logs" / "app.log"))
# "text": the original design's format, with the request id added; "json": one JSON object a line.
LOG_FORMAT = env.str("LOG_FORMAT", default="text")
if LOG_FORMAT not in ("text", "json"):
    raise ImproperlyConfigured(f"LOG_FORMAT must be 'text' or 'json', not {LOG_FORMAT!r}.")
TEXT_LOG_FORMAT = "%(asctime)s - %(name)s - %(levelname)s - [%(request_id)s] %(message)s"

_log_handlers = {
    "console": {
        "class": "logging.StreamHandler", "formatter": "standard",
        "filters": ["request_id", "security_without_traceback"],
    },
}
if LOG_FILE:
    Path(LOG_FILE).parent.mkdir(parents=True, exist_ok=True)
    # WatchedFileHandler reopens the file after an external logrotate and is safe for several
    # worker processes appending to one file (a RotatingFileHandler per process is not).
    _log_handlers["file"] = {
        "class": "logging.handlers.WatchedFileHandler",
        "filename": LOG_FILE,
        "formatter": "standard",
        "filters": ["request_id", "security_without_traceback"],
        "encoding": "utf-8",
    }

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {
        "standard": {"()": "llmserver.logging.JsonFormatter"} if LOG_FORMAT == "json"
        else {"()": "llmserver.logging.TextFormatter", "format": TEXT_LOG_FORMAT},
    },
    "filters": {
        "request_id": {"()": "llmserver.logging.RequestIdFilter"},
        "security_without_traceback": {"()": "llmserver.logging.SecurityWithoutTraceback"},
    },
    "handlers": _log_handlers,
    "root": {"handlers": list(_log_handlers), "level": LOG_LEVEL},
    "loggers": {
        # The SDK and its HTTP stack log every request at INFO or DEBUG: keep them at WARNING,
        # both for the noise and so that no request detail can carry a key into the log.
        "httpx": {"level": "WARNING"},
        "httpx2": {"level": "WARNING"},
        "httpcore": {"level": "WARNING"},
        "httpcore2": {"level": "WARNING"},
        "openai": {"level": "WARNING"},
    },
}
