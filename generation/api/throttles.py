"""Rate limits for the expensive requests. Rates live in settings.REST_FRAMEWORK["DEFAULT_THROTTLE_RATES"]."""

from rest_framework.throttling import UserRateThrottle


class JobCreateThrottle(UserRateThrottle):
    """Job submissions per user (API and compatibility routes share the budget)."""

    scope = "job_create"
