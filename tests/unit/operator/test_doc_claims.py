"""The README's timing claims say what the tests bound, and the numbers agree."""

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[3]


def test_the_shadowed_bound_in_the_readme_is_the_tests_bound() -> None:
    readme = (ROOT / "README.md").read_text()
    tests = (ROOT / "tests/integration/operator/test_operator.py").read_text()
    bound = re.search(r"^WITHIN_SECONDS = (\d+)(?:\.0)?$", tests, re.MULTILINE)
    assert bound is not None
    claims = re.findall(r"assert `Shadowed` within (\d+) s", readme)
    assert claims == [bound.group(1)], claims
    assert f"the tests allow {bound.group(1)} s on a loaded one" in readme
    assert "within a second" not in readme
