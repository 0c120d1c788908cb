"""selection: Kubernetes label-selector semantics, case by case and as properties.

The table follows the examples of the Kubernetes "Labels and Selectors" page. Equality-based
`k = v` is matchLabels {k: v}; `k != v` is the expression `k NotIn (v)` (the page: it "selects
all resources with key equal to tier and value distinct from frontend, and all resources with
no labels with the tier key").
"""

from __future__ import annotations

import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from reconciler import model
from reconciler.core import selection


def sel(labels: dict[str, str] | None = None, *exprs: model.Requirement) -> model.Selector:
    return model.Selector(tuple(sorted((labels or {}).items())), tuple(exprs))


def req(key: str, operator: model.SelectorOperator, *values: str) -> model.Requirement:
    return model.Requirement(key, operator, tuple(values))


def app(name: str, selector: model.Selector) -> model.AppManifest:
    return model.AppManifest(
        name=name,
        path=f"apps/{name}/app.yaml",
        revision="0" * 64,
        selector=selector,
        containers=(model.ContainerSpec(name="main", image="busybox:1.36"),),
    )


PROD_FRONTEND = {"environment": "production", "tier": "frontend"}
PROD_BACKEND = {"environment": "production", "tier": "backend"}
QA_CACHE = {"environment": "qa", "tier": "cache", "partition": "customerA"}
PROD_PARTITION = {"environment": "production", "partition": "customerA"}
DEV_NO_TIER = {"environment": "dev"}
NO_LABELS: dict[str, str] = {}
REDIS_PROD = {"component": "redis", "tier": "cache", "environment": "production"}
REDIS_DEV = {"component": "redis", "tier": "cache", "environment": "dev"}
MEMCACHED = {"component": "memcached", "tier": "cache"}

ENV_IS_PROD = sel({"environment": "production"})  # environment = production
TIER_NOT_FRONTEND = sel({}, req("tier", "NotIn", "frontend"))  # tier != frontend
PROD_NOT_FRONTEND = sel({"environment": "production"}, req("tier", "NotIn", "frontend"))
PROD_BACKEND_ONLY = sel({"environment": "production", "tier": "backend"})
ENV_IN_PROD_QA = sel({}, req("environment", "In", "production", "qa"))
TIER_NOTIN_FE_BE = sel({}, req("tier", "NotIn", "frontend", "backend"))
PARTITION = sel({}, req("partition", "Exists"))  # partition
NOT_PARTITION = sel({}, req("partition", "DoesNotExist"))  # !partition
PARTITION_NOT_QA = sel({}, req("partition", "Exists"), req("environment", "NotIn", "qa"))
# The page's Deployment example: matchLabels and matchExpressions are ANDed.
REDIS_CACHE_NOT_DEV = sel(
    {"component": "redis"}, req("tier", "In", "cache"), req("environment", "NotIn", "dev")
)

CASES = [
    # equality-based
    ("environment = production matches a production device", ENV_IS_PROD, PROD_FRONTEND, True),
    ("environment = production does not match a qa device", ENV_IS_PROD, QA_CACHE, False),
    ("environment = production needs the key to be present", ENV_IS_PROD, NO_LABELS, False),
    ("tier != frontend does not match a frontend device", TIER_NOT_FRONTEND, PROD_FRONTEND, False),
    ("tier != frontend matches a backend device", TIER_NOT_FRONTEND, PROD_BACKEND, True),
    ("tier != frontend matches a device with no tier label", TIER_NOT_FRONTEND, DEV_NO_TIER, True),
    (
        "environment=production,tier!=frontend matches prod backend",
        PROD_NOT_FRONTEND,
        PROD_BACKEND,
        True,
    ),
    (
        "environment=production,tier!=frontend rejects prod frontend",
        PROD_NOT_FRONTEND,
        PROD_FRONTEND,
        False,
    ),
    ("environment=production,tier!=frontend rejects qa cache", PROD_NOT_FRONTEND, QA_CACHE, False),
    ("every matchLabel must hold, not just one", PROD_BACKEND_ONLY, PROD_FRONTEND, False),
    ("all matchLabels holding matches", PROD_BACKEND_ONLY, PROD_BACKEND, True),
    (
        "a matchLabel with an empty value matches that empty value",
        sel({"tier": ""}),
        {"tier": ""},
        True,
    ),
    (
        "a matchLabel with an empty value does not match a missing key",
        sel({"tier": ""}),
        NO_LABELS,
        False,
    ),
    # set-based
    ("environment in (production, qa) matches production", ENV_IN_PROD_QA, PROD_FRONTEND, True),
    ("environment in (production, qa) matches qa", ENV_IN_PROD_QA, QA_CACHE, True),
    ("environment in (production, qa) rejects dev", ENV_IN_PROD_QA, DEV_NO_TIER, False),
    (
        "environment in (production, qa) rejects a device without the key",
        ENV_IN_PROD_QA,
        NO_LABELS,
        False,
    ),
    ("tier notin (frontend, backend) rejects frontend", TIER_NOTIN_FE_BE, PROD_FRONTEND, False),
    ("tier notin (frontend, backend) rejects backend", TIER_NOTIN_FE_BE, PROD_BACKEND, False),
    ("tier notin (frontend, backend) matches cache", TIER_NOTIN_FE_BE, QA_CACHE, True),
    (
        "tier notin (frontend, backend) matches a device with no tier",
        TIER_NOTIN_FE_BE,
        DEV_NO_TIER,
        True,
    ),
    ("partition matches a device with a partition label", PARTITION, QA_CACHE, True),
    ("partition matches a partition label with an empty value", PARTITION, {"partition": ""}, True),
    ("partition rejects a device without a partition label", PARTITION, PROD_FRONTEND, False),
    ("!partition matches a device without a partition label", NOT_PARTITION, PROD_FRONTEND, True),
    ("!partition rejects a device with a partition label", NOT_PARTITION, QA_CACHE, False),
    (
        "partition,environment notin (qa) rejects qa with a partition",
        PARTITION_NOT_QA,
        QA_CACHE,
        False,
    ),
    (
        "partition,environment notin (qa) matches prod with a partition",
        PARTITION_NOT_QA,
        PROD_PARTITION,
        True,
    ),
    (
        "partition,environment notin (qa) rejects a device without partition",
        PARTITION_NOT_QA,
        PROD_FRONTEND,
        False,
    ),
    (
        "component=redis, tier in (cache), env notin (dev) matches prod redis",
        REDIS_CACHE_NOT_DEV,
        REDIS_PROD,
        True,
    ),
    (
        "component=redis, tier in (cache), env notin (dev) rejects dev redis",
        REDIS_CACHE_NOT_DEV,
        REDIS_DEV,
        False,
    ),
    (
        "component=redis, tier in (cache), env notin (dev) rejects memcached",
        REDIS_CACHE_NOT_DEV,
        MEMCACHED,
        False,
    ),
    # empty selector and corners
    ("empty selector matches every device", sel(), PROD_FRONTEND, True),
    ("empty selector matches a device with no labels", sel(), NO_LABELS, True),
    ("In with no values matches nothing", sel({}, req("tier", "In")), PROD_FRONTEND, False),
    ("NotIn with no values matches everything", sel({}, req("tier", "NotIn")), PROD_FRONTEND, True),
    (
        "values are compared exactly, case included",
        ENV_IS_PROD,
        {"environment": "Production"},
        False,
    ),
    ("extra device labels do not matter", sel({"tier": "cache"}), QA_CACHE, True),
]


@pytest.mark.parametrize(
    ("selector", "labels", "expected"), [c[1:] for c in CASES], ids=[c[0] for c in CASES]
)
def test_selector_follows_the_kubernetes_labels_and_selectors_examples(selector, labels, expected):
    assert selection.matches(selector, labels) is expected


def test_unknown_operator_is_refused_rather_than_matching():
    bogus = model.Requirement("tier", "Matches", ("x",))  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="unknown selector operator 'Matches'"):
        selection.matches(sel({}, bogus), PROD_FRONTEND)


def test_select_apps_keeps_matching_apps_in_their_order():
    apps = [
        app("zeta", sel({"role": "gateway"})),
        app("alpha", sel()),
        app("kiosk", sel({"role": "kiosk"})),
        app("beta", sel({}, req("ring", "In", "canary", "prod"))),
    ]
    chosen = selection.select_apps(apps, {"role": "gateway", "ring": "canary"})
    assert [a.name for a in chosen] == ["zeta", "alpha", "beta"]


def test_select_apps_of_nothing_is_nothing():
    assert selection.select_apps([], {"role": "gateway"}) == []


# --- properties

KEYS = st.sampled_from(["environment", "tier", "partition", "example.com/ring"])
VALUES = st.sampled_from(["production", "qa", "dev", "frontend", "backend", ""])
LABELS = st.dictionaries(KEYS, VALUES, max_size=4)
OPERATORS = st.sampled_from(["In", "NotIn", "Exists", "DoesNotExist"])


@st.composite
def requirements(draw: st.DrawFn) -> model.Requirement:
    operator = draw(OPERATORS)
    values = draw(st.lists(VALUES, min_size=1, max_size=3, unique=True))
    if operator in ("Exists", "DoesNotExist"):
        values = []
    return model.Requirement(draw(KEYS), operator, tuple(values))


SELECTORS = st.builds(
    lambda labels, exprs: sel(labels, *exprs),
    st.dictionaries(KEYS, VALUES, max_size=3),
    st.lists(requirements(), max_size=3),
)


@given(LABELS)
def test_empty_selector_matches_every_label_set(labels):
    assert selection.matches(model.Selector(), labels)


@given(SELECTORS, KEYS, VALUES, LABELS)
def test_adding_a_match_label_never_widens_a_selector(selector, key, value, labels):
    assume(key not in dict(selector.match_labels))  # a new pair, not a changed one
    narrower = model.Selector(
        tuple(sorted({**dict(selector.match_labels), key: value}.items())),
        selector.match_expressions,
    )
    if selection.matches(narrower, labels):
        assert selection.matches(selector, labels)


@given(SELECTORS, requirements(), LABELS)
def test_adding_an_expression_never_widens_a_selector(selector, extra, labels):
    narrower = model.Selector(selector.match_labels, (*selector.match_expressions, extra))
    if selection.matches(narrower, labels):
        assert selection.matches(selector, labels)


@given(KEYS, st.lists(VALUES, max_size=3), LABELS)
def test_not_in_is_the_complement_of_in_when_the_key_exists(key, values, labels):
    in_ = sel({}, req(key, "In", *values))
    not_in = sel({}, req(key, "NotIn", *values))
    if key in labels:
        assert selection.matches(in_, labels) != selection.matches(not_in, labels)
    else:
        assert not selection.matches(in_, labels)
        assert selection.matches(not_in, labels)


@given(KEYS, LABELS)
def test_does_not_exist_is_the_complement_of_exists(key, labels):
    exists = selection.matches(sel({}, req(key, "Exists")), labels)
    assert exists == (key in labels)
    assert selection.matches(sel({}, req(key, "DoesNotExist")), labels) == (not exists)


@given(KEYS, VALUES, LABELS)
def test_match_label_is_the_same_as_in_with_one_value(key, value, labels):
    assert selection.matches(sel({key: value}), labels) == selection.matches(
        sel({}, req(key, "In", value)), labels
    )


@given(SELECTORS, LABELS)
def test_a_selector_matches_exactly_when_each_of_its_parts_matches(selector, labels):
    parts = [sel({k: v}) for k, v in selector.match_labels]
    parts += [sel({}, r) for r in selector.match_expressions]
    assert selection.matches(selector, labels) == all(selection.matches(p, labels) for p in parts)


@given(st.lists(SELECTORS, max_size=5), LABELS)
def test_select_apps_is_a_stable_filter_by_matches(selectors, labels):
    apps = [app(f"app-{i}", s) for i, s in enumerate(selectors)]
    assert selection.select_apps(apps, labels) == [
        a for a in apps if selection.matches(a.selector, labels)
    ]
