"""The documentation site (mkdocs.yml, docs/): its strict build passes, fails on a broken
link, a missing anchor or a page left out of the nav; its generated configuration page
lists every setting the service, the local cluster and deploy/defaults.env have, and its
alerts table every alert rule."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from chatsite.variables import VARIABLES
from harness.deploy_files import service_settings_read

ROOT = Path(__file__).resolve().parents[2]
# What the hooks read besides docs/, linked into a copy of the site.
HOOK_SOURCES = ("deploy", "loadtests")


def build(config_dir, site_dir):
    return subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(site_dir)],
        cwd=config_dir,
        env={**os.environ, "NO_MKDOCS_2_WARNING": "1"},
        capture_output=True,
        text=True,
    )


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    site_dir = tmp_path_factory.mktemp("site")
    result = build(ROOT, site_dir)
    assert result.returncode == 0, result.stdout + result.stderr
    return site_dir


def test_the_site_builds_strictly(site):
    """Tests that mkdocs build --strict passes: no broken link or anchor, no page out of
    the nav, every generated part generated."""
    pages = list(site.rglob("*.html"))
    assert len(pages) > 40
    assert not [page for page in pages if "<!-- generated:" in page.read_text()]


def copy_of_the_site(tmp_path):
    copy = tmp_path / "copy"
    copy.mkdir()
    shutil.copy(ROOT / "mkdocs.yml", copy)
    shutil.copytree(ROOT / "docs", copy / "docs")
    for name in HOOK_SOURCES:
        (copy / name).symlink_to(ROOT / name)
    return copy


def append(path, text):
    path.write_text(path.read_text() + text)


def unchanged(copy):
    pass


def broken_link(copy):
    append(copy / "docs" / "index.md", "\n[gone](operations/no-such-page.md)\n")


def broken_anchor(copy):
    append(copy / "docs" / "index.md", "\n[gone](operations/redis.md#no-such-anchor)\n")


def page_left_out_of_the_nav(copy):
    config = copy / "mkdocs.yml"
    entry = "      - Troubleshooting: operations/troubleshooting.md\n"
    assert entry in config.read_text()
    config.write_text(config.read_text().replace(entry, ""))


@pytest.mark.parametrize(
    ("breakage", "passes", "warning"),
    [
        (unchanged, True, ""),
        (broken_link, False, "no-such-page.md"),
        (broken_anchor, False, "#no-such-anchor"),
        (page_left_out_of_the_nav, False, "operations/troubleshooting.md"),
    ],
)
def test_the_strict_build_fails_on_a_broken_site(tmp_path, breakage, passes, warning):
    """Tests that a copy of the docs builds as the original does, and that one broken
    link, one missing anchor or one page left out of the nav fails the strict build."""
    copy = copy_of_the_site(tmp_path)
    breakage(copy)
    result = build(copy, tmp_path / "site")
    output = result.stdout + result.stderr
    assert (result.returncode == 0) == passes, output
    assert warning in output


def local_cluster_settings():
    """deploy/local/config.py's SETTINGS: every setting the local cluster reads."""
    code = "import json, config; print(json.dumps(config.SETTINGS))"
    result = subprocess.run(
        [sys.executable, "-c", code],
        cwd=ROOT / "deploy" / "local",
        capture_output=True,
        text=True,
        check=True,
    )
    return set(json.loads(result.stdout))


def defaults_env():
    lines = (ROOT / "deploy" / "defaults.env").read_text().splitlines()
    pairs = (line.partition("=") for line in lines if line.strip() and not line.startswith("#"))
    return {name.strip(): value.strip() for name, _, value in pairs}


def test_the_configuration_page_lists_every_setting(site):
    """Tests that every setting the service reads, the local cluster reads or
    deploy/defaults.env holds has its row on the generated configuration page."""
    page = (site / "configuration" / "index.html").read_text()
    settings = {
        "read by the service": service_settings_read() | set(VARIABLES),
        "read by the local cluster": local_cluster_settings(),
        "in deploy/defaults.env": set(defaults_env()),
    }
    for source, names in settings.items():
        assert names, source
        missing = sorted(name for name in names if f'id="{name}"' not in page)
        assert not missing, f"settings {source} missing from the configuration page: {missing}"


def test_a_setting_in_both_tables_has_one_default():
    """Tests that the service's settings that deploy/defaults.env repeats for the runtimes
    have the same default in both, so the page shows one."""
    defaults = defaults_env()
    shared = set(VARIABLES) & set(defaults)
    assert shared
    for name in shared:
        default = VARIABLES[name].default
        assert str("" if default is None else default) == defaults[name], name


RUNBOOK = "docs/operations/metrics.md#alerts"


def test_every_alert_has_a_row_on_the_alerts_page(site):
    """Tests that each rule of deploy/prometheus/alerts.yml names, as its runbook, the
    alerts section of the metrics page, which explains it with what to do."""
    groups = yaml.safe_load((ROOT / "deploy" / "prometheus" / "alerts.yml").read_text())
    rules = [rule for group in groups["groups"] for rule in group["rules"]]
    page = (site / "operations" / "metrics" / "index.html").read_text()
    assert rules
    assert 'id="alerts"' in page
    assert {rule["annotations"]["runbook"] for rule in rules} == {RUNBOOK}
    unexplained = [
        rule["alert"] for rule in rules if f"<td><code>{rule['alert']}</code></td>" not in page
    ]
    assert not unexplained
