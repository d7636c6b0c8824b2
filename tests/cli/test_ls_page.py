"""`ls --limit` picks its page without sorting every entry: same rows as a full sort."""

from __future__ import annotations

from pathlib import Path

from clihelpers import cli_json, key_of, make_runner, set_last_use, write_block


def test_a_page_is_the_head_of_the_full_listing(tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    source = tmp_path / "in.txt"
    source.write_text("x\n")
    runner = make_runner(cache, tmp_path / "scratch")
    keys = [
        key_of(write_block(runner, source, size=8, n=n)["out"], cache) for n in range(7)
    ]
    # Last uses out of key order, with a tie (broken by the key).
    for n, key in enumerate(keys):
        set_last_use(cache, key, 1_700_000_000 + (n * 5) % 7 // 2 * 60)
    for order in (["--sort", "last-used"], ["--sort", "key"]):
        for reverse in ([], ["--reverse"]):
            args = ["ls", "--cache-dir", str(cache), *order, *reverse]
            full = [e["key"] for e in cli_json(*args)["entries"]]
            assert sorted(full) == sorted(keys)
            for limit in (1, 3, 6, 7, 9):
                page = cli_json(*args, "--limit", str(limit))
                assert [e["key"] for e in page["entries"]] == full[:limit], (
                    order,
                    reverse,
                    limit,
                )
                assert page["matched"] == 7 and page["total"] == 7
