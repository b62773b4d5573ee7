import django.utils.timezone
from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [("generation", "0004_worker")]

    operations = [
        migrations.AddField(
            model_name="job",
            name="message_id",
            field=models.CharField(blank=True, max_length=64),
        ),
        migrations.CreateModel(
            name="PendingDelete",
            fields=[
                ("id", models.BigAutoField(auto_created=True, primary_key=True, serialize=False, verbose_name="ID")),
                ("name", models.CharField(max_length=300, unique=True)),
                ("created_at", models.DateTimeField(default=django.utils.timezone.now)),
                ("deleted_at", models.DateTimeField(blank=True, null=True)),
            ],
        ),
    ]
