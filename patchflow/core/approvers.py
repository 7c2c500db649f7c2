"""Who may answer a gate: the forms of an approver entry, and the names an API token may take.

An approval gate lists entries of three forms: ``slack:U0123ABCD`` (a Slack user, by member id),
``slack-group:S0456EFGH`` (the members of a Slack user group) and plain names (an API token's name, the user
of the CLI). A Slack click acts as the ``slack:``/``slack-group:`` entry it matched; an API call acts as its
token's name. So the namespaces must never overlap: a token named ``slack:U0123ABCD`` would answer a gate
meant for that Slack user. Plain names therefore have no ``:``, and token names are plain names.
"""

from __future__ import annotations

import re

SLACK_USER_PREFIX = "slack:"
SLACK_GROUP_PREFIX = "slack-group:"
_SLACK_USER = re.compile(r"slack:[UW][A-Z0-9]{2,31}")
_SLACK_GROUP = re.compile(r"slack-group:S[A-Z0-9]{2,31}")
PLAIN_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._@+\-]{0,199}")
"""A person or system by name: letters, digits and ``. _ @ + -`` (no ``:``, which marks a namespace)."""
_PLAIN_RULE = "letters, digits and . _ @ + - (starting with a letter or digit, at most 200)"


def approver_problem(entry: str) -> str | None:
    """Why ``entry`` is no approver patchflow could ever match (what to write instead), or None."""
    if entry.startswith(SLACK_GROUP_PREFIX):
        if _SLACK_GROUP.fullmatch(entry):
            return None
        return (
            f"{entry!r} is no Slack user group: write slack-group: and the group's ID (S…, capitals and "
            "digits, from the group's page in Slack), e.g. slack-group:S0456EFGH"
        )
    if entry.startswith(SLACK_USER_PREFIX):
        if _SLACK_USER.fullmatch(entry):
            return None
        return (
            f"{entry!r} is no Slack user: write slack: and the member ID (U… or W…, capitals and digits, "
            "from the profile's 'Copy member ID'), e.g. slack:U0123ABCD"
        )
    if PLAIN_NAME.fullmatch(entry):
        return None
    if ":" in entry:
        return (
            f"{entry!r}: only slack:U… and slack-group:S… entries have a ':'; a plain name (an API token's "
            f"name, a CLI user) has {_PLAIN_RULE}"
        )
    return f"{entry!r} is no name patchflow can match: a plain name has {_PLAIN_RULE}"


def token_name_problem(name: str) -> str | None:
    """Why an API token may not be called ``name`` (it would stand for someone else), or None."""
    if name.startswith((SLACK_USER_PREFIX, SLACK_GROUP_PREFIX)):
        namespace = SLACK_GROUP_PREFIX if name.startswith(SLACK_GROUP_PREFIX) else SLACK_USER_PREFIX
        return (
            f"{name!r} is in the {namespace} namespace of Slack identities: a token so named could answer "
            "gates meant for that Slack user or group; name the token after the person or system it is for"
        )
    if not PLAIN_NAME.fullmatch(name):
        return f"{name!r}: a token name has {_PLAIN_RULE} — it is the name gates and the audit log see"
    return None
