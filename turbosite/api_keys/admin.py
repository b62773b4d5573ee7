from django.contrib import admin

from turbosite.api_keys.models import ApiKey


@admin.register(ApiKey)
class ApiKeyAdmin(admin.ModelAdmin):
    """Operators see keys (never the keys themselves: only hashes exist) and can revoke them."""

    list_display = ("name", "user", "display_prefix", "read_only", "created_at", "expires_at", "last_used_at",
                    "revoked_at")
    list_filter = ("read_only", "revoked_at")
    search_fields = ("name", "prefix", "user__username")
    fields = ("user", "name", "display_prefix", "read_only", "created_at", "expires_at", "last_used_at", "revoked_at")
    readonly_fields = ("user", "name", "display_prefix", "read_only", "created_at", "last_used_at")

    def has_add_permission(self, request) -> bool:
        return False
