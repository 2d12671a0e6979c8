"""GitOps delivery (config ``delivery: argocd``): Pulumi writes the fraud service's manifests to a folder
of this repository and each region's Argo CD syncs that folder into its cluster.

* ``service_provider``: with ``delivery: argocd`` the fraud service is declared with a Kubernetes
  provider that renders YAML to ``gitops/<stack>/<region>`` (``render_yaml_to_directory``) instead of
  applying it; with ``delivery: pulumi`` it is the region's cluster provider.
* ``GitOpsDelivery``: an AppProject ``fraud-platform`` and an Application ``fraud-service`` in the
  region's Argo CD, pointing at that folder of ``git.url`` at ``git.revision``, with automated sync,
  prune and self-heal. Declared with the cluster provider, after the Argo CD release (its CRDs).

Drift: with ``delivery: pulumi`` a change made in the cluster shows in ``pulumi preview --refresh`` (and
fails the scheduled ``--expect-no-changes`` check); with ``delivery: argocd`` Argo CD marks the
Application OutOfSync and self-heal puts the cluster back to what git holds (docs/PIPELINE.md).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import pulumi

from infra import charts, k8s
from infra.component import Component
from infra.config import PROJECT, GitSettings, Region

GITOPS_ROOT = "gitops"
APP_PROJECT = "fraud-platform"
APPLICATION = "fraud-service"
IN_CLUSTER = "https://kubernetes.default.svc"
REPOSITORY_SECRET = "fraud-platform-repo"
# The namespaces the synced manifests may write to (the fraud service's own).
DESTINATION_NAMESPACES = (charts.FRAUD_NAMESPACE,)


def gitops_path(stack: str, region: str) -> str:
    """The repository folder holding one region's rendered fraud service (relative to the repo root)."""
    return f"{GITOPS_ROOT}/{stack}/{region}"


def service_provider(
    name: str, delivery: str, path: str, cluster_provider: pulumi.ProviderResource, parent: pulumi.Resource
) -> pulumi.ProviderResource:
    """What the fraud service is declared with: the cluster itself, or (delivery argocd) the folder ``path``
    (:func:`gitops_path`) for Argo CD."""
    if delivery != "argocd":
        return cluster_provider
    import pulumi_kubernetes as kubernetes

    return kubernetes.Provider(
        f"{name}-gitops", render_yaml_to_directory=path, opts=pulumi.ResourceOptions(parent=parent)
    )


def app_project(git: GitSettings) -> k8s.Manifest:
    return {
        "apiVersion": "argoproj.io/v1alpha1",
        "kind": "AppProject",
        "metadata": {
            "name": APP_PROJECT,
            "namespace": charts.NAMESPACES["argocd"],
            "labels": k8s.labels(APP_PROJECT, "gitops"),
        },
        "spec": {
            "description": "The fraud model service, synced from the manifests Pulumi renders to git.",
            "sourceRepos": [git.url],
            "destinations": [{"server": IN_CLUSTER, "namespace": ns} for ns in DESTINATION_NAMESPACES],
            # The folder holds the fraud namespace itself; everything else it holds is namespaced.
            "clusterResourceWhitelist": [{"group": "", "kind": "Namespace"}],
            "namespaceResourceWhitelist": [{"group": "*", "kind": "*"}],
            "orphanedResources": {"warn": True},
        },
    }


def application(git: GitSettings, path: str, region: Region) -> k8s.Manifest:
    """The Application syncing ``path`` of ``git.url`` at ``git.revision`` into ``region``'s cluster."""
    return {
        "apiVersion": "argoproj.io/v1alpha1",
        "kind": "Application",
        "metadata": {
            "name": APPLICATION,
            "namespace": charts.NAMESPACES["argocd"],
            "labels": k8s.labels(APPLICATION, "gitops", **{"fraud-platform/region": region.name}),
            # Deleting the Application deletes what it synced (not only the Application object).
            "finalizers": ["resources-finalizer.argocd.argoproj.io"],
        },
        "spec": {
            "project": APP_PROJECT,
            "source": {
                "repoURL": git.url,
                "targetRevision": git.revision,
                "path": path,
                # The provider writes 0-crd/ and 1-manifests/ below the folder.
                "directory": {"recurse": True},
            },
            "destination": {"server": IN_CLUSTER, "namespace": charts.FRAUD_NAMESPACE},
            "syncPolicy": {
                "automated": {"prune": True, "selfHeal": True, "allowEmpty": False},
                "syncOptions": ["CreateNamespace=true", "ServerSideApply=true", "PruneLast=true"],
                "retry": {"limit": 5, "backoff": {"duration": "10s", "factor": 2, "maxDuration": "3m"}},
            },
        },
    }


def repository_secret(git: GitSettings, token: pulumi.Input[str]) -> k8s.Manifest:
    """Argo CD's credentials for a private repository (declarative repository Secret)."""
    obj = k8s.secret(
        REPOSITORY_SECRET,
        charts.NAMESPACES["argocd"],
        {"type": "git", "url": git.url, "username": "x-access-token", "password": token},
        obj_labels=k8s.labels(REPOSITORY_SECRET, "gitops"),
    )
    obj["metadata"]["labels"]["argocd.argoproj.io/secret-type"] = "repository"
    return obj


@dataclass(frozen=True)
class GitOpsArgs:
    git: GitSettings
    path: str  # the repository folder of this region (gitops_path)
    region: Region
    provider: pulumi.ProviderResource  # the cluster's own
    argocd_ready: Sequence[pulumi.Resource]  # the Argo CD release (its CRDs)
    git_token_set: bool  # whether the secret gitToken is set: then Argo CD gets it as repository credentials


class GitOpsDelivery(Component):
    """AppProject + Application in one region's Argo CD (type ``fraud:gitops:GitOpsDelivery``)."""

    def __init__(self, name: str, args: GitOpsArgs, opts: pulumi.ResourceOptions | None = None):
        super().__init__("fraud:gitops:GitOpsDelivery", name, opts, provider=args.provider)
        depends = list(args.argocd_ready)
        if args.git_token_set:
            token = pulumi.Config(PROJECT).require_secret("gitToken")
            depends.append(self.declare("repository", repository_secret(args.git, token), args.argocd_ready))
        project = self.declare("appproject", app_project(args.git), depends)
        self.declare("application", application(args.git, args.path, args.region), [project, *depends])
        self.finish(
            application=f"{charts.NAMESPACES['argocd']}/{APPLICATION}",
            repo=args.git.url,
            revision=args.git.revision,
            path=args.path,
        )
