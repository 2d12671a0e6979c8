"""CrossGuard policy pack ``fraud-platform``: runs the rules of fraud_rules.py on every resource.

The rules are plain functions (unit-tested without the Pulumi CLI in tests/test_policy.py, and run there
over every resource of every offline render); this file only wires them into pulumi_policy.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import fraud_rules
import pulumi_policy.policy as _policy_internals
from pulumi_policy import EnforcementLevel, PolicyPack, ResourceValidationPolicy

_deserialize = _policy_internals.deserialize_properties


def _keep_secret_markers(props, proxy_secrets=False):
    """pulumi_policy unwraps Pulumi secrets before validation; the secrets rule needs to see which values
    are secrets, so validations get the wire format (secret markers kept; unknowns stay the sentinel)."""
    if proxy_secrets:  # remediations: pulumi_policy's own handling
        return _deserialize(props, proxy_secrets)
    return props


_policy_internals.deserialize_properties = _keep_secret_markers

PolicyPack(
    name="fraud-platform",
    enforcement_level=EnforcementLevel.MANDATORY,
    policies=[
        ResourceValidationPolicy(name=rule.name, description=rule.description, validate=fraud_rules.validator(rule))
        for rule in fraud_rules.RULES
    ],
)
