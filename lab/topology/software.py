"""Which software runs each service of a node, the user's own configuration for it, and
raw settings passed through to it: a node's `software`, `config` and `settings`.

Each of the three is a mapping per service (smtp, pop3, fetch: the services real software
can run; dns and client always run the built-in software), or a short form for the smtp
service alone, as `software` was one name for the MTA before it was per service:

    software: postfix                          software: {smtp: postfix, pop3: dovecot}
    config: hub-postfix                        config: {smtp: hub-postfix, pop3: dovecot.conf}
    settings: {queue_run_delay: 5s}            settings: {smtp: {queue_run_delay: 5s}}

Here each value is checked on its own (a known name that runs that service, a path, a
string or number); how they fit the node (a service it runs, real software beside config
and settings, files that exist) is checked in validate.py, with their places in the file.
"""

from __future__ import annotations

import difflib
import os
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any

from pydantic import BeforeValidator, Field, ValidationInfo, WithJsonSchema, field_validator

from lab.topology.fields import Base, Service


class Software(StrEnum):
    """What runs a service: the built-in software, or a real program (Docker backend)."""

    builtin = "builtin"
    postfix = "postfix"
    exim = "exim"
    sendmail = "sendmail"
    dovecot = "dovecot"
    fetchmail = "fetchmail"


# The services real software can run, in the order of the mappings.
SOFTWARE_SERVICES: tuple[Service, ...] = (Service.smtp, Service.pop3, Service.fetch)

# The software that can run each service; builtin runs every one.
OFFERED: dict[Service, tuple[Software, ...]] = {
    Service.smtp: (Software.builtin, Software.postfix, Software.exim, Software.sendmail),
    Service.pop3: (Software.builtin, Software.dovecot),
    Service.fetch: (Software.builtin, Software.fetchmail),
    Service.dns: (Software.builtin,),
    Service.client: (Software.builtin,),
}

# What `config` names for each real software, for messages and the docs.
CONFIG_WANTED: dict[Software, str] = {
    Software.postfix: "a directory holding main.cf and/or master.cf",
    Software.exim: "a file: its runtime configuration, such as exim4.conf",
    Software.sendmail: "a file: a .mc to make sendmail.cf from, or a sendmail.cf",
    Software.dovecot: "a file such as dovecot.conf",
    Software.fetchmail: "a file such as .fetchmailrc",
}
# Software whose config is a directory, and the files it must hold (at least one).
CONFIG_DIRECTORY: dict[Software, tuple[str, ...]] = {Software.postfix: ("main.cf", "master.cf")}

# Where each software's example is written in messages: what to name instead of builtin.
_EXAMPLE: dict[Service, Software] = {
    Service.smtp: Software.postfix,
    Service.pop3: Software.dovecot,
    Service.fetch: Software.fetchmail,
}


def services_of(software: Software) -> list[Service]:
    """The services `software` can run."""
    return [service for service, offered in OFFERED.items() if software in offered]


def one_of(items: list[str] | tuple[str, ...]) -> str:
    """'a', 'a or b', 'a, b or c'."""
    return items[0] if len(items) == 1 else f"{', '.join(items[:-1])} or {items[-1]}"


def example(service: Service) -> str:
    """How to name real software for `service`, as a person would write it."""
    if service is Service.smtp:
        return "software: postfix"
    return f"software: {{{service.value}: {_EXAMPLE[service].value}}}"


def _kind(value: Any) -> str:
    if value is None:
        return "nothing (null)"
    if isinstance(value, bool):
        return f"the boolean {str(value).lower()}"
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, list):
        return "a list"
    return repr(value)


def check_software(value: Any, service: Service, *, short_form: bool = False) -> Software:
    """A software name that runs `service`, or a ValueError that says what would."""
    offered = [s.value for s in OFFERED[service]]
    if not isinstance(value, str):
        raise ValueError(f"expected a software name such as {offered[-1]}, got {_kind(value)}")
    if value not in Software.__members__:
        names = [s.value for s in Software]
        close = difflib.get_close_matches(value, names, n=1, cutoff=0.6)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        raise ValueError(f"unknown software {value!r}{hint} (expected one of: {', '.join(names)})")
    software = Software(value)
    if software not in OFFERED[service]:
        runs = one_of([s.value for s in services_of(software)])
        if short_form:
            other = services_of(software)[0].value
            raise ValueError(
                f"{value} does not run smtp (it runs {runs}), and one name is the smtp"
                f" software: expected {one_of(offered)}; for {other} write software:"
                f" {{{other}: {value}}}"
            )
        raise ValueError(
            f"{value} does not run {service.value} (it runs {runs}); expected {one_of(offered)}"
        )
    return software


# ---------------------------------------------------------------------------------------
# The three mappings per service


class _PerService(Base):
    """A value per service that real software can run; None where none is given."""

    def of(self, service: Service) -> Any:
        return getattr(self, service.value, None)

    def given(self) -> dict[Service, Any]:
        """The services given a value, in order."""
        return {s: self.of(s) for s in SOFTWARE_SERVICES if self.of(s) is not None}


class ServiceSoftware(_PerService):
    """The software of each service; a service not named runs builtin."""

    smtp: Software | None = Field(None, description="the MTA: builtin, postfix, exim or sendmail")
    pop3: Software | None = Field(None, description="the POP3 server: builtin or dovecot")
    fetch: Software | None = Field(None, description="the mail fetcher: builtin or fetchmail")

    @field_validator("smtp", "pop3", "fetch", mode="before")
    @classmethod
    def _software(cls, value: Any, info: ValidationInfo) -> Any:
        if value is None or isinstance(value, Software):
            return value
        return check_software(value, Service(str(info.field_name)))


def _absolute(value: Path, info: ValidationInfo) -> Path:
    """A path relative to the topology file's directory (the loader's `base`) made absolute."""
    path = value.expanduser()
    if not path.is_absolute():
        base = (info.context or {}).get("base")
        path = Path(base or Path.cwd()) / path
    return Path(os.path.normpath(path))


class ServiceConfig(_PerService):
    """The user's own configuration of each service's software: paths, relative to the
    topology file; absolute once loaded."""

    smtp: Path | None = Field(
        None,
        description="postfix: a directory with main.cf and/or master.cf; exim, sendmail: a file",
    )
    pop3: Path | None = Field(None, description="dovecot: a file such as dovecot.conf")
    fetch: Path | None = Field(None, description="fetchmail: a file such as .fetchmailrc")

    @field_validator("smtp", "pop3", "fetch", mode="before")
    @classmethod
    def _text(cls, value: Any) -> Any:
        if value is None or isinstance(value, Path):
            return value
        if not isinstance(value, str) or not value.strip():
            raise ValueError(
                "expected a path to a file or directory, relative to the topology file,"
                f" got {_kind(value) if value != '' else 'an empty string'}"
            )
        return value

    @field_validator("smtp", "pop3", "fetch")
    @classmethod
    def _resolve(cls, value: Path | None, info: ValidationInfo) -> Path | None:
        return None if value is None else _absolute(value, info)


def _setting(value: Any) -> Any:
    if isinstance(value, bool) or not isinstance(value, str | int | float):
        hint = (
            " (write it as the software spells it, such as yes or no)"
            if isinstance(value, bool)
            else ""
        )
        raise ValueError(f"expected a string or a number, got {_kind(value)}{hint}")
    return value


Setting = Annotated[str | int | float, BeforeValidator(_setting)]


class ServiceSettings(_PerService):
    """Raw settings for each service's software: key -> value, passed through as they are
    (postconf key=value for postfix, for instance)."""

    smtp: dict[str, Setting] | None = Field(None, description="settings for the MTA")
    pop3: dict[str, Setting] | None = Field(None, description="settings for the POP3 server")
    fetch: dict[str, Setting] | None = Field(None, description="settings for the fetcher")


# ---------------------------------------------------------------------------------------
# The short forms for the smtp service


def software_shorthand(value: Any) -> Any:
    """`software: postfix` is `software: {smtp: postfix}`."""
    if isinstance(value, str):
        check_software(value, Service.smtp, short_form=True)
        return {Service.smtp.value: value}
    if value is None:
        raise ValueError(
            "expected a software name for smtp (builtin, postfix, exim or sendmail) or a"
            " mapping of service -> software, got nothing (null)"
        )
    return value


def config_shorthand(value: Any) -> Any:
    """`config: hub-postfix` is `config: {smtp: hub-postfix}`."""
    if isinstance(value, str):
        return {Service.smtp.value: value}
    if value is None:
        raise ValueError(
            "expected a path (the smtp software's configuration) or a mapping of service ->"
            " path, got nothing (null)"
        )
    return value


def settings_shorthand(value: Any) -> Any:
    """`settings: {key: value}` is `settings: {smtp: {key: value}}`; a mapping whose values
    are all mappings is per service."""
    if not isinstance(value, dict) or not value:
        return value
    nested = [isinstance(v, dict) for v in value.values()]
    if all(nested):
        return value
    if any(nested):
        raise ValueError(
            "expected key: value settings (the smtp software's) or a mapping of service ->"
            " key: value settings, not a mix of both"
        )
    return {Service.smtp.value: value}


# ---------------------------------------------------------------------------------------
# JSON Schema (scalar or mapping, the names each service takes); each field's description
# is the Node field's.


def _software_enum(service: Service) -> dict[str, Any]:
    return {
        "enum": [s.value for s in OFFERED[service]],
        "description": f"the {service.value} software",
    }


SERVICE_SOFTWARE_SCHEMA: dict[str, Any] = {
    "anyOf": [
        _software_enum(Service.smtp),
        {
            "type": "object",
            "properties": {s.value: _software_enum(s) for s in SOFTWARE_SERVICES},
            "additionalProperties": False,
        },
    ],
}

_PATH: dict[str, Any] = {"type": "string", "minLength": 1}

SERVICE_CONFIG_SCHEMA: dict[str, Any] = {
    "anyOf": [
        {**_PATH, "description": "the smtp software's configuration"},
        {
            "type": "object",
            "properties": {
                s.value: {**_PATH, "description": f"the {s.value} software's configuration"}
                for s in SOFTWARE_SERVICES
            },
            "additionalProperties": False,
        },
    ],
}

_SETTINGS: dict[str, Any] = {
    "type": "object",
    "additionalProperties": {"type": ["string", "number"]},
}

SERVICE_SETTINGS_SCHEMA: dict[str, Any] = {
    "anyOf": [
        {
            "type": "object",
            "properties": {
                s.value: {**_SETTINGS, "description": f"settings for the {s.value} software"}
                for s in SOFTWARE_SERVICES
            },
            "additionalProperties": False,
        },
        {**_SETTINGS, "description": "settings for the smtp software"},
    ],
}


# The node's three fields: the short form for smtp read first, the schema written out.
SoftwareField = Annotated[
    ServiceSoftware, BeforeValidator(software_shorthand), WithJsonSchema(SERVICE_SOFTWARE_SCHEMA)
]
ConfigField = Annotated[
    ServiceConfig, BeforeValidator(config_shorthand), WithJsonSchema(SERVICE_CONFIG_SCHEMA)
]
SettingsField = Annotated[
    ServiceSettings, BeforeValidator(settings_shorthand), WithJsonSchema(SERVICE_SETTINGS_SCHEMA)
]
