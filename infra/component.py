"""What every component of the program shares.

The contract (Pulumi's component guidelines; pulumi/examples ``aws-py-hub-and-spoke-network/spoke.py``): a
component is built as ``(name, args, opts)`` from a frozen args dataclass, has the type token
``fraud:<module>:<Noun>``, parents every child to itself and names it from its own name, declares its
Kubernetes objects with one provider, and calls ``register_outputs`` last. :class:`Component` holds those
mechanics; :class:`RegionComponent` is what a region (infra/region.py) reads of each of its components.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Protocol

import pulumi

from infra import k8s

if TYPE_CHECKING:
    import pulumi_random


class RegionComponent(Protocol):
    """What a region reads of a component: its outputs and what custom resources of its kinds wait for."""

    @property
    def outputs(self) -> Mapping[str, Any]:
        """Stack outputs; a key ending in ``password`` holds a secret (exported apart from the rest)."""
        ...

    @property
    def crds_ready(self) -> Sequence[pulumi.Resource]:
        """What a custom resource of a kind this component installs must depend on (its CRDs' release)."""
        ...


class Component(pulumi.ComponentResource):
    """The shared mechanics: children parented here, Kubernetes objects declared with ``provider`` after
    ``depends_on`` (and whatever each declaration adds), outputs registered last by :meth:`finish`."""

    def __init__(
        self,
        type_token: str,
        name: str,
        opts: pulumi.ResourceOptions | None,
        *,
        provider: pulumi.ProviderResource,
        depends_on: Sequence[pulumi.Resource] = (),
    ) -> None:
        super().__init__(type_token, name, None, opts)
        self._objects_provider = provider
        self._depends_on = tuple(depends_on)
        self.outputs: dict[str, Any] = {}
        self.crds_ready: list[pulumi.Resource] = []

    def child_name(self, suffix: str) -> str:
        return f"{self.pulumi_resource_name}-{suffix}"

    def child_opts(
        self, depends_on: Iterable[pulumi.Resource] = (), provider: pulumi.ProviderResource | None = None
    ) -> pulumi.ResourceOptions:
        return pulumi.ResourceOptions(
            parent=self,
            provider=provider if provider is not None else self._objects_provider,
            depends_on=[*self._depends_on, *depends_on],
        )

    def declare(
        self,
        suffix: str,
        obj: k8s.Manifest,
        depends_on: Iterable[pulumi.Resource] = (),
        provider: pulumi.ProviderResource | None = None,
    ) -> pulumi.CustomResource:
        """Declare one Kubernetes object as ``<name>-<suffix>``."""
        return k8s.declare(self.child_name(suffix), obj, self.child_opts(depends_on, provider))

    def declare_each(
        self, objects: Iterable[k8s.Manifest], depends_on: Iterable[pulumi.Resource] = ()
    ) -> list[pulumi.CustomResource]:
        """Declare each object as ``<name>-<kind>-<object name>``, all after ``depends_on``."""
        after = list(depends_on)
        return [self.declare(k8s.object_suffix(obj), obj, after) for obj in objects]

    def password(self, suffix: str, length: int = 24) -> pulumi_random.RandomPassword:
        """A generated password (pulumi-random: its ``result`` is a Pulumi secret)."""
        import pulumi_random as random

        return random.RandomPassword(
            self.child_name(suffix), length=length, special=False, opts=pulumi.ResourceOptions(parent=self)
        )

    def finish(self, **outputs: Any) -> None:
        """Record and register the outputs: the last thing a component does."""
        self.outputs = dict(outputs)
        self.register_outputs(self.outputs)
