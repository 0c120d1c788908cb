"""urls: the one rule for fleet repo URLs and branch names, and the one credential scrubber."""

from __future__ import annotations

import pytest

from reconciler.core import urls


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            "fatal: unable to access 'https://bob:s3cret@git.example.com/x/': 403",
            "fatal: unable to access 'https://***@git.example.com/x/': 403",
        ),
        ("ssh://git@host/x and http://u:p/w@h/y", "ssh://***@host/x and http://***@h/y"),
        ("push to http://user:pw@gw:9091 failed", "push to http://***@gw:9091 failed"),
        ("no credentials in https://host/x", "no credentials in https://host/x"),
    ],
)
def test_scrub_hides_every_credential_in_free_text(text, expected):
    assert urls.scrub(text) == expected


def test_redact_keeps_an_ssh_user_but_never_a_password():
    assert urls.redact("ssh://git@host/x") == "ssh://git@host/x"
    assert urls.redact("https://token@host/x") == "https://***@host/x"
    assert urls.redact("ftp://admin:TOKEN@host") == "ftp://***@host"


@pytest.mark.parametrize(
    ("url", "problem"),
    [
        ("", "must not be empty"),
        ("-u", 'must not start with "-"'),
        ("https://h/x\n", "control characters"),
        ("ftp://h/x", 'unsupported scheme "ftp"'),
        ("https:///x", "has no host name"),
        ("https://h:port/x", "malformed host or port"),
        ("ext::sh -c x", "remote helpers"),
        ("https://h/" + "x" * 5000, "over the limit of 4096"),
    ],
)
def test_unusable_urls_are_explained(url, problem):
    assert problem in (urls.url_problem(url) or "")


@pytest.mark.parametrize(
    "url", ["https://h/x", "git+ssh://git@h/x", "git@h:x", "file:///srv/x", "/srv/x", "../x"]
)
def test_every_form_git_takes_is_accepted(url):
    assert urls.url_problem(url) is None


@pytest.mark.parametrize(
    "branch", ["", "@", "a.lock/b", "x.lock", "a..b", "-x", "a b", "x@{1}", "a/", "/a", "a" * 256]
)
def test_branch_names_git_refuses_are_refused(branch):
    assert urls.branch_problem(branch)


@pytest.mark.parametrize("branch", ["main", "release/1.4", "feature/a-b_c", "a@b", "v1.0"])
def test_ordinary_branch_names_are_accepted(branch):
    assert urls.branch_problem(branch) is None


def test_a_branch_problem_shows_the_name_escaped_and_bounded():
    problem = urls.branch_problem("\x1b[31m" + "x" * 300)
    assert problem is not None and problem.isprintable() and len(problem) < 200
