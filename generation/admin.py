from django.contrib import admin

from generation.models import Job


@admin.register(Job)
class JobAdmin(admin.ModelAdmin):
    list_display = ("id", "owner", "status", "model", "resolution", "progress", "created_at")
    list_filter = ("status", "model", "created_at")
    search_fields = ("id", "prompt", "owner__username")
