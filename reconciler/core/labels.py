"""Label key/value and DNS-label syntax, as Kubernetes defines them. Pure.

Used by manifests (names, selectors), the device config (labels) and inventory files.
"""

from __future__ import annotations

import re

_DNS_LABEL = re.compile(r"[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?")
_DNS_SUBDOMAIN = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*")
_NAME = re.compile(r"([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]")


def dns_label_error(value: object) -> str | None:
    """Why `value` is not a DNS label (`[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?`), or None."""
    if not isinstance(value, str):
        return f"expected a string, got {type(value).__name__}"
    if not _DNS_LABEL.fullmatch(value):
        return (
            f'"{value}" is not a DNS label: lower-case letters, digits and "-", '
            "starting and ending with a letter or digit, at most 63 characters"
        )
    return None


def label_key_error(key: object) -> str | None:
    """Why `key` is not a valid label key (`[prefix/]name`), or None."""
    if not isinstance(key, str):
        return f"label key must be a string, got {type(key).__name__}"
    prefix, _, name = key.rpartition("/")
    if "/" in key and (not prefix or len(prefix) > 253 or not _DNS_SUBDOMAIN.fullmatch(prefix)):
        return f'label key "{key}" has an invalid prefix: expected a DNS subdomain before "/"'
    if len(name) > 63 or not _NAME.fullmatch(name):
        return (
            f'label key "{key}" is invalid: at most 63 characters of letters, digits, '
            '"-", "_", ".", starting and ending with a letter or digit'
        )
    return None


def label_value_error(value: object) -> str | None:
    """Why `value` is not a valid label value (may be empty), or None."""
    if not isinstance(value, str):
        return f"label value must be a string, got {type(value).__name__} {value!r}"
    if value and (len(value) > 63 or not _NAME.fullmatch(value)):
        return (
            f'label value "{value}" is invalid: at most 63 characters of letters, digits, '
            '"-", "_", ".", starting and ending with a letter or digit'
        )
    return None
