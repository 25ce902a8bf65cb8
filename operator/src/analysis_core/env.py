"""Names of the environment variables that configure a worker pod.

The operator sets them when it builds worker pods; the worker reads them at
start (``analysis_worker.config``). Spelled here once, so the two cannot drift.
"""

REDIS_URL = "ANALYSIS_REDIS_URL"
REDIS_PASSWORD = "ANALYSIS_REDIS_PASSWORD"  # for a worker run by hand; the operator mounts files (REDIS_AUTH_DIR)
# A directory holding the batch's Redis user and password as files ``username`` and ``password`` (the operator
# mounts the batch's Redis Secret there, analysis_core.tenancy); never logged.
REDIS_AUTH_DIR = "ANALYSIS_REDIS_AUTH_DIR"
BATCH_UID = "ANALYSIS_BATCH_UID"
STAGE = "ANALYSIS_STAGE"
PLAN_PATH = "ANALYSIS_PLAN_PATH"  # the published plan (a mounted ConfigMap key)
POD_NAME = "ANALYSIS_POD_NAME"  # from the downward API; the Redis consumer name
API_KEY = "ANALYSIS_API_KEY"  # for a worker run by hand; the operator mounts the key as a file (API_KEY_FILE)
API_KEY_FILE = "ANALYSIS_API_KEY_FILE"  # the provider's API key, a file of the batch's key Secret; never logged
MODE = "ANALYSIS_MODE"  # "job" (exit when sealed and drained) or "deployment" (idle)
# Calls in flight in this process (the operator sets the stage's calls per pod); the stage's concurrency, from the
# plan, caps what all its workers hold together.
CONCURRENCY = "ANALYSIS_CONCURRENCY"
GRACE_SECONDS = "ANALYSIS_GRACE_SECONDS"  # SIGTERM: finish or hand back within this
HEALTH_TTL_SECONDS = "ANALYSIS_HEALTH_TTL_SECONDS"  # a heartbeat older than this fails the liveness check
PRICES_PATH = "ANALYSIS_PRICES_PATH"  # a price table overriding the packaged one
LOG_FORMAT = "ANALYSIS_LOG_FORMAT"  # "json" (default) or "text"
METRICS_PORT = "ANALYSIS_METRICS_PORT"  # Prometheus /metrics; "0" turns it off
# Seconds from a provider's refusal for quota or billing to the first probe; each refused probe doubles it (up to
# ratelimit.PROBE_MAX_S). Tests shorten it; the operator leaves it unset.
QUOTA_PROBE_SECONDS = "ANALYSIS_QUOTA_PROBE_SECONDS"
# Where a provider account's CA certificates are, as <provider>.pem (the operator mounts them there; tests point
# it elsewhere).
CA_BUNDLE_DIR = "ANALYSIS_CA_BUNDLE_DIR"
DEFAULT_CA_BUNDLE_DIR = "/etc/analysis/ca"

# What a worker uses when its variable is unset (the operator sets GRACE_SECONDS from its own settings, which
# default to this too); the lease and the delivery bound come from the plan only.
DEFAULT_GRACE_SECONDS = 25
DEFAULT_HEALTH_TTL_SECONDS = 15
DEFAULT_QUOTA_PROBE_SECONDS = 5
# The longest a stopping worker waits for its calls: the operator sets GRACE_SECONDS to the stage's timeoutSeconds
# plus GRACE_MARGIN_SECONDS (to record the call's end), at least its own grace setting and at most this, and the
# pod's terminationGracePeriodSeconds GRACE_MARGIN_SECONDS longer (to hand back what is left). A pod must not linger
# in Terminating for the hours a long timeoutSeconds allows; calls cut by the cap are handed back and run again.
MAX_GRACE_SECONDS = 600
GRACE_MARGIN_SECONDS = 5

# A Job-mode worker stopped before its stage is done (SIGTERM from a scale-down
# or a suspend) exits with this code, 128 + SIGTERM; the Job's podFailurePolicy
# ignores it, where exit 0 would count as the work-queue Job's success.
EXIT_STOPPED_EARLY = 143
