"""Stack configuration: each key declared once, validated up front, every problem reported at once.

Layout (each module under ~400 lines):

* ``values``: the value types (quantities, URLs without credentials, pinned images, secrets, ...).
* ``sections``: the sections (regions, platform, mlflow, registry, serving, model, git, pipeline) as
  StrictSettings models; ``analysis`` lives in rollout/settings.py, ``gate`` in model/gate.py.
* ``stack``: ``StackSettings`` (every key), ``StackConfig`` (a validated stack) and ``parse_config``.
* ``rules``: every rule that relates two or more keys.
* ``yaml12`` and ``sources``: stack files read as Pulumi reads them (YAML 1.2, strict), defaults, ``--set``
  overrides and the engine's config (``load_from_pulumi``).
* ``schema``: Pulumi.yaml's ``config:`` block, generated from the models.

Errors read ``<key>: <what is wrong, what is allowed>``.
"""

from infra.config.rules import STRATEGY_NEEDS
from infra.config.schema import project_schema, write_pulumi_yaml
from infra.config.sections import (
    CHART_COMPONENTS,
    COMPONENTS,
    ChartComponent,
    Component,
    GitSettings,
    MlflowSettings,
    ModelSettings,
    PipelineSettings,
    PlatformSettings,
    Region,
    RegistrySettings,
    ServerComponent,
    ServingSettings,
)
from infra.config.sources import (
    check_stack,
    deep_merge,
    load_from_pulumi,
    load_stack,
    parse_set_overrides,
    project_defaults,
    read_stack_file,
    read_stack_text,
    resolve_raw,
    stack_file_values,
    validate_stack_text,
)
from infra.config.stack import (
    DELIVERIES,
    ENVIRONMENTS,
    PRODUCTION,
    PROJECT,
    PROJECT_ROOT,
    STRATEGIES,
    CandidateMetrics,
    ConfigError,
    RegistryCa,
    StackConfig,
    StackSettings,
    parse_config,
)
from infra.config.values import SecretRef, quantity_value
from model.gate import GateSettings
from rollout.settings import AnalysisSettings

__all__ = [
    "CHART_COMPONENTS",
    "COMPONENTS",
    "DELIVERIES",
    "ENVIRONMENTS",
    "PRODUCTION",
    "PROJECT",
    "PROJECT_ROOT",
    "STRATEGIES",
    "STRATEGY_NEEDS",
    "AnalysisSettings",
    "CandidateMetrics",
    "ChartComponent",
    "Component",
    "ConfigError",
    "GateSettings",
    "GitSettings",
    "MlflowSettings",
    "ModelSettings",
    "PipelineSettings",
    "PlatformSettings",
    "Region",
    "RegistryCa",
    "RegistrySettings",
    "SecretRef",
    "ServerComponent",
    "ServingSettings",
    "StackConfig",
    "StackSettings",
    "check_stack",
    "deep_merge",
    "load_from_pulumi",
    "load_stack",
    "parse_config",
    "parse_set_overrides",
    "project_defaults",
    "project_schema",
    "quantity_value",
    "read_stack_file",
    "read_stack_text",
    "resolve_raw",
    "stack_file_values",
    "validate_stack_text",
    "write_pulumi_yaml",
]
