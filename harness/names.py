"""The one grammar of the names a golden store is made of.

Store paths are ``<subject>/<producer>/<engine>/<case>/`` and manifests name formats; all of
these come from whoever wrote the store, so each is checked here before it is used as a path,
a test id, a version or a dictionary key. A name outside the grammar is that golden's failure
with a message (:class:`BadName`), never the run's: ``torch-2.13.0²_qbc-0.1.0`` (``'0²'`` passes
``str.isdigit`` but not ``int``), ``lin[ear`` (which pytest's id parsing split) and ``../../x``
(a format key) are all refused here.

- subject, engine, case, format: ASCII letters, digits, ``_``, ``-`` and ``.``, starting with a
  letter or digit, at most 80 characters (:data:`NAME`);
- producer: ``torch-<release>_qbc-<version>`` for built-in subjects, with
  ``_<subject>-<version>`` appended for a plug-in subject (:data:`PRODUCER`); a release is two
  to four dot-separated numbers, a version a release with an optional pre-release tag and
  ``+local`` label.

This module imports nothing from harness: every layer may use it.
"""

from __future__ import annotations

import re

NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,79}", re.ASCII)
_RELEASE = r"\d{1,4}(?:\.\d{1,6}){1,3}"
_VERSION = _RELEASE + r"(?:(?:a|b|rc|dev|post)\d{0,6})?(?:\+[A-Za-z0-9.]{1,40})?"
PRODUCER = re.compile(
    rf"torch-(?P<torch>{_RELEASE})_qbc-(?P<qbc>{_VERSION})"
    rf"(?:_(?P<plugin>[A-Za-z0-9][A-Za-z0-9.]{{0,39}})-(?P<plugin_version>{_VERSION}))?",
    re.ASCII,
)


class BadName(ValueError):
    """A store name outside the grammar; the message names the kind, the name and the rule."""


def check(kind: str, name: object) -> str:
    """``name`` if it is a valid subject / engine / case / format name, else BadName."""
    if not isinstance(name, str) or not NAME.fullmatch(name) or ".." in name:
        raise BadName(
            f"{kind} name {name!r} is not a qbc name (ASCII letters, digits, '_', '-', '.', "
            "starting with a letter or digit, at most 80 characters)"
        )
    return name


def check_producer(name: object) -> re.Match[str]:
    """The parsed producer id, else BadName."""
    match = PRODUCER.fullmatch(name) if isinstance(name, str) else None
    if match is None:
        raise BadName(
            f"producer {name!r} is not a producer id (torch-<release>_qbc-<version>, plus "
            "_<subject>-<version> for a plug-in subject; ASCII digits only)"
        )
    return match


def release(text: str) -> tuple[int, ...]:
    """``"2.13.0"`` -> (2, 13, 0); the digits are ASCII, so ``int`` never fails."""
    return tuple(int(p) for p in text.split("."))
