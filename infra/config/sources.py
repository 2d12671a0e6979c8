"""Where stack config comes from: stack files read the way Pulumi reads them, the project defaults,
``--set`` overrides, and (under ``pulumi up``) the engine's config.

A stack file is refused, with the key named, when it is too big, not YAML, gives a key twice, is not a
mapping (or its ``config:`` is not), uses a namespace other than the project's, ``pulumi:`` and the
providers' (the near miss is suggested: ``fraud-platfrom:`` -> ``fraud-platform:``), or an un-namespaced
key. Object-valued keys are deep-merged over the defaults, so a stack states only what it changes.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, get_origin

from fraudctl.settings import StrictSettings, in_parentheses, key_text, near_miss, shown
from infra.config import yaml12
from infra.config.stack import (
    PROJECT,
    PROJECT_ROOT,
    ConfigError,
    StackConfig,
    StackSettings,
    parse_config,
    read_bounded,
    secret_keys,
    stack_keys,
)
from infra.config.values import SET_IN_PULUMI

# A stack file is a few kilobytes; this bounds memory and parse time for anything else.
MAX_STACK_FILE_BYTES = 256 * 1024
# Top-level keys of a Pulumi stack file (pulumi/sdk/go/common/workspace/project.go, ProjectStack).
STACK_FILE_KEYS = ("config", "secretsprovider", "encryptedkey", "encryptionsalt", "environment")
# Config namespaces besides the project's: Pulumi's own, and the providers this program uses.
OTHER_NAMESPACES = ("pulumi", "kubernetes", "docker", "random")


# ---------------------------------------------------------------------------------------------------
# Defaults and merging


def project_defaults() -> dict[str, Any]:
    """Every key's default as a stack file would write it (secrets: ""; regions has none)."""
    defaults: dict[str, Any] = {}
    for name, info in StackSettings.model_fields.items():
        if info.is_required():
            continue
        value = info.get_default(call_default_factory=True)
        if isinstance(value, StrictSettings):  # a section
            value = value.model_dump(by_alias=True, mode="json")
        defaults[info.alias or name] = "" if value is None else value
    return defaults


def deep_merge(base: Any, override: Any) -> Any:
    """Objects merge key by key; anything else (lists included) is replaced."""
    if isinstance(base, dict) and isinstance(override, dict):
        merged = dict(base)
        for key, value in override.items():
            merged[key] = deep_merge(base.get(key), value) if key in base else value
        return merged
    return copy.deepcopy(override)


# ---------------------------------------------------------------------------------------------------
# Stack files


@dataclass
class StackFile:
    """A stack file's project keys (prefix removed), which of them are secure, and what is wrong with it."""

    values: dict[str, Any] = field(default_factory=dict)
    secure: set[str] = field(default_factory=set)
    problems: list[str] = field(default_factory=list)
    # False when the file's shape is wrong (not YAML, not a mapping, no config: mapping): then its values
    # are not validated, which would only add consequences ("regions: is required") to the real problem.
    readable: bool = True

    def unreadable(self, problem: str) -> StackFile:
        self.problems.append(problem)
        self.readable = False
        return self


def _key(path: tuple[Any, ...]) -> str:
    """A location in a stack file as messages name it: project keys without the prefix (serving.replicas)."""
    if not path:
        return "config"
    parts = list(path)
    if parts[0] == "config" and len(parts) > 1 and isinstance(parts[1], str):
        namespace, _, name = parts[1].partition(":")
        parts = [name if namespace == PROJECT and name else parts[1], *parts[2:]]
    text = ""
    for part in parts:
        if isinstance(part, int):
            text += f"[{part}]"
        else:
            part = key_text(part)
            text = f"{text}.{part}" if text else part
    return text


def read_stack_text(text: str) -> StackFile:
    """A stack file's content, checked (see the module docstring)."""
    result = StackFile()

    def duplicate(path: tuple[Any, ...], message: str) -> None:
        result.problems.append(f"{_key(path)}: {message}")

    try:
        doc = yaml12.load(text, duplicate)
    except yaml12.YamlProblem as problem:
        return result.unreadable(f"{_key(problem.path)}: {problem.message}")
    if doc is None:
        return result
    if not isinstance(doc, dict):
        return result.unreadable(
            f"config: a stack file is a mapping with a config: mapping of <namespace>:<key> values, got a "
            f"{_kind(doc)} at the top level"
        )
    for key in doc:
        if key not in STACK_FILE_KEYS:
            result.problems.append(
                f"{_key((key,))}: unknown top-level key{_hint(str(key), STACK_FILE_KEYS)}; a stack file holds "
                f"{', '.join(STACK_FILE_KEYS)}"
            )
    config = doc.get("config")
    if config is None:
        result.readable = not result.problems  # an unknown top-level key is likely the misspelt config:
        return result
    if not isinstance(config, dict):
        return result.unreadable(
            f"config: must be a mapping of <namespace>:<key> to values (e.g. {PROJECT}:strategy: canary), got a "
            f"{_kind(config)}"
        )
    for key, value in config.items():
        name = _project_key(str(key), result.problems)
        if name is not None:
            if isinstance(value, dict) and set(value) == {"secure"}:
                result.secure.add(name)
            result.values[name] = value
    return result


def _project_key(key: str, problems: list[str]) -> str | None:
    """The project key ``fraud-platform:<name>`` stands for; None for other namespaces (Pulumi's, the
    providers') and for keys outside any allowed namespace, which are added to ``problems``."""
    namespace, colon, name = key.partition(":")
    namespaces = (PROJECT, *OTHER_NAMESPACES)
    if not colon or not name:
        hint = f"; write {PROJECT}:{key}" if not colon and key in stack_keys() else ""
        problems.append(f"{key_text(key)}: config keys are <namespace>:<key>{hint} (this project's is {PROJECT})")
    elif namespace not in namespaces:
        problems.append(
            f"{key_text(key)}: unknown namespace {shown(namespace)}{_hint(namespace, namespaces)}; allowed: "
            f"{', '.join(namespaces)}"
        )
    elif namespace == PROJECT:
        return name
    return None


def read_stack_file(path: Path) -> StackFile:
    """``Pulumi.<stack>.yaml``, bounded in size and checked (see :func:`read_stack_text`)."""
    try:
        text = read_bounded(path, MAX_STACK_FILE_BYTES).decode("utf-8-sig")
    except FileNotFoundError:
        return StackFile().unreadable(f"{path.name}: no such file")
    except UnicodeDecodeError as error:
        return StackFile().unreadable(f"{path.name}: is not UTF-8 text (byte {error.start})")
    except ValueError as error:  # not a regular file, or too big
        return StackFile().unreadable(f"{path.name}: {error}")
    except OSError as error:
        return StackFile().unreadable(f"{path.name}: cannot be read ({error.strerror})")
    return read_stack_text(text)


def stack_file_values(path: Path) -> tuple[dict[str, Any], set[str]]:
    """Project keys from a ``Pulumi.<stack>.yaml`` (prefix removed) and which of them are secure."""
    stack_file = read_stack_file(path)
    if stack_file.problems:
        raise ConfigError(stack_file.problems)
    return stack_file.values, stack_file.secure


def secret_overrides(overrides: Mapping[str, Any] | None) -> dict[str, Any]:
    """``overrides`` with a value given for a secret key taken as that secret's value, as if set with
    ``pulumi config set --secret`` (a render override is never stored, and renders show it as a secret)."""
    result = dict(overrides or {})
    for key in secret_keys():
        if isinstance(result.get(key), str) and result[key]:
            result[key] = {"secure": result[key]}
    return result


def check_stack(
    stack_file: StackFile, stack: str, overrides: Mapping[str, Any] | None = None, root: Path = PROJECT_ROOT
) -> StackConfig:
    """The validated stack of a stack file (over the defaults, then ``overrides``); ConfigError with the
    file's problems and the config's, all at once."""
    if not stack_file.readable:
        raise ConfigError(stack_file.problems)
    raw = deep_merge(project_defaults(), stack_file.values)
    if overrides:
        raw = deep_merge(raw, secret_overrides(overrides))
    try:
        config = parse_config(raw, stack=stack, root=root)
    except ConfigError as error:
        raise ConfigError([*stack_file.problems, *error.found]) from None
    if stack_file.problems:
        raise ConfigError(stack_file.problems)
    return config


def validate_stack_text(text: str, stack: str, root: Path = PROJECT_ROOT) -> StackConfig:
    """A stack file's text validated exactly as ``fraudctl check-config`` validates the file; relative file
    keys are read under the checkout ``root``."""
    return check_stack(read_stack_text(text), stack, root=root)


def _kind(value: Any) -> str:
    return {dict: "mapping", list: "list", str: "string", type(None): "null"}.get(type(value), type(value).__name__)


def _hint(word: str, choices: Any) -> str:
    return in_parentheses(near_miss(word, choices))


# ---------------------------------------------------------------------------------------------------
# Overrides (fraudctl render --set), stacks by name, and the engine's config


def parse_set_overrides(pairs: list[str]) -> dict[str, Any]:
    """``--set serving.replicas=3`` style overrides; values are YAML 1.2 scalars/lists/objects (as in stack
    files: ``on`` stays a string)."""
    result: dict[str, Any] = {}
    problems = []
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        if not sep or not key:
            problems.append(f"--set {shown(pair)}: expected KEY=VALUE, e.g. strategy=blue-green or serving.replicas=3")
            continue
        duplicates: list[str] = []

        def duplicate(_path: tuple[Any, ...], message: str, found: list[str] = duplicates) -> None:
            found.append(message)

        try:
            value = yaml12.load(raw, duplicate) if raw else ""
        except yaml12.YamlProblem as problem:
            problems.append(f"--set {key}: value {problem.message}")
            continue
        if duplicates:
            problems.append(f"--set {key}: a key {duplicates[0]}")
            continue
        node = result
        parts = key.split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                problems.append(f"--set {key}: {part} is already set to a scalar")
                break
        else:
            node[parts[-1]] = value
    if problems:
        raise ConfigError(problems)
    return result


def stack_file_path(stack: str, root: Path = PROJECT_ROOT) -> Path:
    path = root / f"Pulumi.{stack}.yaml"
    if not path.exists():
        stacks = sorted(f.name[len("Pulumi.") : -len(".yaml")] for f in root.glob("Pulumi.*.yaml"))
        raise ConfigError([f"stack: no file {path.name}; known stacks are {', '.join(stacks)}"])
    return path


def resolve_raw(
    stack: str, *, overrides: Mapping[str, Any] | None = None, root: Path = PROJECT_ROOT
) -> tuple[dict[str, Any], set[str]]:
    """Defaults, then Pulumi.<stack>.yaml, then overrides (each deep-merged), and the secure keys."""
    values, secure = stack_file_values(stack_file_path(stack, root))
    raw = deep_merge(project_defaults(), values)
    if overrides:
        given = secret_overrides(overrides)
        raw = deep_merge(raw, given)
        secure |= {key for key in secret_keys() if isinstance(given.get(key), dict)}
        secure -= {key for key in secret_keys() if given.get(key) == ""}
    return raw, secure


def load_stack(stack: str, *, overrides: Mapping[str, Any] | None = None, root: Path = PROJECT_ROOT) -> StackConfig:
    return check_stack(read_stack_file(stack_file_path(stack, root)), stack, overrides, root)


def load_from_pulumi() -> StackConfig:
    """The engine's config for this stack, checked like a stack file; called by __main__.py only.

    Under the engine every value is a string: structured keys are JSON, and secrets are only asked whether
    they are set as secrets (their values are read by the components with ``require_secret``).
    """
    import pulumi
    from pulumi.runtime import config as runtime

    given = {**runtime.get_config_env(), **runtime.CONFIG.get()}
    found = StackFile()
    secret_fields = set(secret_keys())
    text_fields = {info.alias for info in StackSettings.model_fields.values() if _is_text(info.annotation)}
    for full_key, value in given.items():
        name = _project_key(full_key, found.problems)
        if name is None:
            continue
        if name in secret_fields:
            secret = runtime.is_config_secret(full_key)
            found.values[name] = {"secure": SET_IN_PULUMI} if value and secret else value
        elif name in text_fields or not isinstance(value, str):
            found.values[name] = value
        else:
            try:
                found.values[name] = json.loads(value)
            except json.JSONDecodeError:
                found.values[name] = value  # reported by the model as the wrong type
    return check_stack(found, pulumi.get_stack())


def _is_text(annotation: Any) -> bool:
    """Keys the engine hands over as they are (strategy...), not as JSON."""
    return annotation is str or get_origin(annotation) is Literal
