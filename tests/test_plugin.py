"""The pytest plugin's fixtures in every pytest-asyncio configuration: strict and auto mode,
function, module and session loop scopes for tests and for fixtures.
"""

from __future__ import annotations

import pytest

pytest_plugins = ["pytester"]

USER_TESTS = """
import pytest

from nebius_datasets_async.testing import Faults


@pytest.mark.asyncio(loop_scope="function")
async def test_in_a_function_loop(nebius_client, nebius_fake):
    ds = await nebius_client.rename(nebius_fake.dataset_ids[0], "f")
    assert ds.name == "f"
    assert nebius_fake.store[nebius_fake.dataset_ids[0]]["name"] == "f"


@pytest.mark.asyncio(loop_scope="module")
async def test_in_a_module_loop(nebius_client, nebius_fake):
    ds = await nebius_client.move(nebius_fake.dataset_ids[1], "/m")
    assert ds.folder == "/m"


@pytest.mark.asyncio(loop_scope="session")
@pytest.mark.nebius_fake(datasets=3, faults=Faults(rate_500=0.5, seed=1))
async def test_in_a_session_loop(nebius_client, nebius_fake):
    report = await nebius_client.rename_many({i: "s" for i in nebius_fake.dataset_ids})
    assert report.ok
    assert len(nebius_fake.store) == 3


def test_sync_code_can_use_the_fake(nebius_fake):
    import urllib.request

    request = urllib.request.Request(
        f"{nebius_fake.base_url}/v1/datasets/{nebius_fake.dataset_ids[0]}",
        headers={"Authorization": f"Bearer {nebius_fake.api_key}"},
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        assert response.status == 200
"""


@pytest.mark.parametrize("fixture_scope", ["function", "module", "session"])
@pytest.mark.parametrize("mode", ["strict", "auto"])
def test_fixtures_work_in_every_loop_configuration(
    pytester: pytest.Pytester, mode: str, fixture_scope: str
) -> None:
    """The README's fixtures pass at once (no hang, no unclosed-session warning) whatever
    the mode and the loop scopes of tests and fixtures.
    """
    pytester.makepyfile(test_user=USER_TESTS)
    result = pytester.runpytest_subprocess(
        "-p", "no:cacheprovider",
        "-o", f"asyncio_mode={mode}",
        "-o", f"asyncio_default_fixture_loop_scope={fixture_scope}",
        "-W", "error",
        "--timeout", "60",
        timeout=120,
    )  # fmt: skip
    result.assert_outcomes(passed=4)
