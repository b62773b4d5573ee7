"""Liveness and readiness probes (filled in by the foundation work)."""

from django.http import JsonResponse


def healthz(request):
    return JsonResponse({"status": "ok"})


def readyz(request):
    return JsonResponse({"status": "ok"})
