import pytest
from django.apps import apps

from .clients import fresh_replica


@pytest.fixture
def replica():
    """A fresh replica for the test, the start-up one put back after it."""
    original = apps.get_app_config("chat").replica
    yield fresh_replica()
    apps.get_app_config("chat").replica = original
