"""The release file: build, exact bytes, strict parsing, pins, succession and expiry (SPEC 2.2)."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta, timezone

import pytest
from hypothesis import given
from hypothesis import strategies as st

from reconciler import errors
from reconciler.core import release

NOW = datetime(2026, 11, 23, 10, 0, 0, 654321, tzinfo=UTC)
GW = "apps/gw/app.yaml"
KIOSK = "apps/kiosk/app.yaml"
COMMIT = "0123456789abcdef0123456789abcdef01234567"
SHA = "a" * 64


def make(files, *, previous=None, now=NOW, **kw):
    return release.build(files, previous=previous, now=now, source_commit=COMMIT, **kw)


def doc(**overrides):
    body = {
        "schema": release.SCHEMA,
        "version": 42,
        "created": "2026-11-23T10:00:00Z",
        "expires": "2027-02-21T10:00:00Z",
        "source_commit": COMMIT,
        "apps": {GW: {"sha256": SHA, "since": "2026-11-20T08:00:00Z"}},
    }
    body.update(overrides)
    return json.dumps(body).encode()


def problems_of(data):
    with pytest.raises(errors.ReleaseError) as caught:
        release.parse(data)
    return {p.field: p.message for p in caught.value.problems}


# --- build ---------------------------------------------------------------------------------


def test_first_release_is_version_one_and_every_app_starts_now():
    r = make({GW: b"a", KIOSK: b"b"})
    assert r.version == 1
    assert r.created == datetime(2026, 11, 23, 10, 0, 0, tzinfo=UTC)
    assert r.expires == r.created + timedelta(days=30)
    assert [path for path, _ in r.apps] == [GW, KIOSK]
    assert r.pins[GW].sha256 == release.digest(b"a")
    assert {pin.since for pin in r.pins.values()} == {r.created}


def test_since_is_carried_over_while_the_manifest_is_unchanged():
    first = make({GW: b"a", KIOSK: b"b"})
    later = NOW + timedelta(hours=6)
    second = make({GW: b"a", KIOSK: b"b2"}, previous=first, now=later)
    assert second.version == 2
    assert second.pins[GW].since == first.created
    assert second.pins[KIOSK].since == second.created


def test_a_manifest_that_comes_back_starts_a_new_since():
    first = make({GW: b"a"})
    second = make({}, previous=first, now=NOW + timedelta(hours=1))
    third = make({GW: b"a"}, previous=second, now=NOW + timedelta(hours=2))
    assert third.pins[GW].since == third.created
    assert third.version == 3


def test_expires_in_sets_the_expiry_in_whole_seconds():
    r = make({GW: b"a"}, expires_in=3600.7)
    assert r.expires - r.created == timedelta(hours=1)


def test_build_records_resolved_images_sorted_by_container():
    images = {GW: {"web": "reg/gw@sha256:" + "1" * 64, "api": "reg/api@sha256:" + "2" * 64}}
    r = make({GW: b"a", KIOSK: b"b"}, images=images)
    assert [name for name, _ in r.pins[GW].images] == ["api", "web"]
    assert r.pins[KIOSK].images == ()
    assert r.pinned_images == {GW: dict(images[GW])}


def test_build_refuses_what_devices_would_refuse():
    with pytest.raises(errors.ReleaseError) as caught:
        make({"../etc/app.yaml": b"a", GW: b"b"}, images={GW: {"web": ""}, KIOSK: {"x": "i"}})
    fields = {p.field for p in caught.value.problems}
    assert fields == {
        'apps["../etc/app.yaml"]',
        'apps["apps/gw/app.yaml"].images["web"]',
        'images["apps/kiosk/app.yaml"]',
    }


def test_build_refuses_a_time_without_a_zone():
    with pytest.raises(ValueError, match="timezone-aware"):
        make({GW: b"a"}, now=datetime(2026, 1, 1))


# --- serialize -----------------------------------------------------------------------------


def test_serialize_writes_the_shape_spec_shows():
    images = {GW: {"web": "127.0.0.1:5000/gw@sha256:" + "1" * 64}}
    data = release.serialize(make({GW: b"a", KIOSK: b"b"}, images=images))
    assert data.endswith(b"}\n")
    assert data.startswith(b'{\n  "apps": {\n')
    body = json.loads(data)
    assert list(body) == sorted(body)
    assert body["schema"] == "reconciler/release/v1"
    assert body["created"] == "2026-11-23T10:00:00Z"
    assert body["expires"] == "2026-12-23T10:00:00Z"
    assert body["source_commit"] == COMMIT
    assert body["apps"][GW] == {
        "sha256": release.digest(b"a"),
        "since": "2026-11-23T10:00:00Z",
        "images": images[GW],
    }
    assert "images" not in body["apps"][KIOSK]


def test_serialize_writes_times_in_utc_whatever_the_zone_given():
    berlin = timezone(timedelta(hours=1))
    r = make({GW: b"a"}, now=datetime(2026, 11, 23, 11, 0, 0, tzinfo=berlin))
    assert json.loads(release.serialize(r))["created"] == "2026-11-23T10:00:00Z"


def test_parse_reads_the_spec_example():
    r = release.parse(doc())
    assert r.version == 42
    assert r.expires == datetime(2027, 2, 21, 10, 0, 0, tzinfo=UTC)
    assert r.pins[GW] == release.AppPin(SHA, datetime(2026, 11, 20, 8, 0, 0, tzinfo=UTC))
    assert r.since == {GW: datetime(2026, 11, 20, 8, 0, 0, tzinfo=UTC)}


paths = st.from_regex(r"apps/[a-z0-9]{1,8}(/[a-z0-9._-]{0,6}[a-z0-9]){1,2}", fullmatch=True)
moments = st.datetimes(
    min_value=datetime(2000, 1, 1),
    max_value=datetime(2200, 1, 1),
    timezones=st.sampled_from([UTC, timezone(timedelta(hours=-7)), timezone(timedelta(hours=5))]),
)
file_sets = st.dictionaries(paths, st.binary(max_size=64), max_size=5)
refs = st.text(
    st.characters(min_codepoint=33, max_codepoint=0x2FF, exclude_categories=("Zs", "Cc")),
    min_size=1,
    max_size=40,
)
containers = st.from_regex(r"[a-z]([-a-z0-9]{0,10}[a-z0-9])?", fullmatch=True)


@st.composite
def releases(draw):
    previous = None
    if draw(st.booleans()):
        previous = make(draw(file_sets), now=draw(moments))
    files = draw(file_sets)
    images = {
        path: draw(st.dictionaries(containers, refs, max_size=3))
        for path in files
        if draw(st.booleans())
    }
    expires_in = draw(st.floats(min_value=1, max_value=400 * 86400))
    paused = [path for path in files if draw(st.booleans())]
    abort = {
        path: draw(st.from_regex(r"[0-9a-f]{64}", fullmatch=True))
        for path in files
        if draw(st.booleans())
    }
    return make(
        files,
        previous=previous,
        now=draw(moments),
        images=images,
        expires_in=expires_in,
        paused=paused,
        abort=abort,
    )


@given(releases())
def test_build_serialize_parse_round_trips_and_serialize_is_stable(r):
    data = release.serialize(r)
    parsed = release.parse(data)
    assert parsed == r
    assert release.serialize(parsed) == data


# --- parse: strictness ---------------------------------------------------------------------


def test_parse_reports_every_problem_at_once():
    problems = problems_of(
        doc(
            schema="reconciler/release/v2",
            version=True,
            created="2026-11-23T10:00:00+00:00",
            extra=1,
            apps={
                "/etc/passwd": {"sha256": SHA, "since": "2026-11-20T08:00:00Z"},
                GW: {"sha256": SHA.upper(), "since": "2026-11-20", "images": {"web": ""}, "x": 1},
            },
        )
    )
    assert set(problems) == {
        "schema",
        "version",
        "created",
        "extra",
        'apps["/etc/passwd"]',
        'apps["apps/gw/app.yaml"].sha256',
        'apps["apps/gw/app.yaml"].since',
        'apps["apps/gw/app.yaml"].images["web"]',
        'apps["apps/gw/app.yaml"].x',
    }
    assert problems["extra"] == "unknown key"


def test_parse_error_names_the_file_and_field():
    with pytest.raises(errors.ReleaseError) as caught:
        release.parse(doc(version=0), file="fleet/.fleet/release.json")
    assert str(caught.value) == (
        "fleet/.fleet/release.json: version: expected a positive integer, got 0"
    )


@pytest.mark.parametrize("version", [0, -1, 1.0, "1", None, True, 2**63])
def test_version_must_be_a_positive_integer(version):
    assert "version" in problems_of(doc(version=version))


@pytest.mark.parametrize(
    "value",
    [
        "2026-11-23T10:00:00",
        "2026-11-23T10:00:00.5Z",
        "2026-11-23 10:00:00Z",
        "2026-02-30T10:00:00Z",
        "\uff12026-11-23T10:00:00Z",  # a full-width digit
        1700000000,
    ],
)
def test_times_must_be_utc_seconds_with_z(value):
    assert "created" in problems_of(doc(created=value))


def test_expires_must_be_after_created():
    assert problems_of(doc(expires="2026-11-23T10:00:00Z")) == {"expires": "must be after created"}


@pytest.mark.parametrize(
    "path",
    [
        "/apps/gw/app.yaml",
        "gw/app.yaml",
        "apps",
        "apps/",
        "apps/../x/app.yaml",
        "apps/gw/../../x.yaml",
        "apps//app.yaml",
        "apps/./gw/app.yaml",
        "apps\\gw\\app.yaml",
        "apps/gw/app.yaml\n",
    ],
)
def test_app_paths_must_be_plain_relative_paths_under_apps(path):
    data = doc(apps={path: {"sha256": SHA, "since": "2026-11-20T08:00:00Z"}})
    assert list(problems_of(data)) == [f"apps[{json.dumps(path)}]"]


@pytest.mark.parametrize("images", [[], {"web": 1}, {"web": ""}, {"web": "a b"}, {"Web": "x"}])
def test_images_must_map_container_names_to_references(images):
    data = doc(apps={GW: {"sha256": SHA, "since": "2026-11-20T08:00:00Z", "images": images}})
    assert any(field.startswith('apps["apps/gw/app.yaml"].images') for field in problems_of(data))


def test_missing_keys_are_named():
    body = json.loads(doc())
    del body["expires"]
    del body["apps"][GW]["since"]
    assert problems_of(json.dumps(body).encode()) == {
        "expires": "missing",
        'apps["apps/gw/app.yaml"].since': "missing",
    }


@pytest.mark.parametrize(
    ("data", "words"),
    [
        (b"\xff\xfe{}", "not UTF-8"),
        (b"{", "not valid JSON"),
        (b"[]", "expected a JSON object, got an array"),
        (b'{"version": NaN}', "not valid JSON"),
        (b'{"version": 1, "version": 2}', 'duplicate key "version"'),
        (b"[" * 100_000 + b"]" * 100_000, "not valid JSON"),
        (b'{"version": ' + b"9" * 5000 + b"}", "not valid JSON"),
        (b" " * (release.MAX_BYTES + 1), "byte limit"),
    ],
)
def test_unreadable_files_are_rejected_with_one_reason(data, words):
    with pytest.raises(errors.ReleaseError) as caught:
        release.parse(data)
    (problem,) = caught.value.problems
    assert words in problem.message
    assert problem.file == release.RELEASE_PATH


def test_a_release_with_no_apps_is_valid():
    assert release.parse(doc(apps={})).apps == ()


# --- pins ----------------------------------------------------------------------------------


def test_matching_files_pass_the_pin_check_and_unlisted_files_are_ignored():
    r = make({GW: b"a"})
    files = {GW: b"a", "apps/new/app.yaml": b"sneaked in"}
    assert release.check_pins(r, files) == []
    assert release.unlisted(r, files) == ("apps/new/app.yaml",)


def test_changed_or_missing_pinned_files_fail_the_pin_check():
    r = make({GW: b"a", KIOSK: b"b"})
    messages = {p.file: p.message for p in release.check_pins(r, {GW: b"tampered"})}
    assert "does not match" in messages[GW]
    assert "missing" in messages[KIOSK]


def test_a_release_made_outside_git_has_an_empty_source_commit():
    r = release.build({GW: b"a"}, previous=None, now=NOW, source_commit="")
    assert release.parse(release.serialize(r)).source_commit == ""


# --- succession and expiry -----------------------------------------------------------------


def test_any_release_is_accepted_on_first_run():
    release.check_succession(
        applied_version=None, applied_digest=None, new_version=1, new_digest="x"
    )


def test_a_newer_version_is_accepted():
    release.check_succession(applied_version=4, applied_digest="x", new_version=5, new_digest="y")


def test_the_same_release_again_is_accepted():
    release.check_succession(applied_version=4, applied_digest="x", new_version=4, new_digest="x")


def test_an_older_version_is_refused_as_a_rollback():
    with pytest.raises(errors.VerificationError, match="lower than the applied") as caught:
        release.check_succession(
            applied_version=5, applied_digest="x", new_version=4, new_digest="y"
        )
    assert caught.value.reason == "rollback"


def test_the_same_version_with_other_bytes_is_refused_as_equivocation():
    with pytest.raises(errors.VerificationError) as caught:
        release.check_succession(
            applied_version=5, applied_digest="a" * 64, new_version=5, new_digest="b" * 64
        )
    assert caught.value.reason == "equivocation"


def test_a_release_expires_at_its_expiry_time():
    r = make({GW: b"a"})
    assert not release.is_expired(r, r.expires - timedelta(seconds=1))
    assert release.is_expired(r, r.expires)


def test_a_time_before_year_1000_round_trips():
    """strftime writes year 999 as "999"; the file must hold four digits the parser accepts."""
    from datetime import UTC, datetime

    early = datetime(999, 1, 2, 3, 4, 5, tzinfo=UTC)
    built = release.build({"apps/a/app.yaml": b"x"}, previous=None, now=early, source_commit="")
    data = release.serialize(built)
    assert b'"since": "0999-01-02T03:04:05Z"' in data
    assert release.parse(data) == built


# --- rollout control: paused and abort (SPEC 2.3) -----------------------------------------

ABORTED = "3f2a9c01b7e4" + "0" * 52


def entry(**extra):
    return {"sha256": SHA, "since": "2026-11-20T08:00:00Z", **extra}


def test_build_carries_paused_and_abort_into_the_pins():
    r = make({GW: b"a", KIOSK: b"b"}, paused={GW}, abort={KIOSK: ABORTED})
    assert r.pins[GW].paused and r.pins[GW].abort is None
    assert not r.pins[KIOSK].paused and r.pins[KIOSK].abort == ABORTED


def test_serialize_writes_paused_and_abort_only_when_set():
    body = json.loads(release.serialize(make({GW: b"a", KIOSK: b"b"}, paused=[GW])))
    assert body["apps"][GW]["paused"] is True
    assert body["apps"][KIOSK] == {"sha256": release.digest(b"b"), "since": "2026-11-23T10:00:00Z"}
    body = json.loads(release.serialize(make({GW: b"a"}, abort={GW: ABORTED})))
    assert body["apps"][GW]["abort"] == ABORTED
    assert "paused" not in body["apps"][GW]


def test_a_release_without_rollout_control_keeps_its_exact_bytes():
    # Bytes written before paused/abort existed: parsing and writing them again changes nothing.
    data = (
        b'{\n  "apps": {\n    "apps/gw/app.yaml": {\n      "sha256": "' + SHA.encode() + b'",\n'
        b'      "since": "2026-11-20T08:00:00Z"\n    }\n  },\n'
        b'  "created": "2026-11-23T10:00:00Z",\n  "expires": "2027-02-21T10:00:00Z",\n'
        b'  "schema": "reconciler/release/v1",\n  "source_commit": "' + COMMIT.encode() + b'",\n'
        b'  "version": 42\n}\n'
    )
    assert release.serialize(release.parse(data)) == data


def test_parse_reads_paused_and_abort():
    r = release.parse(doc(apps={GW: entry(paused=True, abort=ABORTED)}))
    assert r.pins[GW] == release.AppPin(
        SHA, datetime(2026, 11, 20, 8, 0, 0, tzinfo=UTC), paused=True, abort=ABORTED
    )


@pytest.mark.parametrize("value", [False, 1, "true", None, [True]])
def test_paused_must_be_true_when_present(value):
    field = 'apps["apps/gw/app.yaml"].paused'
    message = problems_of(doc(apps={GW: entry(paused=value)}))[field]
    assert message.startswith("expected true (omit the key when not paused), got ")


@pytest.mark.parametrize(
    "value", ["3f2a9c01b7e4", ABORTED.upper(), ABORTED + "0", "g" * 64, 5, None, True, [ABORTED]]
)
def test_abort_must_be_a_full_revision(value):
    field = 'apps["apps/gw/app.yaml"].abort'
    message = problems_of(doc(apps={GW: entry(abort=value)}))[field]
    assert message.startswith("expected the full revision to abort (64 lower-case hex digits)")


def test_unknown_keys_next_to_rollout_control_are_still_refused():
    problems = problems_of(doc(apps={GW: entry(paused=True, pause=True)}))
    assert problems == {'apps["apps/gw/app.yaml"].pause': "unknown key"}


def test_build_refuses_rollout_control_it_could_not_sign_correctly():
    with pytest.raises(errors.ReleaseError) as caught:
        make({GW: b"a"}, paused=[KIOSK], abort={GW: "3f2a9c01b7e4"})
    fields = {p.field for p in caught.value.problems}
    assert fields == {'paused["apps/kiosk/app.yaml"]', 'apps["apps/gw/app.yaml"].abort'}
