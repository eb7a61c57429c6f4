"""The HTTP API's OpenAPI description (docs/api/openapi.yaml) is valid OpenAPI 3.1 and
says what chat.http_api does: its paths, its error codes and their statuses."""

import yaml
from openapi_spec_validator import validate

from chat.http_api import ROUTES, STATUS
from harness.paths import ROOT

SPEC = ROOT / "docs" / "api" / "openapi.yaml"


def spec():
    return yaml.safe_load(SPEC.read_text())


def test_the_description_is_valid_openapi():
    validate(spec())


def test_its_paths_are_the_routes_of_the_code():
    assert set(spec()["paths"]) == set(ROUTES)


def test_its_error_codes_are_the_codes_of_the_code():
    codes = spec()["components"]["schemas"]["Error"]["properties"]["error"]["properties"]
    assert set(codes["code"]["enum"]) == set(STATUS)


def test_every_status_the_code_answers_is_described_for_every_path():
    for path, operations in spec()["paths"].items():
        described = {int(status) for status in operations["post"]["responses"]}
        assert set(STATUS.values()) | {200} == described, path
