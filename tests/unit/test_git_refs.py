"""git_refs' pkt-line codec and listing parsers on bytes: what a server may send, well formed or
not (malformed, over-long, truncated), never read past what the line says. No I/O."""

from __future__ import annotations

import pytest

from reconciler.adapters import git_refs
from reconciler.adapters.git_refs import PktError, PktReader, QueryFailed, Special, pkt

OID = "8126e86921f0e6ab18fa33d0fcd47cdd85ce131f"
OTHER = "f1afc674988a3c1f2cdc7da2cfb09542008391a4"


def lines(data: bytes) -> list[bytes | Special]:
    reader = PktReader.of(data)
    out: list[bytes | Special] = []
    while (line := reader.next()) is not None:
        out.append(line)
    return out


def test_pkt_writes_the_length_with_itself_included():
    assert pkt("command=ls-refs\n") == b"0014command=ls-refs\n"
    assert lines(pkt(b"a") + b"0000" + b"0001" + b"0002") == [
        b"a",
        Special.FLUSH,
        Special.DELIM,
        Special.RESPONSE_END,
    ]


@pytest.mark.parametrize("payload", [b"", b"x" * (git_refs.MAX_PKT - 3)])
def test_pkt_refuses_an_empty_or_over_long_payload(payload: bytes):
    with pytest.raises(ValueError, match="pkt-line payload"):
        pkt(payload)


def test_the_longest_line_git_allows_is_read():
    payload = b"x" * (git_refs.MAX_PKT - 4)
    assert lines(pkt(payload)) == [payload]


def test_an_upper_case_length_is_read_as_git_does():
    assert lines(b"000Aabcdef") == [b"abcdef"]


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"zzzz", "malformed pkt-line length"),
        (b"00 5x", "malformed pkt-line length"),
        (b"+005x", "malformed pkt-line length"),
        (b"0003", "malformed pkt-line length 0003"),
        (b"fff1" + b"x" * 70000, "over Git's limit of 65520"),
        (b"ffff", "over Git's limit"),
        (b"000a", "truncated pkt-line: a pkt-line of 10 bytes ends after 0 of 6 bytes"),
        (b"000aabc", "ends after 3 of 6 bytes"),
        (b"00", "truncated pkt-line: the length ends after 0 of 2 bytes"),
        (b"0000" + b"0", "the length ends after 0 of 3 bytes"),
    ],
)
def test_a_malformed_over_long_or_truncated_line_is_an_error(data: bytes, reason: str):
    with pytest.raises(PktError, match=reason.replace("(", r"\(")):
        lines(data)


def test_until_flush_strips_newlines_and_consumes_the_flush():
    reader = PktReader.of(pkt("a\n") + pkt("b") + b"0000" + pkt("after"))
    assert list(reader.until_flush()) == [b"a", b"b"]
    assert reader.next() == b"after"


@pytest.mark.parametrize(
    ("data", "error", "reason"),
    [
        (pkt("a\n"), PktError, "ends before its flush-pkt"),
        (pkt("a\n") + b"0001", PktError, "unexpected delim-pkt"),
        (pkt("ERR access denied https://u:pw@h/x\n"), QueryFailed, r"says: access denied"),
    ],
)
def test_until_flush_refuses_an_unfinished_answer_and_reports_err(
    data: bytes, error: type[Exception], reason: str
):
    with pytest.raises(error, match=reason) as caught:
        list(PktReader.of(data).until_flush())
    assert "pw" not in str(caught.value)


def test_a_reader_over_a_stream_that_returns_short_reads():
    data = pkt("hello\n") + b"0000"
    chunks = [bytes([b]) for b in data]  # one byte at a time, as a slow socket may
    reader = PktReader(lambda size: chunks.pop(0) if chunks else b"")
    assert list(reader.until_flush()) == [b"hello"]


# --- the listings ---------------------------------------------------------------------------------


def test_a_v0_advertisement_is_read_past_its_capabilities():
    data = (
        pkt(f"{OID} HEAD\0multi_ack symref=HEAD:refs/heads/main agent=git/2.39\n")
        + pkt(f"{OTHER} refs/heads/main-old\n")
        + pkt(f"{OID} refs/heads/main\n")
        + b"0000"
    )
    refs = list(git_refs._v0_refs(PktReader.of(data)))
    assert refs == [
        (OID.encode(), b"HEAD"),
        (OTHER.encode(), b"refs/heads/main-old"),
        (OID.encode(), b"refs/heads/main"),
    ]


def test_a_v1_advertisement_starts_with_its_version():
    data = pkt("version 1\n") + pkt(f"{OID} refs/heads/main\0caps\n") + b"0000"
    assert list(git_refs._v0_refs(PktReader.of(data))) == [(OID.encode(), b"refs/heads/main")]


def test_an_ls_refs_answer_drops_the_attributes():
    data = pkt(f"{OID} refs/heads/main symref-target:x peeled:{OTHER}\n") + b"0000"
    assert list(git_refs._v2_refs(PktReader.of(data))) == [(OID.encode(), b"refs/heads/main")]


@pytest.mark.parametrize(
    "line",
    [
        f"{OID[:-1]} refs/heads/main",  # a short id
        f"{OID.upper()} refs/heads/main",
        f"{OID}\trefs/heads/main",  # a dumb server's separator in a smart answer
        f"{OID} ",
        "refs/heads/main",
    ],
)
def test_a_malformed_ref_line_is_an_error(line: str):
    with pytest.raises(PktError, match="malformed ref line"):
        list(git_refs._v2_refs(PktReader.of(pkt(line + "\n") + b"0000")))


def test_a_dumb_info_refs_file_is_read():
    body = f"{OTHER}\trefs/heads/main-old\n{OID}\trefs/heads/main\n".encode()
    assert git_refs._find(git_refs._dumb_refs(body), b"refs/heads/main") == OID
    assert git_refs._find(git_refs._dumb_refs(body), b"refs/heads/mai") is None


def test_find_takes_the_exact_ref_and_checks_the_whole_answer():
    data = pkt(f"{OTHER} refs/heads/mainline\n") + pkt(f"{OID} refs/heads/main\n")
    reader = PktReader.of(data + pkt("garbage\n") + b"0000")
    with pytest.raises(PktError):
        git_refs._find(git_refs._v2_refs(reader), b"refs/heads/main")


def test_the_ls_refs_request_asks_for_the_one_prefix_in_the_servers_object_format():
    caps = {"ls-refs": "unborn", "object-format": "sha1", "agent": "git/2.39"}
    assert git_refs._ls_refs_request(caps, "refs/heads/main") == (
        b"0014command=ls-refs\n0017object-format=sha1\n0001001fref-prefix refs/heads/main\n0000"
    )


def test_a_v2_server_without_ls_refs_is_refused():
    data = pkt("agent=x\n") + pkt("fetch\n") + b"0000"
    with pytest.raises(QueryFailed, match="without the ls-refs command"):
        git_refs._v2_capabilities(PktReader.of(data))


@pytest.mark.parametrize(
    ("url", "supported"),
    [
        ("https://h/x.git", True),
        ("HTTP://h/x.git", True),
        ("git://h/x.git", True),
        ("ssh://git@h/x.git", False),
        ("git@h:x.git", False),
        ("file:///srv/x.git", False),
        ("/srv/x.git", False),
    ],
)
def test_supports_names_the_transports_it_speaks(url: str, supported: bool):
    assert git_refs.supports(url) is supported
