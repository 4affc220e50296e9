"""Plan files: CSV columns found by header name in any order, headers that cannot be read
safely refused before anything is sent, JSON Lines by field name. Each test runs the real
command line against the fake and asserts the server's final state.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from nebius_datasets_async.testing import FakeDatasetsServer

from .test_cli import run_cli, write


def state(fake: FakeDatasetsServer, dataset_id: str) -> tuple[str, str]:
    record = fake.store[dataset_id]
    return record["name"], record["folder"]


@pytest.mark.parametrize(
    "header",
    [
        "dataset_id,folder,name",
        "folder,name,dataset_id",
        "name,dataset_id,folder",
        "ID,Folder,Name",  # the `id` alias, any case
        " Dataset ID , folder , NAME ",  # spaces around names, a space for '_'
    ],
)
async def test_csv_columns_are_found_by_header_name(
    fake: FakeDatasetsServer, tmp_path: Path, header: str
) -> None:
    """A header names the columns in any order; every row is applied by those names and the
    header line itself is never sent as an update.
    """
    ids = fake.dataset_ids[:3]
    columns = [c.strip().lower().replace(" ", "_") for c in header.split(",")]
    columns = ["dataset_id" if c == "id" else c for c in columns]
    rows = []
    for n, dataset_id in enumerate(ids):
        values = {"dataset_id": dataset_id, "name": f"renamed-{n}", "folder": f"/moved/{n}"}
        rows.append(",".join(values[c] for c in columns))
    plan = write(tmp_path / "plan.csv", "\n".join([header, *rows]) + "\n")
    result = await run_cli(fake, "bulk", str(plan), "--no-progress")
    assert result.code == 0, result.err
    for n, dataset_id in enumerate(ids):
        assert state(fake, dataset_id) == (f"renamed-{n}", f"/moved/{n}")
    assert sorted(r.dataset_id for r in fake.requests) == sorted(ids)


async def test_a_header_may_name_two_columns(fake: FakeDatasetsServer, tmp_path: Path) -> None:
    """`folder,id`: only the folder changes; the name stays as it was."""
    ids = fake.dataset_ids[:2]
    plan = write(tmp_path / "plan.csv", "folder,id\n" + "".join(f"/two,{i}\n" for i in ids))
    result = await run_cli(fake, "bulk", str(plan), "--no-progress")
    assert result.code == 0, result.err
    assert state(fake, ids[0]) == ("dataset-000000", "/two")
    assert [r.json for r in fake.applied_requests(ids[1])] == [{"folder": "/two"}]


async def test_csv_without_a_header_is_positional(fake: FakeDatasetsServer, tmp_path: Path) -> None:
    """A first line that cannot be a header (it holds a digit, a '/' or an empty cell) is
    data: dataset_id,name,folder in that order.
    """
    ids = fake.dataset_ids[:3]
    text = f"{ids[0]},first,/f\n{ids[1]},,/only-folder\n{ids[2]},only-name\n"
    plan = write(tmp_path / "plan.csv", text)
    result = await run_cli(fake, "bulk", str(plan), "--no-progress")
    assert result.code == 0, result.err
    assert state(fake, ids[0]) == ("first", "/f")
    assert state(fake, ids[1]) == ("dataset-000001", "/only-folder")
    assert state(fake, ids[2]) == ("only-name", "/incoming")


@pytest.mark.parametrize(
    ("text", "fragments"),
    [
        (
            "id,title,dir\n{id},renamed,/moved\n",
            ["line 1", "'id', 'title', 'dir'", "'title', 'dir' are not known", "dataset_id"],
        ),
        (
            "dataset_id,name,directory\n{id},renamed,/moved\n",
            ["'directory' is not known", "name and/or folder"],
        ),
        ("name,folder\nrenamed,/moved\n", ["'name', 'folder'", "expected dataset_id"]),
        ("id,dataset_id,name\n{id},{id},renamed\n", ["dataset_id appears twice"]),
        # a headerless plan whose first line reads like names: refused, never guessed
        ("foo,bar,baz\n{id},renamed,\n", ["'foo', 'bar', 'baz'", "add the header"]),
    ],
)
@pytest.mark.parametrize("skip_bad_lines", [False, True])
async def test_an_unreadable_header_is_refused_and_nothing_is_sent(
    fake: FakeDatasetsServer,
    tmp_path: Path,
    text: str,
    fragments: list[str],
    skip_bad_lines: bool,
) -> None:
    """A first line that looks like a header but names unknown, missing or repeated columns
    is refused with the columns found and the ones expected: exit 2, no request at all (also
    with --skip-bad-lines: no row can be read safely under such a header).
    """
    plan = write(tmp_path / "plan.csv", text.format(id=fake.dataset_ids[0]))
    args = ["--skip-bad-lines"] if skip_bad_lines else []
    result = await run_cli(fake, "bulk", str(plan), *args)
    assert result.code == 2, result.out
    assert "nothing was sent" in result.err
    for fragment in fragments:
        assert fragment in result.err
    assert fake.requests == []
    assert state(fake, fake.dataset_ids[0]) == ("dataset-000000", "/incoming")


async def test_a_row_must_have_the_header_s_columns(
    fake: FakeDatasetsServer, tmp_path: Path
) -> None:
    """Under a header, a row with another number of cells is a bad line, by number."""
    ids = fake.dataset_ids[:2]
    plan = write(tmp_path / "plan.csv", f"folder,dataset_id\n/a,{ids[0]}\n/b,{ids[1]},extra\n")
    result = await run_cli(fake, "bulk", str(plan))
    assert result.code == 2
    assert "line 3: expected 2 columns (folder,dataset_id), got 3" in result.err
    assert fake.requests == []


async def test_jsonl_fields_by_name_in_any_order(fake: FakeDatasetsServer, tmp_path: Path) -> None:
    """JSON Lines are read by field name, whatever the order of the keys."""
    ids = fake.dataset_ids[:2]
    plan = write(
        tmp_path / "plan.jsonl",
        f'{{"folder": "/j", "name": "json-0", "dataset_id": "{ids[0]}"}}\n'
        f'{{"name": "json-1", "dataset_id": "{ids[1]}"}}\n',
    )
    result = await run_cli(fake, "bulk", str(plan), "--no-progress")
    assert result.code == 0, result.err
    assert state(fake, ids[0]) == ("json-0", "/j")
    assert state(fake, ids[1]) == ("json-1", "/incoming")
