"""Entry point for ASGI servers: ``uvicorn --factory hub.api.main:build``."""

from hub.api.app import create_app
from hub.config import load_settings
from hub.logs import configure_logging


def build():
    settings = load_settings()
    configure_logging(settings.log_level, settings.log_format)
    return create_app(settings)
