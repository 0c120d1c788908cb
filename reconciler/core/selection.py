"""Label selectors (SPEC 2.1 `spec.selector`): does an app's selector match this device's labels.

Pure: a `model.Selector` and a label mapping in, a bool out. Semantics are exactly Kubernetes'
(`metav1.LabelSelector`): every `matchLabels` pair and every `matchExpressions` requirement must
hold (AND), and the empty selector matches every device. Used by `desired` (device cycle) and by
`reconciler plan` previews. It does not validate selectors: `manifests` rejects bad keys, values
and operator/values combinations before a selector gets here.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from reconciler import model


def matches(selector: model.Selector, labels: Mapping[str, str]) -> bool:
    """True when every matchLabels pair and every expression of `selector` holds for `labels`."""
    # A matchLabels pair {k: v} is the requirement `k In (v)`: the key must be present.
    if any(key not in labels or labels[key] != value for key, value in selector.match_labels):
        return False
    return all(requirement_matches(r, labels) for r in selector.match_expressions)


def requirement_matches(requirement: model.Requirement, labels: Mapping[str, str]) -> bool:
    """Evaluate one `matchExpressions` entry the way Kubernetes does.

    `NotIn` holds when the key is absent (the Kubernetes documentation: "`tier notin (frontend,
    backend)` selects all resources with key equal to tier and values other than frontend and
    backend, and all resources with no labels with the tier key"). `In` with no values matches
    nothing; `manifests` rejects that form anyway.
    """
    key, operator = requirement.key, requirement.operator
    present = key in labels
    if operator == "In":
        return present and labels[key] in requirement.values
    if operator == "NotIn":
        return not present or labels[key] not in requirement.values
    if operator == "Exists":
        return present
    if operator == "DoesNotExist":
        return not present
    # Unreachable for validated manifests; failing loudly beats silently matching a device.
    raise ValueError(f"unknown selector operator {operator!r} for key {key!r}")


def select_apps(
    apps: Sequence[model.AppManifest], labels: Mapping[str, str]
) -> list[model.AppManifest]:
    """The apps whose selector matches `labels`, in the order given."""
    return [app for app in apps if matches(app.selector, labels)]
