"""Registered-model aliases, natively or kept in tags where a registry lacks them.

MLflow's own stores give each registered model aliases (``champion``, ``production``): a name
that points at exactly one version and moves in one call. Azure ML documents its MLflow model
registry support without aliases ("Manage models registry in Azure Machine Learning with
MLflow" lists registering, versions, tags, search and their limits), so on an ``azureml://``
registry the same semantics are kept in one **registered-model tag** per alias,
``mlops_alias.<alias> = <version>``: setting it moves the alias in one call, deleting it
removes the alias, and a version's aliases are the tags that name it. Registered-model tags
are documented there. ``mode`` ``"auto"`` chooses tags for ``azureml`` URIs, native aliases
elsewhere; ``"native"`` or ``"tags"`` forces one (the tests run the registry's whole contract
in both on a local store).

Dagster-free: the registry resource and the real-time server's registry source share it.
"""

from __future__ import annotations

from typing import Any, Literal

AliasMode = Literal["auto", "native", "tags"]
ALIAS_TAG_PREFIX = "mlops_alias."


def alias_tag(alias: str) -> str:
    """The registered-model tag holding ``alias``'s version in tag mode."""
    return ALIAS_TAG_PREFIX + alias


def uses_tags(registry_uri: str, mode: AliasMode | str = "auto") -> bool:
    """Whether aliases live in tags for this registry URI."""
    if mode not in ("auto", "native", "tags"):
        raise ValueError(f"alias mode {mode!r}: choose auto, native or tags")
    return mode == "tags" or (mode == "auto" and registry_uri.startswith("azureml:"))


class Aliases:
    """Alias operations on an ``MlflowClient``, natively or through tags.

    Errors are the client's own (a missing model or version raises as the client does), so a
    caller's error mapping stays what it was.
    """

    def __init__(self, client: Any, by_tags: bool) -> None:
        self.client, self.by_tags = client, by_tags

    def version(self, name: str, alias: str) -> Any:
        """The ``ModelVersion`` ``alias`` points at; None (tag mode) or the client's
        not-found error (native) when it points nowhere."""
        if not self.by_tags:
            return self.client.get_model_version_by_alias(name, alias)
        target = (self.client.get_registered_model(name).tags or {}).get(alias_tag(alias))
        return self.client.get_model_version(name, target) if target else None

    def point(self, name: str, alias: str, version: int | str) -> None:
        """Move ``alias`` to ``version`` (one write)."""
        if self.by_tags:
            self.client.set_registered_model_tag(name, alias_tag(alias), str(version))
        else:
            self.client.set_registered_model_alias(name, alias, str(version))

    def drop(self, name: str, alias: str) -> None:
        if self.by_tags:
            self.client.delete_registered_model_tag(name, alias_tag(alias))
        else:
            self.client.delete_registered_model_alias(name, alias)

    def by_version(self, name: str) -> dict[str, tuple[str, ...]] | None:
        """Tag mode: ``{version: aliases}`` from the registered model's tags (one call).
        Native mode: None (each ``ModelVersion`` carries its own ``aliases``)."""
        if not self.by_tags:
            return None
        out: dict[str, list[str]] = {}
        for key, value in (self.client.get_registered_model(name).tags or {}).items():
            if key.startswith(ALIAS_TAG_PREFIX):
                out.setdefault(str(value), []).append(key.removeprefix(ALIAS_TAG_PREFIX))
        return {v: tuple(sorted(a)) for v, a in out.items()}
