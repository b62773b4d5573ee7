"""The ASGI application: what production serves (gunicorn with uvicorn workers, turbosite/uvicorn_worker.py).

Pages and the API are Django's synchronous views, each request run in a thread of its own by Django's ASGI handler;
the job event stream (/api/v1/jobs/{id}/events) runs on the event loop, so open streams hold no server thread.
Static files come through WhiteNoise's middleware (turbosite/static_files.py). `make run` keeps serving WSGI
(runserver; turbosite/wsgi.py), where the same views work and a stream holds a thread.
"""

import os

from django.core.asgi import get_asgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "turbosite.settings")
application = get_asgi_application()
