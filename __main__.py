"""The fraud-platform Pulumi program: load and validate config, build each region, export outputs."""

import pulumi

from infra.config import ConfigError, load_from_pulumi
from infra.region import RegionArgs, RegionStack

try:
    config = load_from_pulumi()
except ConfigError as error:
    # Same messages as `fraudctl check-config`; nothing is declared when config is invalid.
    raise pulumi.RunError(str(error)) from None

regions = {region.name: RegionStack(f"region-{region.name}", RegionArgs(config, region)) for region in config.regions}

pulumi.export("strategy", config.strategy)
pulumi.export("regions", {name: stack.outputs for name, stack in regions.items()})
pulumi.export("adminPasswords", pulumi.Output.secret({name: stack.passwords for name, stack in regions.items()}))
