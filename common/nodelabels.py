"""Which labels a node may put on its own Node object: Kubernetes' NodeRestriction rules for kubelets.

Never a label in ``node-restriction.kubernetes.io/`` (those are for admins to mark nodes the workloads may
trust); ``kubernetes.io/`` and ``k8s.io/`` labels only from the kubelet's own list or namespaces; and, beyond
NodeRestriction, ``kubernetes.io/hostname`` only with the node's own name. Any other label is the node's to set.
"""

from __future__ import annotations

from collections.abc import Mapping

KUBELET_LABELS = frozenset(
    {
        "kubernetes.io/hostname",
        "kubernetes.io/os",
        "kubernetes.io/arch",
        "beta.kubernetes.io/os",
        "beta.kubernetes.io/arch",
        "beta.kubernetes.io/instance-type",
        "node.kubernetes.io/instance-type",
        "topology.kubernetes.io/region",
        "topology.kubernetes.io/zone",
        "failure-domain.beta.kubernetes.io/region",
        "failure-domain.beta.kubernetes.io/zone",
    }
)
KUBELET_NAMESPACES = ("kubelet.kubernetes.io", "node.kubernetes.io")
RESTRICTED_NAMESPACE = "node-restriction.kubernetes.io"


def _namespace(key: str) -> str:
    prefix, slash, _ = key.partition("/")
    return prefix if slash else ""


def _within(namespace: str, parent: str) -> bool:
    return namespace == parent or namespace.endswith("." + parent)


def forbidden_labels(node: str, labels: Mapping[str, str]) -> list[str]:
    """The labels of ``labels`` that ``node`` may not set on itself, each with the reason, sorted."""
    refused = []
    for key, value in sorted(labels.items()):
        namespace = _namespace(key)
        if _within(namespace, RESTRICTED_NAMESPACE):
            refused.append(f"{key} (node-restriction labels are set by admins only)")
        elif key == "kubernetes.io/hostname" and value != node:
            refused.append(f"{key}={value} (names another node)")
        elif (_within(namespace, "kubernetes.io") or _within(namespace, "k8s.io")) and not (
            key in KUBELET_LABELS or any(_within(namespace, allowed) for allowed in KUBELET_NAMESPACES)
        ):
            refused.append(f"{key} (not a label a kubelet may set)")
    return refused
