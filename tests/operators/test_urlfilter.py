"""url_filter: domains (host and parents), URL substrings and URL words from block-list files, each with its reason;
rows without a URL kept and counted; a changed list re-runs the stage on resume."""

import json

import pyarrow as pa
import pytest

from operators.urlfilter import URLFilter, host_of
from pipelines.recipe import parse_recipe
from pipelines.runner import run
from storage.shards import read_shards
from tests.conftest import make_batch, prose, write_jsonl


@pytest.fixture
def lists(tmp_path):
    (tmp_path / "domains.txt").write_text(
        "# blocked hosts\n\nexample.com\n*.Spam.NET.\nhttps://tracker.io/x\n10.0.0.1\n"
    )
    (tmp_path / "urls.txt").write_text("# substrings\n/ads/click\nbad.org/Private\n")
    (tmp_path / "words.txt").write_text("sex\ncasino\nfree-porn\n")
    return {k: str(tmp_path / f"{k.split('_')[1]}.txt") for k in ("block_domains", "block_urls", "block_words")}


def _batch(urls, field="url"):
    batch = make_batch([prose(i) for i in range(len(urls))])
    return batch.append_column(field, pa.array(urls, pa.string()))


CASES = {
    # domains: the host or a parent domain, never a look-alike
    "https://example.com/a": ("url_blocked_domain", "block_domains: example.com"),
    "http://www.EXAMPLE.com:8080/x?y=1": ("url_blocked_domain", "block_domains: example.com"),
    "https://a.b.example.com./": ("url_blocked_domain", "block_domains: example.com"),
    "example.com/no-scheme": ("url_blocked_domain", "block_domains: example.com"),
    "https://mail.spam.net/": ("url_blocked_domain", "block_domains: spam.net"),
    "https://tracker.io/": ("url_blocked_domain", "block_domains: tracker.io"),
    "http://10.0.0.1/page": ("url_blocked_domain", "block_domains: 10.0.0.1"),
    "https://badexample.com/": None,
    "https://example.com.evil.org/": None,
    "https://example.co/": None,
    "http://1.10.0.0.1.nip.io/": None,
    # URL substrings, case-insensitive, as written or percent-decoded
    "https://news.site/ads/click?id=3": ("url_blocked_url", "block_urls: /ads/click"),
    "https://BAD.org/private/notes": ("url_blocked_url", "block_urls: bad.org/private"),
    "https://bad.org/%50rivate/x": ("url_blocked_url", "block_urls: bad.org/private"),
    "https://bad.org/public": None,
    # words: whole URL words, not parts of words
    "https://shop.site/sex-toys": ("url_blocked_word", "block_words: sex"),
    "https://sex.example.org/": ("url_blocked_word", "block_words: sex"),
    "https://x.site/Online_Casino": ("url_blocked_word", "block_words: casino"),
    "https://x.site/free%20porn": ("url_blocked_word", "block_words: free porn"),
    "https://essex.ac.uk/sussex": None,
    "https://x.site/casinos": None,
    "https://x.site/free/news/porn-free": None,
}


def test_each_list_matches_what_it_should_and_nothing_else(lists):
    op = URLFilter(stage="url", **lists)
    got = {url: op.match(url) for url in CASES}
    assert got == CASES


def test_removed_rows_carry_the_reason_and_the_matching_entry(lists):
    urls = ["https://www.example.com/", "https://ok.org/ads/click", "https://ok.org/sex", "https://ok.org/", None, ""]
    out = URLFilter(stage="urlf", **lists)(_batch(urls))
    assert out.column("reason").to_pylist() == [
        "url_blocked_domain",
        "url_blocked_url",
        "url_blocked_word",
        None,
        None,
        None,
    ]
    assert out.column("stage").to_pylist() == ["urlf"] * 3 + [None] * 3
    assert out.column("error").to_pylist() == [
        "block_domains: example.com",
        "block_urls: /ads/click",
        "block_words: sex",
        None,
        None,
        None,
    ]
    assert out.column("url").to_pylist() == urls


def test_a_domain_on_the_domain_list_wins_over_the_other_lists(lists):
    op = URLFilter(stage="url", **lists)
    assert op.match("https://example.com/ads/click/sex")[0] == "url_blocked_domain"
    assert op.match("https://ok.org/ads/click/sex")[0] == "url_blocked_url"
    only_words = URLFilter(stage="url", block_words=lists["block_words"])
    assert only_words.match("https://example.com/ads/click/sex")[0] == "url_blocked_word"


def test_rows_without_a_url_are_kept_and_counted(lists):
    op = URLFilter(stage="url", **lists)
    batch = _batch([None, "", "  ", "https://example.com/", "https://ok.org/"])
    batch = batch.set_column(batch.schema.get_field_index("reason"), "reason", pa.array([None] * 4 + ["earlier"]))
    out = op(batch)
    assert out.column("reason").to_pylist() == [None, None, None, "url_blocked_domain", "earlier"]
    assert op.drain_metrics() == {"checked": 1, "no_url": 3}  # the row removed earlier is not looked at
    assert op.drain_metrics() == {}


def test_the_url_column_is_named_by_url_field_and_its_absence_is_an_error(lists):
    with pytest.raises(ValueError, match=r"no 'url' column \(its input fields: link\).*url_field"):
        URLFilter(stage="url", **lists)(_batch(["https://example.com/"], field="link"))
    out = URLFilter(stage="url", url_field="link", **lists)(_batch(["https://example.com/"], field="link"))
    assert out.column("reason").to_pylist() == ["url_blocked_domain"]


def test_bad_parameters_and_lists_fail_at_construction(tmp_path, lists):
    with pytest.raises(ValueError, match="at least one of `block_domains`"):
        URLFilter(stage="url")
    with pytest.raises(ValueError, match=r"block_words: .*file .*missing\.txt' does not exist"):
        URLFilter(stage="url", block_words=str(tmp_path / "missing.txt"))
    (tmp_path / "bad.txt").write_text("good.com\nnot a domain\n")
    with pytest.raises(ValueError, match=r"bad\.txt:2: 'not a domain' is not a domain"):
        URLFilter(stage="url", block_domains=str(tmp_path / "bad.txt"))
    (tmp_path / "badw.txt").write_text("ok\n---\n")
    with pytest.raises(ValueError, match=r"badw\.txt:2: '---' has no letters or digits"):
        URLFilter(stage="url", block_words=str(tmp_path / "badw.txt"))


def test_hosts_are_normalized():
    assert host_of("HTTPS://user:pw@WWW.Example.COM.:443/a") == "www.example.com"
    assert host_of("https://bücher.example/") == "xn--bcher-kva.example"
    assert host_of("https://[::1]:8080/") == "::1"
    assert host_of("https://[::1/") is None
    assert host_of("not a url") is None and host_of("") is None


def test_a_list_edited_while_a_worker_lives_is_read_again(lists):
    op = URLFilter(stage="url", **lists)
    assert op.match("https://other.org/") is None
    with open(lists["block_domains"], "a") as f:
        f.write("other.org\n")
    assert op(_batch(["https://other.org/"])).column("reason").to_pylist() == ["url_blocked_domain"]


def _recipe(tmp_path, lists):
    return (
        f"inputs:\n  - {{path: {tmp_path}/in/web.jsonl, domain: web}}\n"
        f"stages:\n  - {{op: url_filter, block_domains: {lists['block_domains']}, "
        f"block_words: {lists['block_words']}}}\n"
        f"output: {{dir: {tmp_path}/out, shard_mb: 0.002}}\n"
    )


def test_through_the_runner_and_resume_reruns_when_a_list_changes(tmp_path, lists, ray_session):
    docs = [
        {"id": "a", "text": prose(1), "url": "https://www.example.com/page"},
        {"id": "b", "text": prose(2), "url": "https://news.org/casino-night"},
        {"id": "c", "text": prose(3), "url": "https://news.org/essex"},
        {"id": "d", "text": prose(4), "url": None},
        {"id": "e", "text": prose(5)},  # no url field at all: null in the url column
        {"id": "f", "text": prose(6), "url": "https://later.org/x"},
    ]
    write_jsonl(tmp_path / "in" / "web.jsonl", docs)
    text = _recipe(tmp_path, lists)
    m = run(parse_recipe(text), recipe_text=text)
    assert m["conservation"]["ok"]
    kept = read_shards(str(tmp_path / "out" / "shards")).to_pylist()
    assert sorted(r["id"] for r in kept) == ["c", "d", "e", "f"]
    removed = {r["id"]: (r["reason"], r["error"], r["url"]) for r in read_shards(str(tmp_path / "out" / "removed"))
               .to_pylist()}  # fmt: skip
    assert removed == {
        "a": ("url_blocked_domain", "block_domains: example.com", "https://www.example.com/page"),
        "b": ("url_blocked_word", "block_words: casino", "https://news.org/casino-night"),
    }
    st = next(s for s in m["stages"] if s["op"] == "url_filter")
    assert st["removed"] == {"url_blocked_domain": 1, "url_blocked_word": 1}
    assert st["report"]["url_filter"] == {"checked": 4, "no_url": 2}

    again = run(parse_recipe(text), recipe_text=text)  # nothing changed: every segment reused
    assert all(s["reused"] for s in again["segments"])

    with open(lists["block_domains"], "a") as f:
        f.write("later.org\n")
    third = run(parse_recipe(text), recipe_text=text)
    assert not all(s["reused"] for s in third["segments"])
    kept = read_shards(str(tmp_path / "out" / "shards")).to_pylist()
    assert sorted(r["id"] for r in kept) == ["c", "d", "e"]
    st = next(s for s in third["stages"] if s["op"] == "url_filter")
    assert st["removed"] == {"url_blocked_domain": 2, "url_blocked_word": 1}
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert manifest["conservation"]["ok"]


def test_data_without_the_url_field_fails_the_stage_naming_it(tmp_path, lists, ray_session):
    """A configuration mistake stops the run (even without on_error: fail) instead of quarantining every row."""
    write_jsonl(tmp_path / "in" / "web.jsonl", [{"id": "a", "text": prose(1), "link": "https://example.com/"}])
    text = _recipe(tmp_path, lists)
    with pytest.raises(Exception, match=r"no 'url' column \(its input fields: link\)"):
        run(parse_recipe(text), recipe_text=text)
    assert not list((tmp_path / "out").glob("shards/**/*.parquet"))


def test_a_large_domain_list_blocks_exactly_its_domains_in_little_memory(tmp_path):
    """200k domains (a real list has millions): every listed one blocks itself and its subdomains, nothing else."""
    listed = [f"site{i:06d}.example{i % 7}.org" for i in range(0, 400_000, 2)]
    (tmp_path / "domains").write_text("# generated\n" + "\n".join(listed) + "\n\n*.Wild.Example.\n")
    op = URLFilter(stage="url", block_domains=str(tmp_path / "domains"))
    assert len(op.hosts) == len(listed) + 1
    assert op.hosts.hashes.nbytes + op.hosts.domains.nbytes < 64 * len(listed)  # ~30 bytes/domain, not a set's ~300
    urls = [f"https://www.site{i:06d}.example{i % 7}.org/x" for i in range(1000, 1100)]
    urls += ["https://a.b.wild.example/", "https://wild.example.com/", "https://example1.org/"]
    got = op.match_many(urls)
    assert [g is not None for g in got[:100]] == [i % 2 == 0 for i in range(1000, 1100)]
    assert got[100] == ("url_blocked_domain", "block_domains: wild.example")
    assert got[101:] == [None, None]


def test_a_list_that_is_not_utf8_is_an_error_naming_it(tmp_path):
    (tmp_path / "latin1.txt").write_bytes("caf\xe9.com\n".encode("latin-1"))
    with pytest.raises(ValueError, match=r"latin1\.txt is not a text file of one entry a line"):
        URLFilter(stage="url", block_domains=str(tmp_path / "latin1.txt"))
